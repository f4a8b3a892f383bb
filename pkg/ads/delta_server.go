package ads

import (
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
)

// DeltaAggregatedResources serves one proxy's incremental ADS stream (ads_config api_type
// DELTA_GRPC). The stream loop, its limits, authentication, metrics and /debug/streams
// are the state-of-the-world side's (Server.serve); only the session differs.
func (s *Server) DeltaAggregatedResources(gs discoveryv3.AggregatedDiscoveryService_DeltaAggregatedResourcesServer) error {
	p := &delta{gs: gs, sess: newDeltaSession(s.metrics, nil)}
	return s.serve(gs.Context(), p, func() (request, error) {
		// Not gs.Recv: the codec decodes a deltaRequest's initial_resource_versions
		// without a map (see deltaRequest).
		r := newDeltaRequest()
		if err := gs.RecvMsg(r); err != nil {
			return nil, err
		}
		return r, nil
	})
}

package sim

import (
	"errors"
	"fmt"
	"io"
	"slices"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
)

// runDelta is run for a client on an incremental stream (Options.Delta).
func (c *Client) runDelta() {
	c.dproto = newDeltaProto()
	first := c.dproto.Start()
	first.Node = c.Node
	if err := c.dstream.Send(first); err != nil {
		c.finish(err)
		return
	}
	c.mu.Lock()
	c.asked[CDS] = true
	c.mu.Unlock()
	var d decoder
	for {
		var resp rawDeltaResponse
		if err := c.dstream.RecvMsg(&resp); err != nil {
			if c.reconnecting.Load() {
				if err = c.reconnectDelta(); err == nil {
					continue
				}
			}
			c.finish(err)
			return
		}
		err := c.handleDelta(&d, &resp)
		resp.release()
		if errors.Is(err, io.EOF) && c.reconnecting.Load() {
			// A response that came before the stream was cut is applied, but its
			// ACK cannot go out on the cut stream (gRPC's Send says io.EOF): that
			// is the reconnect, not a stream the server ended.
			err = c.reconnectDelta()
		}
		if err != nil {
			c.finish(err)
			return
		}
	}
}

// reconnectDelta opens a new stream, as Envoy does after losing one, and asks for every
// type again with initial_resource_versions: what the cache holds.
func (c *Client) reconnectDelta() error {
	c.reconnecting.Store(false)
	s, cancel, err := c.openDelta()
	if err != nil {
		return err
	}
	c.mu.Lock()
	c.dstream, c.cancelStream = s, cancel
	c.mu.Unlock()
	reqs := c.dproto.Reconnect()
	reqs[0].Node = c.Node
	for _, r := range reqs {
		if err := s.Send(r); err != nil {
			return err
		}
	}
	return nil
}

// Reconnect ends every delta client's stream and has it open a new one, which asks for
// what it held with initial_resource_versions. SotW clients are left alone.
func (f *Fleet) Reconnect() {
	for _, c := range f.Clients {
		if c.openDelta == nil {
			continue
		}
		c.reconnecting.Store(true)
		c.mu.Lock()
		cancel := c.cancelStream
		c.mu.Unlock()
		cancel()
	}
}

func (c *Client) handleDelta(d *decoder, resp *rawDeltaResponse) error {
	recv := time.Now().UnixNano()
	c.fleet.Responses.Add(1)
	c.fleet.LastRecv.Store(recv)
	t, ok := typeOf(resp.TypeURL)
	if !ok {
		return fmt.Errorf("delta response of unknown type %q", resp.TypeURL)
	}
	ev := Event{Type: t, N: int32(len(resp.Resources)), Removed: int32(len(resp.Removed)), Bytes: int32(resp.Size), Recv: recv}
	dr, err := d.decode(t, &resp.rawResponse)
	if err != nil {
		return err
	}
	rs := make([]deltaResource, len(dr.res))
	for i, r := range dr.res {
		if r.Name != resp.Names[i] {
			return fmt.Errorf("%s resource named %q holds %q", t, resp.Names[i], r.Name)
		}
		rs[i] = deltaResource{Resource: r, Version: resp.Versions[i]}
	}
	names := dr.names
	c.fleet.Decoded.Add(int64(len(names)))
	if len(names) <= 4 {
		ev.Names = slices.Clone(names)
	}
	if w := c.fleet.watch.Load(); w != nil {
		_, ev.Hit = slices.BinarySearch(names, *w)
	}
	nackMsg := ""
	if c.Nack != nil {
		nackMsg = c.Nack(t, names)
	}
	reqs, err := c.dproto.Response(t, resp.Nonce, rs, resp.Removed, nackMsg)
	if err != nil {
		return err
	}
	var send []*discoveryv3.DeltaDiscoveryRequest
	switch c.Mode {
	case Normal:
		send = reqs
		ev.NACK = nackMsg != ""
	case NeverACK:
		for _, r := range reqs {
			if r.ResponseNonce == "" {
				send = append(send, r)
			}
		}
	}
	ev.nonce = resp.Nonce
	now := time.Now().UnixNano()
	c.mu.Lock()
	c.events = append(c.events, ev)
	for _, r := range send {
		rt, _ := typeOf(r.TypeUrl)
		c.asked[rt] = true
		if r.ResponseNonce != resp.Nonce {
			continue
		}
		c.events[len(c.events)-1].Ack = now
		if r.ErrorDetail == nil {
			c.synced[rt] = true
		}
	}
	if c.Mode == NeverACK && nackMsg == "" {
		c.synced[t] = true
	}
	if c.syncedAt == 0 && c.allSynced() {
		c.syncedAt = now
	}
	c.mu.Unlock()
	for _, r := range send {
		if err := c.dstream.Send(r); err != nil {
			return err
		}
	}
	return nil
}

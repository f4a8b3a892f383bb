package ads

import (
	"testing"

	"github.com/bearkong/bearkong/pkg/resource"
)

// TestSDS: secrets are served like EDS and RDS (named subscriptions, versions, nonces,
// ACK and NACK), last in a push. A rotation gives the same names new content.
func TestSDS(t *testing.T) {
	rotated := func(body string) map[resource.Type]map[string]string {
		return with(baseContent(), resource.Secret, "workload-cert", body)
	}

	t.Run("the first SDS request gets the named secrets only", func(t *testing.T) {
		s := newSession(nil, nil)
		c := with(baseContent(), resource.Secret, "other-proxy-cert", "x")
		run(t, s, []step{
			{config: c},
			{req: req(resource.Secret, "", "", "workload-cert", "trust-bundle"), wantKind: Initial,
				want: []sent{{resource.Secret, []string{"1", "1"}}}},
		})
		sds := s.types[resource.Secret]
		if sds.status != StaleStatus || sds.pushes != 1 || sds.nonce == "" || sds.version == "" {
			t.Fatalf("after the first response: %+v", sds)
		}
	})

	t.Run("a rotation is a push of SDS alone, with a new version and nonce", func(t *testing.T) {
		s := synced(t)
		before := s.types[resource.Secret]
		run(t, s, []step{{config: rotated("2"), want: []sent{{resource.Secret, []string{"2"}}}}})
		after := s.types[resource.Secret]
		if after.version == before.version || after.nonce == before.nonce || after.status != StaleStatus || after.pushes != before.pushes+1 {
			t.Fatalf("SDS after a rotation: %+v, before %+v", after, before)
		}
		for _, typ := range resource.Types[:resource.Secret] {
			if ts := s.types[typ]; ts.status != Synced {
				t.Fatalf("%s moved on a rotation: %s", typ, ts.status)
			}
		}
		run(t, s, []step{ackLatest(s, resource.Secret, "workload-cert", "trust-bundle")})
		if sds := s.types[resource.Secret]; sds.status != Synced || sds.ackedVersion != after.version {
			t.Fatalf("after the ACK: %+v", sds)
		}
		// The same content again: nothing.
		run(t, s, []step{{config: rotated("2")}})
	})

	t.Run("ACK and NACK of SDS are tracked apart from the other types", func(t *testing.T) {
		s := synced(t)
		acked := s.types[resource.Secret].ackedVersion
		run(t, s, []step{{config: rotated("bad"), want: []sent{{resource.Secret, []string{"bad"}}}}})
		sds := s.types[resource.Secret]
		run(t, s, []step{
			{req: nack(resource.Secret, acked, sds.nonce, "key mismatch", "workload-cert", "trust-bundle"), wantKind: NACK},
			{config: rotated("bad")}, // not resent
		})
		sds = s.types[resource.Secret]
		if sds.status != Nacked || sds.nacks != 1 || sds.ackedVersion != acked || sds.lastNack == nil || sds.lastNack.Message != "key mismatch" {
			t.Fatalf("SDS after a NACK: %+v %+v", sds, sds.lastNack)
		}
		if cds := s.types[resource.Cluster]; cds.status != Synced || cds.nacks != 0 || cds.acks != 1 {
			t.Fatalf("CDS after an SDS NACK: %+v", cds)
		}
		run(t, s, []step{{config: rotated("3"), want: []sent{{resource.Secret, []string{"3"}}}}})
		run(t, s, []step{ackLatest(s, resource.Secret, "workload-cert", "trust-bundle")})
		if sds := s.types[resource.Secret]; sds.status != Synced || sds.acks != 2 || sds.nacks != 1 {
			t.Fatalf("SDS after the fix: %+v", sds)
		}
	})

	t.Run("SDS asked for before any config is answered once there is one", func(t *testing.T) {
		s := newSession(nil, nil)
		run(t, s, []step{
			{req: req(resource.Cluster, "", ""), wantKind: Initial},
			{req: req(resource.Secret, "", "", "workload-cert", "trust-bundle"), wantKind: Initial},
			{config: baseContent(), want: []sent{{resource.Cluster, []string{"1", "1"}}, {resource.Secret, []string{"1", "1"}}}},
		})
	})

	t.Run("a secret named before it exists is sent when it appears", func(t *testing.T) {
		s := synced(t)
		sds := s.types[resource.Secret]
		run(t, s, []step{
			{req: req(resource.Secret, sds.version, sds.nonce, "workload-cert", "trust-bundle", "extra"), wantKind: ACK},
			{config: with(baseContent(), resource.Secret, "extra", "new"), want: []sent{{resource.Secret, []string{"new"}}}},
		})
	})

	t.Run("unsubscribing forgets; subscribing again is answered again", func(t *testing.T) {
		s := synced(t)
		run(t, s, []step{
			ackLatest(s, resource.Secret),
			{config: rotated("2")}, // not subscribed: nothing
		})
		if sds := s.types[resource.Secret]; !sds.sub.empty() || sds.sentView != nil {
			t.Fatalf("still subscribed, or still holding what was sent: %+v", sds)
		}
		sds := s.types[resource.Secret]
		run(t, s, []step{{req: req(resource.Secret, sds.version, sds.nonce, "workload-cert"), wantKind: ACK,
			want: []sent{{resource.Secret, []string{"2"}}}}})
	})

	t.Run("a push that changes clusters and secrets sends SDS last", func(t *testing.T) {
		s := synced(t)
		c := with(rotated("2"), resource.Cluster, "b", "2")
		c = with(c, resource.Route, "outbound", "2")
		run(t, s, []step{{config: c, want: []sent{
			{resource.Cluster, []string{"1", "2"}},
			{resource.Endpoint, []string{"1"}},
			{resource.Route, []string{"2"}},
			{resource.Secret, []string{"2"}},
		}}})
	})

	t.Run("a reconnect gets every subscribed secret", func(t *testing.T) {
		s := newSession(nil, nil)
		run(t, s, []step{
			{config: rotated("2")},
			{req: req(resource.Secret, "old-sds", "", "trust-bundle", "workload-cert"), wantKind: Initial,
				want: []sent{{resource.Secret, []string{"1", "2"}}}},
		})
	})
}

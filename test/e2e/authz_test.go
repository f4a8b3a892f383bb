package e2e

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	reflectionv1 "google.golang.org/grpc/reflection/grpc_reflection_v1"
	reflectionv1alpha "google.golang.org/grpc/reflection/grpc_reflection_v1alpha"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/wrapperspb"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"sigs.k8s.io/yaml"

	"github.com/bearkong/bearkong/internal/kubeenv"
	"github.com/bearkong/bearkong/internal/localmesh"
	"github.com/bearkong/bearkong/pkg/ads"
	"github.com/bearkong/bearkong/pkg/mesh"
	"github.com/bearkong/bearkong/pkg/resource"
)

// Authorization (issue 12): AuthorizationPolicies (bearkong.dev/v1alpha1) on the demo
// apps, enforced by the callee's sidecar from the caller's mTLS identity, against real
// Envoys, the real API server and Prometheus. The policies are written as a user writes
// them (YAML) and created with the dynamic client, so that these tests read the API as
// kubectl does.
//
// The tests run in order and put the mesh back: each deletes its policies, and the next
// one first waits until every app reaches every app again.

// authzGVR is the policies' resource.
var authzGVR = schema.GroupVersionResource{Group: "bearkong.dev", Version: "v1alpha1", Resource: "authorizationpolicies"}

// authzConvergence bounds how long a policy change takes to reach the proxies: the usual
// convergence time of the mesh (a debounced snapshot, then an RDS/LDS push).
const authzConvergence = 10 * time.Second

// The RBAC filters' per-policy counters (README, "How it is enforced"; pkg/translate's
// authzFilters). Envoy names them
// http.inbound.rbac.<deny.|allow.>policy.<namespace>/<name>.<counter>, counter one of
// allowed, denied, shadow_allowed, shadow_denied
// (https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_filters/rbac_filter#statistics),
// and its Prometheus output envoy_http_rbac_policy_<counter>{envoy_rbac_policy_name=...}.

// policyStat sums the pod's per-policy counters of policy ("namespace/name").
func policyStat(ctx context.Context, m *localmesh.Mesh, pod, policy, counter string) (uint64, error) {
	st, err := m.EnvoyStats(ctx, pod)
	if err != nil {
		return 0, err
	}
	var n uint64
	for k, v := range st {
		if strings.Contains(k, ".rbac.") && strings.HasSuffix(k, ".policy."+policy+"."+counter) {
			n += v
		}
	}
	return n, nil
}

// policyQuery is the PromQL sum of a per-policy counter at the sidecars of svc.
func policyQuery(counter, policy, svc string) string {
	return fmt.Sprintf(`sum(envoy_http_rbac_policy_%s{envoy_rbac_policy_name=%q, service=%q})`, counter, policy, svc)
}

// promAtLeast waits until q sums to at least min (Prometheus scrapes every 5 s) and
// returns the sum.
func promAtLeast(t *testing.T, q string, min float64) float64 {
	t.Helper()
	var last float64
	err := localmesh.Eventually(ctxT(t, 70*time.Second), 60*time.Second, func(ctx context.Context) error {
		var err error
		if last, err = promValue(ctx, q); err != nil {
			return err
		}
		if last < min {
			return fmt.Errorf("%s = %v, want at least %v", q, last, min)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return last
}

// policyTypes are the xDS types a policy change may push. SDS is left out: every proxy
// gets a new certificate every 30 s under every test (certLifetime in security_test.go).
var policyTypes = []resource.Type{resource.Cluster, resource.Endpoint, resource.Listener, resource.Route}

// authzClient returns the policies of the mesh's namespace.
func authzClient(t *testing.T, m *localmesh.Mesh) dynamic.ResourceInterface {
	t.Helper()
	c, err := dynamic.NewForConfig(shared.env.RESTConfig)
	if err != nil {
		t.Fatal(err)
	}
	return c.Resource(authzGVR).Namespace(m.Namespace())
}

// parsePolicy reads a policy written in YAML, in the mesh's namespace.
func parsePolicy(t *testing.T, m *localmesh.Mesh, y string) *unstructured.Unstructured {
	t.Helper()
	obj := map[string]any{}
	if err := yaml.Unmarshal([]byte(y), &obj); err != nil {
		t.Fatalf("policy YAML: %v\n%s", err, y)
	}
	u := &unstructured.Unstructured{Object: obj}
	u.SetNamespace(m.Namespace())
	return u
}

// withPolicy creates the policy and deletes it at the end of the test, unless the test
// deletes it first.
func withPolicy(t *testing.T, m *localmesh.Mesh, y string) *unstructured.Unstructured {
	t.Helper()
	pol := parsePolicy(t, m, y)
	c := authzClient(t, m)
	created, err := c.Create(ctxT(t, 10*time.Second), pol, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create AuthorizationPolicy %s: %v", pol.GetName(), err)
	}
	t.Cleanup(func() {
		err := c.Delete(context.Background(), created.GetName(), metav1.DeleteOptions{})
		if err != nil && !apierrors.IsNotFound(err) {
			t.Errorf("delete AuthorizationPolicy %s: %v", created.GetName(), err)
		}
	})
	return created
}

func deletePolicy(t *testing.T, m *localmesh.Mesh, name string) {
	t.Helper()
	if err := authzClient(t, m).Delete(ctxT(t, 10*time.Second), name, metav1.DeleteOptions{}); err != nil {
		t.Fatalf("delete AuthorizationPolicy %s: %v", name, err)
	}
}

// policyRef is how a denial names a policy: "namespace/name".
func policyRef(m *localmesh.Mesh, name string) string { return m.Namespace() + "/" + name }

// expectAnswer checks one answer through the mesh: a 200 from app when policy is "",
// otherwise a 403 whose body names policy. body is the answering app's name, or the body
// itself when it is not a demo-app answer (get).
func expectAnswer(status int, body, app, policy string) error {
	if policy == "" {
		if status != 200 || body != app {
			return fmt.Errorf("%d %q, want 200 from %s", status, body, app)
		}
		return nil
	}
	if status != 403 || !strings.Contains(body, policy) {
		return fmt.Errorf("%d %q, want 403 naming %s", status, body, policy)
	}
	return nil
}

// callMatrix makes n requests of path from the first pod of each demo app to each demo app
// (n > 1 reaches both replicas of app-2 and app-3) and checks every answer: a 200 from the
// app called or, for a (from, to) pair in denied, a 403 naming denied's policy.
func callMatrix(ctx context.Context, m *localmesh.Mesh, n int, path string, denied map[[2]string]string) error {
	var errs []error
	for _, from := range demoApps {
		for _, to := range demoApps {
			for range n {
				status, body, _, err := get(ctx, m, from+"-0", to, path)
				if err == nil {
					err = expectAnswer(status, body, to, denied[[2]string{from, to}])
				}
				if err != nil {
					errs = append(errs, fmt.Errorf("%s-0 -> %s %s: %w", from, to, path, err))
					break
				}
			}
		}
	}
	return errors.Join(errs...)
}

// pushedSince returns, per node, the policy types whose version or push count changed
// between two views of /debug/streams ("reconnected" when the stream is not the same one).
// waitSettled waits until no proxy has been pushed anything (but certificates) for two
// seconds, so that what the previous test changed (a Service it deleted, say) has reached
// every proxy before a test compares versions; it returns the settled streams.
func waitSettled(t *testing.T, m *localmesh.Mesh) map[string]ads.StreamInfo {
	t.Helper()
	prev := waitAllSynced(t, m)
	deadline := time.Now().Add(30 * time.Second)
	for {
		time.Sleep(2 * time.Second)
		cur := waitAllSynced(t, m)
		if len(pushedSince(prev, cur)) == 0 {
			return cur
		}
		if time.Now().After(deadline) {
			t.Fatalf("the proxies are still being pushed config after 30 s: %v", pushedSince(prev, cur))
		}
		prev = cur
	}
}

func pushedSince(before, after map[string]ads.StreamInfo) map[string][]string {
	out := map[string][]string{}
	for node, b := range before {
		a, ok := after[node]
		if !ok || a.ID != b.ID {
			out[node] = append(out[node], "reconnected")
			continue
		}
		for _, typ := range policyTypes {
			tb, ta := b.Types.Get(typ), a.Types.Get(typ)
			if tb.VersionSent != ta.VersionSent || tb.Pushes != ta.Pushes {
				out[node] = append(out[node], typ.String())
			}
		}
	}
	return out
}

// nodesOf returns the node ids of a Service's pods.
func nodesOf(m *localmesh.Mesh, svc string) []string {
	var out []string
	for _, p := range m.PodsOf(svc) {
		out = append(out, nodeID(p))
	}
	return out
}

// expectPushedOnly checks that between two views exactly the proxies of svc got a new
// config: each of them on some policy type, no other proxy on any.
func expectPushedOnly(t *testing.T, m *localmesh.Mesh, before, after map[string]ads.StreamInfo, svc string) {
	t.Helper()
	pushed := pushedSince(before, after)
	targets := nodesOf(m, svc)
	for node, types := range pushed {
		if !slices.Contains(targets, node) {
			t.Errorf("%s, which does not serve %s, was pushed %v", node, svc, types)
		}
	}
	for _, node := range targets {
		if len(pushed[node]) == 0 {
			t.Errorf("%s, which serves %s, got no new config", node, svc)
		}
	}
	t.Logf("pushed: %v", pushed)
}

// expectVersionsOf checks that the proxies of svc hold the versions they held before:
// versions are content hashes, so the same policies give the same versions.
func expectVersionsOf(t *testing.T, m *localmesh.Mesh, before, after map[string]ads.StreamInfo, svc string) {
	t.Helper()
	for _, node := range nodesOf(m, svc) {
		b, a := before[node], after[node]
		for _, typ := range policyTypes {
			if vb, va := b.Types.Get(typ).VersionSent, a.Types.Get(typ).VersionSent; vb != va {
				t.Errorf("%s %s: version %s before the policy, %s after it was deleted", node, typ, vb, va)
			}
		}
	}
}

// The policies of the walkthrough (README.md, "Authorization").
const (
	app3CallersPolicy = `
apiVersion: bearkong.dev/v1alpha1
kind: AuthorizationPolicy
metadata:
  name: app-3-callers
spec:
  targetRef: {name: app-3}
  action: ALLOW
  rules:
    - from:
        - serviceAccount: {name: app-1}
`
	denyAdminPolicy = `
apiVersion: bearkong.dev/v1alpha1
kind: AuthorizationPolicy
metadata:
  name: deny-admin
spec:
  targetRef: {name: app-2}
  action: DENY
  rules:
    - to:
        paths: [{type: PathPrefix, value: /admin}]
`
)

func TestAuthorizationAllowOnlyOneCaller(t *testing.T) {
	m := sharedMesh(t)
	// No policy: every app calls every app (over mutual TLS, the default).
	eventually(t, authzConvergence, func(ctx context.Context) error { return callMatrix(ctx, m, 4, "/", nil) })
	before := waitSettled(t, m)

	withPolicy(t, m, app3CallersPolicy)
	name := policyRef(m, "app-3-callers")
	// Only app-1 may call app-3: app-2 and app-3 itself get a 403 naming the policy; the
	// calls to app-1 and app-2 are unchanged.
	denied := map[[2]string]string{{"app-2", "app-3"}: name, {"app-3", "app-3"}: name}
	eventually(t, authzConvergence, func(ctx context.Context) error { return callMatrix(ctx, m, 4, "/", denied) })
	status, body, _, err := get(ctxT(t, 10*time.Second), m, "app-2-0", "app-3", "/")
	t.Logf("app-2 -> app-3 under %s: %d %q (%v)", name, status, body, err)
	expectPushedOnly(t, m, before, waitAllSynced(t, m), "app-3")
	// Prometheus shows, per policy, the requests it let in: at least the last four from
	// app-1.
	t.Logf("%s = %v", policyQuery("allowed", name, "app-3"), promAtLeast(t, policyQuery("allowed", name, "app-3"), 4))

	// Deleting the policy lets everyone in again, within the usual convergence time, and
	// again only app-3's proxies hear of it: they get back the config they had.
	deletePolicy(t, m, "app-3-callers")
	eventually(t, authzConvergence, func(ctx context.Context) error { return callMatrix(ctx, m, 4, "/", nil) })
	restored := waitAllSynced(t, m)
	expectPushedOnly(t, m, before, restored, "app-3")
	expectVersionsOf(t, m, before, restored, "app-3")
}

func TestAuthorizationDenyPathPrefix(t *testing.T) {
	m := sharedMesh(t)
	eventually(t, authzConvergence, func(ctx context.Context) error { return callMatrix(ctx, m, 2, "/admin/x", nil) })
	before := waitSettled(t, m)

	withPolicy(t, m, denyAdminPolicy)
	name := policyRef(m, "deny-admin")
	// Every caller of app-2 is refused /admin/x and /admin, and gets / and /x/admin; the
	// other apps keep their /admin.
	denied := map[[2]string]string{}
	for _, from := range demoApps {
		denied[[2]string{from, "app-2"}] = name
	}
	eventually(t, authzConvergence, func(ctx context.Context) error {
		return errors.Join(
			callMatrix(ctx, m, 2, "/admin/x", denied),
			callMatrix(ctx, m, 2, "/admin", denied),
			callMatrix(ctx, m, 2, "/", nil),
			callMatrix(ctx, m, 2, "/x/admin", nil),
		)
	})
	expectPushedOnly(t, m, before, waitAllSynced(t, m), "app-2")
	// Prometheus shows, per policy, the requests it denied: at least the last twelve.
	t.Logf("%s = %v", policyQuery("denied", name, "app-2"), promAtLeast(t, policyQuery("denied", name, "app-2"), 12))

	deletePolicy(t, m, "deny-admin")
	eventually(t, authzConvergence, func(ctx context.Context) error { return callMatrix(ctx, m, 2, "/admin/x", nil) })
	expectVersionsOf(t, m, before, waitAllSynced(t, m), "app-2")
}

// reflectionServices lists the services of a gRPC server with server reflection v1 (or
// v1alpha), as grpcurl's list does.
func reflectionServices(ctx context.Context, conn *grpc.ClientConn, v1alpha bool) ([]string, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel() // ends the stream
	var names []string
	if v1alpha {
		stream, err := reflectionv1alpha.NewServerReflectionClient(conn).ServerReflectionInfo(ctx)
		if err != nil {
			return nil, err
		}
		// io.EOF: the stream has ended, and Recv tells why (a refusal, say).
		if err := stream.Send(&reflectionv1alpha.ServerReflectionRequest{MessageRequest: &reflectionv1alpha.ServerReflectionRequest_ListServices{}}); err != nil && err != io.EOF {
			return nil, err
		}
		resp, err := stream.Recv()
		if err != nil {
			return nil, err
		}
		for _, s := range resp.GetListServicesResponse().GetService() {
			names = append(names, s.GetName())
		}
		return names, nil
	}
	stream, err := reflectionv1.NewServerReflectionClient(conn).ServerReflectionInfo(ctx)
	if err != nil {
		return nil, err
	}
	// io.EOF: the stream has ended, and Recv tells why (a refusal, say).
	if err := stream.Send(&reflectionv1.ServerReflectionRequest{MessageRequest: &reflectionv1.ServerReflectionRequest_ListServices{}}); err != nil && err != io.EOF {
		return nil, err
	}
	resp, err := stream.Recv()
	if err != nil {
		return nil, err
	}
	for _, s := range resp.GetListServicesResponse().GetService() {
		names = append(names, s.GetName())
	}
	return names, nil
}

// grpcCalls makes one call of each kind from the caller's outbound listener to svc and
// checks each outcome: OK, or PermissionDenied for the calls named in denied ("Echo",
// "Fail", "reflection.v1", "reflection.v1alpha").
func grpcCalls(ctx context.Context, conn *grpc.ClientConn, svc string, denied ...string) error {
	// The "service" header goes as gRPC metadata, which is HTTP/2 headers.
	ctx = metadata.AppendToOutgoingContext(ctx, mesh.ServiceHeader, svc)
	check := func(call string, err error) error {
		want := codes.OK
		if slices.Contains(denied, call) {
			want = codes.PermissionDenied
		}
		if got := status.Code(err); got != want {
			return fmt.Errorf("%s: %v, want %s", call, err, want)
		}
		return nil
	}
	var errs []error
	out := &wrapperspb.StringValue{}
	err := conn.Invoke(ctx, grpcMethod("Echo"), wrapperspb.String("hi"), out)
	if err == nil && out.GetValue() != svc+": hi" {
		err = fmt.Errorf("echo %q", out.GetValue())
	}
	errs = append(errs, check("Echo", err))
	// Fail with code 0 answers OK: another method of the same service.
	errs = append(errs, check("Fail", conn.Invoke(ctx, grpcMethod("Fail"), wrapperspb.Int32(0), &emptypb.Empty{})))
	for _, v1alpha := range []bool{false, true} {
		call := "reflection.v1"
		if v1alpha {
			call = "reflection.v1alpha"
		}
		names, err := reflectionServices(ctx, conn, v1alpha)
		if err == nil && !slices.Contains(names, "bearkong.demo.Demo") {
			err = fmt.Errorf("reflection lists %q, not bearkong.demo.Demo", names)
		}
		errs = append(errs, check(call, err))
	}
	return errors.Join(errs...)
}

func TestAuthorizationGRPCMethods(t *testing.T) {
	m := sharedMesh(t)
	const svc = "authz-grpc"
	withApp(t, m, svc, localmesh.ServiceOptions{AppProtocol: "grpc"})
	conn, err := grpc.NewClient(outboundAddr(t, m), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// No policy: both services of the server answer.
	eventually(t, authzConvergence, func(ctx context.Context) error { return grpcCalls(ctx, conn, svc) })

	// Allow only Echo (the demo service's methods are Echo, Fail and Tick): reflection and
	// the other methods are refused with PermissionDenied.
	pol := withPolicy(t, m, `
apiVersion: bearkong.dev/v1alpha1
kind: AuthorizationPolicy
metadata:
  name: authz-grpc-echo
spec:
  targetRef: {name: authz-grpc}
  action: ALLOW
  rules:
    - to:
        grpc: [{service: bearkong.demo.Demo, method: Echo}]
`)
	eventually(t, authzConvergence, func(ctx context.Context) error {
		return grpcCalls(ctx, conn, svc, "Fail", "reflection.v1", "reflection.v1alpha")
	})
	// A refused call says who refused it: the 403's body is the grpc-message.
	err = conn.Invoke(metadata.AppendToOutgoingContext(ctxT(t, 10*time.Second), mesh.ServiceHeader, svc), grpcMethod("Fail"), wrapperspb.Int32(0), &emptypb.Empty{})
	if st := status.Convert(err); st.Code() != codes.PermissionDenied || !strings.Contains(st.Message(), policyRef(m, pol.GetName())) {
		t.Errorf("Fail under %s: %v, want PermissionDenied naming the policy", pol.GetName(), err)
	}

	// The reverse: every method of reflection v1, and nothing of the demo service (nor of
	// reflection v1alpha, another service).
	c := authzClient(t, m)
	err = localmesh.Eventually(ctxT(t, 20*time.Second), 10*time.Second, func(ctx context.Context) error {
		cur, err := c.Get(ctx, pol.GetName(), metav1.GetOptions{})
		if err != nil {
			return err
		}
		rules := []any{map[string]any{"to": map[string]any{"grpc": []any{
			map[string]any{"service": "grpc.reflection.v1.ServerReflection", "method": "*"},
		}}}}
		if err := unstructured.SetNestedSlice(cur.Object, rules, "spec", "rules"); err != nil {
			return err
		}
		_, err = c.Update(ctx, cur, metav1.UpdateOptions{})
		return err // a conflict with the control plane's status write: try again
	})
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, authzConvergence, func(ctx context.Context) error {
		return grpcCalls(ctx, conn, svc, "Echo", "Fail", "reflection.v1alpha")
	})

	deletePolicy(t, m, pol.GetName())
	eventually(t, authzConvergence, func(ctx context.Context) error { return grpcCalls(ctx, conn, svc) })
}

// accepted returns the policy's Accepted condition for its current generation.
func accepted(ctx context.Context, c dynamic.ResourceInterface, name string) (metav1.Condition, error) {
	u, err := c.Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return metav1.Condition{}, err
	}
	conds, _, err := unstructured.NestedSlice(u.Object, "status", "conditions")
	if err != nil {
		return metav1.Condition{}, err
	}
	for _, raw := range conds {
		c, _ := raw.(map[string]any)
		if c["type"] != "Accepted" {
			continue
		}
		cond := metav1.Condition{Type: "Accepted"}
		cond.Status = metav1.ConditionStatus(fmt.Sprint(c["status"]))
		cond.Reason, _ = c["reason"].(string)
		cond.Message, _ = c["message"].(string)
		if g, ok := c["observedGeneration"].(int64); ok {
			cond.ObservedGeneration = g
		}
		if cond.ObservedGeneration != u.GetGeneration() {
			return metav1.Condition{}, fmt.Errorf("Accepted is for generation %d, the policy is at %d", cond.ObservedGeneration, u.GetGeneration())
		}
		return cond, nil
	}
	return metav1.Condition{}, fmt.Errorf("no Accepted condition in %v", u.Object["status"])
}

func TestAuthorizationMalformedPolicy(t *testing.T) {
	m := sharedMesh(t)
	eventually(t, authzConvergence, func(ctx context.Context) error { return callMatrix(ctx, m, 2, "/", nil) })
	before := waitSettled(t, m)
	nacks0 := nacks(cpMetrics(t, m))
	c := authzClient(t, m)

	// The API server refuses what the schema forbids.
	for _, tc := range []struct{ name, policy string }{
		{"unknown action", `
apiVersion: bearkong.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: bad-action}
spec:
  targetRef: {name: app-3}
  action: BLOCK
  rules: [{from: [{serviceAccount: {name: app-1}}]}]
`},
		{"a caller that is both a ServiceAccount and a Service", `
apiVersion: bearkong.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: bad-caller}
spec:
  targetRef: {name: app-3}
  action: ALLOW
  rules: [{from: [{serviceAccount: {name: app-1}, service: {name: app-1}}]}]
`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pol := parsePolicy(t, m, tc.policy)
			_, err := c.Create(ctxT(t, 10*time.Second), pol, metav1.CreateOptions{})
			if err == nil {
				_ = c.Delete(context.Background(), pol.GetName(), metav1.DeleteOptions{})
				t.Fatalf("the API server accepted %s", tc.policy)
			}
			if !apierrors.IsInvalid(err) {
				t.Fatalf("create: %v, want Invalid (422) from the schema", err)
			}
			t.Logf("refused: %v", err)
		})
	}

	// A policy on a Service that does not exist is accepted by the API server, and
	// reported Accepted=False by bearkong.
	withPolicy(t, m, `
apiVersion: bearkong.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: no-target}
spec:
  targetRef: {name: no-such-service}
  action: DENY
  rules: [{to: {paths: [{type: PathPrefix, value: /}]}}]
`)
	eventually(t, authzConvergence, func(ctx context.Context) error {
		cond, err := accepted(ctx, c, "no-target")
		if err != nil {
			return err
		}
		if cond.Status != metav1.ConditionFalse || cond.Reason != "TargetNotFound" || !strings.Contains(cond.Message, "no-such-service") {
			return fmt.Errorf("Accepted %+v, want False, reason TargetNotFound, naming no-such-service", cond)
		}
		return nil
	})
	// bearkong has seen the policy (it wrote its status); give a push it might make the
	// time to happen: none may.
	time.Sleep(2 * time.Second)
	after := waitAllSynced(t, m)
	if pushed := pushedSince(before, after); len(pushed) != 0 {
		t.Errorf("refused policies pushed config: %v", pushed)
	}
	if n := nacks(cpMetrics(t, m)); n != nacks0 {
		t.Errorf("bearkong_xds_nack_total moved from %v to %v", nacks0, n)
	}
	if err := callMatrix(ctxT(t, 30*time.Second), m, 2, "/", nil); err != nil {
		t.Error(err)
	}
}

// TestAuthorizationREADMEPolicies: every AuthorizationPolicy README.md prints passes the
// API server's validation (a server-side dry run), except the one the README shows refused
// (the line after it says `# The AuthorizationPolicy "<name>" is invalid`), which is.
func TestAuthorizationREADMEPolicies(t *testing.T) {
	m := sharedMesh(t)
	root, err := kubeenv.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(root, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	c := authzClient(t, m)
	valid, invalid := 0, 0
	for _, block := range regexp.MustCompile("(?ms)^```(?:yaml|sh)\n(.*?)^```").FindAllSubmatch(b, -1) {
		// A block holds documents, bare or in heredocs (kubectl apply -f - <<'EOF').
		text := regexp.MustCompile(`(?m)^.*<<'?EOF'?\n|^EOF\n?`).ReplaceAllString(string(block[1]), "---\n")
		docs := strings.Split(text, "---\n")
		for i, doc := range docs {
			if !strings.Contains(doc, "kind: AuthorizationPolicy") {
				continue
			}
			pol := parsePolicy(t, m, doc)
			refused := i+1 < len(docs) && strings.HasPrefix(docs[i+1], fmt.Sprintf("# The AuthorizationPolicy %q is invalid", pol.GetName()))
			_, err := c.Create(ctxT(t, 10*time.Second), pol, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
			switch {
			case refused && !apierrors.IsInvalid(err):
				t.Errorf("README policy %s, shown refused: %v, want Invalid\n%s", pol.GetName(), err, doc)
			case refused:
				invalid++
				t.Logf("README policy %s is refused as the README says: %v", pol.GetName(), err)
			case err != nil:
				t.Errorf("README policy %s: %v\n%s", pol.GetName(), err, doc)
			default:
				valid++
			}
		}
	}
	if valid == 0 || invalid == 0 {
		t.Fatalf("README.md prints %d valid and %d refused AuthorizationPolicies, want some of each", valid, invalid)
	}
	t.Logf("%d policies of README.md pass a server-side dry run, %d are refused as it says", valid, invalid)
}

// promValue is the value of a query that sums to one series, 0 when it has none.
func promValue(ctx context.Context, q string) (float64, error) {
	r, err := promQuery(ctx, q)
	if err != nil || len(r) == 0 {
		return 0, err
	}
	return r[0].Value, nil
}

func TestAuthorizationShadow(t *testing.T) {
	m := sharedMesh(t)
	eventually(t, authzConvergence, func(ctx context.Context) error { return callMatrix(ctx, m, 2, "/", nil) })
	name := policyRef(m, "shadow-deny-app-1")
	query := policyQuery("shadow_denied", name, "app-1")

	withPolicy(t, m, `
apiVersion: bearkong.dev/v1alpha1
kind: AuthorizationPolicy
metadata:
  name: shadow-deny-app-1
spec:
  targetRef: {name: app-1}
  action: DENY
  mode: Shadow
  rules:
    - to:
        paths: [{type: PathPrefix, value: /}]
`)
	// Nothing is blocked, while app-1's sidecar starts counting what it would deny.
	var base uint64
	var blocked error
	eventually(t, authzConvergence, func(ctx context.Context) error {
		status, body, _, err := get(ctx, m, "app-2-0", "app-1", "/")
		if err == nil {
			err = expectAnswer(status, body, "app-1", "")
		}
		if err != nil {
			blocked = err
			return nil
		}
		if base, err = policyStat(ctx, m, "app-1-0", name, "shadow_denied"); err != nil || base == 0 {
			return fmt.Errorf("app-1-0 counts no shadow denial by %s yet (%v)", name, err)
		}
		return nil
	})
	if blocked != nil {
		t.Fatalf("a shadow policy blocked a request: %v", blocked)
	}
	const perPair = 7 // 21 requests to app-1, from its three callers
	ctx := ctxT(t, 2*time.Minute)
	if err := callMatrix(ctx, m, perPair, "/", nil); err != nil {
		t.Fatalf("under a shadow DENY of every request to app-1: %v", err)
	}
	got, err := policyStat(ctx, m, "app-1-0", name, "shadow_denied")
	if err != nil {
		t.Fatal(err)
	}
	if want := uint64(perPair * len(demoApps)); got-base != want {
		t.Fatalf("app-1-0 counted %d would-be denials by %s for %d requests", got-base, name, want)
	}
	last := promAtLeast(t, query, float64(got))
	t.Logf("would-be denials: Envoy %d, Prometheus %s = %v", got, query, last)
}

package e2e

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/bearkong/bearkong/internal/localmesh"
	"github.com/bearkong/bearkong/pkg/mesh"
)

// Services that are not a plain ClusterIP Service with a selector: ExternalName,
// selector-less, headless, a named targetPort, and a Service whose only pod is going away.
// Each test leaves the shared mesh as it found it.

// waitDiagnostic waits until /debug/diagnostics holds a diagnostic on the Service name
// with the reason and a message containing text, and returns it.
func waitDiagnostic(t *testing.T, m *localmesh.Mesh, name, reason, text string) mesh.Diagnostic {
	t.Helper()
	var found mesh.Diagnostic
	eventually(t, 10*time.Second, func(ctx context.Context) error {
		ds := diagnostics(t, m, name)
		for _, d := range ds {
			if d.Kind == "Service" && d.Reason == reason && strings.Contains(d.Message, text) {
				found = d
				return nil
			}
		}
		return fmt.Errorf("no %s diagnostic on %s saying %q: %+v", reason, name, text, ds)
	})
	return found
}

// waitNoDiagnostic waits until /debug/diagnostics has no diagnostic on name with reason.
func waitNoDiagnostic(t *testing.T, m *localmesh.Mesh, name, reason string) {
	t.Helper()
	eventually(t, 10*time.Second, func(ctx context.Context) error {
		for _, d := range diagnostics(t, m, name) {
			if d.Reason == reason {
				return fmt.Errorf("still reported: %+v", d)
			}
		}
		return nil
	})
}

func TestExternalNameServiceIsDiagnosed(t *testing.T) {
	m := sharedMesh(t)
	waitAllSynced(t, m)
	ctx := ctxT(t, 60*time.Second)
	if err := m.AddService(ctx, "ext-db", localmesh.ServiceOptions{ExternalName: "db.example.com"}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.DeleteService(context.Background(), "ext-db") })

	d := waitDiagnostic(t, m, "ext-db", mesh.ReasonExternalName, `an alias of "db.example.com"`)
	if !d.Event {
		t.Errorf("the ExternalName diagnostic asks for no Event: %+v", d)
	}
	// The Warning Event on the Service, for kubectl describe.
	eventually(t, 10*time.Second, func(ctx context.Context) error {
		evs, err := shared.env.Client.EventsV1().Events(m.Namespace()).List(ctx, metav1.ListOptions{})
		if err != nil {
			return err
		}
		for _, e := range evs.Items {
			if e.Regarding.Name == "ext-db" && e.Reason == mesh.ReasonExternalName && e.Type == corev1.EventTypeWarning && strings.Contains(e.Note, "db.example.com") {
				return nil
			}
		}
		return fmt.Errorf("no %s Event on ext-db among %d events", mesh.ReasonExternalName, len(evs.Items))
	})
	// Still a meshed Service, so a caller gets the mesh's 503 for a Service without
	// endpoints, not the 404 for an unknown one.
	eventually(t, 10*time.Second, func(ctx context.Context) error {
		status, body, err := m.Get(ctx, "app-1-0", "ext-db")
		if err != nil {
			return err
		}
		if status != http.StatusServiceUnavailable {
			return fmt.Errorf("app-1-0 -> ext-db: %d %q, want 503", status, body)
		}
		return nil
	})

	if err := m.DeleteService(ctx, "ext-db"); err != nil {
		t.Fatal(err)
	}
	waitNoDiagnostic(t, m, "ext-db", mesh.ReasonExternalName)
	waitAllSynced(t, m)
}

func TestNamedTargetPortThatBypassesTheSidecar(t *testing.T) {
	m := sharedMesh(t)
	waitAllSynced(t, m)
	ctx := ctxT(t, 90*time.Second)
	// "http" is the app container's port 9090 in every local pod (and "inbound" the
	// sidecar's 8000).
	if err := m.AddService(ctx, "named-port", localmesh.ServiceOptions{TargetPortName: "http"}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.DeleteService(context.Background(), "named-port") })
	p, err := m.AddPod(ctx, "named-port", localmesh.PodOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.RemovePod(context.Background(), p.Name, false) })

	waitDiagnostic(t, m, "named-port", mesh.ReasonTargetPortBypasses,
		fmt.Sprintf(`port 9090 targets "http", which resolves to 9090 in pod %s, the app's own port`, p.Name))
	// Mesh traffic goes to the sidecar whatever the targetPort says.
	if err := m.WaitReachable(ctx, 10*time.Second, "app-1-0", "named-port"); err != nil {
		t.Fatal(err)
	}

	// Naming the sidecar's port puts it right.
	if err := m.UpdateService(ctx, "named-port", func(s *corev1.Service) {
		s.Spec.Ports[0].TargetPort = intstr.FromString("inbound")
	}); err != nil {
		t.Fatal(err)
	}
	waitNoDiagnostic(t, m, "named-port", mesh.ReasonTargetPortBypasses)
	if ds := diagnostics(t, m, "named-port"); len(ds) != 0 {
		t.Errorf("targetPort inbound: diagnostics %+v, want none", ds)
	}

	if err := m.RemovePod(ctx, p.Name, false); err != nil {
		t.Fatal(err)
	}
	if err := m.DeleteService(ctx, "named-port"); err != nil {
		t.Fatal(err)
	}
	waitAllSynced(t, m)
}

func TestHeadlessServiceIsRoutable(t *testing.T) {
	m := sharedMesh(t)
	waitAllSynced(t, m)
	ctx := ctxT(t, 90*time.Second)
	if err := m.AddService(ctx, "headless", localmesh.ServiceOptions{Headless: true, TargetPort: mesh.InboundPort}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.DeleteService(context.Background(), "headless") })
	svc, err := shared.env.Client.CoreV1().Services(m.Namespace()).Get(ctx, "headless", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if svc.Spec.ClusterIP != corev1.ClusterIPNone {
		t.Fatalf("clusterIP %q, want None", svc.Spec.ClusterIP)
	}
	pods, err := m.AddPods(ctx, localmesh.PodSpec{Service: "headless"}, localmesh.PodSpec{Service: "headless"})
	for _, p := range pods {
		t.Cleanup(func() { _ = m.RemovePod(context.Background(), p.Name, false) })
	}
	if err != nil {
		t.Fatal(err)
	}
	for _, from := range []string{"app-1-0", "app-2-0", "app-3-1"} {
		if err := m.WaitReachable(ctx, 10*time.Second, from, "headless"); err != nil {
			t.Fatal(err)
		}
	}
	// Both replicas answer: the mesh routes to every endpoint of a headless Service.
	answered := map[string]bool{}
	for range 50 {
		c := m.Call(ctx, "app-1-0", "headless")
		if c.Status != http.StatusOK {
			t.Fatalf("app-1-0 -> headless: %d %v %q", c.Status, c.Err, c.Body)
		}
		answered[c.Pod] = true
	}
	if !answered[pods[0].Name] || !answered[pods[1].Name] {
		t.Errorf("answered by %v, want both %s and %s", answered, pods[0].Name, pods[1].Name)
	}
	if ds := diagnostics(t, m, "headless"); len(ds) != 0 {
		t.Errorf("diagnostics %+v, want none", ds)
	}

	for _, p := range pods {
		if err := m.RemovePod(ctx, p.Name, false); err != nil {
			t.Fatal(err)
		}
	}
	if err := m.DeleteService(ctx, "headless"); err != nil {
		t.Fatal(err)
	}
	waitAllSynced(t, m)
}

// A selector-less Service is routed to the endpoints of the EndpointSlices made for it by
// hand; with none it is reported.
func TestSelectorlessServiceWithHandMadeSlices(t *testing.T) {
	m := sharedMesh(t)
	waitAllSynced(t, m)
	ctx := ctxT(t, 60*time.Second)
	ns := m.Namespace()
	services := shared.env.Client.CoreV1().Services(ns)
	_, err := services.Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "manual", Namespace: ns, Labels: map[string]string{mesh.MeshedLabel: mesh.MeshedValue}},
		Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{
			Name: "http", Port: mesh.AppPort, TargetPort: intstr.FromInt32(mesh.InboundPort), Protocol: corev1.ProtocolTCP,
		}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = services.Delete(context.Background(), "manual", metav1.DeleteOptions{})
		_ = shared.env.DeleteStoredEndpointSlice(context.Background(), ns, "manual-by-hand")
	})
	waitDiagnostic(t, m, "manual", mesh.ReasonNoEndpointSlices, "no selector and no EndpointSlice")

	// A slice naming app-2-0's address, as a user or another controller would write it.
	target, ok := m.Pod("app-2-0")
	if !ok {
		t.Fatal("no pod app-2-0")
	}
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: "manual-by-hand", Namespace: ns, Labels: map[string]string{discoveryv1.LabelServiceName: "manual"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{target.IP}}},
		Ports:       []discoveryv1.EndpointPort{{Name: ptr("http"), Port: ptr(int32(mesh.InboundPort)), Protocol: ptr(corev1.ProtocolTCP)}},
	}
	if err := shared.env.StoreEndpointSlice(ctx, slice); err != nil {
		t.Fatal(err)
	}
	waitNoDiagnostic(t, m, "manual", mesh.ReasonNoEndpointSlices)
	eventually(t, 10*time.Second, func(ctx context.Context) error {
		c := m.Call(ctx, "app-1-0", "manual")
		if c.Status != http.StatusOK || c.Pod != "app-2-0" {
			return fmt.Errorf("app-1-0 -> manual: %d %v %q, want 200 from app-2-0", c.Status, c.Err, c.Body)
		}
		return nil
	})

	if err := services.Delete(ctx, "manual", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := shared.env.DeleteStoredEndpointSlice(ctx, ns, "manual-by-hand"); err != nil {
		t.Fatal(err)
	}
	if err := waitGone(ctx, m, "manual", "app-1-0"); err != nil {
		t.Fatal(err)
	}
	waitAllSynced(t, m)
}

// outcome is one request of a loop: when it ended and what it got.
type outcome struct {
	end    time.Time
	status int
	pod    string
	err    error
	body   string
}

// record makes requests from one pod to one service every 10ms until stop is closed,
// bounded in count, and returns every outcome.
func record(ctx context.Context, m *localmesh.Mesh, from, to string, stop <-chan struct{}) []outcome {
	var out []outcome
	for range 5000 {
		select {
		case <-stop:
			return out
		case <-ctx.Done():
			return out
		default:
		}
		c := m.Call(ctx, from, to)
		out = append(out, outcome{end: time.Now(), status: c.Status, pod: c.Pod, err: c.Err, body: string(c.Body)})
		time.Sleep(10 * time.Millisecond)
	}
	return out
}

// A Service whose only pod is being deleted has no ready endpoint, only a terminating one
// that still serves. As kube-proxy does, the mesh keeps sending traffic to it until the
// pod is gone.
func TestOnlyTerminatingEndpointsKeepAnswering(t *testing.T) {
	m := sharedMesh(t)
	waitAllSynced(t, m)
	ctx := ctxT(t, 90*time.Second)
	withService(t, m, "last-pod", nil, nil)
	p := m.PodsOf("last-pod")[0]
	if err := m.WaitReachable(ctx, 10*time.Second, "app-1-0", "last-pod"); err != nil {
		t.Fatal(err)
	}

	stop := make(chan struct{})
	var seen []outcome
	var wg sync.WaitGroup
	wg.Go(func() { seen = record(ctx, m, "app-1-0", "last-pod", stop) })
	time.Sleep(300 * time.Millisecond)
	// RemovePod marks the endpoint ready=false, serving=true, terminating=true, lets the
	// pod serve for the drain period, then stops it and deletes the Pod and its endpoint.
	// So every request that ended before removal began plus the drain period was
	// served by a live pod whose only endpoint was, after the first moments, terminating.
	drainStart := time.Now()
	removeErr := m.RemovePod(ctx, p.Name, true)
	drainEnd := drainStart.Add(m.DrainPeriod())
	// Keep going after the pod is gone: then the Service has no endpoint at all.
	time.Sleep(time.Second)
	close(stop)
	wg.Wait()
	if removeErr != nil {
		t.Fatal(removeErr)
	}

	during, after := 0, 0
	var bad []string
	for _, o := range seen {
		if o.end.After(drainEnd) {
			after++
			continue
		}
		if o.end.After(drainStart) {
			during++
		}
		if o.err != nil || o.status != http.StatusOK || o.pod != p.Name {
			bad = append(bad, fmt.Sprintf("at %s into the drain: %d %v %q",
				o.end.Sub(drainStart).Round(time.Millisecond), o.status, o.err, o.body))
		}
	}
	if len(bad) > 0 {
		t.Errorf("%d of the %d requests that ended before the drain was over were not 200 from %s; the first: %s",
			len(bad), len(seen)-after, p.Name, strings.Join(bad[:min(3, len(bad))], "; "))
	}
	// The requests that ended in the drain period are the point of the test; there must
	// be enough of them to span it.
	if during < 20 {
		t.Errorf("only %d requests ended during the %s drain", during, m.DrainPeriod())
	}
	t.Logf("%d requests ended while %s's only endpoint was terminating, %d after the drain", during, p.Name, after)

	// Once the pod is gone, the Service has no endpoint: 503, not a hang.
	eventually(t, 10*time.Second, func(ctx context.Context) error {
		status, body, err := m.Get(ctx, "app-1-0", "last-pod")
		if err != nil {
			return err
		}
		if status != http.StatusServiceUnavailable {
			return fmt.Errorf("after the pod went: %d %q, want 503", status, body)
		}
		return nil
	})
}

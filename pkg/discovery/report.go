package discovery

import (
	"context"
	"fmt"
	"os"
	"time"

	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/bearkong/bearkong/pkg/mesh"
)

// reportingController names bearkong in the Events it writes.
const reportingController = "bearkong.dev/control-plane"

// reporter tells users about diagnostics: a log line for each new one, and a Kubernetes
// Event on the object for those that ask for it. It only reports what is new since the
// last published snapshot, so a steady mesh writes nothing to the API.
type reporter struct {
	d        *Discovery
	client   kubernetes.Interface
	instance string
	queue    chan mesh.Diagnostic
}

func newReporter(d *Discovery, client kubernetes.Interface) *reporter {
	instance, err := os.Hostname()
	if err != nil || instance == "" {
		instance = "bearkong"
	}
	return &reporter{d: d, client: client, instance: instance, queue: make(chan mesh.Diagnostic, 256)}
}

// report logs and queues the diagnostics of next that prev did not have.
func (r *reporter) report(prev, next *mesh.Snapshot) {
	r.d.metrics.diagnostics.Set(float64(len(next.Diagnostics)))
	old := map[mesh.Diagnostic]bool{}
	if prev != nil {
		for _, dg := range prev.Diagnostics {
			old[dg] = true
		}
	}
	for _, dg := range next.Diagnostics {
		if old[dg] {
			continue
		}
		r.d.log.Warn("diagnostic", "object", dg.Kind+" "+dg.Namespace+"/"+dg.Name, "reason", dg.Reason, "message", dg.Message)
		if !dg.Event {
			continue
		}
		select {
		case r.queue <- dg:
		default:
			r.d.log.Warn("too many diagnostics at once; not writing an Event for this one", "object", dg.Namespace+"/"+dg.Name, "reason", dg.Reason)
		}
	}
}

// run writes the queued Events until ctx ends. Writing happens here, off the snapshot
// path, so a slow or unreachable API server never delays config.
func (r *reporter) run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case dg := <-r.queue:
			r.writeEvent(ctx, dg)
		}
	}
}

func (r *reporter) writeEvent(ctx context.Context, dg mesh.Diagnostic) {
	regarding := corev1.ObjectReference{APIVersion: "v1", Kind: dg.Kind, Namespace: dg.Namespace, Name: dg.Name}
	if dg.Kind == "Service" {
		if svc, err := r.d.services.Services(dg.Namespace).Get(dg.Name); err == nil {
			regarding.UID = svc.UID
			regarding.ResourceVersion = svc.ResourceVersion
		}
	}
	ev := &eventsv1.Event{
		// A name of the object's and a unique suffix, as client-go's recorders do.
		ObjectMeta:          metav1.ObjectMeta{Name: fmt.Sprintf("%s.%x", dg.Name, time.Now().UnixNano()), Namespace: dg.Namespace},
		EventTime:           metav1.NewMicroTime(time.Now()),
		ReportingController: reportingController,
		ReportingInstance:   r.instance,
		Action:              "ApplyMeshPolicy",
		Reason:              dg.Reason,
		Regarding:           regarding,
		Note:                truncate(dg.Message, 1024),
		Type:                corev1.EventTypeWarning,
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := r.client.EventsV1().Events(dg.Namespace).Create(ctx, ev, metav1.CreateOptions{}); err != nil {
		r.d.metrics.apiWrites.WithLabelValues("events", "create", "error").Inc()
		r.d.log.Warn("cannot write Event; the diagnostic is still in the log and /debug/diagnostics",
			"object", dg.Namespace+"/"+dg.Name, "reason", dg.Reason, "err", err)
		return
	}
	r.d.metrics.apiWrites.WithLabelValues("events", "create", "ok").Inc()
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return fmt.Sprintf("%s...", s[:n-3])
}

package localmesh

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

func TestEndpointPorts(t *testing.T) {
	tcp := corev1.ProtocolTCP
	tests := []struct {
		name string
		svc  corev1.ServicePort
		want int32 // 0: left out
	}{
		{"numeric", corev1.ServicePort{Name: "http", Port: 9090, TargetPort: intstr.FromInt32(8000), Protocol: tcp}, 8000},
		{"unset means the port", corev1.ServicePort{Name: "http", Port: 9090, Protocol: tcp}, 9090},
		{"named app port", corev1.ServicePort{Name: "http", Port: 80, TargetPort: intstr.FromString("http"), Protocol: tcp}, 9090},
		{"named sidecar port", corev1.ServicePort{Name: "in", Port: 80, TargetPort: intstr.FromString("inbound"), Protocol: tcp}, 8000},
		{"unknown name", corev1.ServicePort{Name: "x", Port: 80, TargetPort: intstr.FromString("nope"), Protocol: tcp}, 0},
		{"wrong protocol", corev1.ServicePort{Name: "u", Port: 80, TargetPort: intstr.FromString("http"), Protocol: corev1.ProtocolUDP}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := endpointPorts([]corev1.ServicePort{tt.svc})
			if tt.want == 0 {
				if len(got) != 0 {
					t.Fatalf("got %+v, want no port", got)
				}
				return
			}
			if len(got) != 1 || *got[0].Port != tt.want || *got[0].Name != tt.svc.Name || *got[0].Protocol != tt.svc.Protocol {
				t.Fatalf("got %+v, want port %d", got, tt.want)
			}
		})
	}
}

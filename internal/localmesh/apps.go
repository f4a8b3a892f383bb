package localmesh

import (
	"context"
	"fmt"
)

// App is one demo service and how many replicas it runs.
type App struct {
	Name     string
	Replicas int
	// TargetPort is the Service's targetPort: 8000, the sidecar, is right (see
	// mesh.CheckTargetPorts); anything else is reported by bearkong.
	TargetPort int32
}

// DemoApps is the mesh of the original exercise, run by `make run` and the end-to-end
// tests. app-3 keeps the exercise's targetPort 5080, which points at nothing: bearkong
// routes to it anyway and says what is wrong.
var DemoApps = []App{{"app-1", 1, 8000}, {"app-2", 2, 8000}, {"app-3", 2, 5080}}

// AddApps creates the apps' Services, then starts every replica in parallel. Pod names
// and addresses follow the order of apps, so the same apps give the same pods (app-1-0 is
// 127.0.1.2 in a fresh mesh).
func (m *Mesh) AddApps(ctx context.Context, apps []App) error {
	var specs []PodSpec
	for _, a := range apps {
		if err := m.AddService(ctx, a.Name, ServiceOptions{TargetPort: a.TargetPort}); err != nil {
			return err
		}
		for range a.Replicas {
			specs = append(specs, PodSpec{Service: a.Name})
		}
	}
	if _, err := m.AddPods(ctx, specs...); err != nil {
		return fmt.Errorf("start the apps' pods: %w", err)
	}
	return nil
}

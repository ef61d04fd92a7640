package cluster

import (
	"context"
	"strings"
	"testing"

	"github.com/warren-appliance/warren/cluster/api"
	"github.com/warren-appliance/warren/cluster/clustermap"
)

func TestCheckTaskHealthBounds(t *testing.T) {
	h := api.TaskHealth{Status: clustermap.HealthUnhealthy}
	for i := 0; i < 8; i++ {
		h.Log = append(h.Log, api.HealthResult{ExitCode: i, Output: strings.Repeat("y", 2000)})
	}
	got, err := checkTaskHealth("web-1", h)
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Log) != api.MaxHealthLog || got.Log[0].ExitCode != 3 || len(got.Log[0].Output) > api.MaxHealthOutput {
		t.Fatalf("kept %d entries, first exit %d, output %d bytes", len(got.Log), got.Log[0].ExitCode, len(got.Log[0].Output))
	}
	if _, err := checkTaskHealth("web-1", api.TaskHealth{Status: "great"}); err == nil || !strings.Contains(err.Error(), "want starting, healthy or unhealthy") {
		t.Fatalf("unknown status: %v", err)
	}
}

// A task with a health check enters the endpoints only once its node
// reports it healthy, and leaves them when reported unhealthy; the
// service view carries the probes' detail.
func TestReportedHealthGatesEndpoints(t *testing.T) {
	tm := startManager(t)
	m := tm.m
	if _, err := m.CreateService(api.ServiceSpec{Name: "web", Image: "img", Replicas: intp(1),
		HealthSpec: api.HealthSpec{HealthCheck: &clustermap.HealthCheck{Test: []string{"CMD-SHELL", "true"}}}}); err != nil {
		t.Fatal(err)
	}
	report := func(status string, out string) {
		t.Helper()
		h := &api.TaskHealth{Status: status, Log: []api.HealthResult{{ExitCode: 1, Output: out}}}
		if err := m.Report(context.Background(), NodeStatus{Tasks: []api.TaskStatus{{Name: "web-1", State: clustermap.TaskRunning, Image: "img", Health: h}}}); err != nil {
			t.Fatal(err)
		}
	}
	report(clustermap.HealthStarting, "loading")
	if eps := m.Map().Endpoints("web"); len(eps) != 0 {
		t.Fatalf("a starting task is an endpoint: %+v", eps)
	}
	report(clustermap.HealthHealthy, "")
	if eps := m.Map().Endpoints("web"); len(eps) != 1 {
		t.Fatalf("a healthy task is not an endpoint")
	}
	report(clustermap.HealthUnhealthy, "HTTP 500")
	if eps := m.Map().Endpoints("web"); len(eps) != 0 {
		t.Fatalf("an unhealthy task is still an endpoint")
	}
	v, err := m.Service("web")
	if err != nil {
		t.Fatal(err)
	}
	if th := v.Tasks[0].Health; th == nil || th.Status != clustermap.HealthUnhealthy || th.Log[0].Output != "HTTP 500" || v.Running != 0 {
		t.Fatalf("view: %+v running %d", v.Tasks[0].Health, v.Running)
	}
	if v.HealthCheck == nil || v.HealthCheck.Test[1] != "true" {
		t.Fatalf("view health check: %+v", v.HealthCheck)
	}
}

package cluster

import (
	"strings"
	"testing"

	"github.com/warren-appliance/warren/cluster/clustermap"
)

func TestCheckWorkload(t *testing.T) {
	good := []clustermap.Workload{
		{},
		{Mode: "global"},
		{Restart: &clustermap.RestartPolicy{Condition: "on-failure", MaxAttempts: 3}},
		{Resources: &clustermap.Resources{Limits: clustermap.ResourceAmounts{MemoryBytes: 32 << 20, NanoCPUs: 5e8},
			Reservations: clustermap.ResourceAmounts{MemoryBytes: 16 << 20, NanoCPUs: 25e7}}},
		{Mounts: []clustermap.Mount{{Type: "volume", Source: "data", Target: "/data"}, {Type: "tmpfs", Target: "/tmp"}}},
		{Process: &clustermap.Process{User: "1000:1000", Workdir: "/srv", StopSignal: "SIGQUIT", Hostname: "broker"}},
	}
	for _, w := range good {
		if err := checkWorkload(w, false); err != nil {
			t.Errorf("checkWorkload(%+v) = %v", w, err)
		}
	}
	bad := []struct {
		w        clustermap.Workload
		replicas bool
		want     string
	}{
		{clustermap.Workload{Mode: "daemonset"}, false, "--mode"},
		{clustermap.Workload{Mode: "global"}, true, "--replicas does not apply"},
		{clustermap.Workload{Restart: &clustermap.RestartPolicy{Condition: "always"}}, false, "--restart-condition"},
		{clustermap.Workload{Restart: &clustermap.RestartPolicy{MaxAttempts: -1}}, false, "--restart-max-attempts"},
		{clustermap.Workload{Resources: &clustermap.Resources{Limits: clustermap.ResourceAmounts{MemoryBytes: 1 << 20}}}, false, "at least 6M"},
		{clustermap.Workload{Resources: &clustermap.Resources{Limits: clustermap.ResourceAmounts{MemoryBytes: 32 << 20},
			Reservations: clustermap.ResourceAmounts{MemoryBytes: 64 << 20}}}, false, "--reserve-memory"},
		{clustermap.Workload{Resources: &clustermap.Resources{Limits: clustermap.ResourceAmounts{NanoCPUs: 5e8},
			Reservations: clustermap.ResourceAmounts{NanoCPUs: 1e9}}}, false, "--reserve-cpu (1) is more than --limit-cpu (0.5)"},
		{clustermap.Workload{Mounts: []clustermap.Mount{{Type: "volume", Source: "a", Target: "/d"}, {Type: "tmpfs", Target: "/d"}}}, false, "mounted twice"},
		{clustermap.Workload{Mounts: []clustermap.Mount{{Type: "bind", Source: "etc", Target: "/d"}}}, false, "absolute host path"},
		{clustermap.Workload{Mounts: []clustermap.Mount{{Type: "bind", Source: "/x", Target: "/etc/resolv.conf"}}}, false, "written by warren"},
		{clustermap.Workload{Process: &clustermap.Process{StopSignal: "SIGNOPE"}}, false, "--stop-signal"},
		{clustermap.Workload{Process: &clustermap.Process{Workdir: "srv"}}, false, "--workdir"},
		{clustermap.Workload{Process: &clustermap.Process{Hostname: "a_b"}}, false, "--hostname"},
	}
	for _, b := range bad {
		err := checkWorkload(b.w, b.replicas)
		if err == nil || !strings.Contains(err.Error(), b.want) {
			t.Errorf("checkWorkload(%+v) = %v, want an error containing %q", b.w, err, b.want)
		}
	}
}

package main

import (
	"os"
	"reflect"
	"strings"
	"testing"

	"github.com/spf13/pflag"

	"github.com/warren-appliance/warren/cluster/api"
	"github.com/warren-appliance/warren/cluster/clustermap"
)

func TestWorkloadFromCreateFlags(t *testing.T) {
	f := pflag.NewFlagSet("create", pflag.ContinueOnError)
	addWorkloadFlags(f)
	err := f.Parse([]string{"--mode", "global", "--restart-condition", "on-failure", "--restart-max-attempts", "3",
		"--limit-memory", "32M", "--limit-cpu", "0.5", "--reserve-memory", "1.5G",
		"--mount", "type=volume,source=data,target=/data", "--mount", "type=tmpfs,target=/tmp,tmpfs-size=1M",
		"--user", "1000", "--read-only", "--stop-signal", "SIGQUIT", "--entrypoint", "/bin/sh -c"})
	if err != nil {
		t.Fatal(err)
	}
	w, err := workloadFromFlags(f)
	if err != nil {
		t.Fatal(err)
	}
	want := clustermap.Workload{Mode: "global",
		Restart:   &clustermap.RestartPolicy{Condition: "on-failure", MaxAttempts: 3},
		Resources: &clustermap.Resources{Limits: clustermap.ResourceAmounts{MemoryBytes: 32 << 20, NanoCPUs: 5e8}, Reservations: clustermap.ResourceAmounts{MemoryBytes: 3 << 29}},
		Mounts:    []clustermap.Mount{{Type: "volume", Source: "data", Target: "/data"}, {Type: "tmpfs", Target: "/tmp", TmpfsSize: 1 << 20}},
		Process:   &clustermap.Process{User: "1000", ReadOnly: true, StopSignal: "SIGQUIT", Entrypoint: []string{"/bin/sh", "-c"}},
	}
	if !reflect.DeepEqual(w, want) {
		t.Errorf("workload = %+v\nwant       %+v", w, want)
	}
	for _, bad := range [][]string{{"--limit-memory", "lots"}, {"--limit-cpu", "half"}, {"--mount", "type=bind,target=/x"}, {"--stop-signal", "SIGNOPE"}} {
		f := pflag.NewFlagSet("create", pflag.ContinueOnError)
		addWorkloadFlags(f)
		if err := f.Parse(bad); err != nil {
			t.Fatal(err)
		}
		if _, err := workloadFromFlags(f); err == nil || !strings.Contains(err.Error(), strings.TrimPrefix(bad[0], "--")) {
			t.Errorf("%v: error %v does not name the flag", bad, err)
		}
	}
}

func TestUpdatedSpec(t *testing.T) {
	cur := api.ServiceView{Name: "db", Image: "postgres:16", Replicas: 2, Env: []string{"A=1", "B=2"},
		Ports:       []clustermap.Port{{Protocol: "tcp", Target: 5432, Published: 5432}, {Protocol: "udp", Target: 53, Published: 5353}},
		Constraints: []string{"node.labels.disk==ssd"},
		Workload: clustermap.Workload{Mounts: []clustermap.Mount{{Type: "volume", Source: "pg", Target: "/var/lib/postgresql"}},
			Resources: &clustermap.Resources{Limits: clustermap.ResourceAmounts{MemoryBytes: 64 << 20}}}}
	f := pflag.NewFlagSet("update", pflag.ContinueOnError)
	f.String("image", "", "")
	addUpdateFlags(f)
	err := f.Parse([]string{"--env-add", "B=3", "--env-add", "C=4", "--env-rm", "A", "--publish-rm", "5353/udp", "--publish-add", "8080:80",
		"--mount-rm", "/var/lib/postgresql", "--mount-add", "type=bind,source=/srv/pg,target=/var/lib/postgresql,readonly",
		"--limit-memory", "0", "--limit-cpu", "1.5", "--restart-condition", "none", "--constraint-rm", "node.labels.disk==ssd", "--constraint-add", "node.name==pi-1"})
	if err != nil {
		t.Fatal(err)
	}
	if !specFlagsChanged(f) {
		t.Fatal("spec flags not seen")
	}
	spec, err := updatedSpec(f, cur, []string{"postgres", "-c", "fsync=off"})
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(spec.Env, []string{"B=3", "C=4"}) {
		t.Errorf("env = %v", spec.Env)
	}
	if !reflect.DeepEqual(spec.Ports, []string{"5432:5432/tcp", "8080:80"}) {
		t.Errorf("ports = %v", spec.Ports)
	}
	if !reflect.DeepEqual(spec.Constraints, []string{"node.name==pi-1"}) {
		t.Errorf("constraints = %v", spec.Constraints)
	}
	if len(spec.Mounts) != 1 || spec.Mounts[0] != (clustermap.Mount{Type: "bind", Source: "/srv/pg", Target: "/var/lib/postgresql", ReadOnly: true}) {
		t.Errorf("mounts = %+v", spec.Mounts)
	}
	if spec.Resources == nil || spec.Resources.Limits != (clustermap.ResourceAmounts{NanoCPUs: 15e8}) {
		t.Errorf("resources = %+v", spec.Resources)
	}
	if spec.Restart == nil || spec.Restart.Condition != "none" || spec.Replicas == nil || *spec.Replicas != 2 || spec.Image != "postgres:16" {
		t.Errorf("spec = %+v", spec)
	}
	if !reflect.DeepEqual(spec.Command, []string{"postgres", "-c", "fsync=off"}) {
		t.Errorf("command = %v", spec.Command)
	}
	// The current view is not changed.
	if len(cur.Env) != 2 || cur.Resources.Limits.MemoryBytes != 64<<20 || len(cur.Mounts) != 1 || cur.Mounts[0].Type != "volume" {
		t.Errorf("current view changed: %+v", cur)
	}
	f = pflag.NewFlagSet("update", pflag.ContinueOnError)
	addUpdateFlags(f)
	f.Parse([]string{"--mount-rm", "/nope"})
	if _, err := updatedSpec(f, cur, nil); err == nil || !strings.Contains(err.Error(), "no mount at that target") {
		t.Errorf("--mount-rm of a missing target: %v", err)
	}
}

func TestReadEnvFiles(t *testing.T) {
	dir := t.TempDir()
	p := dir + "/app.env"
	if err := os.WriteFile(p, []byte("# comment\n\nA=1\n  B=two words\nFROM_SHELL\nUNSET_ONE\nC=x=y\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv("FROM_SHELL", "shell")
	env, err := readEnvFiles([]string{p})
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"A=1", "B=two words", "FROM_SHELL=shell", "C=x=y"}; !reflect.DeepEqual(env, want) {
		t.Errorf("env = %q, want %q", env, want)
	}
	if _, err := readEnvFiles([]string{dir + "/missing.env"}); err == nil || !strings.Contains(err.Error(), "--env-file") {
		t.Errorf("missing file: %v", err)
	}
}

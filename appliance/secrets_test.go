package appliance

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/warren-appliance/warren/cluster/api"
	"github.com/warren-appliance/warren/cluster/clustermap"
)

// fakeValues is a manager that knows the values and records what it was
// asked for.
type fakeValues struct {
	vals  map[api.ValueRef]api.Value
	asked [][]api.ValueRef
	down  bool
}

func (f *fakeValues) FetchValues(_ context.Context, refs []api.ValueRef) ([]api.Value, error) {
	f.asked = append(f.asked, slices.Clone(refs))
	if f.down {
		return nil, errors.New("manager unreachable")
	}
	var out []api.Value
	for _, r := range refs {
		out = append(out, f.vals[r])
	}
	return out, nil
}

func secretsMap(version uint64) *clustermap.Map {
	ip := netip.MustParseAddr("10.0.1.2")
	return &clustermap.Map{
		Services: []clustermap.Service{
			{Name: "db", Image: "img", Secrets: []clustermap.FileRef{{Source: "dbpass", Target: "dbpass", UID: "0", GID: "0", Mode: 0o400, Version: version}},
				Configs: []clustermap.FileRef{{Source: "app.conf", Target: "/etc/app.conf", UID: "0", GID: "0", Mode: 0o444, Version: 1}}},
			{Name: "other", Image: "img", Secrets: []clustermap.FileRef{{Source: "elsewhere", Target: "x", Mode: 0o400, Version: 1}}},
			{Name: "plain", Image: "img"},
		},
		Tasks: []clustermap.Task{
			{Name: "db-1", Service: "db", NodeID: "self", IP: ip, DesiredState: clustermap.TaskRunning},
			{Name: "plain-1", Service: "plain", NodeID: "self", IP: netip.MustParseAddr("10.0.1.3"), DesiredState: clustermap.TaskRunning},
			{Name: "other-1", Service: "other", NodeID: "peer", IP: netip.MustParseAddr("10.0.2.2"), DesiredState: clustermap.TaskRunning},
		},
	}
}

func TestPrepareFetchesOnlyThisNodesValuesAndMountsThem(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("the tasks' tmpfs needs root")
	}
	src := &fakeValues{vals: map[api.ValueRef]api.Value{
		{Kind: "secret", Name: "dbpass"}:   {Kind: "secret", Name: "dbpass", Version: 1, Data: []byte("pw-1")},
		{Kind: "config", Name: "app.conf"}: {Kind: "config", Name: "app.conf", Version: 1, Data: []byte("x=1")},
	}}
	root := filepath.Join(t.TempDir(), "tasks")
	ts := newTaskSecrets(src, root, slog.New(slog.DiscardHandler))
	t.Cleanup(func() { ts.fs.Sync(nil, nil) })
	m := secretsMap(1)
	specs, retry := ts.prepare(context.Background(), m, taskSpecs(m, "self"))
	if retry || len(specs) != 2 {
		t.Fatalf("retry %v, specs %+v", retry, specs)
	}
	if len(src.asked) != 1 || len(src.asked[0]) != 2 || slices.ContainsFunc(src.asked[0], func(r api.ValueRef) bool { return r.Name == "elsewhere" }) {
		t.Fatalf("asked %v: want dbpass and app.conf only", src.asked)
	}
	db := specs[0]
	if db.Name != "db-1" || len(db.SecretMounts) != 2 || db.SecretMounts[0].Target != "/run/secrets" || db.SecretMounts[1].Target != "/etc/app.conf" || db.Revision != "" {
		t.Fatalf("db spec %+v", db)
	}
	if got, _ := os.ReadFile(filepath.Join(db.SecretMounts[0].Source, "dbpass")); string(got) != "pw-1" {
		t.Fatalf("dbpass on the tmpfs: %q", got)
	}
	if len(specs[1].SecretMounts) != 0 {
		t.Fatalf("plain task got mounts %+v", specs[1].SecretMounts)
	}
	// Same map: nothing fetched again.
	ts.prepare(context.Background(), m, taskSpecs(m, "self"))
	if len(src.asked) != 1 {
		t.Fatalf("fetched again for an unchanged map: %v", src.asked)
	}
	// A new version: fetched and swapped in, same mounts (no restart).
	src.vals[api.ValueRef{Kind: "secret", Name: "dbpass"}] = api.Value{Kind: "secret", Name: "dbpass", Version: 2, Data: []byte("pw-2")}
	m2 := secretsMap(2)
	specs2, _ := ts.prepare(context.Background(), m2, taskSpecs(m2, "self"))
	if len(src.asked) != 2 || !slices.Equal(src.asked[1], []api.ValueRef{{Kind: "secret", Name: "dbpass"}}) {
		t.Fatalf("asked %v", src.asked)
	}
	if got, _ := os.ReadFile(filepath.Join(db.SecretMounts[0].Source, "dbpass")); string(got) != "pw-2" {
		t.Fatalf("dbpass after the update: %q", got)
	}
	if !slices.Equal(specs2[0].SecretMounts, db.SecretMounts) {
		t.Fatal("the mounts changed with the version: the task would be recreated")
	}
	// --secret-rotation restart: the task's revision (from the manager) is
	// part of the spec, the mounts stay.
	m3 := secretsMap(2)
	m3.Tasks[0].Revision = "abc"
	specs3, _ := ts.prepare(context.Background(), m3, taskSpecs(m3, "self"))
	if specs3[0].Revision != "abc" || !slices.Equal(specs3[0].SecretMounts, db.SecretMounts) {
		t.Fatalf("revision %q mounts %+v", specs3[0].Revision, specs3[0].SecretMounts)
	}
	// The task leaves the node: its values leave memory and its tmpfs goes.
	m4 := secretsMap(2)
	m4.Tasks = m4.Tasks[1:]
	ts.prepare(context.Background(), m4, taskSpecs(m4, "self"))
	if held := ts.heldValues(); len(held) != 0 {
		t.Fatalf("values still held: %v", held)
	}
	if _, err := os.Stat(filepath.Join(root, "db-1")); !os.IsNotExist(err) {
		t.Fatalf("db-1's tmpfs dir: %v", err)
	}
	// Manager down and no files from before: the task waits (retry).
	src.down = true
	specs5, retry := ts.prepare(context.Background(), m, taskSpecs(m, "self"))
	if !retry || len(specs5) != 1 || specs5[0].Name != "plain-1" {
		t.Fatalf("manager down: retry %v specs %+v", retry, specs5)
	}
	if w := ts.waitingTasks(); len(w) != 1 || w[0].Name != "db-1" || w[0].State != clustermap.TaskPending || !strings.Contains(w[0].Error, "manager unreachable") {
		t.Fatalf("waiting tasks reported as %+v", w)
	}
	src.down = false
	ts.prepare(context.Background(), m, taskSpecs(m, "self"))
	if w := ts.waitingTasks(); len(w) != 0 {
		t.Fatalf("still waiting once the manager is back: %+v", w)
	}
}

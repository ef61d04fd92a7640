package cluster

import (
	"bytes"
	"context"
	"fmt"
	"io/fs"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/warren-appliance/warren/cluster/agent"
	"github.com/warren-appliance/warren/cluster/api"
	"github.com/warren-appliance/warren/cluster/apicall"
	"github.com/warren-appliance/warren/cluster/clustermap"
	"github.com/warren-appliance/warren/cluster/internal/clustertest"
	"github.com/warren-appliance/warren/cluster/secretbox"
)

// filesHolding lists the files under dir whose bytes contain marker.
func filesHolding(t *testing.T, dir string, marker []byte) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if bytes.Contains(b, marker) {
			out = append(out, p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// The "at rest" contract: the Raft log, its snapshots, the store
// and a backup, opened as bytes, hold no secret's or config's plaintext.
func TestSecretsAtRestHoldNoPlaintext(t *testing.T) {
	tm := startManager(t)
	m := tm.m
	secret := []byte("marker-" + randomID() + "-dbpass")
	secret2 := []byte("marker-" + randomID() + "-rotated")
	config := []byte("listen=" + randomID() + "\n")
	if _, err := m.CreateObject(api.KindSecret, api.ObjectSpec{Name: "dbpass", Data: secret, Labels: map[string]string{"app": "db"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := m.CreateObject(api.KindConfig, api.ObjectSpec{Name: "app.conf", Data: config}); err != nil {
		t.Fatal(err)
	}
	spec := apiSpec("db", 1)
	spec.Secrets = []string{"dbpass"}
	spec.Configs = []string{"source=app.conf,target=/etc/app.conf"}
	if _, err := m.CreateService(spec); err != nil {
		t.Fatal(err)
	}
	if _, err := m.UpdateObject(api.KindSecret, "dbpass", secret2); err != nil {
		t.Fatal(err)
	}
	if err := m.replica.Raft.Snapshot().Error(); err != nil {
		t.Fatalf("raft snapshot: %v", err)
	}
	var snaps []string
	filepath.WalkDir(filepath.Join(tm.dir, "raft"), func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Name() == "state.bin" {
			snaps = append(snaps, p)
		}
		return nil
	})
	if len(snaps) == 0 {
		t.Fatal("no raft snapshot on disk")
	}
	if len(filesHolding(t, filepath.Join(tm.dir, "raft"), []byte(`"dbpass"`))) == 0 {
		t.Fatal("neither the raft log nor a snapshot holds the secret's record: the test looks in the wrong place")
	}
	var backup bytes.Buffer
	if err := m.Backup(&backup); err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(backup.Bytes(), []byte(`"dbpass"`)) {
		t.Fatal("the backup does not hold the secret's record at all")
	}
	for _, marker := range [][]byte{secret, secret2, config} {
		if files := filesHolding(t, tm.dir, marker); len(files) > 0 {
			t.Errorf("plaintext %q on disk in %v", marker, files)
		}
		if bytes.Contains(backup.Bytes(), marker) {
			t.Errorf("plaintext %q in the backup", marker)
		}
		if bytes.Contains(m.mapJSON, marker) {
			t.Errorf("plaintext %q in the published map", marker)
		}
	}
	// The raft log holds the records, sealed: the same bytes open with the
	// manager's key file.
	key, err := secretbox.Load(tm.dir)
	if err != nil {
		t.Fatal(err)
	}
	rec := m.st.secrets["dbpass"]
	got, err := key.Open(api.KindSecret, "dbpass", rec.Version, rec.Sealed)
	if err != nil || !bytes.Equal(got, secret2) || rec.Version != 2 {
		t.Fatalf("stored secret opens to %q (version %d), %v", got, rec.Version, err)
	}
	// Inspect shows metadata, never the value; a config's pretty form shows it.
	v, err := m.Object(api.KindSecret, "dbpass", true)
	if err != nil || v.Data != nil || v.Version != 2 || strings.Join(v.Services, ",") != "db" {
		t.Fatalf("secret inspect: %+v, %v", v, err)
	}
	c, err := m.Object(api.KindConfig, "app.conf", true)
	if err != nil || c.Data == nil || *c.Data != string(config) {
		t.Fatalf("config inspect --pretty: %+v, %v", c, err)
	}
	// The map carries references with versions only.
	for _, s := range m.Map().Services {
		if s.Name == "db" && (len(s.Secrets) != 1 || s.Secrets[0].Version != 2 || s.Secrets[0].Target != "dbpass" || s.Secrets[0].Mode != 0o400 ||
			len(s.Configs) != 1 || s.Configs[0].Target != "/etc/app.conf" || s.Configs[0].Mode != 0o444) {
			t.Fatalf("map service refs: %+v %+v", s.Secrets, s.Configs)
		}
	}
}

// A backup's secrets come back only with the data key written beside it.
func TestRestoreNeedsTheBackupsDataKey(t *testing.T) {
	tm := startManager(t)
	if _, err := tm.m.CreateObject(api.KindSecret, api.ObjectSpec{Name: "dbpass", Data: []byte("v1")}); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := tm.m.Backup(&buf); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "backup.json")
	if err := os.WriteFile(file, buf.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	fresh := t.TempDir()
	err := ForceNewCluster(fresh, tm.addr, file, "", nil)
	if err == nil || !strings.Contains(err.Error(), file+BackupKeySuffix) {
		t.Fatalf("restore without the key: %v", err)
	}
	other, _ := secretbox.NewKey()
	os.WriteFile(file+BackupKeySuffix, other, 0o600)
	if err := ForceNewCluster(fresh, tm.addr, file, "", nil); err == nil || !strings.Contains(err.Error(), "another cluster's key") {
		t.Fatalf("restore with a wrong key: %v", err)
	}
	os.WriteFile(file+BackupKeySuffix, tm.m.DataKey(), 0o600)
	if err := ForceNewCluster(fresh, tm.addr, file, "", nil); err != nil {
		t.Fatalf("restore with the key: %v", err)
	}
	k, err := secretbox.Load(fresh)
	if err != nil || !bytes.Equal(k, tm.m.DataKey()) {
		t.Fatalf("restored state dir's key: %v", err)
	}
}

// Delivery: a node gets a value only while a task assigned to it uses it.
func TestValuesOnlyToNodesRunningTheTask(t *testing.T) {
	tm := startManager(t)
	m := tm.m
	a1, a2 := join(t, agentConfig(t, tm, "worker-1")), join(t, agentConfig(t, tm, "worker-2"))
	for _, o := range []struct{ kind, name, value string }{
		{api.KindSecret, "dbpass", "pw-1"}, {api.KindSecret, "other", "pw-other"}, {api.KindConfig, "app.conf", "x=1"},
	} {
		if _, err := m.CreateObject(o.kind, api.ObjectSpec{Name: o.name, Data: []byte(o.value)}); err != nil {
			t.Fatal(err)
		}
	}
	spec := apiSpec("db", 1)
	spec.Constraints = []string{"node.name==worker-1"}
	spec.Secrets = []string{"source=dbpass,target=db_password,mode=0440,uid=70,gid=70"}
	spec.Configs = []string{"source=app.conf,target=/etc/app.conf"}
	if _, err := m.CreateService(spec); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	dbpass := api.ValueRef{Kind: api.KindSecret, Name: "dbpass"}
	appconf := api.ValueRef{Kind: api.KindConfig, Name: "app.conf"}
	vals, err := a1.FetchValues(ctx, []api.ValueRef{dbpass, appconf})
	if err != nil {
		t.Fatalf("worker-1 runs db: %v", err)
	}
	if len(vals) != 2 || string(vals[0].Data) != "pw-1" || vals[0].Version != 1 || string(vals[1].Data) != "x=1" {
		t.Fatalf("worker-1 got %+v", vals)
	}
	for name, try := range map[string]func() error{
		"worker-2, no task of db": func() error { _, err := a2.FetchValues(ctx, []api.ValueRef{dbpass}); return err },
		"worker-1, a secret db does not use": func() error {
			_, err := a1.FetchValues(ctx, []api.ValueRef{dbpass, {Kind: api.KindSecret, Name: "other"}})
			return err
		},
		"worker-1, a secret as a config": func() error {
			_, err := a1.FetchValues(ctx, []api.ValueRef{{Kind: api.KindConfig, Name: "dbpass"}})
			return err
		},
	} {
		if err := try(); apicall.StatusOf(err) != http.StatusForbidden {
			t.Errorf("%s: %v, want 403", name, err)
		}
	}
	// A rotation: the running task's node gets the new version.
	if _, err := m.UpdateObject(api.KindSecret, "dbpass", []byte("pw-2")); err != nil {
		t.Fatal(err)
	}
	if vals, err = a1.FetchValues(ctx, []api.ValueRef{dbpass}); err != nil || string(vals[0].Data) != "pw-2" || vals[0].Version != 2 {
		t.Fatalf("after update: %+v, %v", vals, err)
	}
	// rm is refused while db uses it, naming db; works once db is gone,
	// and then no node gets the value.
	err = m.RemoveObject(api.KindSecret, "dbpass")
	if apicall.StatusOf(err) != 0 && !strings.Contains(err.Error(), `service(s) db`) {
		t.Fatalf("rm in use: %v", err)
	}
	if err == nil {
		t.Fatal("rm of a secret in use succeeded")
	}
	if err := m.RemoveService("db"); err != nil {
		t.Fatal(err)
	}
	if _, err := a1.FetchValues(ctx, []api.ValueRef{dbpass}); apicall.StatusOf(err) != http.StatusForbidden {
		t.Fatalf("worker-1 after db is removed: %v, want 403", err)
	}
	for _, kind := range []string{api.KindSecret, api.KindConfig} {
		name := map[string]string{api.KindSecret: "dbpass", api.KindConfig: "app.conf"}[kind]
		if err := m.RemoveObject(kind, name); err != nil {
			t.Fatalf("rm %s %s after the service is gone: %v", kind, name, err)
		}
	}
}

func TestServiceRefsAddRemoveAndValidation(t *testing.T) {
	tm := startManager(t)
	m := tm.m
	for _, n := range []string{"a", "b"} {
		if _, err := m.CreateObject(api.KindSecret, api.ObjectSpec{Name: n, Data: []byte(n)}); err != nil {
			t.Fatal(err)
		}
	}
	spec := apiSpec("web", 0)
	spec.Secrets = []string{"a", "nope"}
	if _, err := m.CreateService(spec); err == nil || !strings.Contains(err.Error(), `no secret named "nope"`) {
		t.Fatalf("missing secret: %v", err)
	}
	if _, err := m.Service("web"); err == nil {
		t.Fatal("a service was created half-way")
	}
	spec.Secrets = []string{"a", "source=b,target=a"}
	if _, err := m.CreateService(spec); err == nil || !strings.Contains(err.Error(), "same target") {
		t.Fatalf("same target: %v", err)
	}
	spec.Secrets = []string{"a"}
	if _, err := m.CreateService(spec); err != nil {
		t.Fatal(err)
	}
	restart := clustermap.RotationRestart
	v, err := m.UpdateServiceRefs("web", api.ServiceRefsUpdate{SecretAdd: []string{"source=b,target=b.txt"}, SecretRemove: []string{"a"}, SecretRotation: &restart})
	if err != nil || len(v.Secrets) != 1 || v.Secrets[0].Source != "b" || v.Secrets[0].Target != "b.txt" || v.SecretRotation != "restart" {
		t.Fatalf("update refs: %+v, %v", v, err)
	}
	if _, err := m.UpdateServiceRefs("web", api.ServiceRefsUpdate{SecretRemove: []string{"a"}}); err == nil {
		t.Fatal("removing a secret the service does not use succeeded")
	}
	if _, err := m.CreateObject(api.KindSecret, api.ObjectSpec{Name: "big", Data: make([]byte, api.MaxObjectSize+1)}); err == nil || !strings.Contains(err.Error(), "500 KiB") {
		t.Fatalf("oversized: %v", err)
	}
	if _, err := m.CreateObject(api.KindSecret, api.ObjectSpec{Name: "a", Data: []byte("x")}); apicall.StatusOf(err) != 0 && err == nil {
		t.Fatal("duplicate name accepted")
	}
}

func TestParseFileRef(t *testing.T) {
	for _, c := range []struct {
		kind, in string
		want     clustermap.FileRef
		err      string
	}{
		{api.KindSecret, "dbpass", clustermap.FileRef{Source: "dbpass", Target: "dbpass", UID: "0", GID: "0", Mode: 0o400}, ""},
		{api.KindSecret, "source=dbpass,target=pw,uid=70,gid=71,mode=0440", clustermap.FileRef{Source: "dbpass", Target: "pw", UID: "70", GID: "71", Mode: 0o440}, ""},
		{api.KindSecret, "src=dbpass,target=/run/secrets/pw", clustermap.FileRef{Source: "dbpass", Target: "pw", UID: "0", GID: "0", Mode: 0o400}, ""},
		{api.KindConfig, "source=app.conf,target=/etc/app.conf,mode=0444", clustermap.FileRef{Source: "app.conf", Target: "/etc/app.conf", UID: "0", GID: "0", Mode: 0o444}, ""},
		{api.KindConfig, "app.conf", clustermap.FileRef{Source: "app.conf", Target: "/app.conf", UID: "0", GID: "0", Mode: 0o444}, ""},
		{api.KindSecret, "source=dbpass,target=../etc/passwd", clustermap.FileRef{}, "must be a file name"},
		{api.KindSecret, "source=dbpass,target=..data", clustermap.FileRef{}, "must be a file name"},
		{api.KindSecret, "source=dbpass,mode=999", clustermap.FileRef{}, "octal"},
		{api.KindSecret, "source=dbpass,uid=root", clustermap.FileRef{}, "numeric"},
		{api.KindSecret, "source=dbpass,color=red", clustermap.FileRef{}, "unknown field"},
		{api.KindSecret, "target=x", clustermap.FileRef{}, "not a valid secret name"},
		{api.KindConfig, "source=c,target=etc/app.conf", clustermap.FileRef{}, "absolute"},
		{api.KindConfig, "source=c,target=/etc/../x", clustermap.FileRef{}, "clean absolute"},
		{api.KindConfig, "source=c,target=/etc/resolv.conf", clustermap.FileRef{}, "own file"},
		{api.KindConfig, "source=c,target=/run/secrets/x", clustermap.FileRef{}, "where the secrets are"},
	} {
		got, err := ParseFileRef(c.kind, c.in)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("%s %q: %v, want an error with %q", c.kind, c.in, err, c.err)
			}
			continue
		}
		if err != nil || got != c.want {
			t.Errorf("%s %q: %+v, %v; want %+v", c.kind, c.in, got, err, c.want)
		}
	}
}

// Every manager holds the same data key (a joining manager gets it with
// its Raft join; one without gets it from the leader), none holds a value
// in plaintext, and a new leader opens the values the old one sealed.
func TestManagersShareTheDataKeyNotThePlaintext(t *testing.T) {
	hs := startHA(t, 3)
	leader, f := leaderOf(hs), followersOf(hs)[0]
	marker := "marker-" + randomID()
	code, body := adminDo(f.m, http.MethodPost, api.PathConfigs, api.ObjectSpec{Name: "app.conf", Data: []byte(marker)})
	if code != http.StatusCreated {
		t.Fatalf("create through a follower: %d %s", code, body)
	}
	want := leader.m.DataKey()
	for _, h := range hs {
		if k := h.m.DataKey(); !bytes.Equal(k, want) {
			t.Fatalf("%s has another data key", h.name)
		}
		waitUntil(t, h.name+" has the config", func() bool { _, err := h.m.Object(api.KindConfig, "app.conf", false); return err == nil })
		if files := filesHolding(t, h.cfg.StateDir, []byte(marker)); len(files) > 0 {
			t.Fatalf("%s: plaintext in %v", h.name, files)
		}
	}
	// A worker talking to a follower gets its task's value (the follower
	// forwards the call with the worker's certificate to the leader, which
	// authorizes it); another worker through the same follower does not.
	w, _ := leader.m.JoinTokens()
	workerVia := func(name string, i int) *agent.Agent {
		return join(t, agent.Config{StateDir: t.TempDir(), Manager: f.addr, Token: w, Logger: clustertest.Logger(t),
			Node: NodeInfo{Name: name, Role: clustermap.RoleWorker, PublicKey: clustertest.WGKey(t),
				Endpoint: netip.AddrPortFrom(netip.AddrFrom4([4]byte{192, 0, 2, byte(i)}), 51820)}})
	}
	a1, a2 := workerVia("worker-1", 31), workerVia("worker-2", 32)
	spec := apiSpec("app", 1)
	spec.Constraints = []string{"node.name==worker-1"}
	spec.Configs = []string{"app.conf"}
	if code, body := adminDo(f.m, http.MethodPost, api.PathServices, spec); code != http.StatusCreated {
		t.Fatalf("create service: %d %s", code, body)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	ref := []api.ValueRef{{Kind: api.KindConfig, Name: "app.conf"}}
	if vals, err := a1.FetchValues(ctx, ref); err != nil || len(vals) != 1 || string(vals[0].Data) != marker {
		t.Fatalf("worker-1 through a follower: %+v, %v", vals, err)
	}
	if _, err := a2.FetchValues(ctx, ref); apicall.StatusOf(err) != http.StatusForbidden {
		t.Fatalf("worker-2 through a follower: %v, want 403", err)
	}
	// A manager that lost its key gets it back from the leader.
	os.Remove(filepath.Join(f.cfg.StateDir, secretbox.KeyFile))
	f.m.mu.Lock()
	f.m.dataKey = nil
	f.m.mu.Unlock()
	waitUntil(t, "the follower gets the key back", func() bool { return bytes.Equal(f.m.DataKey(), want) })
	if k, err := secretbox.Load(f.cfg.StateDir); err != nil || !bytes.Equal(k, want) {
		t.Fatalf("the key file is not back: %v", err)
	}
	// A manager with a wrong key (another cluster's) replaces it with the
	// cluster's.
	wrong, _ := secretbox.NewKey()
	f.m.mu.Lock()
	f.m.dataKey = wrong
	f.m.mu.Unlock()
	waitUntil(t, "the follower replaces a wrong key", func() bool { return bytes.Equal(f.m.DataKey(), want) })
	// The leader goes; the new one opens the value.
	leader.kill()
	var next *haManager
	waitUntil(t, "a new leader", func() bool { next = leaderOf(hs); return next != nil })
	v, err := next.m.Object(api.KindConfig, "app.conf", true)
	if err != nil || v.Data == nil || *v.Data != marker {
		t.Fatalf("the new leader opens the config: %+v, %v", v, err)
	}
}

// --secret-rotation restart: a new version moves the tasks to a new
// revision (which restarts them on their node) one at a time, each once
// the previous one reports running with it; in-place services keep none.
func TestSecretRotationRestartMovesOneTaskAtATime(t *testing.T) {
	tm := startManager(t)
	m := tm.m
	self := m.Self().ID
	if _, err := m.CreateObject(api.KindSecret, api.ObjectSpec{Name: "dbpass", Data: []byte("v1")}); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"web", "calm"} {
		spec := apiSpec(name, 3)
		spec.Secrets = []string{"dbpass"}
		if name == "web" {
			spec.SecretRotation = clustermap.RotationRestart
		}
		if _, err := m.CreateService(spec); err != nil {
			t.Fatal(err)
		}
	}
	report := func(rev func(clustermap.Task) string) {
		t.Helper()
		var st []api.TaskStatus
		for _, task := range m.Map().TasksOn(self) {
			st = append(st, api.TaskStatus{Name: task.Name, State: clustermap.TaskRunning, Image: task.Image, Revision: rev(task)})
		}
		if err := m.Report(context.Background(), NodeStatus{Tasks: st}); err != nil {
			t.Fatal(err)
		}
	}
	current := func(task clustermap.Task) string { return task.Revision }
	revs := func() map[string]string {
		out := map[string]string{}
		for _, task := range m.Map().Tasks {
			out[task.Name] = task.Revision + "/" + task.State
		}
		return out
	}
	report(current)
	r1 := revs()["web-1"]
	if !strings.HasSuffix(r1, "/running") || r1 == "/running" {
		t.Fatalf("web-1 before the update: %q (want a revision, running)", r1)
	}
	rev1 := strings.TrimSuffix(r1, "/running")
	if _, err := m.UpdateObject(api.KindSecret, "dbpass", []byte("v2")); err != nil {
		t.Fatal(err)
	}
	var rev2 string
	for step := 0; step < 3; step++ {
		got := revs()
		moved := 0
		for _, name := range []string{"web-1", "web-2", "web-3"} {
			rev, state, _ := strings.Cut(got[name], "/")
			if rev != rev1 {
				moved++
				if rev2 == "" {
					rev2 = rev
				}
				if rev != rev2 {
					t.Fatalf("step %d: %s on a third revision: %v", step, name, got)
				}
			}
			if rev == rev1 && state != clustermap.TaskRunning {
				t.Fatalf("step %d: %s left running: %v", step, name, got)
			}
		}
		if moved != step+1 || got[fmt.Sprintf("web-%d", step+1)] != rev2+"/pending" {
			t.Fatalf("step %d: %d tasks moved, want %d (the lowest slot pending): %v", step, moved, step+1, got)
		}
		for _, name := range []string{"calm-1", "calm-2", "calm-3"} {
			if got[name] != "/running" {
				t.Fatalf("in-place service task %s: %q", name, got[name])
			}
		}
		// The node still runs the old revision: no progress.
		report(func(clustermap.Task) string { return rev1 })
		if again := revs(); again[fmt.Sprintf("web-%d", step+2)] != rev1+"/running" && step < 2 {
			t.Fatalf("step %d: a report of the old revision let the next task move: %v", step, again)
		}
		report(current)
	}
	for name, v := range revs() {
		if strings.HasPrefix(name, "web") && v != rev2+"/running" {
			t.Fatalf("after the rotation %s is %q", name, v)
		}
	}
}

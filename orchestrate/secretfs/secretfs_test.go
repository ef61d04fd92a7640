package secretfs

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("mounting a tmpfs needs root")
	}
}

func isTmpfs(t *testing.T, path string) bool {
	t.Helper()
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Type == unix.TMPFS_MAGIC
}

// The files of a task live on a tmpfs of its own, with their modes and
// owners; a new version swaps ..data atomically and drops the old
// generation; a task that goes is unmounted.
func TestSyncWritesSwapsAndWipes(t *testing.T) {
	needRoot(t)
	// The root sits on the disk (t.TempDir), so the test can tell the
	// task's tmpfs from the directory beneath.
	root := filepath.Join(t.TempDir(), "tasks")
	s := New(root)
	t.Cleanup(func() { s.Sync(nil, nil) })
	v1 := Task{
		Secrets: []File{{Name: "dbpass", Data: []byte("pw-1"), UID: 70, GID: 71, Mode: 0o400}, {Name: "api", Data: []byte("k"), Mode: 0o440}},
		Configs: []File{{Name: "/etc/app.conf", Data: []byte("listen=80\n"), Mode: 0o444}},
	}
	if err := s.Sync(map[string]Task{"db-1": v1}, nil); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(root, "db-1")
	if !isTmpfs(t, dir) || isTmpfs(t, root) {
		t.Fatalf("%s is not a tmpfs of its own", dir)
	}
	sec := s.SecretsDir("db-1")
	got, err := os.ReadFile(filepath.Join(sec, "dbpass"))
	if err != nil || string(got) != "pw-1" {
		t.Fatalf("dbpass: %q, %v", got, err)
	}
	var st unix.Stat_t
	if err := unix.Stat(filepath.Join(sec, "dbpass"), &st); err != nil {
		t.Fatal(err)
	}
	if st.Mode&0o777 != 0o400 || st.Uid != 70 || st.Gid != 71 {
		t.Fatalf("dbpass mode %o uid %d gid %d, want 400 70 71", st.Mode&0o777, st.Uid, st.Gid)
	}
	cfgPath := s.ConfigPath("db-1", 0)
	var cst unix.Stat_t
	if err := unix.Stat(cfgPath, &cst); err != nil {
		t.Fatal(err)
	}
	if cst.Mode&0o777 != 0o444 {
		t.Fatalf("config mode %o", cst.Mode&0o777)
	}
	gen1, _ := os.Readlink(filepath.Join(sec, "..data"))

	// An fd opened on version 1 keeps reading version 1; the path gives
	// version 2; the config keeps its inode (it is bind-mounted).
	old, err := os.Open(filepath.Join(sec, "dbpass"))
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	v2 := v1
	v2.Secrets = []File{{Name: "dbpass", Data: []byte("pw-2"), UID: 70, GID: 71, Mode: 0o400}}
	v2.Configs = []File{{Name: "/etc/app.conf", Data: []byte("listen=8080\n"), Mode: 0o444}}
	if err := s.Sync(map[string]Task{"db-1": v2}, nil); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(filepath.Join(sec, "dbpass")); string(got) != "pw-2" {
		t.Fatalf("after the swap dbpass is %q", got)
	}
	if b := make([]byte, 8); true {
		n, _ := old.ReadAt(b, 0)
		if string(b[:n]) != "pw-1" {
			t.Fatalf("an fd opened before the swap reads %q", b[:n])
		}
	}
	if _, err := os.Lstat(filepath.Join(sec, "api")); !os.IsNotExist(err) {
		t.Fatalf("a secret no longer wanted is still there: %v", err)
	}
	if _, err := os.Stat(filepath.Join(sec, gen1)); !os.IsNotExist(err) {
		t.Fatalf("the old generation %s is still there: %v", gen1, err)
	}
	var cst2 unix.Stat_t
	unix.Stat(cfgPath, &cst2)
	if got, _ := os.ReadFile(cfgPath); string(got) != "listen=8080\n" || cst2.Ino != cst.Ino {
		t.Fatalf("config %q inode %d (was %d)", got, cst2.Ino, cst.Ino)
	}
	entries, _ := os.ReadDir(sec)
	if len(entries) != 3 { // ..data, ..<gen>, dbpass
		t.Fatalf("secrets dir holds %d entries", len(entries))
	}

	// Kept: left alone (a restart without the manager). Not wanted: wiped.
	if err := s.Sync(nil, []string{"db-1"}); err != nil {
		t.Fatal(err)
	}
	if !isTmpfs(t, dir) {
		t.Fatal("a kept task lost its tmpfs")
	}
	if err := s.Sync(nil, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("the task's dir is still there: %v", err)
	}
	mounts, _ := os.ReadFile("/proc/self/mountinfo")
	if bytes.Contains(mounts, []byte(dir)) {
		t.Fatal("the task's tmpfs is still mounted")
	}
}

func TestSyncRefusesNamesThatEscape(t *testing.T) {
	s := New(t.TempDir())
	for _, name := range []string{"..", "a/b", ""} {
		if err := s.Sync(map[string]Task{name: {}}, nil); err == nil {
			t.Errorf("task name %q accepted", name)
		}
	}
	needRoot(t)
	root := filepath.Join(t.TempDir(), "tasks")
	s = New(root)
	t.Cleanup(func() { s.Sync(nil, nil) })
	for _, name := range []string{"../../etc/x", "..data", "a/b"} {
		err := s.Sync(map[string]Task{"t-1": {Secrets: []File{{Name: name, Data: []byte("x"), Mode: 0o400}}}}, nil)
		if err == nil {
			t.Errorf("secret target %q accepted", name)
		}
	}
	if _, err := os.Stat(filepath.Join(root, "..", "etc")); !os.IsNotExist(err) {
		t.Fatalf("a file was written outside the task's tmpfs: %v", err)
	}
}

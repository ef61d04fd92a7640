package replicate

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hashicorp/raft"

	"github.com/warren-appliance/warren/cluster/store"
)

func entry(t *testing.T, i uint64, c store.Change) *raft.Log {
	b, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	return &raft.Log{Index: i, Type: raft.LogCommand, Data: append([]byte{entryChange}, b...)}
}

// A restart replays entries the store already holds: they are skipped
// (nothing written), and the applied index survives in the store.
func TestFSMSkipsReplayedEntriesAndRestoresSnapshots(t *testing.T) {
	path := filepath.Join(t.TempDir(), "manager.db")
	st, err := store.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	f := &FSM{st: st}
	e1 := entry(t, 1, store.Diff(nil, store.Snapshot{"nodes": {"a": []byte(`1`)}}))
	e2 := entry(t, 2, store.Diff(store.Snapshot{"nodes": {"a": []byte(`1`)}}, store.Snapshot{"nodes": {"a": []byte(`2`)}}))
	f.Apply(e1)
	f.Apply(e2)
	st.Close()

	st, err = store.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	f = &FSM{st: st}
	f.applied = f.storedIndex()
	if f.applied != 2 {
		t.Fatalf("stored applied index = %d, want 2", f.applied)
	}
	w := st.Writes()
	f.Apply(e1) // replayed: must not bring a=1 back
	f.Apply(e2)
	if st.Writes() != w || string(st.Load("nodes")["a"]) != "2" {
		t.Fatalf("replay wrote (%d writes) or changed state: %q", st.Writes()-w, st.Load("nodes"))
	}
	// A snapshot of this state restores elsewhere, and not over newer state.
	snap, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	snap.Persist(&sink{Buffer: &buf})
	other, err := store.Open(filepath.Join(t.TempDir(), "manager.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	g := &FSM{st: other}
	if err := g.Restore(io.NopCloser(bytes.NewReader(buf.Bytes()))); err != nil {
		t.Fatal(err)
	}
	if string(other.Load("nodes")["a"]) != "2" || g.applied != 2 {
		t.Fatalf("restored %q at %d", other.Load("nodes"), g.applied)
	}
	w = st.Writes()
	if err := f.Restore(io.NopCloser(bytes.NewReader(buf.Bytes()))); err != nil || st.Writes() != w {
		t.Fatalf("restoring what the store holds wrote %d times: %v", st.Writes()-w, err)
	}
}

type sink struct{ *bytes.Buffer }

func (s *sink) ID() string    { return "test" }
func (s *sink) Cancel() error { return nil }
func (s *sink) Close() error  { return nil }

// A store that refuses a write (full disk) does not stop the manager: the
// proposer gets the error, the entry waits, no snapshot is taken past it,
// and it is written, in order, with the next entry once the store works.
func TestFSMKeepsEntriesTheStoreRefuses(t *testing.T) {
	path := filepath.Join(t.TempDir(), "manager.db")
	st, err := store.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	f := &FSM{st: st}
	st.Close() // every write now fails
	e1 := entry(t, 1, store.Diff(nil, store.Snapshot{"nodes": {"a": []byte(`1`)}}))
	if err, _ := f.Apply(e1).(error); err == nil {
		t.Fatal("a refused write reported no error")
	}
	if _, err := f.Snapshot(); err == nil {
		t.Fatal("snapshot taken with an entry not in the store")
	}
	if st, err = store.Open(path); err != nil { // space is back
		t.Fatal(err)
	}
	defer st.Close()
	f.st = st
	e2 := entry(t, 2, store.Diff(nil, store.Snapshot{"nodes": {"b": []byte(`2`)}}))
	if err, _ := f.Apply(e2).(error); err != nil {
		t.Fatal(err)
	}
	if n := st.Load("nodes"); string(n["a"]) != "1" || string(n["b"]) != "2" || f.applied != 2 {
		t.Fatalf("after the store came back: %q at %d", n, f.applied)
	}
}

// Finding 2 of hardening-2: one undecodable entry (appended by anyone who
// speaks Raft) panicked every manager on apply, restarts included. A bad
// entry is refused and logged, counted as applied (a replay skips it), and
// the entries after it apply.
func TestFSMRefusesBadEntriesWithoutPanicking(t *testing.T) {
	path := filepath.Join(t.TempDir(), "manager.db")
	st, err := store.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	f := &FSM{st: st, check: func(c store.Change) error {
		if _, ok := c.Put["forbidden"]; ok {
			return errors.New("unknown bucket forbidden")
		}
		return nil
	}}
	bad := []*raft.Log{
		{Index: 1, Type: raft.LogCommand, Data: []byte{entryChange, '{', 'x'}},
		{Index: 2, Type: raft.LogCommand, Data: []byte{0x7f, 1, 2}},
		{Index: 3, Type: raft.LogCommand, Data: nil},
		entry(t, 4, store.Change{Put: map[string]map[string][]byte{"forbidden": {"a": []byte(`1`)}}}),
	}
	for _, l := range bad {
		func() {
			defer func() {
				if r := recover(); r != nil {
					t.Fatalf("entry %d panicked: %v", l.Index, r)
				}
			}()
			if res := f.Apply(l); res == nil {
				t.Errorf("entry %d: no error for the proposer", l.Index)
			}
		}()
	}
	good := entry(t, 5, store.Diff(nil, store.Snapshot{"nodes": {"a": []byte(`1`)}}))
	if res := f.Apply(good); res != nil {
		t.Fatalf("good entry after bad ones: %v", res)
	}
	if string(st.Load("nodes")["a"]) != "1" || st.Load("forbidden") != nil || f.storedIndex() != 5 {
		t.Fatalf("store: %q %q index %d", st.Load("nodes"), st.Load("forbidden"), f.storedIndex())
	}
}

// Backups carry a SHA-256 of their content, checked on restore: a file
// changed after it was written (one byte of a record) is refused.
func TestBackupIntegrityIsCheckedOnRestore(t *testing.T) {
	dir := t.TempDir()
	st, err := store.Open(filepath.Join(dir, "a.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if err := st.Apply(store.Full(store.Snapshot{"nodes": {"n1": []byte(`{"name":"worker-1","overlay_ip":"10.0.0.2"}`)}})); err != nil {
		t.Fatal(err)
	}
	r := &Replica{fsm: &FSM{st: st, applied: 7}}
	var buf bytes.Buffer
	if err := r.Backup(&buf); err != nil {
		t.Fatal(err)
	}
	restore := func(data []byte) error {
		other, err := store.Open(filepath.Join(t.TempDir(), "b.db"))
		if err != nil {
			t.Fatal(err)
		}
		defer other.Close()
		return LoadBackup(bytes.NewReader(data), other)
	}
	if err := restore(buf.Bytes()); err != nil {
		t.Fatalf("intact backup: %v", err)
	}
	// "10.0.0.2" base64-encoded is in the file; change one of its bytes.
	tampered := bytes.Replace(buf.Bytes(), []byte("MTAuMC4wLj"), []byte("MTAuMC4xLj"), 1)
	if bytes.Equal(tampered, buf.Bytes()) {
		t.Fatalf("test did not change the backup: %s", buf.Bytes())
	}
	if err := restore(tampered); err == nil || !strings.Contains(err.Error(), "SHA-256") {
		t.Fatalf("tampered backup: %v, want a SHA-256 mismatch", err)
	}
}

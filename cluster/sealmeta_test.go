package cluster

import (
	"bytes"
	"encoding/base64"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/warren-appliance/warren/cluster/api"
	"github.com/warren-appliance/warren/cluster/secretbox"
	"github.com/warren-appliance/warren/cluster/store"
)

// b64Fragments returns what is left of s inside base64 of any larger
// blob, whatever its offset: base64 of s after 0, 1 or 2 bytes, without
// the characters the neighbouring bytes change.
func b64Fragments(s []byte) [][]byte {
	var out [][]byte
	for a := 0; a < 3; a++ {
		enc := base64.StdEncoding.EncodeToString(append(make([]byte, a), s...))
		from := 0
		if a > 0 {
			from = 4
		}
		if len(enc)-4 > from+8 {
			out = append(out, []byte(enc[from:len(enc)-4]))
		}
	}
	return out
}

// encodings returns s as the store, Raft entries, snapshots and backups
// may hold it: raw, and base64 inside base64 down to depth levels (a
// []byte field of a JSON record that is itself a []byte of a JSON entry,
// and so on).
func encodings(s []byte, depth int) [][]byte {
	out := [][]byte{s}
	level := [][]byte{s}
	for range depth {
		var next [][]byte
		for _, l := range level {
			next = append(next, b64Fragments(l)...)
		}
		out = append(out, next...)
		level = next
	}
	return out
}

// holds reports which of the named secrets appear in data.
func holds(data []byte, secrets map[string][]byte) []string {
	var found []string
	for name, s := range secrets {
		for _, e := range encodings(s, 3) {
			if bytes.Contains(data, e) {
				found = append(found, name)
				break
			}
		}
	}
	return found
}

// dirBytes concatenates every file under dir except the data key.
func dirBytes(t *testing.T, dir string) []byte {
	t.Helper()
	var all []byte
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || d.Name() == secretbox.KeyFile {
			return err
		}
		b, err := os.ReadFile(p)
		all = append(all, b...)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return all
}

func openedSecrets(m *Manager) map[string][]byte {
	m.mu.Lock()
	defer m.mu.Unlock()
	mt := m.st.meta
	out := map[string][]byte{"ca key": mt.CAKey, "server key": mt.ServerKey,
		"worker secret": []byte(mt.WorkerSecret), "manager secret": []byte(mt.ManagerSecret)}
	if mt.PeerSecret != "" {
		out["peer secret"] = []byte(mt.PeerSecret)
	}
	if r := mt.CARotation; r != nil {
		out["rotation's previous CA key"], out["rotation's previous server key"] = r.PrevCAKey, r.PrevServerKey
	}
	return out
}

// The CA keys (current and, during a rotation, the retiring one), the
// serving keys and both join secrets are nowhere in plaintext in
// manager.db, the Raft log and snapshots, or a backup; the CA certificate,
// which is not secret, is found by the same search in each (so the search
// sees through the encodings). A restart opens them again.
func TestStateHoldsCAKeyAndJoinSecretsSealedOnly(t *testing.T) {
	tm := startManager(t)
	if _, err := tm.m.RotateCA(api.CARotateRequest{Grace: time.Hour}); err != nil {
		t.Fatal(err)
	}
	if _, err := tm.m.RotateJoinToken("worker"); err != nil {
		t.Fatal(err)
	}
	if _, err := tm.m.PeerToken(); err != nil { // federation's peer secret
		t.Fatal(err)
	}
	secrets := openedSecrets(tm.m)
	if len(secrets) != 7 {
		t.Fatalf("want a rotation in progress and a peer secret (7 secrets), have %d", len(secrets))
	}
	for name, s := range secrets {
		if len(s) == 0 {
			t.Fatalf("%s is empty in memory", name)
		}
	}
	if err := tm.m.replica.Raft.Snapshot().Error(); err != nil {
		t.Fatalf("raft snapshot: %v", err)
	}
	var backup bytes.Buffer
	if err := tm.m.Backup(&backup); err != nil {
		t.Fatal(err)
	}
	caCert := map[string][]byte{"ca cert": tm.m.st.meta.CACert}
	w, mg := tm.m.JoinTokens()
	tm.stop()

	files := map[string][]byte{
		"manager.db": dirBytes(t, filepath.Join(tm.dir, "manager.db")),
		"raft log":   dirBytes(t, filepath.Join(tm.dir, "raft", "raft.db")),
		"snapshots":  dirBytes(t, filepath.Join(tm.dir, "raft", "snapshots")),
		"backup":     backup.Bytes(),
	}
	for what, data := range files {
		if len(data) == 0 {
			t.Fatalf("%s: nothing to search", what)
		}
		if got := holds(data, caCert); len(got) == 0 {
			t.Errorf("%s: the search does not find the CA certificate, so it proves nothing", what)
		}
		if got := holds(data, secrets); len(got) > 0 {
			t.Errorf("%s holds in plaintext: %v", what, got)
		}
	}

	tm.start()
	if w2, mg2 := tm.m.JoinTokens(); w2 != w || mg2 != mg {
		t.Fatal("join tokens changed across a restart")
	}
	for name, s := range openedSecrets(tm.m) {
		if !bytes.Equal(s, secrets[name]) {
			t.Errorf("%s did not open to the same value after a restart", name)
		}
	}
}

// A state written before sealing (plaintext CA key and join secrets) still
// loads, and the leader seals it with its first write: manager.db and
// backups then hold them sealed only, tokens and CA unchanged. A leader
// without a data key makes one.
func TestPlaintextStateIsSealedOnUpgrade(t *testing.T) {
	tm := startManager(t)
	secrets := openedSecrets(tm.m)
	w, mg := tm.m.JoinTokens()
	tm.m.mu.Lock()
	legacy := tm.m.st.clone()
	tm.m.mu.Unlock()
	tm.stop()

	// The board as an older version left it: a store with the secrets in
	// plaintext, no data key (clusters made before secrets had none).
	legacy.meta.Sealed = nil
	if err := os.RemoveAll(filepath.Join(tm.dir, "raft")); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"manager.db", secretbox.KeyFile} {
		if err := os.Remove(filepath.Join(tm.dir, f)); err != nil {
			t.Fatal(err)
		}
	}
	snap, err := legacy.snapshot()
	if err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(filepath.Join(tm.dir, "manager.db"))
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Commit(snap); err != nil {
		t.Fatal(err)
	}
	st.Close()
	if got := holds(dirBytes(t, filepath.Join(tm.dir, "manager.db")), secrets); len(got) != len(secrets) {
		t.Fatalf("the legacy store should hold the secrets in plaintext (control), found %v", got)
	}

	tm.start()
	if w2, mg2 := tm.m.JoinTokens(); w2 != w || mg2 != mg {
		t.Fatal("join tokens changed by the upgrade")
	}
	var stored *state
	tm.m.replica.Read(func(st *store.Store, _ uint64) { stored, err = loadState(st.All()) })
	if err != nil {
		t.Fatal(err)
	}
	if stored.meta.Sealed == nil || stored.meta.plainSecrets() {
		t.Fatalf("the leader did not seal the state: sealed %v, plaintext %v", stored.meta.Sealed != nil, stored.meta.plainSecrets())
	}
	var backup bytes.Buffer
	if err := tm.m.Backup(&backup); err != nil {
		t.Fatal(err)
	}
	if got := holds(backup.Bytes(), secrets); len(got) > 0 {
		t.Errorf("a backup after the upgrade holds in plaintext: %v", got)
	}
	if _, err := secretbox.Load(tm.dir); err != nil {
		t.Fatalf("the leader made no data key: %v", err)
	}
	tm.restart()
	if w2, _ := tm.m.JoinTokens(); w2 != w {
		t.Fatal("join tokens changed after the upgrade and a restart")
	}
}

// Without the data key, a sealed state does not open: the manager says
// which file it needs instead of starting without a CA.
func TestSealedStateNeedsTheDataKey(t *testing.T) {
	tm := startManager(t)
	tm.stop()
	if err := os.Remove(filepath.Join(tm.dir, secretbox.KeyFile)); err != nil {
		t.Fatal(err)
	}
	_, err := OpenManager(tm.cfg)
	if err == nil {
		t.Fatal("a sealed state opened without its data key")
	}
	if !bytes.Contains([]byte(err.Error()), []byte(secretbox.KeyFile)) {
		t.Fatalf("error does not name the key file: %v", err)
	}
	other, _ := secretbox.NewKey()
	if err := secretbox.Save(tm.dir, other); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenManager(tm.cfg); err == nil {
		t.Fatal("a sealed state opened with another cluster's data key")
	}
}

// Sealed values are bound to their field and cluster: swapped between
// fields they do not open; a stored record without its sealed CA key is
// refused on apply.
func TestSealedMetaBinding(t *testing.T) {
	s := testTrustState(t)
	k, _ := secretbox.NewKey()
	if err := sealMeta(s, nil, k, 0); err != nil {
		t.Fatal(err)
	}
	load := func(mt meta) *state { return &state{meta: storedMeta(mt)} }
	if err := openMeta(load(s.meta), k); err != nil {
		t.Fatalf("does not open: %v", err)
	}
	swapped := s.meta
	sm := *swapped.Sealed
	sm.WorkerSecret, sm.ManagerSecret = sm.ManagerSecret, sm.WorkerSecret
	swapped.Sealed = &sm
	if err := openMeta(load(swapped), k); err == nil {
		t.Error("join secrets swapped between fields opened")
	}
	other := s.meta
	other.ClusterID = "c2"
	if err := openMeta(load(other), k); err == nil {
		t.Error("opened under another cluster ID")
	}
	snap, err := load(s.meta).snapshot()
	if err != nil {
		t.Fatal(err)
	}
	if err := checkChange(store.Diff(store.Snapshot{}, snap)); err != nil {
		t.Fatalf("a sealed record was refused: %v", err)
	}
	bad := s.meta
	sm2 := *bad.Sealed
	sm2.CAKey = nil
	bad.Sealed = &sm2
	if snap, err = load(bad).snapshot(); err != nil {
		t.Fatal(err)
	}
	if err := checkChange(store.Diff(store.Snapshot{}, snap)); err == nil {
		t.Error("a record without its sealed CA key was accepted")
	}
}

// storedState is a manager's replicated state as stored (sealed).
func storedState(t *testing.T, m *Manager) *state {
	t.Helper()
	var s *state
	var err error
	m.replica.Read(func(st *store.Store, _ uint64) { s, err = loadState(st.All()) })
	if err != nil || s == nil {
		t.Fatalf("stored state: %v", err)
	}
	return s
}

// `node rm` of a manager replaces the data key: the remaining managers get
// the new key over manager mTLS and the state (CA keys, join secrets,
// secrets' values) is sealed again with it, so the removed manager's copy
// of secrets.key opens none of it. A manager that was down during the
// re-key asks for the key when it comes back and opens the state.
func TestManagerRemovalReplacesTheDataKey(t *testing.T) {
	hs := startHA(t, 5) // the removal and the re-key keep a quorum with two down
	leader := leaderOf(hs)
	if _, err := leader.m.CreateObject(api.KindSecret, api.ObjectSpec{Name: "dbpass", Data: []byte("pw-1")}); err != nil {
		t.Fatal(err)
	}
	// A registry login, sealed like the secrets (registries.go).
	const reg = "registry.example:5000"
	err := leader.m.update(func(s *state) error {
		k, err := leader.m.dataKeyLocked(s)
		if err != nil {
			return err
		}
		sealed, err := k.Seal(api.KindRegistry, reg, 1, []byte(`{"username":"u","password":"p"}`))
		s.registries[reg] = registryRecord{Host: reg, Username: "u", Sealed: sealed, AuthVersion: 1}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	var removed, down *haManager
	for _, h := range followersOf(hs) {
		switch {
		case removed == nil:
			removed = h
		case down == nil:
			down = h
		}
	}
	oldKey := leader.m.DataKey()
	removedID := removed.m.Self().ID
	w, mg := leader.m.JoinTokens()
	for _, h := range hs {
		if !bytes.Equal(h.m.DataKey(), oldKey) {
			t.Fatalf("%s does not hold the cluster's data key", h.name)
		}
	}
	removedKey, err := secretbox.Load(removed.cfg.StateDir)
	if err != nil {
		t.Fatal(err)
	}
	down.kill()
	removed.kill()
	if err := leader.m.RemoveNode(removedID, true); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the state sealed with a new key", func() bool {
		s := storedState(t, leader.m)
		return !s.meta.RekeyNeeded && stateKeyGen(s) == 1
	})
	newKey := secretbox.Key(leader.m.DataKey())
	if bytes.Equal(newKey, oldKey) {
		t.Fatal("the leader kept the old key")
	}
	stored := storedState(t, leader.m)
	if keyOpensState(removedKey, stored) {
		t.Fatal("the removed manager's key opens the state after the re-key")
	}
	if err := openMeta(storedState(t, leader.m), removedKey); err == nil {
		t.Fatal("the removed manager's key opens the CA key and join secrets")
	}
	if _, err := removedKey.Open(api.KindSecret, "dbpass", stored.secrets["dbpass"].Version, stored.secrets["dbpass"].Sealed); err == nil {
		t.Fatal("the removed manager's key opens a secret")
	}
	if v, err := newKey.Open(api.KindSecret, "dbpass", stored.secrets["dbpass"].Version, stored.secrets["dbpass"].Sealed); err != nil || string(v) != "pw-1" {
		t.Fatalf("the secret after the re-key: %q %v", v, err)
	}
	r := stored.registries[reg]
	if _, err := removedKey.Open(api.KindRegistry, reg, r.AuthVersion, r.Sealed); err == nil {
		t.Fatal("the removed manager's key opens the registry login")
	}
	if _, err := newKey.Open(api.KindRegistry, reg, r.AuthVersion, r.Sealed); err != nil {
		t.Fatalf("the registry login after the re-key: %v", err)
	}
	if err := openMeta(storedState(t, leader.m), newKey); err != nil {
		t.Fatalf("the new key does not open the state: %v", err)
	}
	if w2, mg2 := leader.m.JoinTokens(); w2 != w || mg2 != mg {
		t.Fatal("the re-key changed the join tokens")
	}
	// The manager that was up got the key from the leader and took it
	// when the entry applied.
	for _, h := range hs {
		if h == leader || h == removed || h == down {
			continue
		}
		waitUntil(t, h.name+" takes the new key", func() bool { return bytes.Equal(h.m.DataKey(), newKey) })
		if k, err := secretbox.Load(h.cfg.StateDir); err != nil || !bytes.Equal(k, newKey) {
			t.Fatalf("%s's key file: %v", h.name, err)
		}
		if _, err := secretbox.LoadNext(h.cfg.StateDir); !os.IsNotExist(err) {
			t.Fatalf("%s kept the next key file: %v", h.name, err)
		}
	}
	// The manager that was down asks for the key when it comes back.
	down.agent = nil // it rejoins as itself, with its state
	down.start()
	waitUntil(t, down.name+" gets the new key", func() bool { return bytes.Equal(down.m.DataKey(), newKey) })
	waitUntil(t, down.name+" opens the re-keyed state", func() bool {
		down.m.mu.Lock()
		defer down.m.mu.Unlock()
		return down.m.st != nil && stateKeyGen(down.m.st) == 1 && down.m.st.meta.WorkerSecret != ""
	})
	if w2, _ := down.m.JoinTokens(); w2 != w {
		t.Fatal("the manager that was down serves other tokens")
	}
	// And it keeps working across a restart with the new key only.
	down.kill()
	down.start()
	if w2, _ := down.m.JoinTokens(); w2 != w {
		t.Fatal("after a restart the manager that was down serves other tokens")
	}
}

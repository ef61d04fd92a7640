// Package replicate replicates the manager's store over Raft
// (github.com/hashicorp/raft): every change of the store is a log entry
// (a store.Change: whole records put or deleted), applied by one FSM to the
// bbolt store on every manager. The log and stable store are
// raft-boltdb/v2 (bbolt) and snapshots are files, both under the state dir.
//
// The package knows nothing of the cluster's records: the manager computes
// a change on the leader, Propose replicates it, and every manager's FSM
// applies it with store.Apply, which writes only records whose bytes differ.
package replicate

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	bolt "go.etcd.io/bbolt"

	"github.com/warren-appliance/warren/cluster/store"
)

// BucketRaft holds the index of the last log entry applied to the store,
// written in the same transaction as the entry, so a restart replays
// nothing the store already holds (no rewrite of the SD card on start).
const (
	BucketRaft  = "_raft"
	keyApplied  = "applied"
	entryChange = 1 // first byte of a log entry: a JSON store.Change follows
)

// ApplyTimeout bounds how long a proposal waits to be committed; without a
// quorum the leader steps down well before (LeaderLeaseTimeout).
const ApplyTimeout = 5 * time.Second

// Config configures a replica.
type Config struct {
	Dir    string // raft files (raft.db, snapshots/) live here
	ID     string // this manager's node ID
	Addr   string // host:port other managers dial to reach this one
	Stream raft.StreamLayer
	Store  *store.Store
	Logger *slog.Logger
	// OnApply is called after every applied entry or restored snapshot,
	// from raft's FSM goroutine: it must not block.
	OnApply func()
	// Tune adjusts the raft config (tests shorten the timeouts).
	Tune func(*raft.Config)
	// Check refuses a committed change the caller cannot load (records
	// that do not decode, unknown buckets): such an entry is logged and
	// applied as no change, on every manager alike.
	Check func(store.Change) error
}

// Replica is one manager's raft node with its FSM.
type Replica struct {
	Raft  *raft.Raft
	fsm   *FSM
	logs  *raftboltdb.BoltStore
	snaps raft.SnapshotStore
	trans raft.Transport
	conf  *raft.Config
	cfg   Config
}

// RaftConfig returns the raft timing used by every manager: hashicorp's
// defaults (heartbeat and election 1 s), except the leader lease, doubled
// to 1 s.
//
// A stalled disk (SD card) does not trigger elections: followers answer
// heartbeats on a fast path that does not touch the disk, and the leader
// sends heartbeats from per-follower goroutines independent of its own log
// writes. What does is a starved CPU: on our loaded 2-core test machine
// heartbeats were answered 300-600 ms late, and with the default 500 ms
// lease leaders stepped down in a loop; with 1 s they did not. Slower
// heartbeat and election timeouts would only delay failover, which is
// detection (1-2 s without heartbeats) plus one election.
// Snapshots every 8192 entries or 2 minutes and 10240 trailing entries
// (defaults) bound raft.db.
func RaftConfig(id string) *raft.Config {
	c := raft.DefaultConfig()
	c.LocalID = raft.ServerID(id)
	c.LeaderLeaseTimeout = time.Second
	return c
}

// Open opens (creating if needed) the raft files under cfg.Dir and starts
// the raft node. It does not bootstrap: see HasState and Bootstrap.
func Open(cfg Config) (*Replica, error) {
	r, err := openStores(cfg)
	if err != nil {
		return nil, err
	}
	ra, err := raft.NewRaft(r.conf, r.fsm, r.logs, r.logs, r.snaps, r.trans)
	if err != nil {
		r.closeStores()
		return nil, fmt.Errorf("start raft: %w", err)
	}
	r.Raft = ra
	return r, nil
}

func openStores(cfg Config) (*Replica, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if err := os.MkdirAll(filepath.Join(cfg.Dir, "snapshots"), 0o700); err != nil {
		return nil, fmt.Errorf("raft dir: %w", err)
	}
	hl := newHCLogger(cfg.Logger.With("component", "raft"))
	conf := RaftConfig(cfg.ID)
	conf.Logger = hl
	if cfg.Tune != nil {
		cfg.Tune(conf)
	}
	logs, err := raftboltdb.New(raftboltdb.Options{Path: filepath.Join(cfg.Dir, "raft.db"), BoltOptions: &bolt.Options{Timeout: 5 * time.Second}})
	if err != nil {
		return nil, fmt.Errorf("open raft log %s (is another manager running on this state dir?): %w", filepath.Join(cfg.Dir, "raft.db"), err)
	}
	if err := os.Chmod(filepath.Join(cfg.Dir, "raft.db"), 0o600); err != nil {
		logs.Close()
		return nil, err
	}
	snaps, err := raft.NewFileSnapshotStoreWithLogger(filepath.Join(cfg.Dir, "snapshots"), 2, hl)
	if err != nil {
		logs.Close()
		return nil, fmt.Errorf("raft snapshots: %w", err)
	}
	var trans raft.Transport
	if cfg.Stream != nil {
		trans = raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
			Stream: cfg.Stream, MaxPool: 3, Timeout: 10 * time.Second, Logger: hl,
		})
	} else {
		_, trans = raft.NewInmemTransport(raft.ServerAddress(cfg.Addr)) // offline recovery
	}
	fsm := &FSM{st: cfg.Store, notify: cfg.OnApply, log: cfg.Logger, check: cfg.Check}
	fsm.applied = fsm.storedIndex()
	return &Replica{fsm: fsm, logs: logs, snaps: snaps, trans: trans, conf: conf, cfg: cfg}, nil
}

func (r *Replica) closeStores() {
	if c, ok := r.trans.(io.Closer); ok {
		c.Close()
	}
	r.logs.Close()
}

// HasState reports whether dir holds raft state (a log, a term or a
// snapshot): if not, the caller bootstraps or waits to be added.
func HasState(dir string) (bool, error) {
	if _, err := os.Stat(filepath.Join(dir, "raft.db")); errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	logs, err := raftboltdb.New(raftboltdb.Options{Path: filepath.Join(dir, "raft.db"), BoltOptions: &bolt.Options{Timeout: 5 * time.Second}})
	if err != nil {
		return false, fmt.Errorf("open raft log: %w", err)
	}
	defer logs.Close()
	snaps, err := raft.NewFileSnapshotStoreWithLogger(filepath.Join(dir, "snapshots"), 2, newHCLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		return false, err
	}
	return raft.HasExistingState(logs, logs, snaps)
}

// Bootstrap makes this replica the one voter of a new raft cluster. The
// store's applied index is reset first: the new log starts at 1.
func (r *Replica) Bootstrap() error {
	if err := r.fsm.resetIndex(); err != nil {
		return err
	}
	f := r.Raft.BootstrapCluster(raft.Configuration{Servers: []raft.Server{
		{Suffrage: raft.Voter, ID: raft.ServerID(r.cfg.ID), Address: raft.ServerAddress(r.cfg.Addr)},
	}})
	if err := f.Error(); err != nil && !errors.Is(err, raft.ErrCantBootstrap) {
		return fmt.Errorf("bootstrap raft: %w", err)
	}
	return nil
}

// Recover rewrites the raft configuration in dir to this manager alone
// (hashicorp's RecoverCluster: committed entries are applied and
// snapshotted first). Used by `cluster init --force-new-cluster` on a
// survivor, with raft stopped.
func Recover(cfg Config) error {
	r, err := openStores(cfg)
	if err != nil {
		return err
	}
	defer r.closeStores()
	err = raft.RecoverCluster(r.conf, r.fsm, r.logs, r.logs, r.snaps, r.trans, raft.Configuration{Servers: []raft.Server{
		{Suffrage: raft.Voter, ID: raft.ServerID(cfg.ID), Address: raft.ServerAddress(cfg.Addr)},
	}})
	if err != nil {
		return fmt.Errorf("recover raft as a one-manager cluster: %w", err)
	}
	return nil
}

// Propose replicates a change and waits until this manager's FSM applied
// it; it returns the entry's index. Only the leader can propose.
func (r *Replica) Propose(c store.Change) (uint64, error) {
	data, err := json.Marshal(c)
	if err != nil {
		return 0, fmt.Errorf("encode change: %w", err)
	}
	f := r.Raft.Apply(append([]byte{entryChange}, data...), ApplyTimeout)
	if err := f.Error(); err != nil {
		return 0, err
	}
	if err, ok := f.Response().(error); ok && err != nil {
		return 0, err
	}
	return f.Index(), nil
}

// Applied returns the index of the last entry applied to the store.
func (r *Replica) Applied() uint64 { return r.fsm.index() }

// Read runs fn on the store, consistent with the applied index.
func (r *Replica) Read(fn func(st *store.Store, applied uint64)) {
	r.fsm.mu.Lock()
	defer r.fsm.mu.Unlock()
	fn(r.fsm.st, r.fsm.applied)
}

// Close stops raft and closes its files (not the store).
func (r *Replica) Close() error {
	err := r.Raft.Shutdown().Error()
	r.closeStores()
	return err
}

// FSM applies log entries to the store.
type FSM struct {
	mu      sync.Mutex
	st      *store.Store
	applied uint64
	pending []pendingEntry // committed, not yet written (disk full)
	notify  func()
	log     *slog.Logger
	check   func(store.Change) error // Config.Check
}

func (f *FSM) index() uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.applied
}

func (f *FSM) storedIndex() uint64 {
	v, _ := strconv.ParseUint(string(f.st.Load(BucketRaft)[keyApplied]), 10, 64)
	return v
}

func (f *FSM) resetIndex() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.applied = 0
	return f.st.Apply(store.Change{Delete: map[string][]string{BucketRaft: {keyApplied}}})
}

func indexChange(c *store.Change, i uint64) {
	if c.Put == nil {
		c.Put = map[string]map[string][]byte{}
	}
	c.Put[BucketRaft] = map[string][]byte{keyApplied: []byte(strconv.FormatUint(i, 10))}
}

// Apply applies one committed entry. An entry the store already holds (a
// replay after restart) is skipped. An entry the store cannot write (a
// full disk) is kept in order with the ones after it and retried with the
// next entry; the proposer gets the error. Raft's log holds them too, so
// a restart replays them.
func (f *FSM) Apply(l *raft.Log) any {
	if l.Type != raft.LogCommand {
		return nil
	}
	f.mu.Lock()
	if l.Index <= f.applied {
		f.mu.Unlock()
		return nil
	}
	c, bad := f.decode(l)
	if bad != nil {
		// Refused: an entry no manager can apply must not stop them all
		// (a panic here repeats at every restart, since the log replays
		// it). It is counted as applied, with no change, so a replay skips
		// it and the entries after it apply.
		c = store.Change{}
		if f.log != nil {
			f.log.Error("replicated store: refused a log entry; it changes nothing", "index", l.Index, "err", bad)
		}
	}
	f.pending = append(f.pending, pendingEntry{index: l.Index, change: c})
	before := f.applied
	err := f.drainLocked()
	progressed := f.applied != before
	f.mu.Unlock()
	if progressed && f.notify != nil {
		f.notify()
	}
	if err != nil {
		if f.log != nil {
			f.log.Error("replicated store: cannot write an entry; it is kept and retried with the next one", "index", l.Index, "waiting", f.waiting(), "err", err)
		}
		return err
	}
	return bad
}

// decode reads an entry's change and checks it (Config.Check).
func (f *FSM) decode(l *raft.Log) (store.Change, error) {
	var c store.Change
	if len(l.Data) == 0 || l.Data[0] != entryChange {
		return c, fmt.Errorf("log entry %d has unknown type (written by a newer version?)", l.Index)
	}
	if err := json.Unmarshal(l.Data[1:], &c); err != nil {
		return c, fmt.Errorf("log entry %d: %w", l.Index, err)
	}
	if f.check != nil {
		if err := f.check(c); err != nil {
			return c, fmt.Errorf("log entry %d: %w", l.Index, err)
		}
	}
	return c, nil
}

type pendingEntry struct {
	index  uint64
	change store.Change
}

// drainLocked applies the pending entries in order, stopping at the first
// the store refuses.
func (f *FSM) drainLocked() error {
	for len(f.pending) > 0 {
		e := f.pending[0]
		c := e.change
		if c.Replace {
			c = store.Diff(f.st.All(), replaceTarget(c))
		}
		indexChange(&c, e.index)
		if err := f.st.Apply(c); err != nil {
			return err
		}
		f.applied = e.index
		f.pending = f.pending[1:]
	}
	f.pending = nil
	return nil
}

func (f *FSM) waiting() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.pending)
}

// replaceTarget is what a Replace change makes the named buckets hold.
func replaceTarget(c store.Change) store.Snapshot {
	want := store.Snapshot{}
	for name, recs := range c.Put {
		want[name] = recs
	}
	return want
}

// snapshotFile is the on-disk form of a snapshot (and of a backup).
type snapshotFile struct {
	Applied uint64         `json:"applied"`
	Store   store.Snapshot `json:"store"`
}

// Snapshot captures the store (without the applied index) at this point.
func (f *FSM) Snapshot() (raft.FSMSnapshot, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.pending) > 0 {
		// The store is behind the log: a snapshot now would let Raft drop
		// entries the store does not hold yet.
		return nil, fmt.Errorf("store is %d entries behind the log (disk full?): no snapshot yet", len(f.pending))
	}
	all := f.st.All()
	delete(all, BucketRaft)
	return &fsmSnapshot{snapshotFile{Applied: f.applied, Store: all}}, nil
}

// Restore replaces the store with a snapshot, unless the store already
// holds it or something newer (a restart).
func (f *FSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	var s snapshotFile
	if err := json.NewDecoder(rc).Decode(&s); err != nil {
		return fmt.Errorf("decode snapshot: %w", err)
	}
	f.mu.Lock()
	if s.Applied != 0 && s.Applied <= f.applied {
		f.mu.Unlock()
		return nil
	}
	c := store.Diff(f.st.All(), withEmptyBuckets(f.st.All(), s.Store))
	indexChange(&c, s.Applied)
	err := f.st.Apply(c)
	if err == nil {
		f.applied, f.pending = s.Applied, nil
	}
	f.mu.Unlock()
	if err != nil {
		return fmt.Errorf("restore snapshot: %w", err)
	}
	if f.notify != nil {
		f.notify()
	}
	return nil
}

// withEmptyBuckets names every bucket the store holds in want, so a
// restore deletes records of buckets the snapshot has none of.
func withEmptyBuckets(have, want store.Snapshot) store.Snapshot {
	out := store.Snapshot{}
	for name := range have {
		if name != BucketRaft {
			out[name] = map[string][]byte{}
		}
	}
	for name, recs := range want {
		out[name] = recs
	}
	return out
}

type fsmSnapshot struct{ s snapshotFile }

func (s *fsmSnapshot) Persist(sink raft.SnapshotSink) error {
	if err := json.NewEncoder(sink).Encode(s.s); err != nil {
		sink.Cancel()
		return fmt.Errorf("write snapshot: %w", err)
	}
	return sink.Close()
}

func (s *fsmSnapshot) Release() {}

// backupFormat names the backup envelope: the state document and the
// SHA-256 of its exact bytes, so that a restore refuses a file damaged or
// edited since it was written. (It is a checksum, not a signature: an
// encrypted backup, `--passphrase-file`, is also authenticated.)
const backupFormat = "warren-backup/2"

type backupEnvelope struct {
	Format string          `json:"format"`
	SHA256 string          `json:"sha256"`
	State  json.RawMessage `json:"state"` // a snapshotFile
}

// Backup writes the store as it is at the last applied entry (a
// consistent cut, taken under the FSM lock) as a backup envelope.
func (r *Replica) Backup(w io.Writer) error {
	r.fsm.mu.Lock()
	all := r.fsm.st.All()
	applied := r.fsm.applied
	r.fsm.mu.Unlock()
	delete(all, BucketRaft)
	state, err := json.Marshal(snapshotFile{Applied: applied, Store: all})
	if err != nil {
		return fmt.Errorf("write backup: %w", err)
	}
	sum := sha256.Sum256(state)
	if err := json.NewEncoder(w).Encode(backupEnvelope{Format: backupFormat, SHA256: hex.EncodeToString(sum[:]), State: state}); err != nil {
		return fmt.Errorf("write backup: %w", err)
	}
	return nil
}

// LoadBackup reads a backup written by Backup into an empty store, without
// any Raft index: the manager started on it bootstraps Raft from it. The
// content's SHA-256 must match; backups from before it was written (no
// envelope) are read as they are.
func LoadBackup(rd io.Reader, st *store.Store) error {
	data, err := io.ReadAll(rd)
	if err != nil {
		return fmt.Errorf("read backup: %w", err)
	}
	var env backupEnvelope
	if err := json.Unmarshal(data, &env); err != nil {
		return fmt.Errorf("read backup: not a backup written by `warren cluster backup`: %w", err)
	}
	state := data
	if env.Format != "" {
		if env.Format != backupFormat {
			return fmt.Errorf("read backup: format %q is not %q (written by a newer version?)", env.Format, backupFormat)
		}
		sum := sha256.Sum256(env.State)
		if got := hex.EncodeToString(sum[:]); got != env.SHA256 {
			return fmt.Errorf("read backup: its content does not match its SHA-256 (recorded %s, content %s): the file was damaged or changed after it was written; use another copy", env.SHA256, got)
		}
		state = env.State
	}
	var s snapshotFile
	if err := json.Unmarshal(state, &s); err != nil {
		return fmt.Errorf("read backup: %w", err)
	}
	if len(s.Store) == 0 {
		return errors.New("read backup: it holds no state")
	}
	delete(s.Store, BucketRaft)
	return st.Apply(store.Full(s.Store))
}

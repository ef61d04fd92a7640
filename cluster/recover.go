package cluster

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/warren-appliance/warren/cluster/clustermap"
	"github.com/warren-appliance/warren/cluster/replicate"
	"github.com/warren-appliance/warren/cluster/secretbox"
	"github.com/warren-appliance/warren/cluster/store"
)

// Backup writes a consistent copy of the cluster state (every node, IP,
// block, service, VIP, the CA with its key, the join secrets) as this
// manager's replicated store holds it. The caller writes it 0600.
func (m *Manager) Backup(w io.Writer) error { return m.replica.Backup(w) }

// Restored clusters move their map version up so that nodes, which may
// hold maps newer than the backup, take the restored map as newer. The bump
// is the operator's (`--version-bump`), bounded: nodes' own claims never
// move the version (any member can claim any number).
const (
	// DefaultVersionBump covers about a million changes made after the
	// backup was taken.
	DefaultVersionBump uint64 = 1 << 20
	// MaxVersionBump is the largest --version-bump.
	MaxVersionBump uint64 = 1 << 32
)

// Restore is a backup to restore (`--restore`).
type Restore struct {
	File string // "": no restore, only --force-new-cluster
	// Passphrase decrypts an encrypted backup (nil: the file must not be
	// encrypted).
	Passphrase []byte
	// VersionBump (0: DefaultVersionBump, at most MaxVersionBump) is added
	// to the backup's map version.
	VersionBump uint64
}

// ForceNewCluster prepares stateDir, offline, to start as a one-manager
// cluster keeping its state (`warren cluster init --force-new-cluster`):
// with restore.File != "", stateDir must hold no cluster and the backup becomes
// its store; otherwise its Raft configuration is rewritten to this manager
// alone (hashicorp's RecoverCluster). advertise is this manager's API
// address as the other managers will reach it; joinedID is its node ID if
// it joined the cluster (ManagerConfig.JoinedID).
func ForceNewCluster(stateDir, advertise, joinedID string, restore Restore, log *slog.Logger) error {
	if log == nil {
		log = slog.Default()
	}
	dbPath := filepath.Join(stateDir, "manager.db")
	raftDir := filepath.Join(stateDir, "raft")
	if restore.File != "" {
		for _, p := range []string{dbPath, raftDir} {
			if _, err := os.Stat(p); err == nil {
				return fmt.Errorf("--restore needs a fresh state dir, but %s exists: move it away first (it is this board's own state)", p)
			}
		}
		data, err := os.ReadFile(restore.File)
		if err != nil {
			return fmt.Errorf("--restore: %w", err)
		}
		plain, err := OpenBackup(data, restore.Passphrase)
		if err != nil {
			return fmt.Errorf("--restore %s: %w", restore.File, err)
		}
		st, err := store.Open(dbPath)
		if err != nil {
			return err
		}
		err = replicate.LoadBackup(bytes.NewReader(plain), st)
		var from, to uint64
		if err == nil {
			err = restoreDataKey(stateDir, restore.File, st)
		}
		if err == nil {
			from, to, err = bumpVersion(st, restore.VersionBump)
		}
		st.Close()
		if err != nil {
			os.Remove(dbPath)
			return fmt.Errorf("--restore %s: %w", restore.File, err)
		}
		log.Info("state restored from backup; the manager starts from it as a one-manager cluster", "file", restore.File,
			"map_version", to, "backup_version", from)
		return nil
	}
	if _, err := os.Stat(dbPath); err != nil {
		return fmt.Errorf("--force-new-cluster needs this manager's existing state (%s): %w", dbPath, err)
	}
	hasRaft, err := replicate.HasState(raftDir)
	if err != nil {
		return err
	}
	st, err := store.Open(dbPath)
	if err != nil {
		return err
	}
	defer st.Close()
	s, err := loadState(st)
	if err != nil {
		return err
	}
	if s == nil {
		return errors.New("--force-new-cluster: this state dir holds no cluster")
	}
	if !hasRaft {
		return nil // a single-manager store: the manager bootstraps Raft from it
	}
	id := s.meta.SelfID
	if joinedID != "" {
		id = joinedID
	}
	log.Warn("forcing a new cluster: this manager becomes the only one, keeping its state", "id", id, "address", advertise)
	return replicate.Recover(replicate.Config{Dir: raftDir, ID: id, Addr: advertise, Store: st, Logger: log})
}

// BackupKeySuffix names the data key file `warren cluster backup FILE`
// writes beside FILE: FILE.key.
const BackupKeySuffix = ".key"

// restoreDataKey installs the data key kept beside a backup (FILE.key).
// It is required when the backup holds sealed values (the CA key and join
// secrets of any backup made since they are sealed, secrets and configs):
// without it they cannot be opened. It must open them.
func restoreDataKey(stateDir, backup string, st *store.Store) error {
	s, err := loadState(st)
	if err != nil || s == nil {
		return err
	}
	keyPath := backup + BackupKeySuffix
	k, err := secretbox.LoadFile(keyPath)
	sealed := s.meta.Sealed != nil && !s.meta.plainSecrets()
	if !sealed && len(s.secrets) == 0 && len(s.configs) == 0 {
		if err != nil {
			return nil // nothing sealed (a backup from before sealing): the leader makes a key and seals
		}
		return secretbox.Save(stateDir, k) // the same key as before
	}
	if err != nil {
		return fmt.Errorf("the backup's CA key and join secrets (and its %d secret(s) and %d config(s)) are sealed with the cluster's data key, which is needed: put the key file written with the backup at %s (%w)",
			len(s.secrets), len(s.configs), keyPath, err)
	}
	if !keyOpensState(k, s) {
		return fmt.Errorf("%s does not open the backup's sealed values: it is another cluster's key, or one replaced since (the key is replaced when a manager is removed: use the key file written with this backup)", keyPath)
	}
	return secretbox.Save(stateDir, k)
}

// bumpVersion adds bump (0: DefaultVersionBump) to the stored map version.
func bumpVersion(st *store.Store, bump uint64) (from, to uint64, err error) {
	if bump == 0 {
		bump = DefaultVersionBump
	}
	if bump > MaxVersionBump {
		return 0, 0, fmt.Errorf("--version-bump %d is too large: at most %d", bump, MaxVersionBump)
	}
	s, err := loadState(st)
	if err != nil {
		return 0, 0, err
	}
	if s == nil {
		return 0, 0, errors.New("the backup holds no cluster")
	}
	from = s.meta.Version
	if from > clustermap.MaxVersion-bump {
		return 0, 0, fmt.Errorf("the backup's map version %d plus --version-bump %d passes the bound %d", from, bump, clustermap.MaxVersion)
	}
	s.meta.Version = from + bump
	snap, err := s.snapshot()
	if err != nil {
		return 0, 0, err
	}
	if err := st.Commit(store.Snapshot{bucketMeta: snap[bucketMeta]}); err != nil {
		return 0, 0, fmt.Errorf("write the bumped version: %w", err)
	}
	return from, s.meta.Version, nil
}

package cluster

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/warren-appliance/warren/cluster/api"
	"github.com/warren-appliance/warren/cluster/replicate"
	"github.com/warren-appliance/warren/cluster/secretbox"
	"github.com/warren-appliance/warren/cluster/store"
)

// Backup writes a consistent copy of the cluster state (every node, IP,
// block, service, VIP, the CA with its key, the join secrets) as this
// manager's replicated store holds it. The caller writes it 0600.
func (m *Manager) Backup(w io.Writer) error { return m.replica.Backup(w) }

// ForceNewCluster prepares stateDir, offline, to start as a one-manager
// cluster keeping its state (`warren cluster init --force-new-cluster`):
// with restore != "", stateDir must hold no cluster and the backup becomes
// its store; otherwise its Raft configuration is rewritten to this manager
// alone (hashicorp's RecoverCluster). advertise is this manager's API
// address as the other managers will reach it; joinedID is its node ID if
// it joined the cluster (ManagerConfig.JoinedID).
func ForceNewCluster(stateDir, advertise, restore, joinedID string, log *slog.Logger) error {
	if log == nil {
		log = slog.Default()
	}
	dbPath := filepath.Join(stateDir, "manager.db")
	raftDir := filepath.Join(stateDir, "raft")
	if restore != "" {
		for _, p := range []string{dbPath, raftDir} {
			if _, err := os.Stat(p); err == nil {
				return fmt.Errorf("--restore needs a fresh state dir, but %s exists: move it away first (it is this board's own state)", p)
			}
		}
		f, err := os.Open(restore)
		if err != nil {
			return fmt.Errorf("--restore: %w", err)
		}
		defer f.Close()
		st, err := store.Open(dbPath)
		if err != nil {
			return err
		}
		err = replicate.LoadBackup(f, st)
		if err == nil {
			err = restoreDataKey(stateDir, restore, st)
		}
		st.Close()
		if err != nil {
			os.Remove(dbPath)
			return fmt.Errorf("--restore %s: %w", restore, err)
		}
		log.Info("state restored from backup; the manager starts from it as a one-manager cluster", "file", restore)
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
// It is required when the backup holds secrets or configs (without it
// their values cannot be opened) and must open them.
func restoreDataKey(stateDir, backup string, st *store.Store) error {
	s, err := loadState(st)
	if err != nil || s == nil {
		return err
	}
	keyPath := backup + BackupKeySuffix
	k, err := secretbox.LoadFile(keyPath)
	if len(s.secrets) == 0 && len(s.configs) == 0 {
		if err != nil {
			return nil // nothing sealed: a new key is made with the first secret
		}
		return secretbox.Save(stateDir, k) // the same key as before
	}
	if err != nil {
		return fmt.Errorf("the backup holds %d secret(s) and %d config(s), sealed with the cluster's data key, and their key is needed: put the key file written with the backup at %s (%w)",
			len(s.secrets), len(s.configs), keyPath, err)
	}
	for kind, objs := range map[string]map[string]objectRecord{api.KindSecret: s.secrets, api.KindConfig: s.configs} {
		for name, r := range objs {
			if _, err := k.Open(kind, name, r.Version, r.Sealed); err != nil {
				return fmt.Errorf("%s does not open %s %q of the backup: it is another cluster's key", keyPath, kind, name)
			}
		}
	}
	return secretbox.Save(stateDir, k)
}

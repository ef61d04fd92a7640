package cluster

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"slices"
	"time"

	"github.com/warren-appliance/warren/cluster/api"
	"github.com/warren-appliance/warren/cluster/clustermap"
	"github.com/warren-appliance/warren/cluster/secretbox"
)

// Re-keying on manager removal (issue 33, item 3).
//
// A removed manager keeps its copy of secrets.key. So that the key stops
// opening anything new, `node rm` of a manager marks the state
// (meta.RekeyNeeded, in the removal's own entry) and the leader then:
//
//  1. makes a new data key and keeps it as its next key (NextKeyFile:
//     a leader that crashes now loses nothing, the old key still opens
//     everything);
//  2. hands it to every remaining manager over manager mTLS
//     (pathInternalNextKey, requireManager: the removed manager's
//     certificate is refused there, and it is no longer asked); each keeps
//     it as its next key beside the current one;
//  3. commits one entry re-sealing the CA keys, join secrets and every
//     secret's, config's and registry login's value with it,
//     meta.Sealed.KeyGen + 1, and
//     RekeyNeeded cleared;
//  4. each manager, on applying that entry, finds its current key no
//     longer opens the state, opens it with its next key and makes that
//     its current key (openStateLocked).
//
// The key never enters the Raft log. A manager that was down or did not
// get the key in step 2 cannot open the entry when it applies it: it asks
// the other managers for their current key (dataKeyLoop, pathInternalDataKey,
// also requireManager) and keeps it once it opens the new state. If the
// leader changes before step 3, RekeyNeeded is still set and the next
// leader re-keys with a key of its own.
//
// Demoting a manager does not re-key: a demoted manager is still a member
// (a non-voter that follows the log and serves the API), so it holds the
// current key by design; `node rm` is what takes the key away.

// pathInternalNextKey is POST nextKeyRequest: the leader's new data key.
const pathInternalNextKey = "/v1/internal/data-key/next"

type nextKeyRequest struct {
	KeyGen uint64 `json:"key_gen"`
	Key    []byte `json:"key"`
}

// stateKeyGen is the generation of the data key that seals s.
func stateKeyGen(s *state) uint64 {
	if s == nil || s.meta.Sealed == nil {
		return 0
	}
	return s.meta.Sealed.KeyGen
}

// loadNextKey reads this manager's next data key, if it has one.
func (m *Manager) loadNextKey() error {
	k, err := secretbox.LoadNext(m.cfg.StateDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	m.nextKey = k
	return nil
}

// takeNextKey keeps a next data key the leader sent.
func (m *Manager) takeNextKey(req nextKeyRequest) error {
	k := secretbox.Key(req.Key)
	if err := k.Check(); err != nil {
		return errorf(http.StatusBadRequest, "next data key: %v", err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if cur := stateKeyGen(m.st); req.KeyGen != cur+1 {
		return errorf(http.StatusConflict, "next data key of generation %d, but this manager's state is sealed with generation %d", req.KeyGen, cur)
	}
	if err := secretbox.SaveNext(m.cfg.StateDir, k); err != nil {
		return err
	}
	m.nextKey = slices.Clone(k)
	return nil
}

// openStateLocked opens s's sealed secrets with the current data key or,
// when a re-key entry sealed it with the next one, with that key, which
// then becomes the current key.
func (m *Manager) openStateLocked(s *state) error {
	err := openMeta(s, m.dataKey)
	if err == nil || !errors.Is(err, errMetaKey) || m.nextKey == nil {
		return err
	}
	if err := openMeta(s, m.nextKey); err != nil {
		return err
	}
	if err := secretbox.Save(m.cfg.StateDir, m.nextKey); err != nil {
		return err
	}
	if err := secretbox.RemoveNext(m.cfg.StateDir); err != nil {
		m.log.Warn("remove the previous data key", "err", err)
	}
	m.dataKey, m.nextKey = m.nextKey, nil
	m.log.Info("the state is sealed with a new data key; it is now this manager's", "key_gen", stateKeyGen(s))
	return nil
}

// rekeyIfNeeded runs on the leader: when a manager was removed, it
// replaces the data key (see above).
func (m *Manager) rekeyIfNeeded() {
	m.mu.Lock()
	need := m.leader && m.st != nil && m.st.meta.RekeyNeeded && m.dataKey != nil
	var peers map[string]string
	gen := stateKeyGen(m.st)
	if need {
		peers = map[string]string{}
		for id, n := range m.st.nodes {
			if n.Role == clustermap.RoleManager && id != m.selfID {
				peers[id] = n.API
			}
		}
	}
	m.mu.Unlock()
	if !need {
		return
	}
	if err := m.rekey(peers, gen+1); err != nil {
		m.log.Warn("re-key after a manager's removal failed; retrying", "err", err)
	}
}

func (m *Manager) rekey(peers map[string]string, gen uint64) error {
	k, err := secretbox.NewKey()
	if err != nil {
		return err
	}
	if err := secretbox.SaveNext(m.cfg.StateDir, k); err != nil {
		return err
	}
	m.mu.Lock()
	m.nextKey = slices.Clone(k)
	m.mu.Unlock()
	var missing []string
	for id, addr := range peers {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err := m.fwd.Do(ctx, http.MethodPost, addr, pathInternalNextKey, nil, nextKeyRequest{KeyGen: gen, Key: k}, nil)
		cancel()
		if err != nil {
			// Down or unreachable: it asks for the key once it applies
			// the re-key entry (dataKeyLoop).
			missing = append(missing, id)
			m.log.Warn("could not hand the new data key to a manager; it will ask for it", "manager", id, "err", err)
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if stateKeyGen(m.st)+1 != gen {
		return fmt.Errorf("the state moved to key generation %d meanwhile", stateKeyGen(m.st))
	}
	old := m.dataKey
	m.sealWith = &sealTarget{key: k, gen: gen}
	err = m.updateLocked(func(s *state) error {
		for kind, objs := range map[string]map[string]objectRecord{api.KindSecret: s.secrets, api.KindConfig: s.configs} {
			for name, r := range objs {
				v, err := old.Open(kind, name, r.Version, r.Sealed)
				if err != nil {
					return fmt.Errorf("%s %q: %w", kind, name, err)
				}
				if r.Sealed, err = k.Seal(kind, name, r.Version, v); err != nil {
					return err
				}
				objs[name] = r
			}
		}
		for host, r := range s.registries {
			if r.Sealed == nil {
				continue
			}
			v, err := old.Open(api.KindRegistry, host, r.AuthVersion, r.Sealed)
			if err != nil {
				return fmt.Errorf("registry %q: %w", host, err)
			}
			if r.Sealed, err = k.Seal(api.KindRegistry, host, r.AuthVersion, v); err != nil {
				return err
			}
			s.registries[host] = r
		}
		s.meta.RekeyNeeded = false
		return nil
	})
	m.sealWith = nil
	if err != nil {
		return err
	}
	if err := secretbox.Save(m.cfg.StateDir, k); err != nil {
		// The entry is committed: the key must be kept. It stays in
		// NextKeyFile, which a restart tries (openStateLocked).
		return fmt.Errorf("keep the new data key: %w", err)
	}
	if err := secretbox.RemoveNext(m.cfg.StateDir); err != nil {
		m.log.Warn("remove the previous data key", "err", err)
	}
	m.dataKey, m.nextKey = slices.Clone(k), nil
	m.log.Info("data key replaced after a manager's removal", "key_gen", gen, "managers_to_ask", missing)
	return nil
}

// sealTarget is the key the next commit seals with (a re-key).
type sealTarget struct {
	key secretbox.Key
	gen uint64
}

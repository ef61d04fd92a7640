package cluster

import (
	"bytes"
	"errors"
	"fmt"

	"github.com/warren-appliance/warren/cluster/pki"
	"github.com/warren-appliance/warren/cluster/secretbox"
)

// Sealing the cluster's own secrets (issue 33, item 3).
//
// The CA private key, the serving certificate's key, both join secrets, the
// peer token's secret (federation) and,
// during a CA rotation, the retiring CA's and serving keys are kept in the
// replicated state (Raft entries, snapshots, manager.db, backups) only
// sealed with the cluster's data key (secretbox, the same key and AEAD that
// seal secrets' and configs' values): whoever holds a copy of the state
// without secrets.key learns none of them. Managers open them in memory
// when they load the state; the rest of the code works on the opened
// values of meta and never sees the sealed form.
//
// Why this design: the data key already exists on every manager, already
// reaches new managers over manager mTLS (handleRaftJoin,
// pathInternalDataKey) and already travels with backups (FILE.key), so
// sealing with it adds no key distribution of its own. Sealing happens at
// one place, when the leader commits a state (updateLocked, through
// sealMeta), and opening at one place, when a manager loads a state
// (openMeta): the sealed bytes are carried over unchanged while the
// opened values do not change, so a write that does not touch them
// replicates no new meta record.
//
// The additional data binds each value to its field, the cluster's ID and
// the data key's generation (KeyGen): a sealed value cannot be moved to
// another field or cluster unnoticed. KeyGen is 0 for every cluster today;
// it says which data key opens the record once keys are replaced.

// stateSealKind is the secretbox kind of the state's sealed fields.
const stateSealKind = "state"

// sealedMeta is meta's secret fields, sealed (secretbox: nonce ||
// ciphertext each). Empty fields were empty in the plaintext.
type sealedMeta struct {
	KeyGen        uint64 `json:"key_gen"`
	CAKey         []byte `json:"ca_key,omitempty"`
	ServerKey     []byte `json:"server_key,omitempty"`
	WorkerSecret  []byte `json:"worker_secret,omitempty"`
	ManagerSecret []byte `json:"manager_secret,omitempty"`
	PeerSecret    []byte `json:"peer_secret,omitempty"` // federation's peer token
	// The CA rotation's retiring CA key and serving key (nil if none).
	PrevCAKey     []byte `json:"prev_ca_key,omitempty"`
	PrevServerKey []byte `json:"prev_server_key,omitempty"`
}

// secretField is one secret of meta: its opened value and sealed slot.
type secretField struct {
	name   string
	plain  *[]byte
	sealed *[]byte
}

// secretFields lists mt's secrets against the slots of sm. Join secrets
// are strings in meta: they are converted through b (set back by
// setSecretStrings).
func (mt *meta) secretFields(sm *sealedMeta, b *secretStrings) []secretField {
	f := []secretField{
		{"ca_key", &mt.CAKey, &sm.CAKey},
		{"server_key", &mt.ServerKey, &sm.ServerKey},
		{"worker_secret", &b.worker, &sm.WorkerSecret},
		{"manager_secret", &b.manager, &sm.ManagerSecret},
		{"peer_secret", &b.peer, &sm.PeerSecret},
	}
	if r := mt.CARotation; r != nil {
		f = append(f, secretField{"prev_ca_key", &r.PrevCAKey, &sm.PrevCAKey}, secretField{"prev_server_key", &r.PrevServerKey, &sm.PrevServerKey})
	}
	return f
}

type secretStrings struct{ worker, manager, peer []byte }

// plainSecrets reports whether mt holds opened values (cluster created, or
// a state opened with the data key, or one written before sealing).
func (mt meta) plainSecrets() bool {
	return len(mt.CAKey) > 0 || mt.WorkerSecret != "" || mt.ManagerSecret != ""
}

// sameSecrets reports whether a and b hold the same opened values.
func sameSecrets(a, b meta) bool {
	if !bytes.Equal(a.CAKey, b.CAKey) || !bytes.Equal(a.ServerKey, b.ServerKey) ||
		a.WorkerSecret != b.WorkerSecret || a.ManagerSecret != b.ManagerSecret || a.PeerSecret != b.PeerSecret {
		return false
	}
	ra, rb := a.CARotation, b.CARotation
	if ra == nil || rb == nil {
		return ra == nil && rb == nil
	}
	return bytes.Equal(ra.PrevCAKey, rb.PrevCAKey) && bytes.Equal(ra.PrevServerKey, rb.PrevServerKey)
}

// sealMeta seals s's secrets with k (generation gen) unless prev already
// holds them sealed under that generation with the same opened values: the
// sealed bytes are then carried over (a fresh nonce would make every write
// replicate meta). A state without opened values (loaded without a key) is
// left as it is. The opened values are checked (validateTrust) before
// they are sealed: once sealed, replicas can check the certificates only.
func sealMeta(s, prev *state, k secretbox.Key, gen uint64) error {
	if !s.meta.plainSecrets() {
		return nil
	}
	if prev != nil && s.meta.Sealed != nil && s.meta.Sealed.KeyGen == gen && sameSecrets(s.meta, prev.meta) && prev.meta.Sealed == s.meta.Sealed {
		return nil
	}
	plain := s.meta
	plain.Sealed = nil
	if err := plain.validateTrust(); err != nil {
		return err
	}
	sm := &sealedMeta{KeyGen: gen}
	b := secretStrings{[]byte(s.meta.WorkerSecret), []byte(s.meta.ManagerSecret), []byte(s.meta.PeerSecret)}
	for _, f := range s.meta.secretFields(sm, &b) {
		if len(*f.plain) == 0 {
			continue
		}
		c, err := k.Seal(stateSealKind, f.name+"@"+s.meta.ClusterID, gen, *f.plain)
		if err != nil {
			return fmt.Errorf("seal %s: %w", f.name, err)
		}
		*f.sealed = c
	}
	s.meta.Sealed = sm
	return nil
}

// errMetaKey is openMeta's answer when the data key does not open the
// state's sealed secrets.
var errMetaKey = errors.New("the cluster's CA key and join secrets are sealed with a data key this manager does not have")

// openMeta opens s's sealed secrets with k into meta's fields (a state
// written before sealing holds them opened already and is left as it is).
func openMeta(s *state, k secretbox.Key) error {
	sm := s.meta.Sealed
	if sm == nil || s.meta.plainSecrets() {
		return nil
	}
	if k == nil {
		return errMetaKey
	}
	if s.meta.CARotation != nil {
		r := *s.meta.CARotation // records are values: do not write into a shared one
		s.meta.CARotation = &r
	}
	var b secretStrings
	for _, f := range s.meta.secretFields(sm, &b) {
		if len(*f.sealed) == 0 {
			continue
		}
		v, err := k.Open(stateSealKind, f.name+"@"+s.meta.ClusterID, sm.KeyGen, *f.sealed)
		if err != nil {
			return fmt.Errorf("%s: %w", f.name, errMetaKey)
		}
		*f.plain = v
	}
	s.meta.WorkerSecret, s.meta.ManagerSecret, s.meta.PeerSecret = string(b.worker), string(b.manager), string(b.peer)
	return nil
}

// storedMeta is meta as it enters the store: once sealed, without its
// opened secrets.
func storedMeta(mt meta) meta {
	if mt.Sealed == nil {
		return mt // written before sealing, or by a manager without a data key
	}
	mt.CAKey, mt.ServerKey, mt.WorkerSecret, mt.ManagerSecret, mt.PeerSecret = nil, nil, "", "", ""
	if mt.CARotation != nil {
		r := *mt.CARotation
		r.PrevCAKey, r.PrevServerKey = nil, nil
		mt.CARotation = &r
	}
	return mt
}

// validateSealed checks a stored meta whose keys are sealed: the CA
// certificates parse and are CAs, the serving certificates are signed by
// theirs, and every key that must be there is sealed.
func (mt meta) validateSealed() error {
	sm := mt.Sealed
	if len(sm.CAKey) == 0 || len(sm.WorkerSecret) == 0 || len(sm.ManagerSecret) == 0 {
		return errors.New("sealed CA key or join secrets missing")
	}
	check := func(what string, caPEM, srvPEM, sealedSrvKey []byte) error {
		ca, err := pki.ParseCertPEM(caPEM)
		if err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		if !ca.IsCA {
			return fmt.Errorf("%s: certificate is not a CA", what)
		}
		if len(srvPEM) == 0 {
			return nil
		}
		leaf, err := pki.ParseCertPEM(srvPEM)
		if err != nil {
			return fmt.Errorf("%s serving certificate: %w", what, err)
		}
		if err := leaf.CheckSignatureFrom(ca); err != nil {
			return fmt.Errorf("%s serving certificate: not signed by its CA: %w", what, err)
		}
		if len(sealedSrvKey) == 0 {
			return fmt.Errorf("%s serving key is not sealed", what)
		}
		return nil
	}
	if err := check("cluster CA", mt.CACert, mt.ServerCert, sm.ServerKey); err != nil {
		return err
	}
	if r := mt.CARotation; r != nil {
		if len(sm.PrevCAKey) == 0 {
			return errors.New("rotation's previous CA key is not sealed")
		}
		if bytes.Equal(r.PrevCACert, mt.CACert) {
			return errors.New("rotation's previous CA is the current CA")
		}
		if r.Started.IsZero() || !r.GraceUntil.After(r.Started) {
			return fmt.Errorf("rotation's grace period (%s to %s) is empty", r.Started, r.GraceUntil)
		}
		if err := check("rotation's previous CA", r.PrevCACert, r.PrevServerCert, sm.PrevServerKey); err != nil {
			return err
		}
	}
	return nil
}

package cluster

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"slices"
	"sort"
	"time"

	"github.com/warren-appliance/warren/cluster/api"
	"github.com/warren-appliance/warren/cluster/clustermap"
	"github.com/warren-appliance/warren/cluster/pki"
)

// CA rotation (`warren cluster ca rotate`).
//
// Trust during the grace period is a bundle of both roots, not a
// cross-signed intermediate: every CA warren ever made is created with
// MaxPathLen 0 (pki.NewCA), so a "new CA signed by the old one"
// intermediate would be refused by standard path validation under the old
// root; a bundle needs no change to path validation anywhere, and the old
// root simply leaves the bundle when the rotation finishes.
//
// The rotation, all of it replicated through Raft in meta.CARotation:
//
//   - start: a new CA (same key type) becomes meta.CACert/CAKey and signs
//     every join and renewal from now on; the old CA, its key and the
//     old serving certificate move into meta.CARotation. Managers trust
//     client certificates of both; the map's trust bundle carries both, so
//     every node (over the mTLS stream it already trusts) adds the new CA
//     to its state dir and renews at once through the normal renewal path.
//     Join secrets are replaced. Managers keep serving the old serving
//     certificate (nodes that have not seen the bundle yet must still
//     reach them), so join tokens pin the old CA until the end.
//   - finish: when every member holds a certificate of the new CA, when
//     the grace period ends, or on `cluster ca rotate --finish`, the old CA
//     leaves meta (its key is deleted from the state), managers serve the
//     new serving certificate, and certificates of the old CA are refused
//     by every manager (the pool holds the new CA only) and every node
//     (the bundle holds the new CA only). Nodes that missed the rotation
//     join again with a new token.

// DefaultCAGrace is how long a rotation waits for every node to renew.
const DefaultCAGrace = 24 * time.Hour

// caRotation is the rotation in progress: the CA being retired.
type caRotation struct {
	PrevCACert     []byte    `json:"prev_ca_cert"`          // PEM
	PrevCAKey      []byte    `json:"prev_ca_key,omitempty"` // PEM; sealed in meta.Sealed
	PrevServerCert []byte    `json:"prev_server_cert"`
	PrevServerKey  []byte    `json:"prev_server_key,omitempty"` // sealed in meta.Sealed
	Started        time.Time `json:"started"`
	GraceUntil     time.Time `json:"grace_until"`
}

// trustBundle is the PEM of the CAs nodes trust: current, then previous.
func (mt meta) trustBundle() []byte {
	if mt.CARotation == nil {
		return slices.Clone(mt.CACert)
	}
	return slices.Concat(mt.CACert, mt.CARotation.PrevCACert)
}

// validateTrust checks the CA material of a meta record before it enters
// the state (a Raft entry that would leave managers without a usable CA
// is refused on apply): the CA's key matches its certificate, the serving
// certificate is signed by the serving CA, and a rotation's old CA is
// another, consistent one.
func (mt meta) validateTrust() error {
	if len(mt.CACert) == 0 && len(mt.CAKey) == 0 && mt.CARotation == nil {
		return nil // no CA yet (records written before the first)
	}
	if !mt.plainSecrets() && mt.Sealed != nil {
		// A stored record: its keys are sealed (sealmeta.go) and were
		// checked by the leader before sealing; here what replicas can
		// check without the data key.
		return mt.validateSealed()
	}
	ca, err := loadCA(mt.CACert, mt.CAKey)
	if err != nil {
		return fmt.Errorf("cluster CA: %w", err)
	}
	serving, srvCert, srvKey := ca, mt.ServerCert, mt.ServerKey
	if r := mt.CARotation; r != nil {
		prev, err := loadCA(r.PrevCACert, r.PrevCAKey)
		if err != nil {
			return fmt.Errorf("rotation's previous CA: %w", err)
		}
		if bytes.Equal(prev.Cert.Raw, ca.Cert.Raw) {
			return errors.New("rotation's previous CA is the current CA")
		}
		if r.Started.IsZero() || !r.GraceUntil.After(r.Started) {
			return fmt.Errorf("rotation's grace period (%s to %s) is empty", r.Started, r.GraceUntil)
		}
		if err := checkServing(prev, r.PrevServerCert, r.PrevServerKey); err != nil {
			return fmt.Errorf("rotation's previous serving certificate: %w", err)
		}
	}
	if len(srvCert) > 0 || len(srvKey) > 0 {
		if err := checkServing(serving, srvCert, srvKey); err != nil {
			return fmt.Errorf("serving certificate: %w", err)
		}
	}
	return nil
}

func loadCA(certPEM, keyPEM []byte) (*pki.CA, error) {
	ca, err := pki.LoadCA(certPEM, keyPEM)
	if err != nil {
		return nil, err
	}
	if !ca.Cert.IsCA {
		return nil, errors.New("certificate is not a CA")
	}
	if !ca.KeyMatches() {
		return nil, errors.New("key does not match the certificate")
	}
	return ca, nil
}

func checkServing(ca *pki.CA, certPEM, keyPEM []byte) error {
	leaf, err := pki.ParseCertPEM(certPEM)
	if err != nil {
		return err
	}
	if err := leaf.CheckSignatureFrom(ca.Cert); err != nil {
		return fmt.Errorf("not signed by its CA: %w", err)
	}
	key, err := pki.ParseKeyPEM(keyPEM)
	if err != nil {
		return err
	}
	if pki.KeyHash(leaf.PublicKey) != pki.KeyHash(&key.PublicKey) {
		return errors.New("key does not match the certificate")
	}
	return nil
}

// rotationAction is what the leader does next about a rotation.
type rotationAction string

const (
	rotationNone    rotationAction = "none"    // no rotation in progress
	rotationWait    rotationAction = "wait"    // nodes still hold old-CA certificates
	rotationFinish  rotationAction = "finish"  // every member holds a new-CA certificate
	rotationExpired rotationAction = "expired" // the grace period ended: finish anyway
)

// rotationPlan is planRotation's answer.
type rotationPlan struct {
	Action rotationAction
	// Pending are the names of members without a new-CA certificate.
	Pending []string
}

// planRotation decides the next step of a rotation from the state alone
// (pure): which members' recorded certificates the current CA signed, and
// the time. Managers speak to each other and serve with a session
// certificate (ha.go) that each re-issues from the new CA as it applies
// the rotation's Raft entry, so they count as renewed (holdsNewCA).
func planRotation(mt meta, nodes map[string]nodeRecord, now time.Time) rotationPlan {
	if mt.CARotation == nil {
		return rotationPlan{Action: rotationNone}
	}
	current := caHashOf(mt.CACert)
	var pending []string
	for _, n := range nodes {
		if !holdsNewCA(n, current) {
			pending = append(pending, n.Name)
		}
	}
	sort.Strings(pending)
	switch {
	case len(pending) == 0:
		return rotationPlan{Action: rotationFinish}
	case !now.Before(mt.CARotation.GraceUntil):
		return rotationPlan{Action: rotationExpired, Pending: pending}
	}
	return rotationPlan{Action: rotationWait, Pending: pending}
}

// holdsNewCA reports whether node n's certificate is the current CA's:
// a worker's recorded one; a manager's session certificate is re-issued
// from the state's CA whenever it changes.
func holdsNewCA(n nodeRecord, current string) bool {
	return n.Role == clustermap.RoleManager || n.CAHash == current
}

func caHashOf(certPEM []byte) string {
	c, err := pki.ParseCertPEM(certPEM)
	if err != nil {
		return ""
	}
	return pki.CertHash(c.Raw)
}

// startRotation puts a new CA into s (pure but for key generation): the
// current CA and serving certificate move into the rotation, join
// secrets are replaced. It refuses while a rotation is in progress.
func startRotation(s *state, ca *pki.CA, serverDER []byte, serverKeyPEM []byte, now time.Time, grace time.Duration, force bool) error {
	if s.meta.CARotation != nil && !force {
		return errorf(http.StatusConflict, "a CA rotation is in progress since %s (%d node(s) still to renew, grace until %s): wait for it, finish it with `warren cluster ca rotate --finish`, or start another with --force",
			s.meta.CARotation.Started.UTC().Format(time.RFC3339), len(planRotation(s.meta, s.nodes, now).Pending), s.meta.CARotation.GraceUntil.UTC().Format(time.RFC3339))
	}
	if grace <= 0 {
		return errorf(http.StatusBadRequest, "--grace %s: want a positive duration such as 24h", grace)
	}
	caKey, err := ca.KeyPEM()
	if err != nil {
		return err
	}
	rot := &caRotation{Started: now.UTC(), GraceUntil: now.Add(grace).UTC()}
	if old := s.meta.CARotation; old != nil {
		// --force during a rotation: the CA being retired stays the one
		// managers serve (nodes may not hold the one in between), and the
		// one in between is dropped.
		rot.PrevCACert, rot.PrevCAKey, rot.PrevServerCert, rot.PrevServerKey = old.PrevCACert, old.PrevCAKey, old.PrevServerCert, old.PrevServerKey
	} else {
		rot.PrevCACert, rot.PrevCAKey, rot.PrevServerCert, rot.PrevServerKey = s.meta.CACert, s.meta.CAKey, s.meta.ServerCert, s.meta.ServerKey
	}
	s.meta.CACert, s.meta.CAKey = ca.CertPEM(), caKey
	s.meta.ServerCert, s.meta.ServerKey = pki.EncodeCertPEM(serverDER), serverKeyPEM
	s.meta.CARotation = rot
	s.meta.CAGeneration++
	s.meta.WorkerSecret, s.meta.ManagerSecret = pki.NewSecret(), pki.NewSecret()
	return s.meta.validateTrust()
}

// finishRotation retires the previous CA: its certificate and key leave
// the state.
func finishRotation(s *state) error {
	if s.meta.CARotation == nil {
		return errorf(http.StatusConflict, "no CA rotation is in progress (start one with `warren cluster ca rotate`)")
	}
	s.meta.CARotation = nil
	return s.meta.validateTrust()
}

// RotateCA starts a CA rotation (grace 0: DefaultCAGrace), or with finish
// retires the previous CA now.
func (m *Manager) RotateCA(req api.CARotateRequest) (api.CAStatus, error) {
	if req.Finish {
		err := m.update(func(s *state) error { return finishRotation(s) })
		if err != nil {
			return api.CAStatus{}, err
		}
		m.log.Warn("CA rotation finished by the operator: certificates of the previous CA are refused from now on")
		return m.CAStatus(), nil
	}
	grace := req.Grace
	if grace == 0 {
		grace = DefaultCAGrace
	}
	now := m.now()
	err := m.update(func(s *state) error {
		if s.meta.CARotation != nil && !req.Force {
			return startRotation(s, nil, nil, nil, now, grace, false)
		}
		ca, err := pki.NewRotatedCA(s.meta.ClusterID, s.meta.CAGeneration+1, now)
		if err != nil {
			return err
		}
		var addrs []netip.Addr
		if ep := s.nodes[m.selfID].Endpoint; ep.IsValid() {
			addrs = append(addrs, ep.Addr())
		}
		der, key, err := ca.IssueServer("warren-manager", addrs, now)
		if err != nil {
			return err
		}
		keyPEM, err := pki.EncodeKeyPEM(key)
		if err != nil {
			return err
		}
		return startRotation(s, ca, der, keyPEM, now, grace, req.Force)
	})
	if err != nil {
		return api.CAStatus{}, err
	}
	st := m.CAStatus()
	m.log.Warn("CA rotation started: nodes renew with the new CA; join secrets replaced", "ca", st.Fingerprint, "previous", st.Previous, "grace_until", st.GraceUntil)
	return st, nil
}

// CAStatus reports the CA, the one being retired and each node's issuer.
func (m *Manager) CAStatus() api.CAStatus {
	m.mu.Lock()
	defer m.mu.Unlock()
	mt := m.st.meta
	cur := caHashOf(mt.CACert)
	out := api.CAStatus{Fingerprint: cur, Generation: mt.CAGeneration, Nodes: []api.CANodeStatus{}}
	if c, err := pki.ParseCertPEM(mt.CACert); err == nil {
		out.Subject, out.Expires = c.Subject.CommonName, c.NotAfter.UTC()
	}
	plan := planRotation(mt, m.st.nodes, m.now())
	out.Action = string(plan.Action)
	if r := mt.CARotation; r != nil {
		out.Rotating = true
		out.Previous = caHashOf(r.PrevCACert)
		out.Started, out.GraceUntil = r.Started, r.GraceUntil
	}
	for _, n := range m.st.sortedNodes() {
		rec := m.st.nodes[n.ID]
		out.Nodes = append(out.Nodes, api.CANodeStatus{Name: n.Name, ID: n.ID, Role: n.Role, Issuer: rec.CAHash, NewCA: holdsNewCA(rec, cur)})
	}
	return out
}

// caRotationLoop finishes a rotation on the leader once planRotation says
// so: every member renewed, or the grace period ended.
func (m *Manager) caRotationLoop(every time.Duration) {
	defer m.loops.Done()
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-m.stop:
			return
		case <-t.C:
		}
		m.mu.Lock()
		plan := rotationPlan{Action: rotationNone}
		if m.leader && m.st != nil {
			plan = planRotation(m.st.meta, m.st.nodes, m.now())
		}
		m.mu.Unlock()
		if plan.Action != rotationFinish && plan.Action != rotationExpired {
			continue
		}
		err := m.update(func(s *state) error {
			if p := planRotation(s.meta, s.nodes, m.now()); p.Action != plan.Action {
				return errors.New("the rotation changed meanwhile")
			}
			return finishRotation(s)
		})
		switch {
		case err != nil:
			m.log.Warn("cannot finish the CA rotation yet; retrying", "err", err)
		case plan.Action == rotationExpired:
			m.log.Warn("CA rotation finished: the grace period ended; these nodes still hold certificates of the previous CA and must join again with a new token", "nodes", plan.Pending)
		default:
			m.log.Info("CA rotation finished: every node holds a certificate of the new CA; the previous CA is retired")
		}
	}
}

// loadTrustLocked makes the state's CA material this manager's: the CA
// that signs, the certificate it serves, the pool it checks clients
// against (both CAs during a rotation) and its session certificate. It
// runs when the state's CA or rotation changes (also on followers, as
// entries apply, and at restart).
func (m *Manager) loadTrustLocked(s *state) error {
	ca, err := pki.LoadCA(s.meta.CACert, s.meta.CAKey)
	if err != nil {
		return fmt.Errorf("stored cluster CA: %w", err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	srvCert, srvKey, srvCA := s.meta.ServerCert, s.meta.ServerKey, s.meta.CACert
	var prevCA *pki.CA
	if r := s.meta.CARotation; r != nil {
		prev, err := pki.LoadCA(r.PrevCACert, r.PrevCAKey)
		if err != nil {
			return fmt.Errorf("stored previous CA: %w", err)
		}
		prevCA = prev
		pool.AddCert(prev.Cert)
		// Nodes that have not taken the new bundle yet must still reach
		// this manager: it serves the old certificate until the end.
		srvCert, srvKey, srvCA = r.PrevServerCert, r.PrevServerKey, r.PrevCACert
	}
	server, err := tls.X509KeyPair(slices.Concat(srvCert, srvCA), srvKey)
	if err != nil {
		return fmt.Errorf("stored server certificate: %w", err)
	}
	changed := m.ca != nil
	m.ca, m.prevCA, m.server, m.trustKey = ca, prevCA, server, trustKey(s.meta)
	m.pool.Store(pool)
	if err := m.issueManagerCert(); err != nil {
		return err
	}
	if changed {
		// Pooled connections to other managers carry the session
		// certificate of before: the next ones present the new one.
		m.fwd.HTTP.CloseIdleConnections()
		m.log.Info("cluster CA changed", "ca", ca.Hash(), "rotating", s.meta.CARotation != nil)
	}
	return nil
}

// trustKey identifies the CA material of a meta: a change reloads it.
func trustKey(mt meta) string {
	k := caHashOf(mt.CACert)
	if mt.CARotation != nil {
		k += "/" + caHashOf(mt.CARotation.PrevCACert)
	}
	return k
}

// servingCAHash is the fingerprint of the CA whose certificate this
// manager serves on the node API: the one join tokens pin.
func (mt meta) servingCAHash() string {
	if mt.CARotation != nil {
		return caHashOf(mt.CARotation.PrevCACert)
	}
	return caHashOf(mt.CACert)
}

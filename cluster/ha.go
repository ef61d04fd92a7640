package cluster

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
	"golang.org/x/sys/unix"

	"github.com/warren-appliance/warren/cluster/api"
	"github.com/warren-appliance/warren/cluster/apicall"
	"github.com/warren-appliance/warren/cluster/clustermap"
	"github.com/warren-appliance/warren/cluster/pki"
	"github.com/warren-appliance/warren/cluster/store"
	"github.com/warren-appliance/warren/internal/backoff"
)

// Paths of the managers' internal API (manager certificates only).
const (
	pathInternalAdmin   = "/v1/internal/admin"
	pathInternalNode    = "/v1/internal/node"
	pathInternalJoin    = "/v1/internal/raft/join"
	pathInternalPromote = "/v1/internal/raft/promote"
	pathInternalDataKey = "/v1/internal/data-key" // GET api.DataKey
	headerNodeCert      = "X-Warren-Node-Cert"    // base64 DER
	headerIndex         = "X-Warren-Index"        // the leader's store index after a forwarded call
	pathInternalStatus  = "/v1/internal/manager/status"
	headerLeader        = "X-Warren-Leader"
)

// fwdCertKey carries, on the leader, the client certificate a node
// presented to the follower that forwarded its call (a nil
// *x509.Certificate when it presented none). The follower's TLS
// handshake proved the node holds its key; the leader checks the rest
// (chain, member, serial) as if the node had called it.
type fwdCertKey struct{}

// peerCertificates is the caller's certificate chain: forwarded by a
// follower, or from this connection's handshake.
func peerCertificates(r *http.Request) []*x509.Certificate {
	if c, ok := r.Context().Value(fwdCertKey{}).(*x509.Certificate); ok {
		if c == nil {
			return nil // forwarded for a caller without a certificate
		}
		return []*x509.Certificate{c}
	}
	if r.TLS == nil {
		return nil
	}
	return r.TLS.PeerCertificates
}

// member returns node id's record. A follower may not have applied a join
// the leader just acknowledged: it waits a moment for it, and answers 503
// (retry) rather than "removed" for a node it has never heard of.
func (m *Manager) member(id string) (nodeRecord, error) {
	deadline := time.Now().Add(3 * time.Second)
	for {
		m.mu.Lock()
		var rec nodeRecord
		ok, gone := false, false
		if m.st != nil { // nil: a joining manager before Raft gave it the state
			rec, ok = m.st.nodes[id]
			_, gone = m.st.removed[id]
		}
		leader := m.leader
		m.mu.Unlock()
		switch {
		case ok:
			return rec, nil
		case leader || gone:
			return nodeRecord{}, errNodeRemoved(id)
		case time.Now().After(deadline):
			return nodeRecord{}, errorf(http.StatusServiceUnavailable, "this manager does not know node %s yet (it lags the leader); retry", id)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (m *Manager) isLeader() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.leader
}

func (m *Manager) caPool() *x509.CertPool {
	if p := m.pool.Load(); p != nil {
		return p
	}
	return x509.NewCertPool()
}

func (m *Manager) managerCert() *tls.Certificate { return m.managerCertLocked() }

func (m *Manager) managerCertLocked() *tls.Certificate {
	if c := m.mcert.Load(); c != nil {
		return c
	}
	return &tls.Certificate{}
}

// issueManagerCert gives this manager a fresh session certificate for Raft
// and forwarding, signed with the CA it holds, for its node TLS key (in
// memory only: it is re-issued at every start; the other managers accept
// it for the key recorded in this manager's node record).
func (m *Manager) issueManagerCert() error {
	key, err := m.nodeKey()
	if err != nil {
		return err
	}
	csr, err := pki.NewCSR(key, m.selfID)
	if err != nil {
		return err
	}
	cert, err := m.ca.SignManagerSession(csr, m.selfID, m.now())
	if err != nil {
		return err
	}
	m.mcert.Store(&tls.Certificate{Certificate: [][]byte{cert.Raw, m.ca.Cert.Raw}, PrivateKey: key, Leaf: cert})
	// During a CA rotation also one of the previous CA, for managers that
	// have not applied the rotation yet (managerClientCert).
	if m.prevCA == nil {
		m.mcertPrev.Store(nil)
		return nil
	}
	prev, err := m.prevCA.SignManagerSession(csr, m.selfID, m.now())
	if err != nil {
		return err
	}
	m.mcertPrev.Store(&tls.Certificate{Certificate: [][]byte{prev.Raw, m.prevCA.Cert.Raw}, PrivateKey: key, Leaf: prev})
	return nil
}

// managerClientCert is the session certificate this manager presents as a
// client to another manager: the current CA's, unless that manager's
// certificate request names only the previous CA (on Raft connections: it
// has not applied a CA rotation yet, and without this it would refuse the
// entries that bring it the rotation). As a server a manager presents the current CA's: a
// manager that has applied the rotation trusts both, one that has not
// only dials out to vote or forward.
func (m *Manager) managerClientCert(cri *tls.CertificateRequestInfo) *tls.Certificate {
	cur := m.managerCert()
	prev := m.mcertPrev.Load()
	if prev == nil || cri == nil || cri.SupportsCertificate(cur) == nil || cri.SupportsCertificate(prev) != nil {
		return cur
	}
	return prev
}

// leadershipLoop follows Raft leadership: a new leader first applies
// everything committed (barrier), then serves writes from that state,
// giving every node a full DownAfter before it can be marked down.
func (m *Manager) leadershipLoop() {
	defer m.loops.Done()
	ch := m.replica.Raft.LeaderCh()
	for {
		var leading bool
		select {
		case <-m.stop:
			return
		case leading = <-ch:
		}
		if !leading {
			m.mu.Lock()
			m.leader = false
			m.mu.Unlock()
			m.log.Info("no longer the Raft leader")
			continue
		}
		if err := m.replica.Raft.Barrier(10 * time.Second).Error(); err != nil {
			m.log.Warn("raft barrier after election failed", "err", err)
			continue
		}
		m.becomeLeader()
	}
}

func (m *Manager) becomeLeader() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.pending != nil {
		_, err := m.replica.Propose(store.Full(m.pending))
		if err != nil {
			m.log.Error("could not replicate the initial state through raft", "err", err)
			select {
			case m.initial <- fmt.Errorf("replicate the initial state: %w", err):
			default:
			}
			return
		}
		m.pending = nil
		defer close(m.initial)
	}
	m.syncLocked()
	if m.st == nil {
		m.log.Error("leader without state: this manager's store is empty")
		return
	}
	if m.needKey {
		// Its state is older than the log (sealed with a data key it does
		// not hold yet): writing from it would undo entries. Another
		// manager leads while this one gets the key.
		m.log.Warn("elected without the data key of the newest state: handing leadership over")
		go m.replica.Raft.LeadershipTransfer()
		return
	}
	m.leader = true
	now := m.now()
	for id := range m.st.nodes {
		m.lastSeen[id] = now
	}
	m.log.Info("this manager is the Raft leader", "term", m.replica.Raft.Stats()["term"], "index", m.applied)
	// Refresh this manager's own record (endpoint, key or API address may
	// have changed since it last led).
	err := m.updateLocked(func(s *state) error {
		self, ok := s.nodes[m.selfID]
		if !ok {
			return nil
		}
		self.Endpoint, self.PublicKey, self.Labels, self.Relay = m.cfg.Node.Endpoint, m.cfg.Node.PublicKey, m.cfg.Node.Labels, m.cfg.Node.Relay
		self.API, self.Status = m.cfg.Advertise, clustermap.NodeReady
		if self.TLSKey == "" {
			// A record from before keys were recorded (the manager that
			// created the cluster): from now on only its key's session
			// certificates are accepted.
			if c := m.managerCertLocked(); c.Leaf != nil {
				self.TLSKey = pki.KeyHash(c.Leaf.PublicKey)
			}
		}
		s.nodes[self.ID] = self
		return nil
	})
	if err != nil {
		m.log.Warn("refresh this manager's record", "err", err)
	}
}

// followLoop brings the served state up to date with the store after
// entries were applied that this manager did not propose.
func (m *Manager) followLoop() {
	defer m.loops.Done()
	for {
		select {
		case <-m.stop:
			return
		case <-m.notify:
		}
		m.mu.Lock()
		m.syncLocked()
		m.mu.Unlock()
	}
}

func (m *Manager) syncLocked() {
	var snap store.Snapshot
	var idx uint64
	m.replica.Read(func(st *store.Store, applied uint64) {
		if applied > m.applied || m.st == nil {
			snap, idx = st.All(), applied
		}
	})
	if snap == nil {
		return
	}
	s, err := loadState(snap)
	if err != nil {
		m.log.Error("read replicated state", "err", err)
		return
	}
	if s == nil {
		return // nothing replicated yet (a joining manager)
	}
	if err := m.openStateLocked(s); err != nil {
		// The leader sealed with a key this manager does not hold yet
		// (an upgraded cluster whose leader made the key): dataKeyLoop
		// asks for it and syncs again.
		m.needKey, m.unopened = true, s
		m.log.Warn("cannot open the replicated state yet; asking the other managers for the data key", "err", err)
		return
	}
	m.needKey, m.unopened = false, nil
	if err := m.setStateLocked(s); err != nil {
		m.log.Error("use replicated state", "err", err)
		return
	}
	m.applied = idx
}

// noLeaderError is the answer to a write this manager cannot make: it
// names the leader, or says that the managers lost their quorum and how
// many are reachable.
func (m *Manager) noLeaderError(cause error) error {
	addr, _ := m.replica.Raft.LeaderWithID()
	if cause != nil && !errors.Is(cause, raft.ErrLeadershipLost) && !errors.Is(cause, raft.ErrNotLeader) &&
		!errors.Is(cause, raft.ErrEnqueueTimeout) && !errors.Is(cause, raft.ErrRaftShutdown) {
		// Not a matter of leadership: a disk error, typically.
		return errorf(http.StatusServiceUnavailable, "write not committed: %v", cause)
	}
	if addr != "" && cause == nil {
		return errorf(http.StatusServiceUnavailable, "this manager is not the leader (the leader is %s); retry", addr)
	}
	up, total := m.reachableManagers()
	msg := fmt.Sprintf("no quorum: %d of %d managers reachable", up, total)
	if cause != nil {
		msg += fmt.Sprintf(" (%v)", cause)
	}
	return errorf(http.StatusServiceUnavailable, "%s: writes are refused until a majority of managers is back; if they are lost for good, run `warren cluster init --force-new-cluster` on a surviving manager (README: Lost quorum)", msg)
}

// reachableManagers counts the voters (this one included) whose API port
// completes a TLS handshake within a second.
func (m *Manager) reachableManagers() (up, total int) {
	f := m.replica.Raft.GetConfiguration()
	if f.Error() != nil {
		return 1, 1
	}
	var wg sync.WaitGroup
	var reached atomic.Int32 // this manager and the probes, concurrently
	for _, srv := range f.Configuration().Servers {
		if srv.Suffrage != raft.Voter {
			continue
		}
		total++
		if string(srv.ID) == m.selfID {
			reached.Add(1)
			continue
		}
		wg.Add(1)
		go func(addr string) {
			defer wg.Done()
			if m.probe(addr) {
				reached.Add(1)
			}
		}(string(srv.Address))
	}
	wg.Wait()
	return int(reached.Load()), total
}

func (m *Manager) probe(addr string) bool {
	conf := m.managerClientTLS(false)
	conf.NextProtos = []string{"http/1.1"}
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: time.Second}, "tcp", addr, conf)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// leaderAPI returns the leader's API address, "" if there is no leader
// or it is this manager.
func (m *Manager) leaderAPI() string {
	addr, id := m.replica.Raft.LeaderWithID()
	if string(id) == m.selfID {
		return ""
	}
	return string(addr)
}

// forward sends a write request a follower received to the leader over
// manager mTLS and copies the leader's answer (errors included). nodeCert
// is the calling node's certificate (base64 DER) for node calls.
func (m *Manager) forward(w http.ResponseWriter, r *http.Request, prefix, nodeCert string) {
	body, err := io.ReadAll(http.MaxBytesReader(nil, r.Body, 1<<20))
	if err != nil {
		writeError(w, errorf(http.StatusBadRequest, "read request: %v", err))
		return
	}
	leader := m.leaderAPI()
	if leader == "" {
		writeError(w, m.noLeaderError(nil))
		return
	}
	req, err := http.NewRequestWithContext(r.Context(), r.Method, "https://"+leader+prefix+r.URL.RequestURI(), bytes.NewReader(body))
	if err != nil {
		writeError(w, err)
		return
	}
	req.Header.Set("Content-Type", r.Header.Get("Content-Type"))
	if nodeCert != "" {
		req.Header.Set(headerNodeCert, nodeCert)
	}
	resp, err := m.fwd.HTTP.Do(req)
	if err != nil {
		writeError(w, errorf(http.StatusServiceUnavailable, "cannot reach the leader %s to forward the write: %v", leader, apicall.Reason(err)))
		return
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "" {
		w.Header().Set("Content-Type", ct)
	}
	// Read your writes: answer once this manager's copy has the leader's
	// state after the call, so a read that follows (the CLI waiting for a
	// service to converge) sees it.
	if idx, err := strconv.ParseUint(resp.Header.Get(headerIndex), 10, 64); err == nil {
		m.waitApplied(r.Context(), idx)
	}
	w.WriteHeader(resp.StatusCode)
	_, _ = io.Copy(w, resp.Body)
}

// waitApplied waits (up to 5 s) until the served state reflects store
// index idx.
func (m *Manager) waitApplied(ctx context.Context, idx uint64) {
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		m.mu.Lock()
		done := m.applied >= idx
		m.mu.Unlock()
		if done {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// indexWriter adds the leader's store index to the answer of a forwarded
// call (headerIndex).
type indexWriter struct {
	http.ResponseWriter
	m           *Manager
	wroteHeader bool
}

func (w *indexWriter) WriteHeader(code int) {
	if !w.wroteHeader {
		w.wroteHeader = true
		w.Header().Set(headerIndex, strconv.FormatUint(w.m.replica.Applied(), 10))
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *indexWriter) Write(b []byte) (int, error) {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	return w.ResponseWriter.Write(b)
}

// reportToLeader sends this manager's own heartbeat to the leader (it is
// a follower); the leader takes the node ID from its manager certificate.
func (m *Manager) reportToLeader(ctx context.Context, st NodeStatus) error {
	leader := m.leaderAPI()
	if leader == "" {
		return m.noLeaderError(nil)
	}
	resp, err := m.fwd.Send(ctx, http.MethodPost, leader, pathInternalStatus, nil, st)
	if err != nil {
		return fmt.Errorf("leader %s: %w", leader, err)
	}
	defer resp.Body.Close()
	return m.fwd.Decode(resp, nil)
}

// followerForwards reports whether a node call was forwarded to the
// leader (this manager is a follower); the caller then stops. The node's
// certificate goes along (headerNodeCert).
func (m *Manager) followerForwards(w http.ResponseWriter, r *http.Request) bool {
	if m.isLeader() {
		return false
	}
	if _, forwarded := r.Context().Value(fwdCertKey{}).(*x509.Certificate); forwarded || r.Header.Get(headerNodeCert) != "" {
		writeError(w, m.noLeaderError(nil)) // never forward twice
		return true
	}
	cert := ""
	if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
		cert = base64.StdEncoding.EncodeToString(r.TLS.PeerCertificates[0].Raw)
	}
	m.forward(w, r, pathInternalNode, cert)
	return true
}

// internalHandlers mounts the managers' internal API on the node API mux.
func (m *Manager) internalHandlers(mux *http.ServeMux, node http.Handler) {
	mux.HandleFunc(pathInternalAdmin+"/", m.requireManager(func(w http.ResponseWriter, r *http.Request) {
		if !m.isLeader() {
			writeError(w, m.noLeaderError(nil))
			return
		}
		http.StripPrefix(pathInternalAdmin, m.adminMux()).ServeHTTP(&indexWriter{ResponseWriter: w, m: m}, r)
	}))
	mux.HandleFunc(pathInternalNode+"/", m.requireManager(func(w http.ResponseWriter, r *http.Request) {
		if !m.isLeader() {
			writeError(w, m.noLeaderError(nil))
			return
		}
		// The node's certificate, as the follower saw it; without one the
		// call is anonymous: never the forwarding manager's own identity.
		ctx := context.WithValue(r.Context(), fwdCertKey{}, (*x509.Certificate)(nil))
		if h := r.Header.Get(headerNodeCert); h != "" {
			der, err := base64.StdEncoding.DecodeString(h)
			if err != nil {
				writeError(w, errorf(http.StatusBadRequest, "forwarded certificate: %v", err))
				return
			}
			cert, err := x509.ParseCertificate(der)
			if err != nil {
				writeError(w, errorf(http.StatusBadRequest, "forwarded certificate: %v", err))
				return
			}
			ctx = context.WithValue(ctx, fwdCertKey{}, cert)
		}
		http.StripPrefix(pathInternalNode, node).ServeHTTP(&indexWriter{ResponseWriter: w, m: m}, r.Clone(ctx))
	}))
	mux.HandleFunc("POST "+pathInternalStatus, m.requireManager(func(w http.ResponseWriter, r *http.Request) {
		if !m.isLeader() {
			writeError(w, m.noLeaderError(nil))
			return
		}
		// The bounds of a node's report (handleStatus) hold here too: the
		// follower bounds its own report, the leader does not rely on it.
		st, err := readReport(r)
		if err != nil {
			writeError(w, err)
			return
		}
		id := peerID(r)
		if _, err := m.member(id); err != nil {
			writeError(w, err)
			return
		}
		if err := m.foldStatus(id, st); err != nil {
			writeError(w, err)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	}))
	mux.HandleFunc("POST "+pathInternalNextKey, m.requireManager(func(w http.ResponseWriter, r *http.Request) {
		var req nextKeyRequest
		if err := readJSON(r, &req); err != nil {
			writeError(w, err)
			return
		}
		if err := m.takeNextKey(req); err != nil {
			writeError(w, err)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	}))
	mux.HandleFunc("GET "+pathInternalDataKey, m.requireManager(func(w http.ResponseWriter, r *http.Request) {
		k := m.DataKey()
		if k == nil {
			writeError(w, errorf(http.StatusNotFound, "this manager has no data key"))
			return
		}
		writeJSON(w, http.StatusOK, api.DataKey{Key: k})
	}))
	mux.HandleFunc("POST "+pathInternalJoin, m.requireManager(m.handleRaftJoin))
	mux.HandleFunc("POST "+pathInternalPromote, m.requireManager(m.handleRaftPromote))
}

// raftJoin is a manager's request to be added to Raft.
type raftJoin struct {
	ID   string `json:"id"`
	Addr string `json:"addr"`
}

type raftJoined struct {
	Index uint64 `json:"index"` // catch up to here before asking to vote
	// DataKey is the cluster's data key (secrets and configs), which is
	// never replicated through Raft: a joining manager gets it here, over
	// manager mTLS, and keeps it in its state dir (0600).
	DataKey []byte `json:"data_key,omitempty"`
}

func peerID(r *http.Request) string {
	if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
		return ""
	}
	return r.TLS.PeerCertificates[0].Subject.CommonName
}

func (m *Manager) notLeaderAnswer(w http.ResponseWriter) {
	if l := m.leaderAPI(); l != "" {
		w.Header().Set(headerLeader, l)
		writeError(w, errorf(http.StatusMisdirectedRequest, "not the leader: ask %s", l))
		return
	}
	writeError(w, m.noLeaderError(nil))
}

// handleRaftJoin adds a joined manager to Raft as a non-voter and records
// its API address (it is in the map from then on).
func (m *Manager) handleRaftJoin(w http.ResponseWriter, r *http.Request) {
	req, ok := m.readOwnRaftRequest(w, r, "a manager can only add itself")
	if !ok {
		return
	}
	if _, _, err := net.SplitHostPort(req.Addr); err != nil {
		writeError(w, errorf(http.StatusBadRequest, "address %q: %v", req.Addr, err))
		return
	}
	err := m.update(func(s *state) error {
		rec, ok := s.nodes[req.ID]
		if !ok || rec.Role != clustermap.RoleManager {
			return errorf(http.StatusForbidden, "node %s is not a manager of this cluster", req.ID)
		}
		rec.API = req.Addr
		s.nodes[req.ID] = rec
		return nil
	})
	if err != nil {
		writeError(w, err)
		return
	}
	if isMember, _ := m.raftSuffrage(req.ID); !isMember {
		if err := m.replica.Raft.AddNonvoter(raft.ServerID(req.ID), raft.ServerAddress(req.Addr), 0, 10*time.Second).Error(); err != nil {
			writeError(w, m.noLeaderError(err))
			return
		}
		m.log.Info("manager added to Raft as non-voter", "id", req.ID, "addr", req.Addr)
	}
	writeJSON(w, http.StatusOK, raftJoined{Index: m.replica.Raft.LastIndex(), DataKey: m.DataKey()})
}

// handleRaftPromote makes a caught-up non-voter a voter.
func (m *Manager) handleRaftPromote(w http.ResponseWriter, r *http.Request) {
	req, ok := m.readOwnRaftRequest(w, r, "a manager can only promote itself this way; use `warren node promote`")
	if !ok {
		return
	}
	m.mu.Lock()
	rec := m.st.nodes[req.ID]
	m.mu.Unlock()
	if rec.Demoted {
		writeError(w, errorf(http.StatusConflict, "manager %s was demoted by the operator: it votes again only after `warren node promote %s`", rec.Name, rec.Name))
		return
	}
	if err := m.setVoter(req.ID, true); err != nil {
		writeError(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// readOwnRaftRequest reads a manager's request about its own Raft
// membership: only the leader changes the configuration, and only for the
// manager whose certificate made the call (notOwn is the refusal otherwise).
// It has answered the caller when it returns false.
func (m *Manager) readOwnRaftRequest(w http.ResponseWriter, r *http.Request, notOwn string) (raftJoin, bool) {
	var req raftJoin
	if err := readJSON(r, &req); err != nil {
		writeError(w, err)
		return req, false
	}
	if !m.isLeader() {
		m.notLeaderAnswer(w)
		return req, false
	}
	if req.ID != peerID(r) {
		writeError(w, errorf(http.StatusForbidden, "%s", notOwn))
		return req, false
	}
	return req, true
}

// raftSuffrage reports whether id is in the Raft configuration and
// whether it votes.
func (m *Manager) raftSuffrage(id string) (member, voter bool) {
	f := m.replica.Raft.GetConfiguration()
	if f.Error() != nil {
		return false, false
	}
	for _, s := range f.Configuration().Servers {
		if string(s.ID) == id {
			return true, s.Suffrage == raft.Voter
		}
	}
	return false, false
}

func (m *Manager) raftAddress(id string) raft.ServerAddress {
	f := m.replica.Raft.GetConfiguration()
	if f.Error() != nil {
		return ""
	}
	for _, s := range f.Configuration().Servers {
		if string(s.ID) == id {
			return s.Address
		}
	}
	return ""
}

// setVoter promotes (AddVoter) or demotes (DemoteVoter) a Raft member.
func (m *Manager) setVoter(id string, voter bool) error {
	member, isVoter := m.raftSuffrage(id)
	if !member {
		return errorf(http.StatusConflict, "node %s is not a Raft member (only managers that joined with `warren manager join` are)", id)
	}
	if isVoter == voter {
		return nil
	}
	var err error
	if voter {
		err = m.replica.Raft.AddVoter(raft.ServerID(id), m.raftAddress(id), 0, 10*time.Second).Error()
	} else {
		if id == m.selfID {
			return errorf(http.StatusConflict, "node %s is the leader: demote it from another manager after it hands over (stop it, or demote another one)", id)
		}
		err = m.replica.Raft.DemoteVoter(raft.ServerID(id), 0, 10*time.Second).Error()
	}
	if err != nil {
		return m.noLeaderError(err)
	}
	m.log.Info("raft membership changed", "id", id, "voter", voter)
	return nil
}

// joinRaft runs on a manager that joined: it asks the leader to add it
// (as a non-voter), waits until it has caught up, then asks to vote.
// It returns once this manager votes, or when ctx ends.
func (m *Manager) joinRaft(ctx context.Context) {
	defer close(m.joinDone)
	target := m.cfg.Join.Leader
	var joined raftJoined
	var bo backoff.Backoff
	call := func(path string, out any) error {
		resp, err := m.fwd.Send(ctx, http.MethodPost, target, path, nil, raftJoin{ID: m.selfID, Addr: m.cfg.Advertise})
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if l := resp.Header.Get(headerLeader); l != "" && resp.StatusCode == http.StatusMisdirectedRequest {
			target = l
			return fmt.Errorf("redirected to the leader %s", l)
		}
		return m.fwd.Decode(resp, out)
	}
	step := "join"
	for ctx.Err() == nil {
		var err error
		switch step {
		case "join":
			if member, voter := m.raftSuffrage(m.selfID); member && voter {
				return // a restart: already a voter
			}
			if err = call(pathInternalJoin, &joined); err == nil {
				if err = m.takeDataKey(joined.DataKey); err != nil {
					m.log.Error("cannot keep the cluster's data key; secrets and configs will not work on this manager", "err", err)
				}
				step = "catch up"
				m.log.Info("added to Raft as non-voter, catching up", "leader_index", joined.Index)
				continue
			}
		case "catch up":
			if m.replica.Raft.AppliedIndex() >= joined.Index {
				select {
				case <-m.ready:
					step = "promote"
					continue
				default:
				}
			}
			err = fmt.Errorf("applied %d of %d", m.replica.Raft.AppliedIndex(), joined.Index)
			if backoff.Sleep(ctx, 100*time.Millisecond) != nil {
				return
			}
			continue
		case "promote":
			if err = call(pathInternalPromote, nil); err == nil {
				m.log.Info("caught up: this manager now votes in Raft")
				return
			}
			if apicall.StatusOf(err) == http.StatusConflict {
				m.log.Info("staying a non-voter", "reason", err)
				return
			}
		}
		d := bo.Next()
		m.log.Warn("joining Raft, retrying", "step", step, "via", target, "retry_in", d.Round(time.Millisecond), "err", err)
		if backoff.Sleep(ctx, d) != nil {
			return
		}
	}
}

// raftInfo fills the Raft part of cluster info.
func (m *Manager) raftInfo(info *api.ClusterInfo, names map[string]string) {
	stats := m.replica.Raft.Stats()
	_, lid := m.replica.Raft.LeaderWithID()
	info.Leader = names[string(lid)]
	if info.Leader == "" {
		info.Leader = string(lid)
	}
	fmt.Sscan(stats["term"], &info.RaftTerm)
	fmt.Sscan(stats["last_log_index"], &info.RaftLastIndex)
	info.RaftApplied = m.replica.Applied()
	info.RaftState = strings.ToLower(stats["state"])
	f := m.replica.Raft.GetConfiguration()
	if f.Error() != nil {
		return
	}
	for _, s := range f.Configuration().Servers {
		n := names[string(s.ID)]
		if n == "" {
			n = string(s.ID)
		}
		if s.Suffrage == raft.Voter {
			info.Voters = append(info.Voters, n)
		} else {
			info.NonVoters = append(info.NonVoters, n)
		}
	}
	slices.Sort(info.Voters)
	slices.Sort(info.NonVoters)
}

// managerStatuses returns leader | reachable | unreachable per manager ID.
func (m *Manager) managerStatuses(managers map[string]string) map[string]string {
	_, lid := m.replica.Raft.LeaderWithID()
	out := map[string]string{}
	var wg sync.WaitGroup
	var mu sync.Mutex
	for id, addr := range managers {
		var st string
		switch {
		case id == string(lid):
			st = "leader"
		case id == m.selfID:
			st = "reachable"
		case addr == "":
			st = "unreachable"
		default:
			wg.Add(1)
			go func() {
				defer wg.Done()
				st := "unreachable"
				if m.probe(addr) {
					st = "reachable"
				}
				mu.Lock()
				out[id] = st
				mu.Unlock()
			}()
			continue
		}
		// Probes started for earlier IDs write out meanwhile.
		mu.Lock()
		out[id] = st
		mu.Unlock()
	}
	wg.Wait()
	return out
}

// noteNodeAhead logs, at most once a minute per node, that a node holds a
// map version above this manager's. It never writes: a node's `after` is
// any number a member chooses. Only the leader's view counts (a follower
// that lags is normal).
func (m *Manager) noteNodeAhead(id string, after uint64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.leader || after <= m.current.Version {
		return
	}
	now := m.now()
	if last, ok := m.aheadLogged[id]; ok && now.Sub(last) < time.Minute {
		return
	}
	if m.aheadLogged == nil {
		m.aheadLogged = map[string]time.Time{}
	}
	m.aheadLogged[id] = now
	name := m.st.nodes[id].Name
	if after > clustermap.MaxVersion {
		m.log.Warn("node claims an absurd map version; ignored (the node forgets such a version itself)", "node", name, "version", after, "bound", clustermap.MaxVersion)
		return
	}
	m.log.Warn("node holds a newer map version than this cluster: it keeps its map until the cluster's version passes it. "+
		"If this cluster was restored from a backup, restore again with a larger `--version-bump`",
		"node", name, "node_version", after, "cluster_version", m.current.Version, "gap", after-m.current.Version)
}

// SetManagerVoter promotes (voter) or demotes a manager, by name or ID.
func (m *Manager) SetManagerVoter(ref string, voter bool) error {
	m.mu.Lock()
	n, ok := m.findNodeLocked(ref)
	m.mu.Unlock()
	if !ok {
		return errNoNode(ref)
	}
	if n.Role != clustermap.RoleManager {
		return errorf(http.StatusConflict, "node %q is a worker: only managers (joined with `warren manager join` and a manager token) vote in Raft", n.Name)
	}
	if !m.isLeader() {
		return m.noLeaderError(nil)
	}
	if err := m.setVoter(n.ID, voter); err != nil {
		return err
	}
	// Remember the operator's choice: a demoted manager's own promote
	// requests (joinRaft, at every start) are refused.
	return m.update(func(s *state) error {
		if rec, ok := s.nodes[n.ID]; ok {
			rec.Demoted = !voter
			s.nodes[n.ID] = rec
		}
		return nil
	})
}

// minFreeBytes is the free space the state dir needs for a write: below
// it the manager refuses writes up front, so that neither Raft's log nor
// the store fails half-way through one (hashicorp/raft stops on a log it
// cannot write).
const minFreeBytes = 1 << 20

// checkDiskSpace refuses a write when the state dir's filesystem is
// (nearly) full.
func (m *Manager) checkDiskSpace() error {
	var st unix.Statfs_t
	if err := unix.Statfs(m.cfg.StateDir, &st); err != nil {
		return nil // cannot tell: let the write say what is wrong
	}
	free := st.Bavail * uint64(st.Bsize)
	if free < minFreeBytes {
		return errorf(http.StatusInsufficientStorage, "no space left on device: %s has %d KiB free and writes need %d KiB; free some space, then retry (nothing was written)",
			m.cfg.StateDir, free>>10, minFreeBytes>>10)
	}
	return nil
}

// TLSIdentity is this manager's certificate and the cluster CA: its log
// server shows the one and checks managers against the other.
func (m *Manager) TLSIdentity() (*tls.Certificate, *x509.CertPool) {
	return m.managerCert(), m.caPool()
}

package cluster

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/warren-appliance/warren/cluster/api"
	"github.com/warren-appliance/warren/cluster/clustermap"
	"github.com/warren-appliance/warren/cluster/pki"
)

// Serve runs the node API (mTLS) on cfg.APIListen and the liveness check
// that marks silent nodes down, until ctx ends.
func (m *Manager) Serve(ctx context.Context) error {
	ln, err := net.Listen("tcp", m.cfg.APIListen)
	if err != nil {
		return fmt.Errorf("cluster API: listen on %s: %w", m.cfg.APIListen, err)
	}
	return m.ServeListener(ctx, ln)
}

// ServeListener is Serve on an existing listener (tests, socket activation).
func (m *Manager) ServeListener(ctx context.Context, ln net.Listener) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	m.mu.Lock()
	m.servingAddr = ln.Addr().String()
	m.mu.Unlock()
	// The cluster's serving certificate for the node API, this manager's
	// own for Raft on the same port (raftnet.go).
	tlsConf := m.serverTLS()
	// Every request has deadlines (the watch stream replaces them with a
	// write deadline per line); the TLS handshake gets the shortest one.
	rt := m.cfg.requestTimeout
	srv := &http.Server{
		Handler:           m.nodeHandler(),
		ReadHeaderTimeout: min(10*time.Second, rt),
		ReadTimeout:       rt,
		WriteTimeout:      rt + rt/2,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    16 << 10,
		BaseContext:       func(net.Listener) context.Context { return ctx },
		ConnContext:       connContext,
	}
	limited := &limitedListener{Listener: ln, lim: &connLimiter{known: m.knownAddr}, log: func(n int) {
		m.log.Warn("refusing connections beyond the caps on unauthenticated connections", "refused", n,
			"max", maxUnauthConns, "max_per_bucket", maxUnauthConnsPerBucket, "kept_for_members", keptForKnown)
	}}
	if m.cfg.Join != nil {
		go m.joinRaft(ctx)
	}
	go m.livenessLoop(ctx)
	go m.updateLoop(ctx)
	go m.peerLoop(ctx)
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(newMuxListener(ctx, limited, tlsConf, m)) }()
	m.log.Info("cluster API listening", "addr", ln.Addr().String())
	select {
	case err := <-errc:
		return fmt.Errorf("cluster API: %w", err)
	case <-ctx.Done():
	}
	shutCtx, stop := context.WithTimeout(context.Background(), 5*time.Second)
	defer stop()
	if err := srv.Shutdown(shutCtx); err != nil {
		srv.Close()
	}
	return nil
}

func (m *Manager) livenessLoop(ctx context.Context) {
	t := time.NewTicker(max(m.cfg.DownAfter/4, 100*time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			m.markSilentNodesDown()
		}
	}
}

// updateTick is how often a rolling update waiting on time is replanned.
const updateTick = 500 * time.Millisecond

func (m *Manager) updateLoop(ctx context.Context) {
	t := time.NewTicker(updateTick)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			m.advanceUpdates()
		}
	}
}

func (m *Manager) nodeHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+api.PathJoin, m.handleJoin)
	mux.HandleFunc("PUT "+api.PathSelf, m.authed(m.handleSelf))
	mux.HandleFunc("POST "+api.PathRenew, m.handleRenew)
	mux.HandleFunc("GET "+api.PathWatch, m.authed(m.handleWatch))
	mux.HandleFunc("POST "+api.PathStatus, m.authed(m.handleStatus))
	mux.HandleFunc("POST "+api.PathValues, m.authed(m.handleValues))
	mux.HandleFunc("POST "+api.PathPeerRegister, m.handlePeerRegister)
	mux.HandleFunc("POST "+api.PathPeerSync, m.handlePeerSync)
	mux.HandleFunc("POST "+api.PathPeerUnregister, m.handlePeerUnregister)
	outer := http.NewServeMux()
	m.internalHandlers(outer, mux)
	outer.Handle("/", mux)
	return outer
}

// authed verifies the client certificate and passes the caller's node ID,
// which comes from the certificate, never from the request.
func (m *Manager) authed(h func(http.ResponseWriter, *http.Request, string)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		c, err := m.authenticate(r, false)
		if err != nil {
			writeError(w, err)
			return
		}
		markAuthenticated(r.Context())
		m.withNodeSlot(w, r, c.id, func() { h(w, r, c.id) })
	}
}

// caller is an authenticated node: its ID (the certificate's CN) and the
// certificate it presented.
type caller struct {
	id      string
	leaf    *x509.Certificate
	expired bool
}

// authenticate checks the client certificate: signed by the cluster CA,
// for a member (not a removed node), and one of that member's live serials
// (a join revokes the older ones). allowExpired accepts a certificate past
// its NotAfter (renewal only): the TLS handshake proved the caller holds
// its key, and its serial is still the node's.
func (m *Manager) authenticate(r *http.Request, allowExpired bool) (caller, error) {
	return m.authenticateCerts(peerCertificates(r), allowExpired)
}

// authenticateCerts is authenticate on the certificates a client presented.
func (m *Manager) authenticateCerts(peer []*x509.Certificate, allowExpired bool) (caller, error) {
	if len(peer) == 0 {
		return caller{}, errorf(http.StatusUnauthorized, "this call needs the node's client certificate: join the cluster with a token first")
	}
	leaf := peer[0]
	inter := x509.NewCertPool()
	for _, c := range peer[1:] {
		inter.AddCert(c)
	}
	roots := m.caPool()
	at := m.now()
	expired := at.After(leaf.NotAfter)
	if expired && allowExpired {
		at = leaf.NotAfter
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: at,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		return caller{}, errorf(http.StatusUnauthorized, "client certificate %q is not valid for this cluster (%v): the node belongs to another cluster, its certificate expired, or its state dir is stale; it renews by itself, else clear the state dir and join with a token", leaf.Subject.CommonName, err)
	}
	id := leaf.Subject.CommonName
	serial := pki.Serial(leaf)
	rec, err := m.member(id)
	if err != nil {
		return caller{}, err
	}
	if !rec.acceptsSerial(serial) {
		return caller{}, errorf(http.StatusUnauthorized, "client certificate %s of node %q was superseded: the node joined again since, and certificates from before no longer work; clear this state dir and join with a token if this is that node", serial, rec.Name)
	}
	if rec.TLSKey != "" && pki.KeyHash(leaf.PublicKey) != rec.TLSKey {
		// The serial matches but not the key: a certificate signed with a
		// copy of the CA key (a retired manager's) for this node's serial.
		return caller{}, errorf(http.StatusUnauthorized, "client certificate %s of node %q is not for the node's own TLS key", serial, rec.Name)
	}
	if expired && rec.CertSerial == "" {
		return caller{}, errorf(http.StatusUnauthorized, "client certificate of node %q expired at %s and was issued before the manager kept serials: join again with a token", rec.Name, leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	return caller{id: id, leaf: leaf, expired: expired}, nil
}

func (m *Manager) handleJoin(w http.ResponseWriter, r *http.Request) {
	// A join never authenticates its connection (the node has no
	// certificate yet), so kept alive it would hold one of its source's
	// unauthenticated slots until the idle timeout: after 96 joins from
	// one address every new connection from there was refused. A node
	// joins once; close the connection after the answer.
	w.Header().Set("Connection", "close")
	if m.followerForwards(w, r) {
		return
	}
	var req api.JoinRequest
	if err := readJSON(r, &req); err != nil {
		writeError(w, err)
		return
	}
	resp, err := m.join(req)
	if err != nil {
		m.log.Warn("join refused", "name", req.Name, "remote", r.RemoteAddr, "err", err)
		writeError(w, err)
		return
	}
	m.log.Info("node joined", "name", resp.Node.Name, "id", resp.Node.ID, "role", resp.Node.Role,
		"overlay_ip", resp.Node.OverlayIP, "block", resp.Node.ContainerBlock)
	writeJSON(w, http.StatusOK, resp)
}

// join admits a node that presented a valid token secret. A name that is
// already a member joins again as that member (same ID, IP and block) only
// with a CSR for the member's own TLS key, which proves it is that node
// (it lost its certificate, not its key); the new certificate revokes the
// older ones. Anything else under a taken name needs the operator to
// remove the old record first. A token never changes a member's role.
func (m *Manager) join(req api.JoinRequest) (api.JoinResponse, error) {
	m.mu.Lock()
	workerOK := pki.SecretEqual(req.Secret, m.st.meta.WorkerSecret)
	managerOK := pki.SecretEqual(req.Secret, m.st.meta.ManagerSecret)
	m.mu.Unlock()
	role := ""
	switch {
	case managerOK:
		role = clustermap.RoleManager
	case workerOK:
		role = clustermap.RoleWorker
	default:
		return api.JoinResponse{}, errorf(http.StatusUnauthorized, "join token refused: its secret is not valid for this cluster (rotated or mistyped?); print the current one on a manager with `warren cluster join-token worker`")
	}
	if req.Role == "" {
		req.Role = role
	}
	if req.Role != role {
		return api.JoinResponse{}, errorf(http.StatusForbidden, "this is a %s join token but the node asked to join as %s: use `warren cluster join-token %s`", role, req.Role, req.Role)
	}
	info := NodeInfo{Name: req.Name, Role: role, Labels: req.Labels, Endpoint: req.Endpoint, PublicKey: req.PublicKey, Relay: req.Relay}
	if err := info.Validate(); err != nil {
		return api.JoinResponse{}, errorf(http.StatusBadRequest, "%v", err)
	}
	csr, err := pki.ParseCSR(req.CSR)
	if err != nil {
		return api.JoinResponse{}, errorf(http.StatusBadRequest, "certificate request refused: %v", err)
	}
	keyHash := pki.KeyHash(csr.PublicKey)
	var resp api.JoinResponse
	err = m.update(func(s *state) error {
		now := m.now()
		rec, exists := s.nodeByName(req.Name)
		if exists && (rec.TLSKey == "" || rec.TLSKey != keyHash) {
			// Name and WireGuard key are in every map: without the node's
			// private key, anyone holding a token could take its identity.
			return errorf(http.StatusConflict, "node name %q "+api.NameTaken+" (overlay IP %s): joining again as that node needs its private key (node-tls.key in its state dir); if this is a re-installed board or another node, choose another name, or remove the old record first with `warren node rm %s`", req.Name, rec.OverlayIP, req.Name)
		}
		if exists && rec.Role != role {
			return errorf(http.StatusForbidden, "node %q is a %s: a %s join token cannot join as it", req.Name, rec.Role, role)
		}
		for _, n := range s.nodes {
			if n.PublicKey == req.PublicKey && n.ID != rec.ID {
				return errorf(http.StatusConflict, "WireGuard key already belongs to node %q: every node needs its own key", n.Name)
			}
		}
		if exists {
			rec.Endpoint, rec.Labels, rec.PublicKey, rec.Status = req.Endpoint, req.Labels, req.PublicKey, clustermap.NodeReady
			rec.Relay = req.Relay
		} else {
			var err error
			if rec, err = s.admit(info, randomID(), now); err != nil {
				return err
			}
		}
		cert, err := m.signFor(rec.Role, req.CSR, rec.ID, now)
		if err != nil {
			return errorf(http.StatusBadRequest, "certificate request refused: %v", err)
		}
		rec.CertNotAfter, rec.CertSerial, rec.PrevSerial, rec.TLSKey, rec.CAHash = cert.NotAfter, pki.Serial(cert), "", keyHash, m.ca.Hash()
		s.nodes[rec.ID] = rec
		m.lastSeen[rec.ID] = now
		resp = api.JoinResponse{ClusterID: s.meta.ClusterID, Node: rec.Node, Certificate: cert.Raw, Network: s.meta.network(), TrustBundle: s.meta.trustBundle()}
		return nil
	})
	return resp, err
}

// signFor signs a node's CSR; managers get a manager certificate (the only
// kind the managers' Raft and internal API accept).
func (m *Manager) signFor(role string, csr []byte, id string, now time.Time) (*x509.Certificate, error) {
	if role == clustermap.RoleManager {
		return m.ca.SignManagerFor(csr, id, now, m.cfg.CertLifetime)
	}
	return m.ca.SignNodeFor(csr, id, now, m.cfg.CertLifetime)
}

func (m *Manager) handleSelf(w http.ResponseWriter, r *http.Request, id string) {
	if m.followerForwards(w, r) {
		return
	}
	var req api.SelfUpdate
	if err := readJSON(r, &req); err != nil {
		writeError(w, err)
		return
	}
	var out clustermap.Node
	err := m.update(func(s *state) error {
		rec, ok := s.nodes[id]
		if !ok {
			return errNodeRemoved(id)
		}
		info := NodeInfo{Name: rec.Name, Role: rec.Role, Labels: req.Labels, Endpoint: req.Endpoint, PublicKey: req.PublicKey, Relay: req.Relay}
		if err := info.Validate(); err != nil {
			return errorf(http.StatusBadRequest, "%v", err)
		}
		for oid, n := range s.nodes {
			if oid != id && n.PublicKey == req.PublicKey {
				return errorf(http.StatusConflict, "WireGuard key already belongs to node %q: every node needs its own key", n.Name)
			}
		}
		rec.Endpoint, rec.Labels, rec.PublicKey, rec.Relay = req.Endpoint, req.Labels, req.PublicKey, req.Relay
		s.nodes[id] = rec
		out = rec.Node
		return nil
	})
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, out)
}

// handleRenew signs a new certificate for the caller's key. It accepts an
// expired certificate (a node switched off past its expiry comes back by
// itself): the handshake proved the caller holds the key, and the serial is
// still the node's. The presented certificate stays valid until it expires.
func (m *Manager) handleRenew(w http.ResponseWriter, r *http.Request) {
	if m.followerForwards(w, r) {
		return
	}
	c, err := m.authenticate(r, true)
	if err != nil {
		writeError(w, err)
		return
	}
	markAuthenticated(r.Context())
	var req api.RenewRequest
	if err := readJSON(r, &req); err != nil {
		writeError(w, err)
		return
	}
	csr, err := pki.ParseCSR(req.CSR)
	if err != nil {
		writeError(w, errorf(http.StatusBadRequest, "certificate request refused: %v", err))
		return
	}
	if pki.KeyHash(csr.PublicKey) != pki.KeyHash(c.leaf.PublicKey) {
		writeError(w, errorf(http.StatusBadRequest, "certificate request is for another key than the certificate presented: renewal keeps the node's key"))
		return
	}
	presented := pki.Serial(c.leaf)
	var der []byte
	var name string
	var notAfter time.Time
	err = m.update(func(s *state) error {
		rec, ok := s.nodes[c.id]
		if !ok {
			return errNodeRemoved(c.id)
		}
		if !rec.acceptsSerial(presented) {
			return errorf(http.StatusUnauthorized, "client certificate %s of node %q was superseded while renewing", presented, rec.Name)
		}
		cert, err := m.signFor(rec.Role, req.CSR, c.id, m.now())
		if err != nil {
			return errorf(http.StatusBadRequest, "certificate request refused: %v", err)
		}
		rec.CertNotAfter, rec.CertSerial, rec.PrevSerial, rec.TLSKey, rec.CAHash = cert.NotAfter, pki.Serial(cert), presented, pki.KeyHash(cert.PublicKey), m.ca.Hash()
		s.nodes[c.id] = rec
		der, name, notAfter = cert.Raw, rec.Name, cert.NotAfter
		return nil
	})
	if err != nil {
		writeError(w, err)
		return
	}
	if c.expired {
		m.log.Info("node came back with an expired certificate and proved its key; renewed", "node", name, "expired", c.leaf.NotAfter, "expires", notAfter)
	} else {
		m.log.Info("node certificate renewed", "node", name, "expires", notAfter)
	}
	writeJSON(w, http.StatusOK, api.RenewResponse{Certificate: der})
}

// readReport reads a node's report and holds it to the report bounds.
func readReport(r *http.Request) (api.NodeStatus, error) {
	var st api.NodeStatus
	if err := readJSON(r, &st); err != nil {
		return st, err
	}
	return checkReport(st)
}

func (m *Manager) handleStatus(w http.ResponseWriter, r *http.Request, id string) {
	if m.followerForwards(w, r) {
		return
	}
	st, err := readReport(r)
	if err != nil {
		writeError(w, err)
		return
	}
	if err := m.foldStatus(id, st); err != nil {
		writeError(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// handleWatch streams the map: one JSON document per line, sent whenever
// the version changes. A slow reader skips intermediate versions and gets
// the newest. The first line is the current map if it is newer than what
// the caller holds (versions only grow, by one per change).
func (m *Manager) handleWatch(w http.ResponseWriter, r *http.Request, id string) {
	after, _ := strconv.ParseUint(r.URL.Query().Get("after"), 10, 64)
	flusher, ok := w.(http.Flusher)
	if !ok {
		writeError(w, errors.New("streaming unsupported"))
		return
	}
	// A stream outlives the request deadlines: no read deadline (the
	// request has no body), and a write deadline per line so a reader that
	// stopped reading is dropped.
	rc := http.NewResponseController(w)
	_ = rc.SetReadDeadline(time.Time{})
	writeDeadline := func() { _ = rc.SetWriteDeadline(time.Now().Add(2 * m.keepalive)) }
	writeDeadline()
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set(api.HeaderKeepalive, m.keepalive.String())
	w.WriteHeader(http.StatusOK)
	flusher.Flush()
	keepalive := time.NewTicker(m.keepalive)
	defer keepalive.Stop()
	if after > m.Map().Version {
		// The node holds a newer map than this manager: a follower that
		// lags (it catches up and then sends), or a cluster restored from
		// an older backup without a large enough --version-bump. A node's
		// `after` is never a reason to write (any member could send any
		// number): say so, and let the operator act.
		m.noteNodeAhead(id, after)
	}
	for {
		m.mu.Lock()
		version, body := m.mapViewLocked(id)
		ch := m.changed
		_, member := m.st.nodes[id]
		m.mu.Unlock()
		if !member {
			return // removed: the agent's next call gets the 403 that says so
		}
		if version > after {
			writeDeadline()
			// body is shared with other watchers: never append to it.
			if _, err := w.Write(body); err != nil {
				return
			}
			if _, err := w.Write([]byte("\n")); err != nil {
				return
			}
			flusher.Flush()
			after = version
		}
		select {
		case <-r.Context().Done():
			return
		case <-ch:
		case <-keepalive.C:
			writeDeadline()
			if _, err := w.Write([]byte("\n")); err != nil {
				return
			}
			flusher.Flush()
		}
	}
}

package cluster

import (
	"context"
	"crypto/tls"
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

// watchKeepalive is how often an idle watch stream carries an empty line,
// so agents notice a dead manager without TCP timeouts; agents give up on a
// stream silent for three of them.
const watchKeepalive = 15 * time.Second

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
	tlsConf := &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{m.server},
		// Joining nodes have no certificate yet; handlers that need one
		// verify it themselves and answer with a clear error.
		ClientAuth: tls.RequestClientCert,
	}
	srv := &http.Server{
		Handler:           m.nodeHandler(),
		TLSConfig:         tlsConf,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		BaseContext:       func(net.Listener) context.Context { return ctx },
	}
	go m.livenessLoop(ctx)
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(tls.NewListener(ln, tlsConf)) }()
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

func (m *Manager) nodeHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+api.PathJoin, m.handleJoin)
	mux.HandleFunc("PUT "+api.PathSelf, m.authed(m.handleSelf))
	mux.HandleFunc("POST "+api.PathRenew, m.authed(m.handleRenew))
	mux.HandleFunc("GET "+api.PathWatch, m.authed(m.handleWatch))
	mux.HandleFunc("POST "+api.PathStatus, m.authed(m.handleStatus))
	return mux
}

// authed verifies the client certificate and passes the caller's node ID,
// which comes from the certificate, never from the request.
func (m *Manager) authed(h func(http.ResponseWriter, *http.Request, string)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		id, err := m.authenticate(r)
		if err != nil {
			writeError(w, err)
			return
		}
		h(w, r, id)
	}
}

func (m *Manager) authenticate(r *http.Request) (string, error) {
	if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
		return "", errorf(http.StatusUnauthorized, "this call needs the node's client certificate: join the cluster with a token first")
	}
	leaf := r.TLS.PeerCertificates[0]
	inter := x509.NewCertPool()
	for _, c := range r.TLS.PeerCertificates[1:] {
		inter.AddCert(c)
	}
	m.mu.Lock()
	roots := m.ca.Pool()
	m.mu.Unlock()
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: m.now(),
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		return "", errorf(http.StatusUnauthorized, "client certificate %q is not valid for this cluster (%v): the node belongs to another cluster or its state dir is stale; clear it and join with a token", leaf.Subject.CommonName, err)
	}
	id := leaf.Subject.CommonName
	m.mu.Lock()
	_, ok := m.st.nodes[id]
	m.mu.Unlock()
	if !ok {
		return "", errNodeRemoved(id)
	}
	return id, nil
}

func (m *Manager) handleJoin(w http.ResponseWriter, r *http.Request) {
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

// join admits a node that presented a valid token secret. A node that
// joins again with the same name and WireGuard key keeps its ID, IP and
// block (it lost its certificate but not its key), provided the existing
// record is not online; a different key under a taken name is refused.
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
	info := NodeInfo{Name: req.Name, Role: role, Labels: req.Labels, Endpoint: req.Endpoint, PublicKey: req.PublicKey}
	if err := validateNodeInfo(info); err != nil {
		return api.JoinResponse{}, errorf(http.StatusBadRequest, "%v", err)
	}
	var resp api.JoinResponse
	err := m.update(func(s *state) error {
		now := m.now()
		rec, exists := s.nodeByName(req.Name)
		if exists && rec.PublicKey != req.PublicKey {
			return errorf(http.StatusConflict, "node name %q is already taken by another node (different WireGuard key, overlay IP %s): choose another name, or remove the old node with `warren node rm %s`", req.Name, rec.OverlayIP, req.Name)
		}
		for _, n := range s.nodes {
			if n.PublicKey == req.PublicKey && n.Name != req.Name {
				return errorf(http.StatusConflict, "WireGuard key already belongs to node %q: every node needs its own key", n.Name)
			}
		}
		if exists && rec.Status == clustermap.NodeReady && now.Sub(m.lastSeen[rec.ID]) < m.cfg.DownAfter {
			// Public keys are in the map: without this, anyone holding a token
			// could take over a live node's identity by naming it and its key.
			return errorf(http.StatusConflict, "node %q is online (it reported %s ago): a node can join again under its own name only once it is down (silent for %s); or remove it first with `warren node rm --force %s`",
				req.Name, now.Sub(m.lastSeen[rec.ID]).Round(time.Second), m.cfg.DownAfter, req.Name)
		}
		if exists {
			rec.Endpoint, rec.Labels, rec.Role, rec.Status = req.Endpoint, req.Labels, role, clustermap.NodeReady
		} else {
			var err error
			if rec, err = s.admit(info, randomID(), now); err != nil {
				return err
			}
		}
		cert, err := m.ca.SignNode(req.CSR, rec.ID, now)
		if err != nil {
			return errorf(http.StatusBadRequest, "certificate request refused: %v", err)
		}
		rec.CertNotAfter = cert.NotAfter
		s.nodes[rec.ID] = rec
		m.lastSeen[rec.ID] = now
		resp = api.JoinResponse{ClusterID: s.meta.ClusterID, Node: rec.Node, Certificate: cert.Raw, Network: s.meta.network()}
		return nil
	})
	return resp, err
}

func (m *Manager) handleSelf(w http.ResponseWriter, r *http.Request, id string) {
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
		info := NodeInfo{Name: rec.Name, Role: rec.Role, Labels: req.Labels, Endpoint: req.Endpoint, PublicKey: req.PublicKey}
		if err := validateNodeInfo(info); err != nil {
			return errorf(http.StatusBadRequest, "%v", err)
		}
		for oid, n := range s.nodes {
			if oid != id && n.PublicKey == req.PublicKey {
				return errorf(http.StatusConflict, "WireGuard key already belongs to node %q: every node needs its own key", n.Name)
			}
		}
		rec.Endpoint, rec.Labels, rec.PublicKey = req.Endpoint, req.Labels, req.PublicKey
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

func (m *Manager) handleRenew(w http.ResponseWriter, r *http.Request, id string) {
	var req api.RenewRequest
	if err := readJSON(r, &req); err != nil {
		writeError(w, err)
		return
	}
	var der []byte
	err := m.update(func(s *state) error {
		rec, ok := s.nodes[id]
		if !ok {
			return errNodeRemoved(id)
		}
		cert, err := m.ca.SignNode(req.CSR, id, m.now())
		if err != nil {
			return errorf(http.StatusBadRequest, "certificate request refused: %v", err)
		}
		rec.CertNotAfter = cert.NotAfter
		s.nodes[id] = rec
		der = cert.Raw
		return nil
	})
	if err != nil {
		writeError(w, err)
		return
	}
	m.log.Info("node certificate renewed", "id", id)
	writeJSON(w, http.StatusOK, api.RenewResponse{Certificate: der})
}

func (m *Manager) handleStatus(w http.ResponseWriter, r *http.Request, id string) {
	var st api.NodeStatus
	if err := readJSON(r, &st); err != nil {
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
// the newest. The first line is the current map unless the caller already
// holds exactly that version.
func (m *Manager) handleWatch(w http.ResponseWriter, r *http.Request, id string) {
	after, _ := strconv.ParseUint(r.URL.Query().Get("after"), 10, 64)
	flusher, ok := w.(http.Flusher)
	if !ok {
		writeError(w, errors.New("streaming unsupported"))
		return
	}
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	flusher.Flush()
	keepalive := time.NewTicker(m.keepalive)
	defer keepalive.Stop()
	first := true
	for {
		m.mu.Lock()
		version, body, ch := m.current.Version, m.mapJSON, m.changed
		_, member := m.st.nodes[id]
		m.mu.Unlock()
		if !member {
			return // removed: the agent's next call gets the 403 that says so
		}
		if (first && version != after) || version > after {
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
		first = false
		select {
		case <-r.Context().Done():
			return
		case <-ch:
		case <-keepalive.C:
			if _, err := w.Write([]byte("\n")); err != nil {
				return
			}
			flusher.Flush()
		}
	}
}

package cluster

import (
	"context"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/warren-appliance/warren/cluster/api"
	"github.com/warren-appliance/warren/cluster/apicall"
	"github.com/warren-appliance/warren/cluster/clustermap"
	"github.com/warren-appliance/warren/cluster/federation"
	"github.com/warren-appliance/warren/cluster/pki"
	"github.com/warren-appliance/warren/internal/wgkey"
)

// peerRecord is a peered cluster (federation): how to reach and trust its
// managers, and its ranges (disjoint from ours and other peers').
type peerRecord struct {
	Name      string             `json:"name"`
	ClusterID string             `json:"cluster_id"`
	CAHash    string             `json:"ca_hash"`
	CACert    string             `json:"ca_cert"` // PEM
	Managers  []string           `json:"managers"`
	Network   clustermap.Network `json:"network"`
	CreatedAt time.Time          `json:"created_at"`
	// Added: this cluster ran `peer add` (else the peer registered here).
	Added bool `json:"added,omitempty"`
	// Gateway is the peer's gateway node as its last sync said.
	Gateway *api.PeerGateway `json:"gateway,omitempty"`
}

// federationRecord is this cluster's gateway (bucketImports, keyGateway).
type federationRecord struct {
	GatewayID string `json:"gateway_id"`
}

// gateway is this cluster's gateway node as peers dial it.
func (s *state) gateway() *api.PeerGateway {
	n, ok := s.nodes[s.gatewayID]
	if !ok || !n.Endpoint.IsValid() || n.PublicKey == "" {
		return nil
	}
	return &api.PeerGateway{PublicKey: n.PublicKey, Endpoint: n.Endpoint, OverlayIP: n.OverlayIP}
}

// federationMap renders the map's gateway links: one per peer whose
// gateway is known, with the task IPs of what this cluster exports.
func (s *state) federationMap() *clustermap.Federation {
	if len(s.peers) == 0 {
		return nil
	}
	var exposed []netip.Addr
	for _, t := range s.tasks {
		if t.Serves() && s.services[t.Service].Exported {
			exposed = append(exposed, t.IP)
		}
	}
	slices.SortFunc(exposed, netip.Addr.Compare)
	f := &clustermap.Federation{GatewayID: s.gatewayID}
	for _, name := range slices.Sorted(maps.Keys(s.peers)) {
		p := s.peers[name]
		if p.Gateway == nil {
			continue
		}
		f.Gateways = append(f.Gateways, clustermap.Gateway{Peer: name, PublicKey: p.Gateway.PublicKey, Endpoint: p.Gateway.Endpoint,
			OverlayIP: p.Gateway.OverlayIP, ContainerSubnet: p.Network.ContainerSubnet, Exposed: exposed})
	}
	return f
}

// checkPeerRecord is the replicas' check of a peer record: it decodes, is
// stored under its own name, and its name, ranges, managers and CA hash
// are valid.
func checkPeerRecord(key string, v []byte) error {
	var r peerRecord
	if err := json.Unmarshal(v, &r); err != nil {
		return err
	}
	if r.Name != key {
		return fmt.Errorf("peer record named %q under key %q", r.Name, key)
	}
	if err := federation.CheckName(r.Name); err != nil {
		return err
	}
	if err := federation.CheckNetwork(r.Network); err != nil {
		return err
	}
	if err := federation.CheckManagers(r.Managers); err != nil {
		return err
	}
	ca, err := pki.ParseCertPEM([]byte(r.CACert))
	if err != nil {
		return fmt.Errorf("peer %s CA: %w", r.Name, err)
	}
	if pki.CertHash(ca.Raw) != r.CAHash {
		return fmt.Errorf("peer %s: CA hash does not match its CA", r.Name)
	}
	return nil
}

// peerLink is what this manager last saw of a peer (kept in memory: every
// manager syncs with every peer, so `peer ls` is current on each).
type peerLink struct {
	status  string
	reason  string
	contact time.Time
	exports []federation.Export
}

// peerLinks holds the manager's links; its own lock, never held while
// calling out or taking m.mu.
type peerLinks struct {
	mu        sync.Mutex
	links     map[string]peerLink
	conflicts map[string]string // last conflict logged per peer
}

// noteConflict reports whether the peer's object name conflicts changed
// since last logged.
func (p *peerLinks) noteConflict(peer, what string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.conflicts == nil {
		p.conflicts = map[string]string{}
	}
	if p.conflicts[peer] == what {
		return false
	}
	p.conflicts[peer] = what
	return true
}

func (p *peerLinks) get(name string) (peerLink, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	l, ok := p.links[name]
	return l, ok
}

func (p *peerLinks) set(name string, l peerLink) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.links == nil {
		p.links = map[string]peerLink{}
	}
	p.links[name] = l
}

func (p *peerLinks) snapshot() map[string]peerLink {
	p.mu.Lock()
	defer p.mu.Unlock()
	return maps.Clone(p.links)
}

func (p *peerLinks) drop(keep func(string) bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for n := range p.links {
		if !keep(n) {
			delete(p.links, n)
		}
	}
}

// PeerSyncEvery is how often every manager syncs with every peer.
var PeerSyncEvery = 5 * time.Second

// peerCaller calls a peer's managers over mTLS: this manager's
// certificate (signed by our CA, which the peer recorded), the peer's CA
// pinned by hash.
func (m *Manager) peerCaller(caHash, by string) (apicall.Caller, func()) {
	client := apicall.HTTPS(apicall.MTLS(apicall.Pin{CAHash: caHash, By: by,
		Advice: "the peer's managers are not the cluster this peer was made with; remove the peer and add it again with a new token"}.Verify(m.now), m.managerCert),
		apicall.Deadlines{Dial: 5 * time.Second, Handshake: 5 * time.Second, Total: 10 * time.Second})
	return apicall.Caller{Scheme: "https", Peer: "peer manager", HTTP: client}, client.CloseIdleConnections
}

// managerAPIs lists the managers' API addresses (host:port) a peer dials.
func (s *state) managerAPIs() []string {
	var out []string
	for _, n := range s.sortedNodes() {
		if n.Role == clustermap.RoleManager && n.API != "" {
			if _, err := netip.ParseAddrPort(n.API); err == nil {
				out = append(out, n.API)
			}
		}
	}
	if len(out) > federation.MaxTokenManagers {
		out = out[:federation.MaxTokenManagers]
	}
	return out
}

// helloLocked is this cluster as a peer sees it.
func (m *Manager) helloLocked() api.PeerHello {
	mgrs := m.st.managerAPIs()
	if len(mgrs) == 0 {
		mgrs = []string{m.cfg.Advertise}
	}
	return api.PeerHello{ClusterID: m.st.meta.ClusterID, CACert: string(m.ca.CertPEM()), Managers: mgrs, Network: m.st.meta.network()}
}

func (s *state) existingPeers() []federation.Existing {
	out := make([]federation.Existing, 0, len(s.peers))
	for _, p := range s.peers {
		out = append(out, federation.Existing{Name: p.Name, ClusterID: p.ClusterID, Network: p.Network})
	}
	slices.SortFunc(out, func(a, b federation.Existing) int {
		if a.Name < b.Name {
			return -1
		}
		if a.Name > b.Name {
			return 1
		}
		return 0
	})
	return out
}

// PeerToken returns this cluster's peer token, making its secret the
// first time.
func (m *Manager) PeerToken() (string, error) {
	err := m.update(func(s *state) error {
		if s.meta.PeerSecret == "" {
			s.meta.PeerSecret = pki.NewSecret()
		}
		return nil
	})
	if err != nil {
		return "", err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	h := m.helloLocked()
	return federation.Token{ClusterID: h.ClusterID, CAHash: m.ca.Hash(), Managers: h.Managers, Network: h.Network,
		Secret: m.st.meta.PeerSecret}.String(), nil
}

// AddPeer peers this cluster with the one whose token is given: it
// checks the ranges, registers this cluster with the peer (so the peer
// records it too, under the name as), then records the peer. Nothing is
// recorded on either side when a check fails.
func (m *Manager) AddPeer(ctx context.Context, req api.PeerAdd) (api.PeerView, error) {
	tok, err := federation.ParseToken(req.Token)
	if err != nil {
		return api.PeerView{}, errorf(http.StatusBadRequest, "%v", err)
	}
	m.mu.Lock()
	if m.st == nil {
		m.mu.Unlock()
		return api.PeerView{}, m.noLeaderError(nil)
	}
	selfID, local, existing := m.st.meta.ClusterID, m.st.meta.network(), m.st.existingPeers()
	hello := m.helloLocked()
	m.mu.Unlock()
	if err := federation.CheckPeering(req.Name, selfID, local, tok.ClusterID, tok.Network, existing); err != nil {
		return api.PeerView{}, errorf(http.StatusConflict, "%v", err)
	}
	as := req.As
	if as == "" {
		as = "cluster-" + selfID[:min(8, len(selfID))]
	}
	if err := federation.CheckName(as); err != nil {
		return api.PeerView{}, errorf(http.StatusBadRequest, "--as: %v", err)
	}
	caller, done := m.peerCaller(tok.CAHash, "the peer token")
	defer done()
	var ans api.PeerHello
	var errs []error
	var ok bool
	for _, addr := range tok.Managers {
		err := caller.Do(ctx, http.MethodPost, addr, api.PathPeerRegister, nil, api.PeerRegister{Secret: tok.Secret, Name: as, PeerHello: hello}, &ans)
		if err == nil {
			ok = true
			break
		}
		if st := apicall.StatusOf(err); st >= 400 && st < 500 {
			return api.PeerView{}, errorf(http.StatusConflict, "peer %s (%s) refused this cluster: %v", req.Name, addr, apicall.Reason(err))
		}
		var mismatch *apicall.CAMismatchError
		if errors.As(err, &mismatch) {
			return api.PeerView{}, errorf(http.StatusConflict, "peer %s at %s: %v", req.Name, addr, err)
		}
		errs = append(errs, fmt.Errorf("%s: %w", addr, err))
	}
	if !ok {
		return api.PeerView{}, errorf(http.StatusBadGateway, "no manager of peer %s answered: %v", req.Name, errors.Join(errs...))
	}
	rec, err := peerFromHello(req.Name, ans, tok.CAHash, tok.ClusterID, m.now())
	if err != nil {
		return api.PeerView{}, errorf(http.StatusBadGateway, "peer %s answered: %v", req.Name, err)
	}
	rec.Added = true
	err = m.update(func(s *state) error {
		if err := federation.CheckPeering(rec.Name, s.meta.ClusterID, s.meta.network(), rec.ClusterID, rec.Network, s.existingPeers()); err != nil {
			return errorf(http.StatusConflict, "%v", err)
		}
		s.peers[rec.Name] = rec
		return nil
	})
	if err != nil {
		// Undo the registration: nothing half-applied.
		_ = caller.Do(ctx, http.MethodPost, ans.Managers[0], api.PathPeerUnregister, nil, struct{}{}, nil)
		return api.PeerView{}, err
	}
	m.log.Info("peered with a cluster", "peer", rec.Name, "cluster_id", rec.ClusterID, "named_there", as)
	m.kickPeers()
	return m.Peer(rec.Name)
}

// peerFromHello checks what a peer said about itself against what pinned
// it (the token's CA hash and cluster ID, or nothing on registration).
func peerFromHello(name string, h api.PeerHello, caHash, clusterID string, now time.Time) (peerRecord, error) {
	ca, err := pki.ParseCertPEM([]byte(h.CACert))
	if err != nil {
		return peerRecord{}, fmt.Errorf("CA certificate: %w", err)
	}
	if !ca.IsCA {
		return peerRecord{}, errors.New("the CA certificate is not a CA")
	}
	h256 := pki.CertHash(ca.Raw)
	if caHash != "" && h256 != caHash {
		return peerRecord{}, errors.New("the CA it sent is not the token's")
	}
	if clusterID != "" && h.ClusterID != clusterID {
		return peerRecord{}, fmt.Errorf("cluster ID %q is not the token's %q", h.ClusterID, clusterID)
	}
	if h.ClusterID == "" || len(h.ClusterID) > 64 {
		return peerRecord{}, errors.New("cluster ID missing or too long")
	}
	if err := federation.CheckManagers(h.Managers); err != nil {
		return peerRecord{}, err
	}
	if err := federation.CheckNetwork(h.Network); err != nil {
		return peerRecord{}, err
	}
	return peerRecord{Name: name, ClusterID: h.ClusterID, CAHash: h256, CACert: h.CACert, Managers: h.Managers,
		Network: h.Network, CreatedAt: now.UTC()}, nil
}

// RemovePeer forgets a peer (its imported names go with it) and tells it
// to forget this cluster (best effort: a peer that cannot be reached
// shows this cluster as failed until its operator removes it too).
func (m *Manager) RemovePeer(ctx context.Context, name string) error {
	var rec peerRecord
	err := m.update(func(s *state) error {
		r, ok := s.peers[name]
		if !ok {
			return errNoPeer(name)
		}
		rec = r
		delete(s.peers, name)
		s.dropPeerObjects(name)
		s.imports = slices.DeleteFunc(slices.Clone(s.imports), func(i federation.Import) bool { return i.Peer == name })
		return nil
	})
	if err != nil {
		return err
	}
	m.links.drop(func(n string) bool { return n != name })
	caller, done := m.peerCaller(rec.CAHash, "the peer record")
	defer done()
	for _, addr := range rec.Managers {
		if err := caller.Do(ctx, http.MethodPost, addr, api.PathPeerUnregister, nil, struct{}{}, nil); err == nil {
			break
		} else {
			m.log.Info("telling a removed peer to forget this cluster failed", "peer", name, "manager", addr, "err", err)
		}
	}
	m.log.Info("peer removed", "peer", name)
	return nil
}

func errNoPeer(name string) error {
	return errorf(http.StatusNotFound, "no peer named %q (list them with `warren cluster peer ls`)", name)
}

// Peers lists the peers with their link state.
func (m *Manager) Peers() []api.PeerView {
	m.mu.Lock()
	var recs []peerRecord
	var imports []federation.Import
	var gatewayNode string
	if m.st != nil {
		for _, r := range m.st.peers {
			recs = append(recs, r)
		}
		imports, gatewayNode = m.st.imports, m.st.gatewayID
	}
	m.mu.Unlock()
	slices.SortFunc(recs, func(a, b peerRecord) int {
		if a.Name < b.Name {
			return -1
		}
		return 1
	})
	out := []api.PeerView{}
	for _, r := range recs {
		v := m.peerView(r, imports)
		v.Gateway, v.GatewayNode = r.Gateway, gatewayNode
		out = append(out, v)
	}
	return out
}

// Peer shows one peer.
func (m *Manager) Peer(name string) (api.PeerView, error) {
	for _, v := range m.Peers() {
		if v.Name == name {
			return v, nil
		}
	}
	return api.PeerView{}, errNoPeer(name)
}

func (m *Manager) peerView(r peerRecord, imports []federation.Import) api.PeerView {
	v := api.PeerView{Name: r.Name, ClusterID: r.ClusterID, CAHash: r.CAHash, Status: api.PeerConnecting, Managers: r.Managers,
		Network: r.Network, Exports: []federation.Export{}, Imports: []federation.Import{}, CreatedAt: r.CreatedAt}
	if l, ok := m.links.get(r.Name); ok {
		v.Status, v.Reason = l.status, l.reason
		if l.exports != nil {
			v.Exports = l.exports
		}
		if !l.contact.IsZero() {
			c := l.contact.UTC()
			v.LastContact = &c
		}
	}
	for _, i := range imports {
		if i.Peer == r.Name {
			v.Imports = append(v.Imports, i)
		}
	}
	return v
}

// SetExported exports or unexports a service to the peers.
func (m *Manager) SetExported(name string, exported bool) error {
	err := m.update(func(s *state) error {
		r, ok := s.services[name]
		if !ok {
			return errorf(http.StatusNotFound, "no service named %q", name)
		}
		r.Exported = exported
		s.services[name] = r
		return nil
	})
	if err == nil {
		m.log.Info("service export changed", "service", name, "exported", exported)
	}
	return err
}

// exportsLocked lists the exported services with their serving endpoints.
func (m *Manager) exportsLocked() []federation.Export {
	if m.current == nil || m.st == nil {
		return []federation.Export{}
	}
	return federation.ExportsOf(m.current, func(s string) bool { return m.st.services[s].Exported })
}

// peerByCert finds the peer whose CA signed the client certificate the
// caller presented (a manager certificate of that cluster).
func (m *Manager) peerByCert(r *http.Request) (peerRecord, error) {
	certs := peerCertificates(r)
	if len(certs) == 0 {
		return peerRecord{}, errorf(http.StatusUnauthorized, "peer calls need the calling manager's certificate")
	}
	m.mu.Lock()
	var recs []peerRecord
	if m.st != nil {
		for _, p := range m.st.peers {
			recs = append(recs, p)
		}
	}
	m.mu.Unlock()
	for _, p := range recs {
		ca, err := pki.ParseCertPEM([]byte(p.CACert))
		if err != nil {
			continue
		}
		pool := x509.NewCertPool()
		pool.AddCert(ca)
		if pki.VerifyChain(certs[0], pool, x509.ExtKeyUsageClientAuth, m.now()) == nil {
			return p, nil
		}
	}
	return peerRecord{}, errorf(http.StatusForbidden, "the calling cluster is not a peer of this cluster (was it removed with `warren cluster peer rm`?)")
}

func (m *Manager) handlePeerRegister(w http.ResponseWriter, r *http.Request) {
	var req api.PeerRegister
	if err := readJSON(r, &req); err != nil {
		writeError(w, err)
		return
	}
	if !m.isLeader() {
		writeError(w, errorf(http.StatusServiceUnavailable, "this manager is not the leader: ask another manager of the token"))
		return
	}
	m.mu.Lock()
	secret := m.st.meta.PeerSecret
	m.mu.Unlock()
	if secret == "" || !pki.SecretEqual(secret, req.Secret) {
		writeError(w, errorf(http.StatusForbidden, "the peer token's secret is not this cluster's: print a new one with `warren cluster peer token`"))
		return
	}
	rec, err := peerFromHello(req.Name, req.PeerHello, "", "", m.now())
	if err != nil {
		writeError(w, errorf(http.StatusBadRequest, "%v", err))
		return
	}
	certs := peerCertificates(r)
	ca, _ := pki.ParseCertPEM([]byte(rec.CACert))
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	if len(certs) == 0 || pki.VerifyChain(certs[0], pool, x509.ExtKeyUsageClientAuth, m.now()) != nil {
		writeError(w, errorf(http.StatusUnauthorized, "the calling manager's certificate is not signed by the CA it sent"))
		return
	}
	markAuthenticated(r.Context())
	var hello api.PeerHello
	err = m.update(func(s *state) error {
		if err := federation.CheckPeering(rec.Name, s.meta.ClusterID, s.meta.network(), rec.ClusterID, rec.Network, s.existingPeers()); err != nil {
			return errorf(http.StatusConflict, "%v", err)
		}
		s.peers[rec.Name] = rec
		return nil
	})
	if err != nil {
		writeError(w, err)
		return
	}
	m.mu.Lock()
	hello = m.helloLocked()
	m.mu.Unlock()
	m.log.Info("a cluster peered with this one", "peer", rec.Name, "cluster_id", rec.ClusterID)
	m.kickPeers()
	writeJSON(w, http.StatusOK, hello)
}

func (m *Manager) handlePeerSync(w http.ResponseWriter, r *http.Request) {
	if _, err := m.peerByCert(r); err != nil {
		writeError(w, err)
		return
	}
	markAuthenticated(r.Context())
	m.mu.Lock()
	out := api.PeerSync{Managers: m.helloLocked().Managers, Exports: m.exportsLocked(), Gateway: m.st.gateway(), Objects: m.federatedObjectsLocked()}
	m.mu.Unlock()
	writeJSON(w, http.StatusOK, out)
}

func (m *Manager) handlePeerUnregister(w http.ResponseWriter, r *http.Request) {
	p, err := m.peerByCert(r)
	if err != nil {
		writeError(w, err)
		return
	}
	markAuthenticated(r.Context())
	if !m.isLeader() {
		writeError(w, errorf(http.StatusServiceUnavailable, "this manager is not the leader: ask another manager"))
		return
	}
	err = m.update(func(s *state) error {
		delete(s.peers, p.Name)
		s.dropPeerObjects(p.Name)
		s.imports = slices.DeleteFunc(slices.Clone(s.imports), func(i federation.Import) bool { return i.Peer == p.Name })
		return nil
	})
	if err != nil {
		writeError(w, err)
		return
	}
	m.links.drop(func(n string) bool { return n != p.Name })
	m.log.Info("a peer removed this cluster", "peer", p.Name)
	writeJSON(w, http.StatusOK, struct{}{})
}

// kickPeers makes the peer loop sync now.
func (m *Manager) kickPeers() {
	select {
	case m.peerKick <- struct{}{}:
	default:
	}
}

// peerLoop syncs with every peer every PeerSyncEvery (and when kicked):
// link state, the peer's managers and its exports; the leader then plans
// the imports.
func (m *Manager) peerLoop(ctx context.Context) {
	t := time.NewTicker(PeerSyncEvery)
	defer t.Stop()
	for {
		m.syncPeers(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-m.peerKick:
		}
	}
}

func (m *Manager) syncPeers(ctx context.Context) {
	m.mu.Lock()
	var recs []peerRecord
	if m.st != nil {
		for _, p := range m.st.peers {
			recs = append(recs, p)
		}
	}
	m.mu.Unlock()
	names := map[string]bool{}
	var wg sync.WaitGroup
	for _, p := range recs {
		names[p.Name] = true
		wg.Add(1)
		go func() {
			defer wg.Done()
			m.syncPeer(ctx, p)
		}()
	}
	wg.Wait()
	m.links.drop(func(n string) bool { return names[n] })
	if m.isLeader() {
		m.planImports()
	}
}

func (m *Manager) syncPeer(ctx context.Context, p peerRecord) {
	caller, done := m.peerCaller(p.CAHash, "the peer record")
	defer done()
	prev, _ := m.links.get(p.Name)
	var errs []error
	for _, addr := range p.Managers {
		var ans api.PeerSync
		err := caller.Do(ctx, http.MethodPost, addr, api.PathPeerSync, nil, struct{}{}, &ans)
		if err == nil {
			err = federation.CheckExports(ans.Exports, p.Network)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", addr, apicall.Reason(err)))
			continue
		}
		if prev.status != api.PeerConnected {
			m.log.Info("peer connected", "peer", p.Name, "manager", addr)
		}
		m.links.set(p.Name, peerLink{status: api.PeerConnected, contact: m.now(), exports: ans.Exports})
		if m.isLeader() {
			if err := m.applyPeerObjects(p.Name, ans.Objects); err != nil {
				m.log.Warn("could not store the peer's federated secrets and configs", "peer", p.Name, "err", err)
			}
		}
		gw := ans.Gateway
		if gw != nil && (!gw.Endpoint.IsValid() || !p.Network.WireGuardSubnet.Contains(gw.OverlayIP) || checkWGKey(gw.PublicKey) != nil) {
			m.log.Warn("peer sent an unusable gateway; ignoring it", "peer", p.Name, "gateway", gw)
			gw = nil
		}
		mgrs := p.Managers
		if federation.CheckManagers(ans.Managers) == nil {
			mgrs = ans.Managers
		}
		if (!slices.Equal(mgrs, p.Managers) || !sameGateway(gw, p.Gateway)) && m.isLeader() {
			_ = m.update(func(s *state) error {
				if r, ok := s.peers[p.Name]; ok && r.CAHash == p.CAHash {
					r.Managers, r.Gateway = mgrs, gw
					s.peers[p.Name] = r
				}
				return nil
			})
		}
		return
	}
	reason := errors.Join(errs...).Error()
	if prev.status != api.PeerFailed || prev.reason != reason {
		m.log.Warn("peer not reachable", "peer", p.Name, "err", reason)
	}
	prev.status, prev.reason = api.PeerFailed, reason
	m.links.set(p.Name, prev)
}

func sameGateway(a, b *api.PeerGateway) bool {
	if a == nil || b == nil {
		return a == b
	}
	return *a == *b
}

// planImports turns the peers' exports into imports with VIPs of our own
// range: endpoints of a peer that stopped answering leave at once (its
// link failed) or after federation.RemoteStaleAfter.
func (m *Manager) planImports() {
	now := m.now()
	m.mu.Lock()
	if m.st == nil || len(m.st.peers) == 0 && len(m.st.imports) == 0 {
		m.mu.Unlock()
		return
	}
	exports := map[string][]federation.Export{}
	for name := range m.st.peers {
		l, _ := m.links.get(name)
		var ex []federation.Export
		for _, e := range l.exports {
			e.Endpoints = federation.Remote{Peer: name, Endpoints: e.Endpoints, Seen: l.contact, Connected: l.status == api.PeerConnected}.Live(now)
			if e.Endpoints == nil {
				e.Endpoints = []netip.Addr{}
			}
			ex = append(ex, e)
		}
		exports[name] = ex
	}
	if g := globalExports(m.current, exports, m.links.snapshot(), now); len(g) > 0 {
		exports[clustermap.GlobalPeer] = g
	}
	current := m.st.imports
	m.mu.Unlock()
	err := m.update(func(s *state) error {
		if len(s.peers) > 0 {
			s.gatewayID = m.selfID // the leader holds the gateway links
		}
		taken := map[netip.Addr]bool{}
		for _, svc := range s.services {
			taken[svc.VIP] = true
		}
		plan, err := federation.PlanImports(exports, current, s.meta.VIPSubnet, func(a netip.Addr) bool { return taken[a] })
		if err != nil {
			return err
		}
		s.imports = plan
		return nil
	})
	if err != nil {
		m.log.Warn("could not plan the imported services", "err", err)
	}
}

func (m *Manager) peerRoutes(mux *http.ServeMux) {
	mux.HandleFunc("POST "+api.PathPeerToken, answer(http.StatusOK, func(*http.Request) (api.PeerToken, error) {
		tok, err := m.PeerToken()
		return api.PeerToken{Token: tok}, err
	}))
	mux.HandleFunc("GET "+api.PathPeers, answer(http.StatusOK, func(*http.Request) (any, error) {
		return m.Peers(), nil
	}))
	mux.HandleFunc("POST "+api.PathPeers, answerBody(http.StatusCreated, func(r *http.Request, req api.PeerAdd) (any, error) {
		return m.AddPeer(r.Context(), req)
	}))
	mux.HandleFunc("DELETE "+api.PathPeers+"/{name}", noContent(func(r *http.Request) error {
		return m.RemovePeer(r.Context(), r.PathValue("name"))
	}))
	for action, exported := range map[string]bool{api.ActionExport: true, api.ActionUnexport: false} {
		mux.HandleFunc("POST "+api.PathServices+"/{name}"+action, answer(http.StatusOK, func(r *http.Request) (struct{}, error) {
			return struct{}{}, m.SetExported(r.PathValue("name"), exported)
		}))
	}
}

// globalExports are the endpoints behind SERVICE.global for every service
// a peer exports: this cluster's serving tasks of SERVICE while there is
// any (federation.GlobalEndpoints), else the peers' live ones.
func globalExports(m *clustermap.Map, exports map[string][]federation.Export, links map[string]peerLink, now time.Time) []federation.Export {
	remotes := map[string][]federation.Remote{}
	ports := map[string][]clustermap.Port{}
	for peer, ex := range exports {
		l := links[peer]
		for _, e := range ex {
			remotes[e.Service] = append(remotes[e.Service], federation.Remote{Peer: peer, Endpoints: e.Endpoints, Seen: l.contact, Connected: l.status == api.PeerConnected})
			if ports[e.Service] == nil {
				ports[e.Service] = e.Ports
			}
		}
	}
	var out []federation.Export
	for _, name := range slices.Sorted(maps.Keys(remotes)) {
		var local []netip.Addr
		p := ports[name]
		if m != nil {
			for _, t := range m.Endpoints(name) {
				local = append(local, t.IP)
			}
			for _, s := range m.Services {
				if s.Name == name && len(s.Ports) > 0 {
					p = s.Ports
				}
			}
		}
		eps, _ := federation.GlobalEndpoints(local, remotes[name], now)
		if eps == nil {
			eps = []netip.Addr{}
		}
		out = append(out, federation.Export{Service: name, Ports: p, Endpoints: eps})
	}
	return out
}

// checkWGKey checks a peer gateway's WireGuard public key (base64, not
// all-zero or low-order).
func checkWGKey(s string) error {
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil || len(b) != 32 {
		return fmt.Errorf("WireGuard key %q is not 32 bytes of base64", s)
	}
	return wgkey.Check(b)
}

// MaxPeerObjects bounds the federated secrets and configs taken from one
// peer.
const MaxPeerObjects = 256

// federatedObjectsLocked are this cluster's federated secrets and configs
// with their values, for a peer's sync (none while this manager has no
// data key).
func (m *Manager) federatedObjectsLocked() []api.PeerObject {
	if m.dataKey == nil || m.st == nil {
		return nil
	}
	var out []api.PeerObject
	for _, kind := range []string{api.KindSecret, api.KindConfig} {
		objs := m.st.objects(kind)
		for _, name := range slices.Sorted(maps.Keys(objs)) {
			r := objs[name]
			if !r.Federated || r.From != "" {
				continue
			}
			data, err := m.dataKey.Open(kind, name, r.Version, r.Sealed)
			if err != nil {
				m.log.Warn("a federated value does not open with this manager's data key; not sent to peers", "kind", kind, "name", name)
				continue
			}
			out = append(out, api.PeerObject{Kind: kind, Name: name, Version: r.Version, Data: data})
		}
	}
	return out
}

// applyPeerObjects makes this cluster's copies of a peer's federated
// secrets and configs match what it sent: new ones are created (read-only
// here, From the peer), changed versions resealed with this cluster's key,
// and those it no longer sends removed unless a service here uses them. A
// local object of the same name is never replaced.
func (m *Manager) applyPeerObjects(peer string, in []api.PeerObject) error {
	if len(in) > MaxPeerObjects {
		return fmt.Errorf("%d federated objects (at most %d)", len(in), MaxPeerObjects)
	}
	remote := map[string]map[string]api.PeerObject{api.KindSecret: {}, api.KindConfig: {}}
	for _, o := range in {
		if checkKind(o.Kind) != nil || !objectNameRE.MatchString(o.Name) || o.Version == 0 || checkObjectValue(o.Kind, o.Data) != nil {
			return fmt.Errorf("federated %s %q is not valid", o.Kind, o.Name)
		}
		remote[o.Kind][o.Name] = o
	}
	var conflicts []string
	err := m.update(func(s *state) error {
		conflicts = conflicts[:0]
		if _, ok := s.peers[peer]; !ok {
			return nil // removed while this sync was under way
		}
		for _, kind := range []string{api.KindSecret, api.KindConfig} {
			objs := s.objects(kind)
			next := cloneObjects(objs)
			changed := false
			for _, name := range slices.Sorted(maps.Keys(remote[kind])) {
				o := remote[kind][name]
				cur, ok := objs[name]
				if ok && cur.From != peer {
					conflicts = append(conflicts, kind+" "+name)
					continue
				}
				if ok && cur.Version == o.Version {
					continue
				}
				key, err := m.dataKeyLocked(s)
				if err != nil {
					return err
				}
				sealed, err := key.Seal(kind, name, o.Version, o.Data)
				if err != nil {
					return err
				}
				now := m.now().UTC()
				if !ok {
					cur = objectRecord{ID: randomID(), Name: name, CreatedAt: now, From: peer}
				}
				cur.Version, cur.Sealed, cur.Size, cur.UpdatedAt = o.Version, sealed, len(o.Data), now
				next[name] = cur
				changed = true
			}
			for name, cur := range objs {
				if _, sent := remote[kind][name]; cur.From == peer && !sent && len(s.servicesUsing(kind, name)) == 0 {
					delete(next, name)
					changed = true
				}
			}
			if changed {
				s.setObjects(kind, next)
			}
		}
		return nil
	})
	if len(conflicts) > 0 && m.links.noteConflict(peer, strings.Join(conflicts, ", ")) {
		m.log.Warn("the peer's federated objects have the names of local ones; keeping the local ones", "peer", peer, "objects", strings.Join(conflicts, ", "))
	}
	return err
}

// dropPeerObjects removes the objects a removed peer sent, unless a
// service here uses them (those stay, as local objects).
func (s *state) dropPeerObjects(peer string) {
	for _, kind := range []string{api.KindSecret, api.KindConfig} {
		next := cloneObjects(s.objects(kind))
		for name, r := range next {
			if r.From != peer {
				continue
			}
			if len(s.servicesUsing(kind, name)) == 0 {
				delete(next, name)
			} else {
				r.From = ""
				next[name] = r
			}
		}
		s.setObjects(kind, next)
	}
}

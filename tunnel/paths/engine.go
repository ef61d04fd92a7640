package paths

import (
	"context"
	"crypto/ecdh"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/pion/stun/v3"
	"golang.org/x/time/rate"

	"github.com/warren-appliance/warren/internal/wgkey"
)

// RelayPath is the relay half as the path machine sees it: a WireGuard
// endpoint (a local proxy socket) that reaches peer through relay node via,
// ok=false when no relay session for peer is up.
type RelayPath interface {
	Endpoint(peer wgkey.Key) (netip.AddrPort, string, bool)
}

// Device is the WireGuard device as the engine drives it.
type Device interface {
	// SendPacket sends a datagram from the WireGuard socket.
	SendPacket(b []byte, to netip.AddrPort) error
	// SetEndpoint makes ep the peer's WireGuard endpoint (zero: the map's).
	SetEndpoint(peer wgkey.Key, ep netip.AddrPort) error
	// PeerStats returns what WireGuard knows of each peer.
	PeerStats() map[wgkey.Key]PeerStats
}

// PeerStats is WireGuard's view of a peer.
type PeerStats struct {
	LastHandshake time.Time // zero: never
	RxBytes       int64     // received from the peer so far
}

// Peer is one other node, from the map.
type Peer struct {
	Key  wgkey.Key
	Name string
	// Candidates are the addresses the peer reported, most preferred first;
	// its advertise endpoint is added last when missing.
	Candidates []netip.AddrPort
}

// Timing of discovery.
const (
	// stunInterval is how often the STUN servers (the managers) are asked
	// for this node's public address; stunRetry while none answered yet.
	stunInterval = 20 * time.Second
	stunRetry    = 2 * time.Second
	// reflexiveFor is how long an answer counts: a NAT that changed its
	// mapping (a router reboot) shows within one interval or two.
	reflexiveFor = 3 * stunInterval
	tick         = 500 * time.Millisecond
	// pingTimeout is how long a ping waits for its pong.
	pingTimeout = 5 * time.Second
	// learnedFor is how long an address a peer pinged us from stays a
	// candidate of that peer (peer-reflexive, as ICE calls it).
	learnedFor = 2 * time.Minute
	maxLearned = 4
	// MaxCandidates bounds what a node reports (the manager refuses more).
	MaxCandidates = 16
)

// Config configures an Engine.
type Config struct {
	PrivateKey [32]byte // this node's WireGuard private key
	Device     Device
	Relay      RelayPath // nil: no relay
	ListenPort uint16
	// PublicEndpoint is the configured public address ([wireguard]
	// public_endpoint) of a port-forwarded board; zero if none.
	PublicEndpoint netip.AddrPort
	// LocalAddrs lists this host's addresses (nil: none); Exclude drops
	// those inside the cluster's own ranges (overlay, containers, VIPs).
	LocalAddrs func() ([]netip.Addr, error)
	Exclude    []netip.Prefix
	// OnCandidates is called (from the engine's goroutine) when this node's
	// candidates change: report them to the manager.
	OnCandidates func([]netip.AddrPort)
	Logger       *slog.Logger
}

// Engine runs discovery and the path machine of every peer.
type Engine struct {
	cfg  Config
	log  *slog.Logger
	priv *ecdh.PrivateKey
	pub  wgkey.Key
	now  func() time.Time

	stunLimit *rate.Limiter // answers to binding requests

	mu         sync.Mutex
	peers      map[wgkey.Key]*peer
	servers    []netip.AddrPort // STUN servers: the managers' endpoints
	stunTx     map[[stun.TransactionIDSize]byte]stunTx
	reflexive  map[netip.AddrPort]reflexive // per server
	lastSTUN   time.Time
	candidates []netip.AddrPort
	pings      map[TxID]pingTx
	keys       map[wgkey.Key][]byte // pair keys
}

type peer struct {
	Peer
	st      PeerState
	pongs   map[netip.AddrPort]time.Time
	learned map[netip.AddrPort]time.Time
	reprobe bool
	applied netip.AddrPort
	path    string
	rtt     time.Duration
	// pingedBack is when we last answered a ping of this peer with a ping
	// of ours (see handleProbe).
	pingedBack time.Time
	// rx is WireGuard's received byte count at the last step, heard when
	// it last grew.
	rx    int64
	heard time.Time
	// answers: the peer answered a probe of ours at least once.
	answers bool
}

type stunTx struct {
	server netip.AddrPort
	sent   time.Time
}

type reflexive struct {
	addr netip.AddrPort
	seen time.Time
}

type pingTx struct {
	peer wgkey.Key
	to   netip.AddrPort
	sent time.Time
}

// New returns an engine; call Run, give it peers with SetPeers, and hand it
// the socket's other datagrams with HandlePacket.
func New(cfg Config) (*Engine, error) {
	if cfg.Device == nil {
		return nil, errors.New("paths: no device")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	priv, err := ecdh.X25519().NewPrivateKey(cfg.PrivateKey[:])
	if err != nil {
		return nil, fmt.Errorf("paths: private key: %w", err)
	}
	var pub wgkey.Key
	copy(pub[:], priv.PublicKey().Bytes())
	return &Engine{
		cfg: cfg, log: cfg.Logger.With("component", "paths"), priv: priv, pub: pub, now: time.Now,
		stunLimit: rate.NewLimiter(200, 50),
		peers:     map[wgkey.Key]*peer{}, stunTx: map[[stun.TransactionIDSize]byte]stunTx{},
		reflexive: map[netip.AddrPort]reflexive{}, pings: map[TxID]pingTx{}, keys: map[wgkey.Key][]byte{},
	}, nil
}

// SetPeers replaces the peers and the STUN servers. A peer whose
// candidates changed is probed at once: the map carrying them reached it
// at about the same time, so both sides ping each other together.
func (e *Engine) SetPeers(peers []Peer, stunServers []netip.AddrPort) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.servers = slices.Clone(stunServers)
	seen := map[wgkey.Key]bool{}
	for _, p := range peers {
		if p.Key == e.pub {
			continue
		}
		seen[p.Key] = true
		cur, ok := e.peers[p.Key]
		if !ok {
			e.peers[p.Key] = &peer{Peer: p, pongs: map[netip.AddrPort]time.Time{}, learned: map[netip.AddrPort]time.Time{}, reprobe: true}
			continue
		}
		if !slices.Equal(cur.Candidates, p.Candidates) {
			cur.reprobe = true
		}
		cur.Peer = p
	}
	for k := range e.peers {
		if !seen[k] {
			delete(e.peers, k)
			delete(e.keys, k)
		}
	}
}

// Candidates returns this node's current candidates.
func (e *Engine) Candidates() []netip.AddrPort {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Clone(e.candidates)
}

// PeerPath is a peer's path as status shows it.
type PeerPath struct {
	Key      wgkey.Key
	Name     string
	State    string
	Path     string // PathDirect, PathRelay, or "" while none is known
	Via      string
	Endpoint netip.AddrPort
	RTT      time.Duration
}

// Paths returns every peer's path.
func (e *Engine) Paths() []PeerPath {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := make([]PeerPath, 0, len(e.peers))
	for _, p := range e.peers {
		out = append(out, PeerPath{Key: p.Key, Name: p.Name, State: p.st.State, Path: p.path, Via: p.st.Via, Endpoint: p.applied, RTT: p.rtt})
	}
	slices.SortFunc(out, func(a, b PeerPath) int { return compareKey(a.Key, b.Key) })
	return out
}

func compareKey(a, b wgkey.Key) int { return slices.Compare(a[:], b[:]) }

// Run discovers and decides every tick until ctx ends.
func (e *Engine) Run(ctx context.Context) {
	t := time.NewTicker(tick)
	defer t.Stop()
	for {
		e.step()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

type send struct {
	b  []byte
	to netip.AddrPort
}

type endpointChange struct {
	key wgkey.Key
	ep  netip.AddrPort
}

// step runs one round: STUN, candidates, every peer's decision. Sends and
// device changes happen outside the lock.
func (e *Engine) step() {
	now := e.now()
	var relay map[wgkey.Key]RelayOffer
	if e.cfg.Relay != nil {
		relay = map[wgkey.Key]RelayOffer{}
		e.mu.Lock()
		keys := make([]wgkey.Key, 0, len(e.peers))
		for k := range e.peers {
			keys = append(keys, k)
		}
		e.mu.Unlock()
		for _, k := range keys {
			ep, via, ok := e.cfg.Relay.Endpoint(k)
			relay[k] = RelayOffer{Endpoint: ep, Via: via, OK: ok && ep.IsValid()}
		}
	}
	stats := e.cfg.Device.PeerStats()
	local := e.localCandidates()

	e.mu.Lock()
	var out []send
	out = append(out, e.stunRoundLocked(now)...)
	cands, changed := e.updateCandidatesLocked(local, now)
	var changes []endpointChange
	for _, p := range e.peers {
		ws := stats[p.Key]
		if ws.RxBytes > p.rx {
			p.heard = now
		}
		p.rx = ws.RxBytes
		in := Input{Candidates: p.allCandidates(now), Pongs: p.pongs, LastHandshake: ws.LastHandshake, LastReceive: p.heard, Answers: p.answers,
			Relay: relay[p.Key], Reprobe: p.reprobe}
		var d Decision
		searching := p.st.Searching
		p.st, d = Decide(p.st, in, now)
		p.reprobe = false
		for _, c := range d.Ping {
			if b, err := e.pingLocked(p.Key, c, now); err == nil {
				out = append(out, send{b, c})
			} else {
				e.log.Debug("cannot build a ping", "peer", p.Name, "err", err)
			}
		}
		if d.Endpoint != p.applied {
			if d.Endpoint.IsValid() || p.applied.IsValid() {
				changes = append(changes, endpointChange{p.Key, d.Endpoint})
				if d.Path != "" {
					// searched: from this search's first probe (for a new
					// peer, the pair's first packet from this side) to now.
					var searched time.Duration
					if !searching.IsZero() {
						searched = now.Sub(searching)
					}
					e.log.Info("peer path", "peer", p.Name, "path", d.Path, "endpoint", d.Endpoint, "via", d.Via, "searched", searched)
				}
			}
			p.applied = d.Endpoint
		}
		p.path = d.Path
	}
	e.expireLocked(now)
	e.mu.Unlock()

	for _, s := range out {
		if err := e.cfg.Device.SendPacket(s.b, s.to); err != nil {
			e.log.Debug("sending a probe", "to", s.to, "err", err)
		}
	}
	for _, c := range changes {
		if err := e.cfg.Device.SetEndpoint(c.key, c.ep); err != nil {
			e.log.Warn("setting a peer's endpoint", "err", err)
		}
	}
	if changed && e.cfg.OnCandidates != nil {
		e.log.Info("this node's path candidates", "candidates", cands)
		e.cfg.OnCandidates(cands)
	}
}

// allCandidates is the peer's reported candidates, then the addresses it
// recently pinged us from.
func (p *peer) allCandidates(now time.Time) []netip.AddrPort {
	out := slices.Clone(p.Candidates)
	var learned []netip.AddrPort
	for a, t := range p.learned {
		if now.Sub(t) < learnedFor && !slices.Contains(out, a) {
			learned = append(learned, a)
		}
	}
	slices.SortFunc(learned, func(a, b netip.AddrPort) int { return a.Compare(b) })
	return append(out, learned...)
}

func (e *Engine) expireLocked(now time.Time) {
	for tx, p := range e.pings {
		if now.Sub(p.sent) > pingTimeout {
			delete(e.pings, tx)
		}
	}
	for tx, s := range e.stunTx {
		if now.Sub(s.sent) > pingTimeout {
			delete(e.stunTx, tx)
		}
	}
	for _, p := range e.peers {
		for a, t := range p.learned {
			if now.Sub(t) >= learnedFor {
				delete(p.learned, a)
			}
		}
		for a, t := range p.pongs {
			if now.Sub(t) >= 2*AliveFor {
				delete(p.pongs, a)
			}
		}
	}
}

func (e *Engine) pairKeyLocked(k wgkey.Key) ([]byte, error) {
	if key, ok := e.keys[k]; ok {
		return key, nil
	}
	key, err := pairKey(e.priv, k)
	if err != nil {
		return nil, err
	}
	e.keys[k] = key
	return key, nil
}

func (e *Engine) pingLocked(k wgkey.Key, to netip.AddrPort, now time.Time) ([]byte, error) {
	key, err := e.pairKeyLocked(k)
	if err != nil {
		return nil, err
	}
	var tx TxID
	if _, err := rand.Read(tx[:]); err != nil {
		return nil, err
	}
	b, err := sealProbe(key, probe{kind: probePing, sender: e.pub, tx: tx})
	if err != nil {
		return nil, err
	}
	e.pings[tx] = pingTx{peer: k, to: to, sent: now}
	return b, nil
}

// HandlePacket takes a datagram from the WireGuard socket that is not
// WireGuard: a STUN message or a path probe. Anything else is dropped.
func (e *Engine) HandlePacket(b []byte, from netip.AddrPort) {
	switch {
	case IsProbe(b):
		e.handleProbe(b, from)
	case stun.IsMessage(b):
		e.handleSTUN(b, from)
	}
}

func (e *Engine) handleProbe(b []byte, from netip.AddrPort) {
	sender, _ := probeSender(b)
	now := e.now()
	e.mu.Lock()
	p, known := e.peers[sender]
	if !known {
		e.mu.Unlock()
		return // only cluster members' probes are answered
	}
	key, err := e.pairKeyLocked(sender)
	if err != nil {
		e.mu.Unlock()
		return
	}
	msg, err := openProbe(key, b)
	if err != nil {
		e.mu.Unlock()
		return
	}
	var reply, back []byte
	switch msg.kind {
	case probePing:
		_, had := p.learned[from]
		if !slices.Contains(p.Candidates, from) && (had || len(p.learned) < maxLearned) {
			p.learned[from] = now
		}
		reply, _ = sealProbe(key, probe{kind: probePong, sender: e.pub, tx: msg.tx, observed: from})
		// Without a direct path, ping back at once: the peer's ping came
		// through our NAT's mapping, so ours goes out through it now rather
		// than at our next probe round, and both sides learn the path
		// within one round trip.
		if p.st.State != StateDirect && now.Sub(p.pingedBack) >= ProbeInterval/4 {
			if b, err := e.pingLocked(sender, from, now); err == nil {
				back, p.pingedBack = b, now
			}
		}
	case probePong:
		tx, ok := e.pings[msg.tx]
		if ok && tx.peer == sender {
			delete(e.pings, msg.tx)
			p.pongs[tx.to] = now
			p.rtt = now.Sub(tx.sent)
			p.answers = true
		}
	}
	e.mu.Unlock()
	for _, b := range [][]byte{reply, back} {
		if b == nil {
			continue
		}
		if err := e.cfg.Device.SendPacket(b, from); err != nil {
			e.log.Debug("answering a ping", "to", from, "err", err)
		}
	}
}

func (e *Engine) handleSTUN(b []byte, from netip.AddrPort) {
	m := &stun.Message{Raw: slices.Clone(b)}
	if err := m.Decode(); err != nil {
		return
	}
	switch m.Type {
	case stun.BindingRequest:
		if !e.stunLimit.Allow() {
			return
		}
		resp, err := stun.Build(stun.NewTransactionIDSetter(m.TransactionID), stun.BindingSuccess,
			&stun.XORMappedAddress{IP: from.Addr().AsSlice(), Port: int(from.Port())}, stun.Fingerprint)
		if err != nil {
			return
		}
		if err := e.cfg.Device.SendPacket(resp.Raw, from); err != nil {
			e.log.Debug("answering a STUN binding request", "to", from, "err", err)
		}
	case stun.BindingSuccess:
		var xa stun.XORMappedAddress
		if err := xa.GetFrom(m); err != nil {
			return
		}
		ip, ok := netip.AddrFromSlice(xa.IP)
		if !ok || xa.Port <= 0 || xa.Port > 65535 {
			return
		}
		e.mu.Lock()
		defer e.mu.Unlock()
		tx, ok := e.stunTx[m.TransactionID]
		if !ok || tx.server != from {
			return
		}
		delete(e.stunTx, m.TransactionID)
		e.reflexive[tx.server] = reflexive{addr: netip.AddrPortFrom(ip.Unmap(), uint16(xa.Port)), seen: e.now()}
	}
}

// stunRoundLocked returns the binding requests to send now: to every
// server every stunInterval, more often while none has answered.
func (e *Engine) stunRoundLocked(now time.Time) []send {
	every := stunInterval
	fresh := false
	for _, r := range e.reflexive {
		fresh = fresh || now.Sub(r.seen) < reflexiveFor
	}
	if !fresh {
		every = stunRetry
	}
	if len(e.servers) == 0 || (!e.lastSTUN.IsZero() && now.Sub(e.lastSTUN) < every) {
		return nil
	}
	e.lastSTUN = now
	var out []send
	for _, s := range e.servers {
		m, err := stun.Build(stun.TransactionID, stun.BindingRequest, stun.Fingerprint)
		if err != nil {
			continue
		}
		e.stunTx[m.TransactionID] = stunTx{server: s, sent: now}
		out = append(out, send{m.Raw, s})
	}
	return out
}

// localCandidates are this host's usable addresses with the listen port.
func (e *Engine) localCandidates() []netip.AddrPort {
	if e.cfg.LocalAddrs == nil || e.cfg.ListenPort == 0 {
		return nil
	}
	addrs, err := e.cfg.LocalAddrs()
	if err != nil {
		e.log.Debug("listing local addresses", "err", err)
		return nil
	}
	var out []netip.AddrPort
	for _, a := range addrs {
		if usableLocal(a, e.cfg.Exclude) {
			out = append(out, netip.AddrPortFrom(a.Unmap(), e.cfg.ListenPort))
		}
	}
	return out
}

// usableLocal reports whether a host address can be a candidate: IPv4,
// not loopback, link-local or multicast, outside the cluster's ranges.
func usableLocal(a netip.Addr, exclude []netip.Prefix) bool {
	a = a.Unmap()
	if !a.Is4() || a.IsLoopback() || a.IsLinkLocalUnicast() || a.IsMulticast() || a.IsUnspecified() {
		return false
	}
	for _, p := range exclude {
		if p.Contains(a) {
			return false
		}
	}
	return true
}

// updateCandidatesLocked recomputes this node's candidates and reports
// whether they changed.
func (e *Engine) updateCandidatesLocked(local []netip.AddrPort, now time.Time) ([]netip.AddrPort, bool) {
	var refl []netip.AddrPort
	for _, r := range e.reflexive {
		if now.Sub(r.seen) < reflexiveFor {
			refl = append(refl, r.addr)
		}
	}
	slices.SortFunc(refl, func(a, b netip.AddrPort) int { return a.Compare(b) })
	var public []netip.AddrPort
	if e.cfg.PublicEndpoint.IsValid() {
		public = []netip.AddrPort{e.cfg.PublicEndpoint}
	}
	c := Candidates(local, public, refl)
	if slices.Equal(c, e.candidates) {
		return c, false
	}
	e.candidates = c
	return slices.Clone(c), true
}

// Candidates orders a node's candidates: local addresses first (boards on
// one LAN keep talking over it), then the configured public endpoint, then
// what STUN saw; duplicates dropped, at most MaxCandidates.
func Candidates(local, configured, reflexive []netip.AddrPort) []netip.AddrPort {
	var out []netip.AddrPort
	for _, list := range [][]netip.AddrPort{local, configured, reflexive} {
		for _, a := range list {
			a = netip.AddrPortFrom(a.Addr().Unmap(), a.Port())
			if a.IsValid() && a.Port() != 0 && !slices.Contains(out, a) && len(out) < MaxCandidates {
				out = append(out, a)
			}
		}
	}
	return out
}

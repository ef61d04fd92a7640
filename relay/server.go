// Package relay carries WireGuard packets between cluster members that
// cannot reach each other directly (symmetric NATs, sites that block UDP).
// A Server forwards packets it cannot read (they stay WireGuard ciphertext,
// end to end) between the members connected to it; a Client connects a
// node to one relay and gives each relayed peer a local UDP endpoint that
// WireGuard sends to. Every session starts with the cluster's mTLS on the
// TLS leg; UDP datagrams carry that session's id and a MAC.
package relay

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
	"golang.zx2c4.com/wireguard/replay"

	"github.com/warren-appliance/warren/cluster/api"
	"github.com/warren-appliance/warren/internal/wgkey"
)

// ALPN is the TLS application protocol of the relay's TLS leg: on a
// manager it shares the API port with the node API and Raft.
const ALPN = api.ALPNRelay

// Defaults of ServerConfig.
const (
	DefaultMaxSessions = 256
	// DefaultPeerRate is what one member may send through the relay, in
	// bytes per second (100 Mbit/s), with DefaultPeerBurst.
	DefaultPeerRate  = 12_500_000
	DefaultPeerBurst = 256 << 10
	// DefaultQueueFrames bounds the frames queued towards one member on
	// the TLS leg; DefaultQueueBytes bounds them for all members together.
	DefaultQueueFrames = 256
	DefaultQueueBytes  = 16 << 20
	// DefaultMaxHandshakes bounds the TLS handshakes ServeTLS runs at once
	// (connections nobody authenticated yet); more are closed at once.
	DefaultMaxHandshakes = 64
)

// Timing of both ends.
const (
	pingInterval    = 5 * time.Second  // UDP pings (they keep NAT mappings open too)
	tlsPingInterval = 15 * time.Second // keepalive on the TLS leg
	tlsIdle         = 3 * tlsPingInterval
	// udpFresh: a member's UDP path counts while its last authenticated
	// datagram is this recent.
	udpFresh     = 3 * pingInterval
	writeTimeout = 10 * time.Second
	// counterLimit: counters at or above it are refused (the sender would
	// need a new session long before).
	counterLimit = 1 << 62
)

// Member is a node the relay serves: its node ID (the CN of its
// certificate), name and WireGuard public key.
type Member struct {
	ID   string
	Name string
	Key  wgkey.Key
}

// ServerConfig bounds a relay. Zero fields take the defaults.
type ServerConfig struct {
	MaxSessions int
	PeerRate    float64 // bytes/s per member
	PeerBurst   int
	QueueFrames int
	QueueBytes  int64
	// MaxHandshakes: see DefaultMaxHandshakes.
	MaxHandshakes int
	Logger        *slog.Logger
}

// Stats are a relay's counters since it started.
type Stats struct {
	Sessions    int
	UDPSessions int // sessions whose member receives over UDP
	// RelayedBytes and RelayedPackets count what was delivered, by the
	// transport it left on ("udp" or "tls").
	RelayedBytes   map[string]uint64
	RelayedPackets map[string]uint64
	// Dropped counts packets not relayed, by reason: "no_session" (the
	// destination is not connected to this relay), "not_member" (the
	// destination is no member), "rate" (the sender exceeded its rate),
	// "queue" (the destination's queue was full), "auth" (a datagram
	// failed authentication or was a replay); and "handshakes" counts TLS
	// connections closed unanswered beyond MaxHandshakes.
	Dropped map[string]uint64
}

// Server is a relay.
type Server struct {
	cfg ServerConfig
	log *slog.Logger

	mu       sync.Mutex
	members  map[string]Member    // by node ID
	byKey    map[wgkey.Key]string // WireGuard key -> node ID
	sessions map[string]*session  // by node ID
	byID     map[[sessionIDLen]byte]*session
	udp      *net.UDPConn

	queued atomic.Int64

	statMu  sync.Mutex
	bytes   map[string]uint64
	packets map[string]uint64
	dropped map[string]uint64
}

// NewServer returns a relay serving no members until SetMembers.
func NewServer(cfg ServerConfig) *Server {
	if cfg.MaxSessions <= 0 {
		cfg.MaxSessions = DefaultMaxSessions
	}
	if cfg.PeerRate <= 0 {
		cfg.PeerRate = DefaultPeerRate
	}
	if cfg.PeerBurst <= 0 {
		cfg.PeerBurst = DefaultPeerBurst
	}
	// A burst must hold the largest packet, or AllowN never allows it.
	cfg.PeerBurst = max(cfg.PeerBurst, MaxPacket)
	if cfg.QueueFrames <= 0 {
		cfg.QueueFrames = DefaultQueueFrames
	}
	if cfg.QueueBytes <= 0 {
		cfg.QueueBytes = DefaultQueueBytes
	}
	if cfg.MaxHandshakes <= 0 {
		cfg.MaxHandshakes = DefaultMaxHandshakes
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Server{
		cfg: cfg, log: cfg.Logger.With("component", "relay-server"),
		members: map[string]Member{}, byKey: map[wgkey.Key]string{},
		sessions: map[string]*session{}, byID: map[[sessionIDLen]byte]*session{},
		bytes: map[string]uint64{}, packets: map[string]uint64{}, dropped: map[string]uint64{},
	}
}

// SetMembers replaces the set of members the relay serves (the cluster
// map's nodes). Sessions of nodes no longer in it are closed.
func (s *Server) SetMembers(ms []Member) {
	members := make(map[string]Member, len(ms))
	byKey := make(map[wgkey.Key]string, len(ms))
	for _, m := range ms {
		members[m.ID] = m
		byKey[m.Key] = m.ID
	}
	s.mu.Lock()
	s.members, s.byKey = members, byKey
	var gone []*session
	for id, ss := range s.sessions {
		if m, ok := members[id]; !ok || m.Key != ss.key {
			gone = append(gone, ss)
		}
	}
	s.mu.Unlock()
	for _, ss := range gone {
		s.log.Info("closing the relay session of a node that is no longer a member (or changed its key)", "node", ss.node)
		ss.close()
	}
}

// IsMember reports whether node id is a member the relay serves.
func (s *Server) IsMember(id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.members[id]
	return ok
}

// Stats returns the relay's counters.
func (s *Server) Stats() Stats {
	s.mu.Lock()
	st := Stats{Sessions: len(s.sessions)}
	now := time.Now()
	for _, ss := range s.sessions {
		if _, ok := ss.udpPath(now); ok {
			st.UDPSessions++
		}
	}
	s.mu.Unlock()
	s.statMu.Lock()
	defer s.statMu.Unlock()
	st.RelayedBytes, st.RelayedPackets, st.Dropped = clone(s.bytes), clone(s.packets), clone(s.dropped)
	return st
}

func clone(m map[string]uint64) map[string]uint64 {
	out := make(map[string]uint64, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

func (s *Server) drop(reason string) {
	s.statMu.Lock()
	s.dropped[reason]++
	s.statMu.Unlock()
}

func (s *Server) count(transport string, n int) {
	s.statMu.Lock()
	s.bytes[transport] += uint64(n)
	s.packets[transport]++
	s.statMu.Unlock()
}

// ServeUDP serves the relay's UDP leg on pc until ctx ends or pc fails.
// One server has at most one UDP socket.
func (s *Server) ServeUDP(ctx context.Context, pc *net.UDPConn) error {
	s.mu.Lock()
	if s.udp != nil {
		s.mu.Unlock()
		return errors.New("relay: UDP already served")
	}
	s.udp = pc
	s.mu.Unlock()
	bigBuffers(pc)
	stop := context.AfterFunc(ctx, func() { pc.Close() })
	defer stop()
	buf := make([]byte, maxDatagram+1)
	for {
		n, from, err := pc.ReadFromUDPAddrPort(buf)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return fmt.Errorf("relay UDP: %w", err)
		}
		s.handleUDP(buf[:n], from)
	}
}

func (s *Server) handleUDP(b []byte, from netip.AddrPort) {
	h, err := parseUDP(b)
	if err != nil {
		s.drop("auth")
		return
	}
	s.mu.Lock()
	ss := s.byID[h.session]
	s.mu.Unlock()
	if ss == nil {
		s.drop("auth")
		return
	}
	body, err := ss.udpKey.open(b, dirToServer, h)
	if err != nil {
		s.drop("auth")
		return
	}
	now := time.Now()
	ss.mu.Lock()
	if !ss.replay.ValidateCounter(h.counter, counterLimit) {
		ss.mu.Unlock()
		s.drop("auth")
		return
	}
	ss.udpAddr, ss.lastUDP = from, now
	if h.typ == typePing {
		ss.udpActive = body[0]&flagUDPActive != 0
	}
	ss.mu.Unlock()
	switch h.typ {
	case typePing:
		s.sendUDP(ss, from, typePong, []byte{flagUDPActive})
	case typeData:
		dst, pkt := splitData(body)
		s.forward(ss, dst, pkt)
	}
}

func (s *Server) sendUDP(ss *session, to netip.AddrPort, typ byte, parts ...[]byte) (int, error) {
	s.mu.Lock()
	pc := s.udp
	s.mu.Unlock()
	if pc == nil {
		return 0, errors.New("no UDP socket")
	}
	n := udpHeaderLen + tagLen
	for _, p := range parts {
		n += len(p)
	}
	dg := ss.udpKey.seal(make([]byte, 0, n), dirToClient, typ, ss.sendCounter.Add(1), parts...)
	return pc.WriteToUDPAddrPort(dg, to)
}

// forward relays pkt from session src to the member whose WireGuard key
// is dst, if it is connected.
func (s *Server) forward(src *session, dst wgkey.Key, pkt []byte) {
	if !src.limiter.Allow(len(pkt)) {
		s.drop("rate")
		return
	}
	s.mu.Lock()
	id, ok := s.byKey[dst]
	d := s.sessions[id]
	s.mu.Unlock()
	switch {
	case !ok:
		s.drop("not_member")
		return
	case d == nil:
		s.drop("no_session")
		return
	}
	if to, ok := d.udpPath(time.Now()); ok {
		if _, err := s.sendUDP(d, to, typeData, src.key[:], pkt); err == nil {
			s.count("udp", len(pkt))
			return
		}
	}
	frame, err := encodeFrame(typeData, src.key, pkt)
	if err != nil {
		s.drop("queue")
		return
	}
	if !d.enqueue(frame) {
		s.drop("queue")
		return
	}
	s.count("tls", len(pkt))
}

// ServeTLS accepts the relay's TLS leg on ln (relays that are not
// managers; a manager hands its API port's relay connections to ServeConn
// instead). cert is this node's certificate; verify checks a client's
// certificate chain and returns its node ID.
func (s *Server) ServeTLS(ctx context.Context, ln net.Listener, cert func() *tls.Certificate, verify func([]*x509.Certificate) (string, error)) error {
	conf := &tls.Config{
		MinVersion:     tls.VersionTLS13,
		NextProtos:     []string{ALPN},
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return cert(), nil },
		ClientAuth:     tls.RequireAnyClientCert, // verified below, against the cluster's CA
		VerifyConnection: func(cs tls.ConnectionState) error {
			if cs.NegotiatedProtocol != ALPN {
				return fmt.Errorf("relay: client does not speak %s", ALPN)
			}
			_, err := verify(cs.PeerCertificates)
			return err
		},
	}
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	handshakes := make(chan struct{}, s.cfg.MaxHandshakes)
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				time.Sleep(50 * time.Millisecond)
				continue
			}
			return fmt.Errorf("relay TLS: %w", err)
		}
		select {
		case handshakes <- struct{}{}:
		default:
			s.drop("handshakes")
			c.Close()
			continue
		}
		go func() {
			tc := tls.Server(c, conf)
			hctx, cancel := context.WithTimeout(ctx, writeTimeout)
			err := tc.HandshakeContext(hctx)
			cancel()
			<-handshakes
			if err != nil {
				s.log.Debug("relay TLS handshake failed", "remote", c.RemoteAddr().String(), "err", err)
				c.Close()
				return
			}
			id, err := verify(tc.ConnectionState().PeerCertificates)
			if err != nil {
				tc.Close()
				return
			}
			if err := s.ServeConn(ctx, tc, id); err != nil {
				s.log.Debug("relay session ended", "node", id, "err", err)
			}
		}()
	}
}

// ServeConn serves one member's TLS leg, whose certificate the caller
// verified (node ID id), until the connection ends. A new connection of
// the same node replaces its older one.
func (s *Server) ServeConn(ctx context.Context, c net.Conn, id string) error {
	defer c.Close()
	ss, err := s.open(c, id)
	if err != nil {
		s.log.Warn("refused a relay session", "node", id, "remote", c.RemoteAddr().String(), "err", err)
		return err
	}
	defer s.remove(ss)
	stop := context.AfterFunc(ctx, ss.close)
	defer stop()
	s.log.Debug("relay session up", "node", id, "remote", c.RemoteAddr().String())
	go ss.writeLoop()
	if err := ss.enqueueFrame(typeSession, ss.udpKey.id[:], ss.secret); err != nil {
		return err
	}
	buf := make([]byte, 0xffff)
	for {
		c.SetReadDeadline(time.Now().Add(tlsIdle))
		typ, body, err := readFrame(c, buf)
		if err != nil {
			select {
			case <-ss.done:
				return nil
			default:
			}
			return err
		}
		switch typ {
		case typeData:
			dst, pkt := splitData(body)
			s.forward(ss, dst, pkt)
		case typePing:
			if err := ss.enqueueFrame(typePong, []byte{0}); err != nil {
				return err
			}
		case typePong:
		default:
			return fmt.Errorf("unexpected relay frame type %d from a client", typ)
		}
	}
}

func (s *Server) open(c net.Conn, id string) (*session, error) {
	ss := &session{srv: s, node: id, conn: c, out: make(chan []byte, s.cfg.QueueFrames), done: make(chan struct{}),
		limiter: newByteLimiter(s.cfg.PeerRate, s.cfg.PeerBurst)}
	var sid [sessionIDLen]byte
	ss.secret = make([]byte, keyLen)
	if _, err := rand.Read(sid[:]); err != nil {
		return nil, err
	}
	if _, err := rand.Read(ss.secret); err != nil {
		return nil, err
	}
	k, err := newUDPKey(sid, ss.secret)
	if err != nil {
		return nil, err
	}
	ss.udpKey = k
	s.mu.Lock()
	m, ok := s.members[id]
	if !ok {
		s.mu.Unlock()
		return nil, fmt.Errorf("node %s is not a member of this cluster", id)
	}
	ss.key = m.Key
	old := s.sessions[id]
	if old == nil && len(s.sessions) >= s.cfg.MaxSessions {
		s.mu.Unlock()
		return nil, fmt.Errorf("relay full: %d sessions ([relay] max_sessions)", s.cfg.MaxSessions)
	}
	if old != nil {
		delete(s.byID, old.udpKey.id)
	}
	s.sessions[id] = ss
	s.byID[sid] = ss
	s.mu.Unlock()
	if old != nil {
		old.close()
	}
	return ss, nil
}

func (s *Server) remove(ss *session) {
	ss.close()
	s.mu.Lock()
	if s.sessions[ss.node] == ss {
		delete(s.sessions, ss.node)
	}
	if s.byID[ss.udpKey.id] == ss {
		delete(s.byID, ss.udpKey.id)
	}
	s.mu.Unlock()
	// Frames still queued are dropped: give their bytes back.
	for {
		select {
		case f := <-ss.out:
			s.queued.Add(-int64(len(f)))
		default:
			return
		}
	}
}

// session is one member's connection to the relay.
type session struct {
	srv     *Server
	node    string
	key     wgkey.Key
	conn    net.Conn
	udpKey  *udpKey
	secret  []byte
	limiter *byteLimiter
	out     chan []byte
	done    chan struct{}
	once    sync.Once

	sendCounter atomic.Uint64

	mu        sync.Mutex
	replay    replay.Filter
	udpAddr   netip.AddrPort
	lastUDP   time.Time
	udpActive bool
}

func (ss *session) close() {
	ss.once.Do(func() {
		close(ss.done)
		ss.conn.Close()
	})
}

// udpPath returns where to send the member's packets over UDP, if it
// receives over UDP and was heard from recently.
func (ss *session) udpPath(now time.Time) (netip.AddrPort, bool) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return ss.udpAddr, ss.udpActive && ss.udpAddr.IsValid() && now.Sub(ss.lastUDP) < udpFresh
}

func (ss *session) enqueueFrame(typ byte, parts ...[]byte) error {
	n := 3
	for _, p := range parts {
		n += len(p)
	}
	var b bufWriter
	b.b = make([]byte, 0, n)
	if err := writeFrame(&b, typ, parts...); err != nil {
		return err
	}
	if !ss.enqueue(b.b) {
		return errors.New("relay queue full")
	}
	return nil
}

// enqueue queues a frame for the TLS leg; false (dropped) when this
// member's queue or the relay's byte budget is full.
func (ss *session) enqueue(frame []byte) bool {
	n := int64(len(frame))
	if ss.srv.queued.Add(n) > ss.srv.cfg.QueueBytes {
		ss.srv.queued.Add(-n)
		return false
	}
	select {
	case ss.out <- frame:
		return true
	case <-ss.done:
	default:
	}
	ss.srv.queued.Add(-n)
	return false
}

func (ss *session) writeLoop() {
	for {
		select {
		case <-ss.done:
			return
		case f := <-ss.out:
			ss.srv.queued.Add(-int64(len(f)))
			ss.conn.SetWriteDeadline(time.Now().Add(writeTimeout))
			if _, err := ss.conn.Write(f); err != nil {
				ss.close()
				return
			}
		}
	}
}

type bufWriter struct{ b []byte }

func (w *bufWriter) Write(p []byte) (int, error) { w.b = append(w.b, p...); return len(p), nil }

// byteLimiter is a token bucket in bytes.
type byteLimiter struct{ l *rate.Limiter }

func newByteLimiter(perSecond float64, burst int) *byteLimiter {
	return &byteLimiter{l: rate.NewLimiter(rate.Limit(perSecond), burst)}
}

func (b *byteLimiter) Allow(n int) bool { return b.l.AllowN(time.Now(), n) }

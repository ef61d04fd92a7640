package relay

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.zx2c4.com/wireguard/replay"

	"github.com/warren-appliance/warren/cluster/pki"
	"github.com/warren-appliance/warren/internal/backoff"
	"github.com/warren-appliance/warren/internal/wgkey"
)

// Transports, as Client.Status names them.
const (
	TransportUDP = "udp"
	TransportTLS = "tls"
)

// Client timing.
const (
	dialTimeout = 10 * time.Second
	// preferredRetry: while connected to a relay other than the most
	// preferred one, the client tries to go back this often, so that the
	// members converge on one relay after a failover.
	preferredRetry = 30 * time.Second
	maxProxies     = 1024
)

// Relay is a node that relays: the address serves UDP and, on the same
// port number, TLS (a manager's API port).
type Relay struct {
	ID      string
	Name    string
	Addr    string // host:port
	Manager bool
}

// ClientConfig is what a Client needs: this node's certificate and the
// cluster's CA (for the mTLS leg), and the local WireGuard port.
type ClientConfig struct {
	Cert          func() *tls.Certificate
	CAPool        func() *x509.CertPool
	WireGuardPort int
	Logger        *slog.Logger
}

// Status is what the client's relay path looks like now.
type Status struct {
	Up        bool
	Relay     Relay
	Transport string // TransportUDP or TransportTLS
}

// Client keeps a session with one relay (the most preferred one that
// answers: managers first) and proxies relayed peers' packets between the
// relay and the local WireGuard port.
type Client struct {
	cfg ClientConfig
	log *slog.Logger
	wg  netip.AddrPort // the local WireGuard port on loopback

	mu      sync.Mutex
	relays  []Relay
	changed chan struct{}
	cur     *clientConn
	proxies map[wgkey.Key]*proxy
	closed  bool
}

// NewClient returns a client; Run connects it.
func NewClient(cfg ClientConfig) *Client {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Client{cfg: cfg, log: cfg.Logger.With("component", "relay-client"),
		wg:      netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), uint16(cfg.WireGuardPort)),
		changed: make(chan struct{}, 1), proxies: map[wgkey.Key]*proxy{}}
}

// SortRelays orders relays by preference: managers first, then by node
// ID, so every member prefers the same relay.
func SortRelays(rs []Relay) []Relay {
	out := slices.Clone(rs)
	slices.SortFunc(out, func(a, b Relay) int {
		if a.Manager != b.Manager {
			if a.Manager {
				return -1
			}
			return 1
		}
		return strings.Compare(a.ID, b.ID)
	})
	return out
}

// SetRelays replaces the relays the client may use (from the map).
func (c *Client) SetRelays(rs []Relay) {
	rs = SortRelays(rs)
	c.mu.Lock()
	same := slices.Equal(rs, c.relays)
	c.relays = rs
	c.mu.Unlock()
	if !same {
		select {
		case c.changed <- struct{}{}:
		default:
		}
	}
}

// Endpoint returns the local WireGuard endpoint whose packets reach peer
// through the relay, and that relay's name; ok is false while no relay
// session is up.
func (c *Client) Endpoint(peer wgkey.Key) (ep netip.AddrPort, via string, ok bool) {
	c.mu.Lock()
	cur := c.cur
	c.mu.Unlock()
	if cur == nil {
		return netip.AddrPort{}, "", false
	}
	p, err := c.proxy(peer)
	if err != nil {
		c.log.Warn("no relay endpoint for a peer", "peer", peer.String(), "err", err)
		return netip.AddrPort{}, "", false
	}
	return p.addr, cur.relay.Name, true
}

// Via reports whether ep is one of the client's relay endpoints, and then
// through which relay and transport it goes now (for status: a peer whose
// WireGuard endpoint is ep is relayed).
func (c *Client) Via(ep netip.AddrPort) (relay Relay, transport string, ok bool) {
	c.mu.Lock()
	cur := c.cur
	found := false
	for _, p := range c.proxies {
		found = found || p.addr == ep
	}
	c.mu.Unlock()
	if !found || cur == nil {
		return Relay{}, "", found
	}
	return cur.relay, cur.transport(), true
}

// Status says which relay the client uses and over which transport.
func (c *Client) Status() Status {
	c.mu.Lock()
	cur := c.cur
	c.mu.Unlock()
	if cur == nil {
		return Status{}
	}
	return Status{Up: true, Relay: cur.relay, Transport: cur.transport()}
}

// Run keeps a relay session up until ctx ends, then closes the client.
func (c *Client) Run(ctx context.Context) {
	defer c.close()
	var bo backoff.Backoff
	for ctx.Err() == nil {
		c.mu.Lock()
		relays := slices.Clone(c.relays)
		c.mu.Unlock()
		connected := false
		for i, r := range relays {
			cc, err := c.dial(ctx, r)
			if err != nil {
				if ctx.Err() == nil {
					c.log.Warn("relay unreachable; trying the next", "relay", r.Name, "addr", r.Addr, "err", err)
				}
				continue
			}
			connected = true
			bo.Reset()
			for cc != nil {
				next := c.serve(ctx, cc, relays[:i])
				cc = next
				if next != nil {
					i = slices.Index(relays, next.relay)
				}
			}
			break
		}
		if connected {
			continue
		}
		wait := bo.Next()
		if len(relays) == 0 {
			wait = time.Hour // until SetRelays
		}
		select {
		case <-ctx.Done():
		case <-c.changed:
		case <-time.After(wait):
		}
	}
}

func (c *Client) close() {
	c.mu.Lock()
	c.closed = true
	ps := c.proxies
	c.proxies = map[wgkey.Key]*proxy{}
	c.mu.Unlock()
	for _, p := range ps {
		p.conn.Close()
	}
}

// clientConn is one session with a relay.
type clientConn struct {
	relay Relay
	tls   *tls.Conn
	wmu   sync.Mutex
	udp   *net.UDPConn
	key   *udpKey

	counter  atomic.Uint64
	lastPong atomic.Int64 // unix nanoseconds of the last UDP pong
	rmu      sync.Mutex
	replay   replay.Filter
	done     chan struct{}
	once     sync.Once
}

func (cc *clientConn) close() {
	cc.once.Do(func() {
		close(cc.done)
		cc.tls.Close()
		cc.udp.Close()
	})
}

// udpOK: the relay answered a UDP ping recently.
func (cc *clientConn) udpOK() bool {
	t := cc.lastPong.Load()
	return t != 0 && time.Since(time.Unix(0, t)) < udpFresh
}

func (cc *clientConn) transport() string {
	if cc.udpOK() {
		return TransportUDP
	}
	return TransportTLS
}

// clientTLS checks that the relay is node id of this cluster.
func (c *Client) clientTLS(id string) *tls.Config {
	return &tls.Config{
		MinVersion:         tls.VersionTLS13,
		NextProtos:         []string{ALPN},
		InsecureSkipVerify: true, // replaced by VerifyPeerCertificate
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			if len(raw) == 0 {
				return errors.New("the relay sent no certificate")
			}
			leaf, err := x509.ParseCertificate(raw[0])
			if err != nil {
				return err
			}
			if err := pki.VerifyChain(leaf, c.cfg.CAPool(), x509.ExtKeyUsageAny, time.Now()); err != nil {
				return err
			}
			if leaf.Subject.CommonName != id {
				return fmt.Errorf("the relay's certificate is node %q's, want %q", leaf.Subject.CommonName, id)
			}
			return nil
		},
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return c.cfg.Cert(), nil },
	}
}

func (c *Client) dial(ctx context.Context, r Relay) (*clientConn, error) {
	dctx, cancel := context.WithTimeout(ctx, dialTimeout)
	defer cancel()
	d := tls.Dialer{NetDialer: &net.Dialer{KeepAlive: tlsPingInterval}, Config: c.clientTLS(r.ID)}
	nc, err := d.DialContext(dctx, "tcp", r.Addr)
	if err != nil {
		return nil, err
	}
	tc := nc.(*tls.Conn)
	if tc.ConnectionState().NegotiatedProtocol != ALPN {
		tc.Close()
		return nil, fmt.Errorf("%s does not relay (no %s)", r.Addr, ALPN)
	}
	buf := make([]byte, 0xffff)
	tc.SetReadDeadline(time.Now().Add(dialTimeout))
	typ, body, err := readFrame(tc, buf)
	if err != nil {
		tc.Close()
		return nil, fmt.Errorf("relay session: %w", err)
	}
	if typ != typeSession {
		tc.Close()
		return nil, fmt.Errorf("relay session: got frame type %d first", typ)
	}
	var sid [sessionIDLen]byte
	copy(sid[:], body)
	k, err := newUDPKey(sid, body[sessionIDLen:])
	if err != nil {
		tc.Close()
		return nil, err
	}
	ua, err := net.ResolveUDPAddr("udp", r.Addr)
	if err != nil {
		tc.Close()
		return nil, err
	}
	uc, err := net.DialUDP("udp", nil, ua)
	if err != nil {
		tc.Close()
		return nil, fmt.Errorf("relay UDP socket: %w", err)
	}
	bigBuffers(uc)
	return &clientConn{relay: r, tls: tc, udp: uc, key: k, done: make(chan struct{})}, nil
}

// serve runs a session until it breaks, ctx ends or the relay leaves the
// set; or until one of better (more preferred relays) answers: then it
// returns the session with that one.
func (c *Client) serve(ctx context.Context, cc *clientConn, better []Relay) *clientConn {
	c.mu.Lock()
	c.cur = cc
	c.mu.Unlock()
	c.log.Info("relay session up", "relay", cc.relay.Name, "addr", cc.relay.Addr)
	defer func() {
		c.mu.Lock()
		if c.cur == cc {
			c.cur = nil
		}
		c.mu.Unlock()
		cc.close()
		c.log.Info("relay session down", "relay", cc.relay.Name)
	}()
	go c.readTLS(cc)
	go c.readUDP(cc)
	c.ping(cc) // at once: UDP is used as soon as it answers

	udpTick := time.NewTicker(pingInterval)
	defer udpTick.Stop()
	tlsTick := time.NewTicker(tlsPingInterval)
	defer tlsTick.Stop()
	retry := time.NewTicker(preferredRetry)
	defer retry.Stop()
	wasUDP := false
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-cc.done:
			return nil
		case <-c.changed:
			c.mu.Lock()
			still := slices.Contains(c.relays, cc.relay)
			c.mu.Unlock()
			if !still {
				c.log.Info("relay left the map; switching", "relay", cc.relay.Name)
				return nil
			}
		case <-udpTick.C:
			c.ping(cc)
		case <-tlsTick.C:
			cc.wmu.Lock()
			cc.tls.SetWriteDeadline(time.Now().Add(writeTimeout))
			err := writeFrame(cc.tls, typePing, []byte{0})
			cc.wmu.Unlock()
			if err != nil {
				return nil
			}
		case <-retry.C:
			for _, r := range better {
				nc, err := c.dial(ctx, r)
				if err != nil {
					continue
				}
				c.log.Info("a more preferred relay answers again; switching", "from", cc.relay.Name, "to", r.Name)
				return nc
			}
		}
		if u := cc.udpOK(); u != wasUDP {
			wasUDP = u
			c.log.Info("relay transport", "relay", cc.relay.Name, "transport", cc.transport())
		}
	}
}

func (c *Client) ping(cc *clientConn) {
	flags := byte(0)
	if cc.udpOK() {
		flags = flagUDPActive
	}
	dg := cc.key.seal(make([]byte, 0, udpHeaderLen+1+tagLen), dirToServer, typePing, cc.counter.Add(1), []byte{flags})
	cc.udp.Write(dg) // a blocked or lost ping just leaves the session on TLS
}

func (c *Client) readTLS(cc *clientConn) {
	defer cc.close()
	buf := make([]byte, 0xffff)
	for {
		cc.tls.SetReadDeadline(time.Now().Add(tlsIdle))
		typ, body, err := readFrame(cc.tls, buf)
		if err != nil {
			return
		}
		switch typ {
		case typeData:
			src, pkt := splitData(body)
			c.deliver(src, pkt)
		case typePong, typePing:
		default:
			c.log.Warn("unexpected relay frame; closing the session", "type", typ)
			return
		}
	}
}

func (c *Client) readUDP(cc *clientConn) {
	buf := make([]byte, maxDatagram+1)
	for {
		n, err := cc.udp.Read(buf)
		if err != nil {
			select {
			case <-cc.done:
				return
			default:
			}
			// ICMP unreachable (UDP blocked or nobody listening) shows up
			// as a read error on a connected socket: keep reading.
			time.Sleep(100 * time.Millisecond)
			continue
		}
		h, err := parseUDP(buf[:n])
		if err != nil || h.session != cc.key.id {
			continue
		}
		body, err := cc.key.open(buf[:n], dirToClient, h)
		if err != nil {
			continue
		}
		cc.rmu.Lock()
		ok := cc.replay.ValidateCounter(h.counter, counterLimit)
		cc.rmu.Unlock()
		if !ok {
			continue
		}
		switch h.typ {
		case typePong:
			first := !cc.udpOK()
			cc.lastPong.Store(time.Now().UnixNano())
			if first {
				c.ping(cc) // tell the relay at once that UDP works
			}
		case typeData:
			src, pkt := splitData(body)
			c.deliver(src, pkt)
		}
	}
}

// send carries a packet from the local WireGuard to peer.
func (c *Client) send(peer wgkey.Key, pkt []byte) {
	c.mu.Lock()
	cc := c.cur
	c.mu.Unlock()
	if cc == nil {
		return
	}
	if cc.udpOK() {
		dg := cc.key.seal(make([]byte, 0, udpHeaderLen+keyLen+len(pkt)+tagLen), dirToServer, typeData, cc.counter.Add(1), peer[:], pkt)
		if _, err := cc.udp.Write(dg); err == nil {
			return
		}
	}
	cc.wmu.Lock()
	defer cc.wmu.Unlock()
	cc.tls.SetWriteDeadline(time.Now().Add(writeTimeout))
	if err := writeFrame(cc.tls, typeData, peer[:], pkt); err != nil {
		cc.close()
	}
}

// deliver hands a relayed packet from peer src to the local WireGuard,
// from src's proxy socket (WireGuard then answers there: its roaming keeps
// this side on the relay too).
func (c *Client) deliver(src wgkey.Key, pkt []byte) {
	p, err := c.proxy(src)
	if err != nil {
		return
	}
	p.conn.WriteToUDPAddrPort(pkt, c.wg)
}

// proxy is one relayed peer's local endpoint.
type proxy struct {
	peer wgkey.Key
	conn *net.UDPConn
	addr netip.AddrPort
}

func (c *Client) proxy(peer wgkey.Key) (*proxy, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if p := c.proxies[peer]; p != nil {
		return p, nil
	}
	if c.closed {
		return nil, errors.New("relay client closed")
	}
	if len(c.proxies) >= maxProxies {
		return nil, fmt.Errorf("%d relayed peers already", maxProxies)
	}
	uc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return nil, fmt.Errorf("relay proxy socket: %w", err)
	}
	bigBuffers(uc)
	p := &proxy{peer: peer, conn: uc, addr: uc.LocalAddr().(*net.UDPAddr).AddrPort()}
	c.proxies[peer] = p
	go c.readProxy(p)
	return p, nil
}

// readProxy sends what the local WireGuard sends to p's endpoint to the
// peer through the relay; anything else on it is ignored.
func (c *Client) readProxy(p *proxy) {
	buf := make([]byte, MaxPacket+1)
	for {
		n, from, err := p.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		if from.Port() != c.wg.Port() || !from.Addr().Unmap().IsLoopback() || n > MaxPacket {
			continue
		}
		c.send(p.peer, buf[:n])
	}
}

// socketBuffer is the relay sockets' buffer size, as wireguard-go's own:
// bursts of a TCP flow through the relay must not overflow the default
// (about 200 KiB), or the flow backs off at every burst.
const socketBuffer = 4 << 20

func bigBuffers(c *net.UDPConn) {
	c.SetReadBuffer(socketBuffer) // the kernel caps it at net.core.rmem_max
	c.SetWriteBuffer(socketBuffer)
}

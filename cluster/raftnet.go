package cluster

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/hashicorp/raft"

	"github.com/warren-appliance/warren/cluster/api"
	"github.com/warren-appliance/warren/cluster/apicall"
	"github.com/warren-appliance/warren/cluster/clustermap"
	"github.com/warren-appliance/warren/cluster/pki"
)

// alpnRaft is the TLS application protocol of Raft traffic between
// managers. It shares the API port with the node API: after the TLS
// handshake a connection that negotiated it goes to Raft, every other one
// to the HTTP server. Both ends must present a manager certificate.
const alpnRaft = "warren-raft/1"

// alpnRelay is the relay's TLS leg (package relay): members only; the
// connection goes to the handler SetRelayHandler set.
const alpnRelay = api.ALPNRelay

// RelayHandler serves one member's relay connection after the API port
// verified its certificate; nodeID is the member's (from the certificate).
type RelayHandler func(ctx context.Context, c net.Conn, nodeID string)

// SetRelayHandler makes this manager accept relay connections on its API
// port (ALPN warren-relay/1) and hand them to h; nil refuses them.
func (m *Manager) SetRelayHandler(h RelayHandler) {
	if h == nil {
		m.relay.Store(nil)
		return
	}
	m.relay.Store(&h)
}

// NodeCertificate is this manager's own certificate (the one it speaks
// Raft with): a client certificate of the cluster's CA for other mTLS legs
// such as the relay's.
func (m *Manager) NodeCertificate() *tls.Certificate { return m.managerCert() }

// CAPool returns a pool holding the cluster's CA.
func (m *Manager) CAPool() *x509.CertPool { return m.caPool() }

// verifyRelayPeer admits a member to the relay: a manager's certificate
// (managers hold no other) or a node certificate that the node API
// accepts; the node must be a member either way. It returns the node ID.
func (m *Manager) verifyRelayPeer(certs []*x509.Certificate) (string, error) {
	raw := make([][]byte, len(certs))
	for i, c := range certs {
		raw[i] = c.Raw
	}
	if id, err := m.verifyManagerPeer(raw, x509.ExtKeyUsageClientAuth); err == nil {
		if _, err := m.member(id); err != nil {
			return "", err
		}
		return id, nil
	}
	c, err := m.authenticateCerts(certs, false)
	if err != nil {
		return "", err
	}
	return c.id, nil
}

// raftStream is Raft's StreamLayer on the API port: Accept returns the
// connections the API listener handed over, Dial opens mTLS with this
// manager's certificate.
type raftStream struct {
	m      *Manager
	addr   net.Addr
	conns  chan net.Conn
	closed chan struct{}
	once   sync.Once
}

func newRaftStream(m *Manager, advertise string) *raftStream {
	a, err := net.ResolveTCPAddr("tcp", advertise)
	if err != nil {
		a = &net.TCPAddr{}
	}
	return &raftStream{m: m, addr: a, conns: make(chan net.Conn), closed: make(chan struct{})}
}

func (s *raftStream) Accept() (net.Conn, error) {
	select {
	case c := <-s.conns:
		return c, nil
	case <-s.closed:
		return nil, net.ErrClosed
	}
}

func (s *raftStream) Close() error {
	s.once.Do(func() { close(s.closed) })
	return nil
}

func (s *raftStream) Addr() net.Addr { return s.addr }

func (s *raftStream) Dial(address raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	d := &net.Dialer{Timeout: timeout}
	conf := s.m.managerClientTLS(true)
	conf.NextProtos = []string{alpnRaft}
	c, err := tls.DialWithDialer(d, "tcp", string(address), conf)
	if err != nil {
		return nil, err
	}
	st := c.ConnectionState()
	if st.NegotiatedProtocol != alpnRaft || len(st.PeerCertificates) == 0 {
		c.Close()
		return nil, fmt.Errorf("%s does not speak the managers' raft protocol (not a manager of this version?)", address)
	}
	return &raftConn{Conn: c, m: s.m, leaf: st.PeerCertificates[0]}, nil
}

// offer hands a raft connection to Accept, or closes it if raft is gone.
func (s *raftStream) offer(c net.Conn) {
	select {
	case s.conns <- c:
	case <-s.closed:
		c.Close()
	}
}

// managerClientTLS is the client side of manager-to-manager mTLS: this
// manager's certificate, and a peer that must be a manager of this CA.
// Managers are dialled by IP: the CA and the manager unit are checked, not
// host names.
//
// The HTTP side of the API port serves the cluster's serving certificate,
// which only managers hold (it is part of the replicated state): for
// forwarded calls (raft=false) a chain to the CA is what is checked.
func (m *Manager) managerClientTLS(raft bool) *tls.Config {
	return apicall.MTLS(func(raw [][]byte) error {
		if !raft {
			return m.verifyServerPeer(raw)
		}
		_, err := m.verifyManagerPeer(raw, x509.ExtKeyUsageServerAuth)
		return err
	}, nil, m.managerClientCert)
}

func (m *Manager) verifyServerPeer(raw [][]byte) error {
	if len(raw) == 0 {
		return errors.New("the manager sent no certificate")
	}
	leaf, err := x509.ParseCertificate(raw[0])
	if err != nil {
		return err
	}
	return pki.VerifyChain(leaf, m.caPool(), x509.ExtKeyUsageServerAuth, m.now())
}

func (m *Manager) verifyManagerPeer(raw [][]byte, usage x509.ExtKeyUsage) (string, error) {
	if len(raw) == 0 {
		return "", errors.New("no certificate: only managers may connect here")
	}
	leaf, err := x509.ParseCertificate(raw[0])
	if err != nil {
		return "", err
	}
	if _, err := pki.VerifyManager(leaf, m.caPool(), usage, m.now()); err != nil {
		return "", err
	}
	return m.liveManager(leaf)
}

// serverTLS is the API port's TLS: the cluster's serving certificate for
// the node API, this manager's own certificate for Raft.
func (m *Manager) serverTLS() *tls.Config {
	conf := &tls.Config{
		MinVersion: tls.VersionTLS13,
		NextProtos: []string{alpnRaft, alpnRelay, "http/1.1"},
		GetCertificate: func(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
			// Raft and relay clients check that they reach this manager
			// (its node ID), which only its own certificate says.
			if slices.Contains(hello.SupportedProtos, alpnRaft) || slices.Contains(hello.SupportedProtos, alpnRelay) {
				return m.managerCert(), nil
			}
			m.mu.Lock()
			defer m.mu.Unlock()
			if m.server.Certificate == nil {
				// A joining manager before the state reached it.
				return m.managerCertLocked(), nil
			}
			c := m.server
			return &c, nil
		},
		// Joining nodes have no certificate yet; handlers that need one
		// verify it themselves and answer with a clear error.
		ClientAuth: tls.RequestClientCert,
		// Raft is for managers only: anything else fails the handshake.
		VerifyConnection: func(cs tls.ConnectionState) error {
			if cs.NegotiatedProtocol == alpnRelay {
				_, err := m.verifyRelayPeer(cs.PeerCertificates)
				return err
			}
			if cs.NegotiatedProtocol != alpnRaft {
				return nil
			}
			raw := make([][]byte, len(cs.PeerCertificates))
			for i, pc := range cs.PeerCertificates {
				raw[i] = pc.Raw
			}
			_, err := m.verifyManagerPeer(raw, x509.ExtKeyUsageClientAuth)
			return err
		},
	}
	// A manager that does not relay ([relay] enable = false) does not
	// offer the relay's protocol: a relay client's handshake fails at once.
	noRelay := conf.Clone()
	noRelay.NextProtos = slices.DeleteFunc(slices.Clone(conf.NextProtos), func(p string) bool { return p == alpnRelay })
	conf.GetConfigForClient = func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
		base := conf
		if m.relay.Load() == nil && slices.Contains(hello.SupportedProtos, alpnRelay) {
			base = noRelay
		}
		if !slices.Contains(hello.SupportedProtos, alpnRaft) {
			if base == conf {
				return nil, nil
			}
			return base, nil
		}
		// On Raft connections the CAs this manager accepts go in the
		// certificate request, so a manager holding session certificates
		// of two CAs (during a CA rotation) presents one this manager
		// already trusts (managerClientCert). Verification stays in
		// VerifyConnection. (Not on the node API: Go clients with a fixed
		// certificate would then send none to a manager of another CA,
		// and be told to join instead of that their CA is foreign.)
		c := base.Clone()
		c.GetConfigForClient = nil
		c.ClientCAs = m.caPool()
		return c, nil
	}
	return conf
}

// muxListener splits the API port: TLS handshakes happen here, Raft
// connections (from verified managers only) go to the raft stream, the
// rest are returned by Accept for the HTTP server.
type muxListener struct {
	net.Listener
	conf   *tls.Config
	m      *Manager
	http   chan net.Conn
	errc   chan error
	closed chan struct{}
	once   sync.Once
}

func newMuxListener(ctx context.Context, ln net.Listener, conf *tls.Config, m *Manager) *muxListener {
	l := &muxListener{Listener: ln, conf: conf, m: m, http: make(chan net.Conn), errc: make(chan error, 1), closed: make(chan struct{})}
	go l.loop(ctx)
	return l
}

func (l *muxListener) loop(ctx context.Context) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				time.Sleep(50 * time.Millisecond)
				continue
			}
			l.errc <- err
			return
		}
		go l.handshake(ctx, c)
	}
}

func (l *muxListener) handshake(ctx context.Context, c net.Conn) {
	tc := tls.Server(c, l.conf)
	// The handshake gets the shorter of handshakeTimeout and the request
	// timeout, so a client that stalls it holds a connection slot no
	// longer than that.
	hctx, cancel := context.WithTimeout(ctx, min(handshakeTimeout, l.m.cfg.requestTimeout))
	defer cancel()
	if err := tc.HandshakeContext(hctx); err != nil {
		c.Close()
		return
	}
	st := tc.ConnectionState()
	if st.NegotiatedProtocol == alpnRelay {
		id, err := l.m.verifyRelayPeer(st.PeerCertificates)
		h := l.m.relay.Load()
		if err != nil || h == nil {
			if err == nil {
				err = errors.New("this manager does not relay ([relay] enable = false)")
			}
			l.m.log.Warn("refused a relay connection", "remote", c.RemoteAddr().String(), "err", err)
			tc.Close()
			return
		}
		if lc, ok := c.(*limitedConn); ok {
			lc.free() // a member: not an unauthenticated connection
		}
		(*h)(ctx, tc, id)
		return
	}
	if st.NegotiatedProtocol == alpnRaft {
		raw := make([][]byte, len(st.PeerCertificates))
		for i, pc := range st.PeerCertificates {
			raw[i] = pc.Raw
		}
		if _, err := l.m.verifyManagerPeer(raw, x509.ExtKeyUsageClientAuth); err != nil {
			l.m.log.Warn("refused a raft connection", "remote", c.RemoteAddr().String(), "err", err)
			tc.Close()
			return
		}
		if lc, ok := c.(*limitedConn); ok {
			lc.free() // a manager: not an unauthenticated connection
		}
		if s := l.m.stream; s != nil {
			s.offer(&raftConn{Conn: tc, m: l.m, leaf: st.PeerCertificates[0]})
			return
		}
		tc.Close()
		return
	}
	select {
	case l.http <- tc:
	case <-l.closed:
		tc.Close()
	}
}

func (l *muxListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.http:
		return c, nil
	case err := <-l.errc:
		return nil, err
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

func (l *muxListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return l.Listener.Close()
}

// requireManager wraps handlers of the managers' internal API: the caller
// must present a manager certificate of this cluster.
func (m *Manager) requireManager(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if r.TLS == nil {
			writeError(w, errorf(http.StatusUnauthorized, "managers only"))
			return
		}
		raw := make([][]byte, len(r.TLS.PeerCertificates))
		for i, pc := range r.TLS.PeerCertificates {
			raw[i] = pc.Raw
		}
		id, err := m.verifyManagerPeer(raw, x509.ExtKeyUsageClientAuth)
		if err != nil {
			writeError(w, errorf(http.StatusForbidden, "this call is for managers only: %v", err))
			return
		}
		// A removed manager's certificate stops working here too.
		m.mu.Lock()
		var rec nodeRecord
		ok := false
		if m.st != nil {
			rec, ok = m.st.nodes[id]
		}
		m.mu.Unlock()
		if !ok || rec.Role != clustermap.RoleManager {
			writeError(w, errorf(http.StatusForbidden, "manager %s is not a manager of this cluster (removed?)", id))
			return
		}
		markAuthenticated(r.Context())
		h(w, r)
	}
}

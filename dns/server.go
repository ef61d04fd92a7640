package dns

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	miekg "github.com/miekg/dns"
	"golang.org/x/net/netutil"
	"golang.org/x/sys/unix"
)

// Defaults for Config fields left zero.
const (
	DefaultResolvConf     = "/etc/resolv.conf"
	DefaultForwardTimeout = 2 * time.Second // below glibc's 5 s, so clients see our SERVFAIL, not their own timeout
	DefaultResolvConfPoll = 2 * time.Second
	DefaultLoopProbe      = 5 * time.Minute
)

// maxTCPConns bounds open TCP client connections (each holds a goroutine
// and a file descriptor until its idle timeout); further ones wait in the
// kernel's accept queue.
const maxTCPConns = 256

// loopProbeMinGap spaces probes triggered by overload.
const loopProbeMinGap = 5 * time.Second

// udpReadBuffer is the largest UDP query read; longer datagrams are cut and
// answered FORMERR. Kept small: one buffer per query in flight.
const udpReadBuffer = 4096

// Config configures a Server.
type Config struct {
	// Listen holds "ip:port" addresses (e.g. "10.0.1.1:53"); each is served
	// over both UDP and TCP. Port 0 picks one free port for both.
	Listen []string
	// Domain is the zone served until the first Update names one;
	// DefaultDomain when empty.
	Domain string
	// ResolvConf is the host's resolver file whose nameservers receive the
	// queries outside the domain; DefaultResolvConf when empty. It is
	// re-read every ResolvConfPoll. Ignored when Upstreams is set.
	ResolvConf string
	// Upstreams overrides ResolvConf: "ip" or "ip:port" entries.
	Upstreams []string
	// ForwardTimeout bounds one forwarded query across all upstreams
	// (after which the client gets SERVFAIL); DefaultForwardTimeout when 0.
	ForwardTimeout time.Duration
	// ResolvConfPoll is how often ResolvConf is re-read;
	// DefaultResolvConfPoll when 0.
	ResolvConfPoll time.Duration
	// LoopProbeInterval is how often every upstream is probed again for a
	// loop back to this server (they are probed at once when loaded);
	// DefaultLoopProbe when 0.
	LoopProbeInterval time.Duration
	// Allow lists the source ranges answered (e.g. loopback and the node's
	// own addresses), besides the Clients of the last Update (the cluster's
	// ranges). Queries from anywhere else get no answer at all (over TCP
	// the connection is closed): a LAN neighbour that routes the container
	// block to the node learns nothing and cannot use it as a resolver.
	// With neither set, every source is answered.
	Allow []netip.Prefix
	// FreeBind sets IP_FREEBIND so Start succeeds before the listen address
	// is configured on an interface (e.g. the bridge comes up later).
	FreeBind bool
	// OnAnswer, when set, is called once per answer sent with its response
	// code in lower case ("noerror", "nxdomain", "servfail", ...), and with
	// "ignored" for a query from outside Allow and the clients (no answer),
	// for metrics. It must not block.
	OnAnswer func(rcode string)
	// Logger receives the server's logs; slog.Default() when nil.
	Logger *slog.Logger
}

// Server is the node's service discovery resolver: authoritative for the
// cluster domain, a forwarder to the host's resolvers for everything else.
type Server struct {
	cfg       Config
	log       *slog.Logger
	upstreams []netip.AddrPort // parsed cfg.Upstreams, nil when following resolv.conf

	zone    atomic.Pointer[zone]
	fwd     *forwarder
	handler *handler
	ctx     context.Context
	cancel  context.CancelFunc
	wg      sync.WaitGroup

	mu       sync.Mutex // guards the fields below
	serial   uint32
	problems map[string]bool // last reported record problems, to log each once
	started  bool
	closed   bool
	servers  []*miekg.Server
	addrs    []netip.AddrPort
}

// NewServer validates cfg and prepares a server; nothing listens before
// Start.
func NewServer(cfg Config) (*Server, error) {
	if len(cfg.Listen) == 0 {
		return nil, errors.New("dns: no listen address")
	}
	for _, l := range cfg.Listen {
		if _, _, err := splitListen(l); err != nil {
			return nil, fmt.Errorf("dns: listen address %q: %w", l, err)
		}
	}
	if cfg.Domain == "" {
		cfg.Domain = DefaultDomain
	}
	domain, err := normalizeDomain(cfg.Domain)
	if err != nil {
		return nil, fmt.Errorf("dns: %w", err)
	}
	if cfg.ResolvConf == "" {
		cfg.ResolvConf = DefaultResolvConf
	}
	if cfg.ForwardTimeout <= 0 {
		cfg.ForwardTimeout = DefaultForwardTimeout
	}
	if cfg.ResolvConfPoll <= 0 {
		cfg.ResolvConfPoll = DefaultResolvConfPoll
	}
	if cfg.LoopProbeInterval <= 0 {
		cfg.LoopProbeInterval = DefaultLoopProbe
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	cfg.Logger = cfg.Logger.With("component", "dns")
	var upstreams []netip.AddrPort
	if len(cfg.Upstreams) > 0 {
		if upstreams, err = parseUpstreams(cfg.Upstreams); err != nil {
			return nil, fmt.Errorf("dns: %w", err)
		}
	}

	ctx, cancel := context.WithCancel(context.Background())
	s := &Server{
		cfg:       cfg,
		log:       cfg.Logger,
		upstreams: upstreams,
		fwd:       newForwarder(cfg.Logger),
		ctx:       ctx,
		cancel:    cancel,
		problems:  make(map[string]bool),
	}
	empty, _ := compileZone(domain, Records{}, 0)
	s.zone.Store(empty)
	s.handler = &handler{
		zone:           &s.zone,
		fwd:            s.fwd,
		forwardTimeout: cfg.ForwardTimeout,
		baseCtx:        ctx,
		log:            cfg.Logger,
		onAnswer:       cfg.OnAnswer,
		allow:          cfg.Allow,
	}
	return s, nil
}

// splitListen parses "ip:port" (ip may be empty for every address).
func splitListen(l string) (string, uint16, error) {
	host, port, err := net.SplitHostPort(l)
	if err != nil {
		return "", 0, err
	}
	if host != "" {
		if _, err := netip.ParseAddr(host); err != nil {
			return "", 0, errors.New("host must be a literal IP address")
		}
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return "", 0, fmt.Errorf("bad port %q", port)
	}
	return host, uint16(p), nil
}

// Start binds UDP and TCP on every listen address (errors such as an
// address in use are returned here, not later), loads the upstream
// resolvers and serves until Close. After a bind error Start may be
// called again; Close must be called in any case.
func (s *Server) Start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return errors.New("dns: server closed")
	}
	if s.started {
		return errors.New("dns: server already started")
	}

	type pair struct {
		pc net.PacketConn
		ln net.Listener
	}
	var pairs []pair
	var addrs []netip.AddrPort
	for _, l := range s.cfg.Listen {
		host, port, _ := splitListen(l)
		pc, ln, ap, err := bindPair(s.ctx, host, port, s.cfg.FreeBind)
		if err != nil {
			for _, p := range pairs {
				p.pc.Close()
				p.ln.Close()
			}
			return fmt.Errorf("dns: listen on %s: %w", l, err)
		}
		pairs = append(pairs, pair{pc, ln})
		addrs = append(addrs, ap)
	}
	s.addrs = addrs

	if s.upstreams != nil {
		s.fwd.setUpstreams(s.ctx, "config", s.upstreams, addrs, s.cfg.ForwardTimeout)
	} else {
		content, err := os.ReadFile(s.cfg.ResolvConf)
		if err != nil {
			s.log.Warn("cannot read resolv.conf; forwarding disabled until it appears", "path", s.cfg.ResolvConf, "err", err)
		}
		s.loadResolvConf(content)
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.watchResolvConf(content)
		}()
	}

	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.reprobeLoops()
	}()

	// From here on the server counts as started even if serving fails:
	// Close releases whatever did start.
	s.started = true
	for _, p := range pairs {
		for _, srv := range []*miekg.Server{
			{PacketConn: p.pc, UDPSize: udpReadBuffer},
			{Listener: netutil.LimitListener(p.ln, maxTCPConns)},
		} {
			srv.Handler = s.handler
			started := make(chan struct{})
			srv.NotifyStartedFunc = func() { close(started) }
			failed := make(chan error, 1)
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				err := srv.ActivateAndServe()
				if err != nil && s.ctx.Err() == nil {
					s.log.Error("server stopped", "err", err)
				}
				failed <- err
			}()
			// Wait until miekg marks it started, so Close can shut it down.
			select {
			case <-started:
				s.servers = append(s.servers, srv)
			case err := <-failed:
				for _, p := range pairs {
					p.pc.Close()
					p.ln.Close()
				}
				return fmt.Errorf("dns: serve: %w", err)
			}
		}
	}
	s.log.Info("serving", "listen", addrs, "domain", s.zone.Load().domain)
	return nil
}

// bindPair binds UDP then TCP on the same address and port; with port 0 it
// retries until the UDP port is free for TCP too.
func bindPair(ctx context.Context, host string, port uint16, freeBind bool) (net.PacketConn, net.Listener, netip.AddrPort, error) {
	lc := net.ListenConfig{}
	if freeBind {
		lc.Control = setFreeBind
	}
	for attempt := 0; ; attempt++ {
		pc, err := lc.ListenPacket(ctx, "udp", net.JoinHostPort(host, strconv.Itoa(int(port))))
		if err != nil {
			return nil, nil, netip.AddrPort{}, fmt.Errorf("udp: %w", err)
		}
		ap := pc.LocalAddr().(*net.UDPAddr).AddrPort()
		ln, err := lc.Listen(ctx, "tcp", net.JoinHostPort(host, strconv.Itoa(int(ap.Port()))))
		if err == nil {
			return pc, ln, netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), nil
		}
		pc.Close()
		if port != 0 || attempt >= 20 || !errors.Is(err, syscall.EADDRINUSE) {
			return nil, nil, netip.AddrPort{}, fmt.Errorf("tcp: %w", err)
		}
	}
}

func setFreeBind(network, _ string, c syscall.RawConn) error {
	var sockErr error
	err := c.Control(func(fd uintptr) {
		if network == "udp6" || network == "tcp6" {
			sockErr = unix.SetsockoptInt(int(fd), unix.SOL_IPV6, unix.IPV6_FREEBIND, 1)
		} else {
			sockErr = unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_FREEBIND, 1)
		}
	})
	if err != nil {
		return err
	}
	if sockErr != nil {
		return fmt.Errorf("set freebind: %w", sockErr)
	}
	return nil
}

// loadResolvConf installs the nameservers of content as upstreams.
func (s *Server) loadResolvConf(content []byte) {
	addrs, err := resolvConfUpstreams(content)
	if err != nil {
		s.log.Warn("bad resolv.conf", "path", s.cfg.ResolvConf, "err", err)
	}
	s.fwd.setUpstreams(s.ctx, s.cfg.ResolvConf, addrs, s.addrs, s.cfg.ForwardTimeout)
}

// watchResolvConf re-reads the host's resolv.conf every poll interval and
// reloads the upstreams when its content changes. Reading a few hundred
// bytes is cheaper and surer than trusting mtimes (rewrites in the same
// second, symlink swaps). A missing file keeps the last upstreams.
func (s *Server) watchResolvConf(last []byte) {
	t := time.NewTicker(s.cfg.ResolvConfPoll)
	defer t.Stop()
	missingLogged := false
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-t.C:
		}
		content, err := os.ReadFile(s.cfg.ResolvConf)
		if err != nil {
			if !missingLogged {
				s.log.Warn("cannot read resolv.conf; keeping the last upstreams", "path", s.cfg.ResolvConf, "err", err)
				missingLogged = true
			}
			continue
		}
		missingLogged = false
		if bytes.Equal(content, last) {
			continue
		}
		last = content
		s.mu.Lock()
		s.loadResolvConf(content)
		s.mu.Unlock()
	}
}

// reprobeLoops probes the upstreams for loops every LoopProbeInterval, and
// early when the forwarding slots run out (a new loop fills them in a
// moment), at most once per loopProbeMinGap.
func (s *Server) reprobeLoops() {
	t := time.NewTicker(s.cfg.LoopProbeInterval)
	defer t.Stop()
	var last time.Time
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-t.C:
		case <-s.fwd.overloaded:
			if time.Since(last) < loopProbeMinGap {
				continue
			}
		}
		last = time.Now()
		s.fwd.reprobe(s.ctx, s.cfg.ForwardTimeout)
	}
}

// Addrs returns the bound addresses (with the real port when Listen asked
// for port 0), in Listen order. Empty before Start.
func (s *Server) Addrs() []netip.AddrPort {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]netip.AddrPort(nil), s.addrs...)
}

// Update atomically replaces the records: the very next query sees the new
// set, so a removed name answers NXDOMAIN at once. Names that cannot be
// served are skipped and logged once.
func (s *Server) Update(r Records) {
	s.mu.Lock()
	defer s.mu.Unlock()
	domain := s.zone.Load().domain
	if r.Domain != "" {
		d, err := normalizeDomain(r.Domain)
		if err != nil {
			s.log.Error("records name an invalid domain; keeping the current one", "domain", r.Domain, "current", domain, "err", err)
		} else {
			domain = d
		}
	}
	s.serial++
	z, problems := compileZone(domain, r, s.serial)
	s.zone.Store(z)

	current := make(map[string]bool, len(problems))
	for _, p := range problems {
		msg := p.Error()
		current[msg] = true
		if !s.problems[msg] {
			s.log.Warn("record skipped", "err", msg)
		}
	}
	s.problems = current
}

// Close stops listening, waits for the handlers and background work, and
// releases the sockets. It is safe to call more than once.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	servers := s.servers
	s.mu.Unlock()

	s.cancel() // ends forwards in flight, probes and the watcher
	var errs []error
	for _, srv := range servers {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		if err := srv.ShutdownContext(ctx); err != nil {
			errs = append(errs, err)
		}
		cancel()
	}
	s.wg.Wait()
	s.fwd.probeWG.Wait()
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("dns: close: %w", err)
	}
	return nil
}

package cluster

import (
	"context"
	"net"
	"net/netip"
	"sync"
	"time"
)

// Caps on connections that have not authenticated yet (no valid node
// certificate on a request so far): joins, probes, slow or idle clients.
// A connection that authenticates stops counting. Sources share a bucket
// per /24 (IPv4) or /64 (IPv6), so one network cannot take every slot by
// using many addresses; and keptForKnown slots beyond the cap are only for
// addresses of members (their endpoints, or where a node authenticated
// from), so that unknown sources filling every bucket do not keep the
// cluster's own nodes from reconnecting.
const (
	maxUnauthConns          = 256
	maxUnauthConnsPerBucket = 32
	keptForKnown            = 64
	maxLearned              = 4096 // addresses remembered from authenticated connections
	// handshakeTimeout bounds the TLS handshake: a silent client holds a
	// slot no longer than this.
	handshakeTimeout = 5 * time.Second
)

// bucketOf is the source's bucket: its /24 or /64.
func bucketOf(a netip.Addr) netip.Prefix {
	bits := 64
	if a.Is4() {
		bits = 24
	}
	p, _ := a.Prefix(bits)
	return p
}

// connLimiter counts unauthenticated connections, overall and per bucket,
// and the kept slots known addresses use once those are full.
type connLimiter struct {
	mu        sync.Mutex
	total     int
	kept      int
	perBucket map[netip.Prefix]int
	learned   map[netip.Addr]bool
	known     func(netip.Addr) bool // members' addresses (may be nil)
	refused   int
	lastLog   time.Time
}

// acquire takes a slot for src; kept says it is one of the kept ones.
func (l *connLimiter) acquire(src netip.Addr) (kept, ok bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	b := bucketOf(src)
	if l.total < maxUnauthConns && l.perBucket[b] < maxUnauthConnsPerBucket {
		if l.perBucket == nil {
			l.perBucket = map[netip.Prefix]int{}
		}
		l.total++
		l.perBucket[b]++
		return false, true
	}
	if l.kept < keptForKnown && (l.learned[src] || (l.known != nil && l.known(src))) {
		l.kept++
		return true, true
	}
	l.refused++
	return false, false
}

func (l *connLimiter) release(src netip.Addr, kept bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if kept {
		l.kept--
		return
	}
	l.total--
	b := bucketOf(src)
	if l.perBucket[b]--; l.perBucket[b] <= 0 {
		delete(l.perBucket, b)
	}
}

// learn remembers an address a node authenticated from.
func (l *connLimiter) learn(src netip.Addr) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.learned[src] {
		return
	}
	if l.learned == nil || len(l.learned) >= maxLearned {
		l.learned = map[netip.Addr]bool{} // forget all rather than grow: members' endpoints stay known
	}
	l.learned[src] = true
}

// limitedListener closes connections beyond the caps at once.
type limitedListener struct {
	net.Listener
	lim *connLimiter
	log func(refused int)
}

func (ln *limitedListener) Accept() (net.Conn, error) {
	for {
		c, err := ln.Listener.Accept()
		if err != nil {
			return nil, err
		}
		src := netip.Addr{}
		if ap, err := netip.ParseAddrPort(c.RemoteAddr().String()); err == nil {
			src = ap.Addr().Unmap()
		}
		kept, ok := ln.lim.acquire(src)
		if !ok {
			c.Close()
			ln.maybeLog()
			continue
		}
		return &limitedConn{Conn: c, lim: ln.lim, src: src, kept: kept}, nil
	}
}

func (ln *limitedListener) maybeLog() {
	ln.lim.mu.Lock()
	now := time.Now()
	if now.Sub(ln.lim.lastLog) < 10*time.Second {
		ln.lim.mu.Unlock()
		return
	}
	ln.lim.lastLog = now
	n := ln.lim.refused
	ln.lim.refused = 0
	ln.lim.mu.Unlock()
	ln.log(n)
}

// limitedConn holds a slot until it authenticates or closes.
type limitedConn struct {
	net.Conn
	lim  *connLimiter
	src  netip.Addr
	kept bool
	once sync.Once
}

func (c *limitedConn) free() { c.once.Do(func() { c.lim.release(c.src, c.kept) }) }

func (c *limitedConn) Close() error {
	c.free()
	return c.Conn.Close()
}

type connKey struct{}

// connContext remembers the request's connection so that authentication
// can free its slot.
func connContext(ctx context.Context, c net.Conn) context.Context {
	for {
		switch x := c.(type) {
		case *limitedConn:
			return context.WithValue(ctx, connKey{}, x)
		case interface{ NetConn() net.Conn }:
			c = x.NetConn()
		default:
			return ctx
		}
	}
}

// markAuthenticated stops counting the request's connection as
// unauthenticated, and remembers its source as a member's.
func markAuthenticated(ctx context.Context) {
	if c, ok := ctx.Value(connKey{}).(*limitedConn); ok {
		c.free()
		if c.src.IsValid() {
			c.lim.learn(c.src)
		}
	}
}

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
// A connection that authenticates stops counting.
const (
	maxUnauthConns          = 256
	maxUnauthConnsPerSource = 32
)

// connLimiter counts unauthenticated connections, overall and per source
// address.
type connLimiter struct {
	mu        sync.Mutex
	total     int
	perSource map[netip.Addr]int
	refused   int
	lastLog   time.Time
}

func (l *connLimiter) acquire(src netip.Addr) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.total >= maxUnauthConns || l.perSource[src] >= maxUnauthConnsPerSource {
		l.refused++
		return false
	}
	if l.perSource == nil {
		l.perSource = map[netip.Addr]int{}
	}
	l.total++
	l.perSource[src]++
	return true
}

func (l *connLimiter) release(src netip.Addr) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.total--
	if l.perSource[src]--; l.perSource[src] <= 0 {
		delete(l.perSource, src)
	}
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
		if !ln.lim.acquire(src) {
			c.Close()
			ln.maybeLog()
			continue
		}
		return &limitedConn{Conn: c, lim: ln.lim, src: src}, nil
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
	once sync.Once
}

func (c *limitedConn) free() { c.once.Do(func() { c.lim.release(c.src) }) }

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
// unauthenticated.
func markAuthenticated(ctx context.Context) {
	if c, ok := ctx.Value(connKey{}).(*limitedConn); ok {
		c.free()
	}
}

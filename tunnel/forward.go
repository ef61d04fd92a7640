package tunnel

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"
)

// dialFunc opens a connection to an address inside the mesh.
type dialFunc func(ctx context.Context, proto string, target netip.AddrPort) (net.Conn, error)

// udpIdleTimeout ends a UDP relay session that saw no packet either way,
// as conntrack forgets an idle UDP flow.
const udpIdleTimeout = 2 * time.Minute

// dialTimeout bounds how long a relay waits for the mesh side to answer.
const dialTimeout = 15 * time.Second

func (d *Device) dialer() dialFunc {
	if d.tnet != nil {
		tnet := d.tnet
		return func(ctx context.Context, proto string, target netip.AddrPort) (net.Conn, error) {
			if proto == "udp" {
				return tnet.DialUDP(target)
			}
			return tnet.DialTCP(ctx, target)
		}
	}
	var nd net.Dialer
	return func(ctx context.Context, proto string, target netip.AddrPort) (net.Conn, error) {
		return nd.DialContext(ctx, proto, target.String())
	}
}

// relays serves every Forward until closed.
type relays struct {
	closers []io.Closer
	wg      sync.WaitGroup
	ctx     context.Context
	cancel  context.CancelFunc
}

func startRelays(forwards []Forward, dial dialFunc, log *slog.Logger) (*relays, error) {
	r := &relays{}
	r.ctx, r.cancel = context.WithCancel(context.Background())
	for _, f := range forwards {
		flog := log.With("forward", fmt.Sprintf("%s %s -> %s", f.Proto, f.Listen, f.Target))
		switch f.Proto {
		case "tcp":
			l, err := net.ListenTCP("tcp", net.TCPAddrFromAddrPort(f.Listen))
			if err != nil {
				r.close()
				return nil, fmt.Errorf("forward tcp %s: %w", f.Listen, err)
			}
			r.closers = append(r.closers, l)
			r.wg.Add(1)
			go r.serveTCP(l, f.Target, dial, flog)
		case "udp":
			c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(f.Listen))
			if err != nil {
				r.close()
				return nil, fmt.Errorf("forward udp %s: %w", f.Listen, err)
			}
			r.closers = append(r.closers, c)
			r.wg.Add(1)
			go r.serveUDP(c, f.Target, dial, flog)
		}
		flog.Info("forwarding")
	}
	return r, nil
}

func (r *relays) close() {
	r.cancel()
	for _, c := range r.closers {
		c.Close()
	}
	r.wg.Wait()
}

func (r *relays) serveTCP(l *net.TCPListener, target netip.AddrPort, dial dialFunc, log *slog.Logger) {
	defer r.wg.Done()
	var conns sync.WaitGroup
	defer conns.Wait()
	for {
		c, err := l.AcceptTCP()
		if err != nil {
			if r.ctx.Err() == nil {
				log.Error("forward stopped accepting", "error", err)
			}
			return
		}
		conns.Add(1)
		go func() {
			defer conns.Done()
			r.relayTCP(c, target, dial, log)
		}()
	}
}

func (r *relays) relayTCP(client *net.TCPConn, target netip.AddrPort, dial dialFunc, log *slog.Logger) {
	defer client.Close()
	ctx, cancel := context.WithTimeout(r.ctx, dialTimeout)
	upstream, err := dial(ctx, "tcp", target)
	cancel()
	if err != nil {
		log.Warn("dial through the mesh failed", "client", client.RemoteAddr(), "error", err)
		return
	}
	defer upstream.Close()
	// Close both ends when the device shuts down, so copies return.
	stop := context.AfterFunc(r.ctx, func() { client.Close(); upstream.Close() })
	defer stop()

	done := make(chan struct{}, 2)
	pipe := func(dst, src net.Conn) {
		// Plain io.Copy, also with a netstack end (32 KiB per call): a
		// 256 KiB buffer measured at half the throughput (tunnel/BENCHMARKS.md).
		io.Copy(dst, src)
		// Pass the half-close on, so request/response protocols finish.
		if cw, ok := dst.(interface{ CloseWrite() error }); ok {
			cw.CloseWrite()
		} else {
			dst.Close()
		}
		done <- struct{}{}
	}
	go pipe(upstream, client)
	go pipe(client, upstream)
	<-done
	<-done
}

// udpSession is one client's flow through a UDP forward.
type udpSession struct {
	upstream net.Conn
	last     time.Time
	mu       sync.Mutex
}

func (r *relays) serveUDP(l *net.UDPConn, target netip.AddrPort, dial dialFunc, log *slog.Logger) {
	defer r.wg.Done()
	var (
		mu       sync.Mutex
		sessions = make(map[netip.AddrPort]*udpSession)
		workers  sync.WaitGroup
	)
	defer func() {
		mu.Lock()
		for _, s := range sessions {
			s.upstream.Close()
		}
		mu.Unlock()
		workers.Wait()
	}()
	buf := make([]byte, 65535)
	for {
		n, client, err := l.ReadFromUDPAddrPort(buf)
		if err != nil {
			if r.ctx.Err() == nil && !errors.Is(err, net.ErrClosed) {
				log.Error("forward stopped reading", "error", err)
			}
			return
		}
		client = unmapAddrPort(client)
		mu.Lock()
		s, ok := sessions[client]
		mu.Unlock()
		if !ok {
			ctx, cancel := context.WithTimeout(r.ctx, dialTimeout)
			up, err := dial(ctx, "udp", target)
			cancel()
			if err != nil {
				log.Warn("dial through the mesh failed", "client", client, "error", err)
				continue
			}
			s = &udpSession{upstream: up, last: time.Now()}
			mu.Lock()
			sessions[client] = s
			mu.Unlock()
			workers.Add(1)
			go func() {
				defer workers.Done()
				r.udpReplies(l, client, s)
				mu.Lock()
				delete(sessions, client)
				mu.Unlock()
				s.upstream.Close()
			}()
		}
		s.mu.Lock()
		s.last = time.Now()
		s.mu.Unlock()
		if _, err := s.upstream.Write(buf[:n]); err != nil {
			log.Debug("write through the mesh failed", "client", client, "error", err)
		}
	}
}

// udpReplies copies the target's datagrams back to the client until the
// session has been idle for udpIdleTimeout or is closed.
func (r *relays) udpReplies(l *net.UDPConn, client netip.AddrPort, s *udpSession) {
	buf := make([]byte, 65535)
	for {
		s.upstream.SetReadDeadline(time.Now().Add(udpIdleTimeout))
		n, err := s.upstream.Read(buf)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				s.mu.Lock()
				idle := time.Since(s.last)
				s.mu.Unlock()
				if idle < udpIdleTimeout {
					continue
				}
			}
			return
		}
		s.mu.Lock()
		s.last = time.Now()
		s.mu.Unlock()
		if _, err := l.WriteToUDPAddrPort(buf[:n], client); err != nil {
			return
		}
	}
}

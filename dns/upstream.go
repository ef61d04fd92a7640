package dns

import (
	"bytes"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"

	miekg "github.com/miekg/dns"
)

// upstream is one resolver that out-of-domain queries are forwarded to.
type upstream struct {
	addr   netip.AddrPort
	probed chan struct{} // closed once the loop probe has finished
	looped atomic.Bool   // the last probe came back to us: do not forward here
}

// upstreamSet is the resolver list read from one version of resolv.conf (or
// the configured override).
type upstreamSet struct {
	source    string
	upstreams []*upstream // loop-free by address; probes may still mark some looped
	preferred atomic.Int32
	noneOnce  sync.Once // "no usable upstream" is logged once per set
}

// warnNone logs, once per set, that nothing is left to forward to.
func (s *upstreamSet) warnNone(log *slog.Logger) {
	s.noneOnce.Do(func() {
		log.Warn("no usable upstream resolver (none configured, or all loop back); names outside the domain answer SERVFAIL", "source", s.source)
	})
}

// parseUpstreams turns "ip" or "ip:port" entries into addresses, port 53
// by default.
func parseUpstreams(entries []string) ([]netip.AddrPort, error) {
	var out []netip.AddrPort
	for _, e := range entries {
		ap, err := parseHostPort(e, 53)
		if err != nil {
			return nil, fmt.Errorf("upstream %q: %w", e, err)
		}
		out = append(out, ap)
	}
	return out, nil
}

// parseHostPort accepts "1.2.3.4", "1.2.3.4:53", "::1", "[::1]:53" and
// "fe80::1%eth0" (literal addresses only: no name to resolve before DNS
// works).
func parseHostPort(s string, defaultPort uint16) (netip.AddrPort, error) {
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), nil
	}
	addr, err := netip.ParseAddr(s)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("not a literal IP address or IP:port")
	}
	return netip.AddrPortFrom(addr.Unmap(), defaultPort), nil
}

// resolvConfUpstreams returns the nameservers of a resolv.conf(5) file's
// content, skipping lines that are not literal addresses.
func resolvConfUpstreams(content []byte) ([]netip.AddrPort, error) {
	cfg, err := miekg.ClientConfigFromReader(bytes.NewReader(content))
	if err != nil {
		return nil, fmt.Errorf("parse resolv.conf: %w", err)
	}
	port, err := strconv.ParseUint(cfg.Port, 10, 16)
	if err != nil || port == 0 {
		port = 53
	}
	var out []netip.AddrPort
	for _, s := range cfg.Servers {
		addr, err := netip.ParseAddr(s)
		if err != nil {
			continue
		}
		out = append(out, netip.AddrPortFrom(addr.Unmap(), uint16(port)))
	}
	return out, nil
}

// loopsBack reports whether sending to up would reach one of our own
// listeners. An unspecified upstream (0.0.0.0, glibc's "this host") and a
// wildcard listener both mean "any local address".
func loopsBack(up netip.AddrPort, listens []netip.AddrPort, isLocal func(netip.Addr) bool) bool {
	upIP := up.Addr().Unmap().WithZone("")
	upLocal := upIP.IsUnspecified() || upIP.IsLoopback() || isLocal(upIP)
	for _, l := range listens {
		if l.Port() != up.Port() {
			continue
		}
		lIP := l.Addr().Unmap().WithZone("")
		if lIP == upIP {
			return true
		}
		if lIP.IsUnspecified() && upLocal {
			return true
		}
		if upIP.IsUnspecified() && (lIP.IsLoopback() || isLocal(lIP)) {
			return true
		}
	}
	return false
}

// hostAddrs returns a predicate over this host's interface addresses (in the
// current network namespace), read once.
func hostAddrs() func(netip.Addr) bool {
	set := make(map[netip.Addr]bool)
	if addrs, err := net.InterfaceAddrs(); err == nil {
		for _, a := range addrs {
			if ipn, ok := a.(*net.IPNet); ok {
				if ip, ok := netip.AddrFromSlice(ipn.IP); ok {
					set[ip.Unmap()] = true
				}
			}
		}
	}
	return func(a netip.Addr) bool { return set[a] }
}

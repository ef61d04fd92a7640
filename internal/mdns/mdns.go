// Package mdns resolves ".local" host names (Raspberry Pi OS boards answer
// for <hostname>.local through avahi) with a one-shot multicast DNS query,
// which the static binary's Go resolver does not send.
//
// The query is an RFC 6762 §6.7 "legacy unicast" query: sent from an
// ephemeral port to 224.0.0.251:5353, answered by the responders directly
// to that port. It needs no listener on port 5353, so it works beside
// avahi-daemon on the same host.
package mdns

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/miekg/dns"
)

// Group is the mDNS IPv4 multicast group and port.
var Group = netip.MustParseAddrPort("224.0.0.251:5353")

// IsLocal reports whether host is an mDNS name (ends in ".local").
func IsLocal(host string) bool {
	return strings.HasSuffix(strings.ToLower(strings.TrimSuffix(host, ".")), ".local")
}

// Resolver sends mDNS queries.
type Resolver struct {
	// Timeout is how long to wait for an answer in all (default 3 s); the
	// query is sent again every second meanwhile, as packets get lost.
	Timeout time.Duration
	// Group overrides the destination (tests); zero means Group.
	Group netip.AddrPort
}

// LookupAddr returns an IPv4 address of host (a ".local" name).
func (r Resolver) LookupAddr(ctx context.Context, host string) (netip.Addr, error) {
	timeout := r.Timeout
	if timeout <= 0 {
		timeout = 3 * time.Second
	}
	group := r.Group
	if !group.IsValid() {
		group = Group
	}
	name := dns.Fqdn(strings.ToLower(host))
	q := new(dns.Msg)
	q.SetQuestion(name, dns.TypeA)
	q.RecursionDesired = false
	pkt, err := q.Pack()
	if err != nil {
		return netip.Addr{}, fmt.Errorf("mdns query for %s: %w", host, err)
	}
	conn, err := net.ListenUDP("udp4", nil)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("mdns: %w", err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	go func() { <-ctx.Done(); conn.SetReadDeadline(time.Now()) }()

	send := func() error {
		_, err := conn.WriteToUDPAddrPort(pkt, group)
		return err
	}
	if err := send(); err != nil {
		return netip.Addr{}, fmt.Errorf("mdns: send the query for %s to %s: %w (does this host have a route for multicast, e.g. a default route?)", host, group, err)
	}
	resend := time.NewTicker(time.Second)
	defer resend.Stop()
	buf := make([]byte, 9000)
	for {
		conn.SetReadDeadline(time.Now().Add(250 * time.Millisecond))
		n, _, err := conn.ReadFromUDPAddrPort(buf)
		if ctx.Err() != nil {
			return netip.Addr{}, fmt.Errorf("%s: no multicast DNS (mDNS) answer within %s: is the board on this LAN and running avahi-daemon (Raspberry Pi OS does by default)? Or give the manager's IP address instead of its .local name", host, timeout)
		}
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				select {
				case <-resend.C:
					send() // a lost query or answer: ask again
				default:
				}
				continue
			}
			return netip.Addr{}, fmt.Errorf("mdns: %w", err)
		}
		if a, ok := answer(buf[:n], q.Id, name); ok {
			return a, nil
		}
	}
}

// answer returns the first A record for name in an mDNS response.
func answer(b []byte, id uint16, name string) (netip.Addr, bool) {
	var m dns.Msg
	if m.Unpack(b) != nil || !m.Response || (m.Id != id && m.Id != 0) {
		return netip.Addr{}, false
	}
	for _, rr := range append(m.Answer, m.Extra...) {
		if a, ok := rr.(*dns.A); ok && strings.EqualFold(a.Hdr.Name, name) {
			if ip, ok := netip.AddrFromSlice(a.A.To4()); ok {
				return ip, true
			}
		}
	}
	return netip.Addr{}, false
}

// ResolveHostPort turns "name.local:port" into "IP:port"; other addresses
// are returned as they are (the Go resolver handles them).
func (r Resolver) ResolveHostPort(ctx context.Context, hostport string) (string, error) {
	host, port, err := net.SplitHostPort(hostport)
	if err != nil || !IsLocal(host) {
		return hostport, nil
	}
	ip, err := r.LookupAddr(ctx, host)
	if err != nil {
		return "", err
	}
	return net.JoinHostPort(ip.String(), port), nil
}

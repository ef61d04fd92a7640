package appliance

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"time"

	"github.com/warren-appliance/warren/configs"
	"github.com/warren-appliance/warren/internal/mdns"
	"github.com/warren-appliance/warren/tunnel"
)

// Static peers' endpoints may be DNS names, as wg-quick accepts them: they
// are resolved at start, and again (as wg-quick's reresolve-dns.sh does)
// while a peer's last handshake is older than staleHandshake, in case its
// address changed (a home router's dynamic IP).
const (
	staleHandshake    = 135 * time.Second // WireGuard retries a handshake for 90 s, then waits for traffic
	reresolveInterval = 30 * time.Second
	resolveTimeout    = 5 * time.Second
)

// lookupFunc resolves a host name to an IPv4 address.
type lookupFunc func(ctx context.Context, host string) (netip.Addr, error)

// lookupHost uses mDNS for .local names and the system's resolvers for
// the rest.
func lookupHost(ctx context.Context, host string) (netip.Addr, error) {
	if mdns.IsLocal(host) {
		return mdns.Resolver{}.LookupAddr(ctx, host)
	}
	ips, err := net.DefaultResolver.LookupNetIP(ctx, "ip4", host)
	if err != nil {
		return netip.Addr{}, err
	}
	if len(ips) == 0 {
		return netip.Addr{}, fmt.Errorf("%s has no IPv4 address", host)
	}
	return ips[0].Unmap(), nil
}

// resolveEndpoint turns "IP:port" or "host:port" into an address.
func resolveEndpoint(ctx context.Context, endpoint string, lookup lookupFunc) (netip.AddrPort, error) {
	if ap, err := netip.ParseAddrPort(endpoint); err == nil {
		return ap, nil
	}
	host, portStr, err := net.SplitHostPort(endpoint)
	if err != nil {
		return netip.AddrPort{}, err
	}
	port, err := strconv.ParseUint(portStr, 10, 16)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("%q: bad port", endpoint)
	}
	ctx, cancel := context.WithTimeout(ctx, resolveTimeout)
	defer cancel()
	ip, err := lookup(ctx, host)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("resolve %s: %w", host, err)
	}
	return netip.AddrPortFrom(ip, uint16(port)), nil
}

// isName reports whether a configured endpoint is a DNS name.
func isName(endpoint string) bool {
	_, err := netip.ParseAddrPort(endpoint)
	return endpoint != "" && err != nil
}

// staticPeers turns [[wireguard.peer]] into tunnel peers, resolving
// endpoints given as names. A name that does not resolve leaves the peer
// without an endpoint (it can still reach us) and is logged.
func staticPeers(ctx context.Context, cfg *configs.Loaded, lookup lookupFunc, log *slog.Logger) []tunnel.Peer {
	var out []tunnel.Peer
	for i, p := range cfg.WireGuard.Peers {
		k, _ := tunnel.ParseKey(p.PublicKey) // validated by configs
		peer := tunnel.Peer{PublicKey: k, Keepalive: keepalive(p.Keepalive, cfg.WireGuard.Keepalive)}
		if p.Endpoint != "" {
			ep, err := resolveEndpoint(ctx, p.Endpoint, lookup)
			if err != nil {
				log.Warn("static peer endpoint does not resolve; the peer has no endpoint until it does", "peer", i, "endpoint", p.Endpoint, "err", err)
			} else {
				peer.Endpoint = ep
			}
		}
		for _, a := range p.AllowedIPs {
			peer.AllowedIPs = append(peer.AllowedIPs, a.Prefix)
		}
		out = append(out, peer)
	}
	return out
}

// staleNamedPeers returns the indexes of the configured peers whose
// endpoint is a name and whose last handshake (health by key) is older than
// staleHandshake, or missing: the ones to resolve again.
func staleNamedPeers(cfg []configs.Peer, peers []tunnel.Peer, health []tunnel.PeerHealth, now time.Time) []int {
	last := map[tunnel.Key]time.Time{}
	for _, h := range health {
		last[h.PublicKey] = h.LastHandshake
	}
	var out []int
	for i, p := range cfg {
		if i >= len(peers) || !isName(p.Endpoint) {
			continue
		}
		if t := last[peers[i].PublicKey]; t.IsZero() || now.Sub(t) > staleHandshake {
			out = append(out, i)
		}
	}
	return out
}

// reresolve resolves the stale named peers again and returns the peer list
// with the new endpoints, and whether any changed.
func reresolve(ctx context.Context, cfg []configs.Peer, peers []tunnel.Peer, stale []int, lookup lookupFunc, log *slog.Logger) ([]tunnel.Peer, bool) {
	out := append([]tunnel.Peer(nil), peers...)
	changed := false
	for _, i := range stale {
		ep, err := resolveEndpoint(ctx, cfg[i].Endpoint, lookup)
		if err != nil {
			log.Debug("static peer endpoint still does not resolve", "peer", i, "endpoint", cfg[i].Endpoint, "err", err)
			continue
		}
		if ep != out[i].Endpoint {
			log.Info("static peer endpoint re-resolved to a new address", "peer", i, "endpoint", cfg[i].Endpoint, "old", out[i].Endpoint, "new", ep)
			out[i].Endpoint = ep
			changed = true
		}
	}
	return out, changed
}

package tunnel

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/warren-appliance/warren/internal/wgkey"
)

// Peer is one desired WireGuard peer.
type Peer struct {
	PublicKey Key
	// Endpoint is where to reach the peer; zero when it has none (it sits
	// behind NAT and calls us). A healthy peer that roamed elsewhere keeps
	// its roamed endpoint.
	Endpoint   netip.AddrPort
	AllowedIPs []netip.Prefix
	// Keepalive is the persistent keepalive interval: 0 means the default
	// (25 s, which keeps NAT mappings open and health meaningful), a
	// negative value turns it off.
	Keepalive time.Duration
}

// DefaultKeepalive is used for peers that leave Keepalive at 0.
const DefaultKeepalive = 25 * time.Second

// HealthyWithin is how recent a handshake must be for a peer to count as
// healthy. WireGuard rekeys every 120 s while traffic (or a keepalive) flows,
// so a live peer with keepalive on never exceeds it.
const HealthyWithin = 180 * time.Second

// healthy reports whether the device has a recent session with the peer.
func (s peerState) healthy(now time.Time) bool {
	return !s.LastHandshake.IsZero() && now.Sub(s.LastHandshake) < HealthyWithin
}

// effectiveKeepalive maps Peer.Keepalive onto what the device should hold.
func (p Peer) effectiveKeepalive() time.Duration {
	switch {
	case p.Keepalive == 0:
		return DefaultKeepalive
	case p.Keepalive < 0:
		return 0
	}
	return p.Keepalive.Truncate(time.Second)
}

// normalizePrefixes returns the masked, sorted, deduplicated prefixes.
func normalizePrefixes(in []netip.Prefix) []netip.Prefix {
	out := make([]netip.Prefix, 0, len(in))
	for _, p := range in {
		out = append(out, p.Masked())
	}
	slices.SortFunc(out, comparePrefix)
	return slices.Compact(out)
}

func comparePrefix(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return a.Bits() - b.Bits()
}

// usablePeers returns the peers the device can hold, in order, and why
// each other one was left out: a zero or low-order key (no shared secret is
// possible), this device's own key, a key listed twice (the first stays),
// an endpoint without port, an invalid prefix, or a prefix another peer
// already claims (WireGuard would silently move it to the last one). One
// bad peer, e.g. a member that joined with a broken key, never keeps the
// others from being applied.
func usablePeers(peers []Peer, self Key) (ok []Peer, skipped []error) {
	seen := make(map[Key]bool, len(peers))
	owner := make(map[netip.Prefix]Key)
	ok = make([]Peer, 0, len(peers))
	for _, p := range peers {
		if err := checkPeer(p, self, seen, owner); err != nil {
			skipped = append(skipped, err)
			continue
		}
		seen[p.PublicKey] = true
		for _, ip := range p.AllowedIPs {
			owner[ip.Masked()] = p.PublicKey
		}
		ok = append(ok, p)
	}
	return ok, skipped
}

func checkPeer(p Peer, self Key, seen map[Key]bool, owner map[netip.Prefix]Key) error {
	if p.PublicKey.IsZero() {
		return fmt.Errorf("peer with zero public key")
	}
	if err := wgkey.Check(p.PublicKey[:]); err != nil {
		return fmt.Errorf("peer %s: %v", p.PublicKey, err)
	}
	if p.PublicKey == self {
		return fmt.Errorf("peer %s is this device's own key", p.PublicKey)
	}
	if seen[p.PublicKey] {
		return fmt.Errorf("peer %s listed twice", p.PublicKey)
	}
	if p.Endpoint.IsValid() && p.Endpoint.Port() == 0 {
		return fmt.Errorf("peer %s: endpoint %s has no port", p.PublicKey, p.Endpoint)
	}
	for _, ip := range p.AllowedIPs {
		if !ip.IsValid() {
			return fmt.Errorf("peer %s: invalid allowed IP", p.PublicKey)
		}
		if other, ok := owner[ip.Masked()]; ok && other != p.PublicKey {
			return fmt.Errorf("allowed IP %s claimed by peers %s and %s", ip.Masked(), other, p.PublicKey)
		}
	}
	return nil
}

// planPeers returns the UAPI `set` body that turns the device's current
// peers into the desired ones, or "" when nothing differs. It never uses
// replace_peers and mentions only peers that change, so the sessions of the
// others are untouched; updates use update_only so a peer removed
// concurrently is not resurrected. Output is sorted by key: deterministic.
func planPeers(current []peerState, desired []Peer, now time.Time) string {
	have := make(map[Key]peerState, len(current))
	for _, s := range current {
		have[s.PublicKey] = s
	}
	want := make(map[Key]bool, len(desired))

	sorted := slices.Clone(desired)
	slices.SortFunc(sorted, func(a, b Peer) int { return strings.Compare(a.PublicKey.hex(), b.PublicKey.hex()) })

	var b strings.Builder
	for _, p := range sorted {
		want[p.PublicKey] = true
		allowed := normalizePrefixes(p.AllowedIPs)
		keepalive := p.effectiveKeepalive()
		cur, exists := have[p.PublicKey]
		if !exists {
			fmt.Fprintf(&b, "public_key=%s\n", p.PublicKey.hex())
			if p.Endpoint.IsValid() {
				fmt.Fprintf(&b, "endpoint=%s\n", unmapAddrPort(p.Endpoint))
			}
			fmt.Fprintf(&b, "persistent_keepalive_interval=%d\n", int(keepalive/time.Second))
			b.WriteString("replace_allowed_ips=true\n")
			for _, ip := range allowed {
				fmt.Fprintf(&b, "allowed_ip=%s\n", ip)
			}
			continue
		}
		var lines []string
		if ep := unmapAddrPort(p.Endpoint); ep.IsValid() && ep != cur.Endpoint {
			// A healthy session on another endpoint means the peer roamed
			// there; the configured one is older news.
			if !(cur.Endpoint.IsValid() && cur.healthy(now)) {
				lines = append(lines, fmt.Sprintf("endpoint=%s", ep))
			}
		}
		if keepalive.Truncate(time.Second) != cur.Keepalive {
			lines = append(lines, fmt.Sprintf("persistent_keepalive_interval=%d", int(keepalive/time.Second)))
		}
		if !slices.Equal(allowed, normalizePrefixes(cur.AllowedIPs)) {
			lines = append(lines, "replace_allowed_ips=true")
			for _, ip := range allowed {
				lines = append(lines, fmt.Sprintf("allowed_ip=%s", ip))
			}
		}
		if len(lines) == 0 {
			continue
		}
		fmt.Fprintf(&b, "public_key=%s\nupdate_only=true\n", p.PublicKey.hex())
		for _, l := range lines {
			b.WriteString(l)
			b.WriteByte('\n')
		}
	}

	var gone []Key
	for _, s := range current {
		if !want[s.PublicKey] {
			gone = append(gone, s.PublicKey)
		}
	}
	slices.SortFunc(gone, func(a, b Key) int { return strings.Compare(a.hex(), b.hex()) })
	for _, k := range gone {
		fmt.Fprintf(&b, "public_key=%s\nremove=true\n", k.hex())
	}
	return b.String()
}

func unmapAddrPort(ap netip.AddrPort) netip.AddrPort {
	if !ap.IsValid() {
		return ap
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// planRoutes returns the kernel routes the interface needs: every peer's
// allowed prefix and every extra prefix (SetRoutes) that the interface
// address's own subnet does not already cover. Default routes are left
// out: sending the host's whole traffic into the mesh (including the
// underlay packets to the peers themselves) is a policy-routing decision
// this package does not make.
func planRoutes(address netip.Prefix, peers []Peer, extra []netip.Prefix) []netip.Prefix {
	subnet := address.Masked()
	all := append([]netip.Prefix(nil), extra...)
	for _, p := range peers {
		all = append(all, p.AllowedIPs...)
	}
	var out []netip.Prefix
	for _, ip := range all {
		ip = ip.Masked()
		if ip.Bits() == 0 {
			continue
		}
		if ip.Addr().Is4() == subnet.Addr().Is4() && ip.Bits() >= subnet.Bits() && subnet.Contains(ip.Addr()) {
			continue
		}
		out = append(out, ip)
	}
	return normalizePrefixes(out)
}

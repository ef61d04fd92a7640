package appliance

import (
	"net/netip"
	"sync"
	"time"

	"github.com/warren-appliance/warren/tunnel"
)

// RelayPath is the relay client as a path choice needs it: the local
// WireGuard endpoint that reaches peer through a relay, and the relay's
// name; ok is false while no relay session is up.
type RelayPath interface {
	Endpoint(peer tunnel.Key) (ep netip.AddrPort, via string, ok bool)
}

// When the stand-in policy below gives up on a peer's direct endpoint.
const (
	// relayAfter: a peer without any handshake this long after it was
	// first desired goes through the relay (WireGuard retries a handshake
	// every 5 s: four tries).
	relayAfter = 20 * time.Second
	// stallAfter: a peer from which nothing arrived for this long goes
	// through the relay, even while its last handshake still counts as
	// healthy (mesh peers send keepalives every 25 s).
	stallAfter = 65 * time.Second
)

// relayPolicy is a stand-in for the NAT traversal path machine, which
// replaces it: it sends a mesh peer through the relay when the direct
// endpoint from the map does not work: no handshake within relayAfter of
// the peer appearing, or nothing received from it for stallAfter. A
// relayed peer stays relayed while the relay session is up (going direct
// again is the path machine's job); without a relay session every peer
// keeps its direct endpoint.
type relayPolicy struct {
	mu      sync.Mutex
	first   map[tunnel.Key]time.Time // when the peer was first desired
	rx      map[tunnel.Key]rxMark    // its received bytes when they last grew
	relayed map[tunnel.Key]bool
}

type rxMark struct {
	bytes int64
	at    time.Time
}

// apply returns peers with the relayed ones' endpoints replaced by the
// relay's (pinned, so they win over a roamed one), given the tunnel's
// health at now.
func (p *relayPolicy) apply(peers []tunnel.Peer, health []tunnel.PeerHealth, now time.Time, rp RelayPath) []tunnel.Peer {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.first == nil {
		p.first, p.rx, p.relayed = map[tunnel.Key]time.Time{}, map[tunnel.Key]rxMark{}, map[tunnel.Key]bool{}
	}
	byKey := make(map[tunnel.Key]tunnel.PeerHealth, len(health))
	for _, h := range health {
		byKey[h.PublicKey] = h
	}
	desired := make(map[tunnel.Key]bool, len(peers))
	out := make([]tunnel.Peer, 0, len(peers))
	for _, peer := range peers {
		k := peer.PublicKey
		desired[k] = true
		if _, ok := p.first[k]; !ok {
			p.first[k] = now
		}
		h, known := byKey[k]
		if mark, ok := p.rx[k]; !ok || (known && h.RxBytes != mark.bytes) {
			p.rx[k] = rxMark{bytes: h.RxBytes, at: now}
		}
		if !p.relayed[k] {
			neverUp := (!known || h.LastHandshake.IsZero()) && now.Sub(p.first[k]) >= relayAfter
			// Without keepalives an idle peer sends nothing: no stall.
			stalled := peer.Keepalive >= 0 && now.Sub(p.rx[k].at) >= stallAfter
			p.relayed[k] = neverUp || stalled
		}
		if p.relayed[k] && rp != nil {
			if ep, _, ok := rp.Endpoint(k); ok {
				peer.Endpoint, peer.PinEndpoint = ep, true
			}
		}
		out = append(out, peer)
	}
	for k := range p.first {
		if !desired[k] {
			delete(p.first, k)
			delete(p.rx, k)
			delete(p.relayed, k)
		}
	}
	return out
}

package tunnel

import (
	"net/netip"
	"slices"
	"strings"
	"time"
)

// PeerHealth is one peer's state as the device sees it now.
type PeerHealth struct {
	PublicKey     Key
	Endpoint      netip.AddrPort // current, possibly roamed; zero if none known
	LastHandshake time.Time      // zero: never
	RxBytes       int64
	TxBytes       int64
	AllowedIPs    []netip.Prefix
	Keepalive     time.Duration
	// Healthy: a handshake within HealthyWithin (180 s). With keepalive on
	// (the default) a reachable peer rehandshakes every 2 minutes, so this
	// turns false only when the peer stops answering; a peer with keepalive
	// off reads unhealthy once it goes quiet.
	Healthy bool
}

// Health reports every peer, sorted by public key. It returns nil if the
// device cannot be read (it is closed).
func (d *Device) Health() []PeerHealth {
	states, err := d.peerStates()
	if err != nil {
		d.log.Warn("reading peer health", "error", err)
		return nil
	}
	return healthOf(states, time.Now())
}

func healthOf(states []peerState, now time.Time) []PeerHealth {
	out := make([]PeerHealth, 0, len(states))
	for _, s := range states {
		out = append(out, PeerHealth{
			PublicKey:     s.PublicKey,
			Endpoint:      s.Endpoint,
			LastHandshake: s.LastHandshake,
			RxBytes:       s.RxBytes,
			TxBytes:       s.TxBytes,
			AllowedIPs:    normalizePrefixes(s.AllowedIPs),
			Keepalive:     s.Keepalive,
			Healthy:       s.healthy(now),
		})
	}
	slices.SortFunc(out, func(a, b PeerHealth) int { return strings.Compare(a.PublicKey.hex(), b.PublicKey.hex()) })
	return out
}

package paths

import (
	"net/netip"
	"slices"
	"time"
)

// Path kinds, as status and metrics show them.
const (
	PathDirect = "direct"
	PathRelay  = "relay"
	// PathNone: no path found yet (the map's endpoint, if any, is in use).
	PathNone = ""
)

// States of a peer's path machine.
const (
	StateProbing = "probing" // looking for a direct path, none known
	StateDirect  = "direct"  // a candidate answers: WireGuard uses it
	StateRelay   = "relay"   // no candidate answered in time: through a relay
)

// Timing of the path machine. Probes are cheap (one small datagram per
// candidate), so a pair looking for a path pings often; a pair with a path
// checks it at the pace of WireGuard's keepalive.
const (
	// ProbeInterval is how often every candidate is pinged while no direct
	// path is known.
	ProbeInterval = 2 * time.Second
	// CheckInterval is how often the direct path in use (and any candidate
	// ranked before it) is pinged.
	CheckInterval = 10 * time.Second
	// RelayProbeInterval is how often a relayed pair pings every candidate,
	// to go direct again when it can.
	RelayProbeInterval = 10 * time.Second
	// AliveFor is how long a pong counts as proof that a candidate works:
	// two missed checks and a bit.
	AliveFor = 2*CheckInterval + 5*time.Second
	// RelayAfter is how long a pair looks for a direct path before it takes
	// a relay (when one is up).
	RelayAfter = 15 * time.Second
	// HeardFor is how long WireGuard having received from a peer counts as
	// proof that its endpoint works, for a peer that never answered a probe
	// (a node of an older version during an upgrade): longer than the 25 s
	// keepalive an idle peer sends. For a peer that answers probes only
	// they count: receiving proves nothing about the way back.
	HeardFor = 40 * time.Second
	// StaleHandshake is how old WireGuard's last handshake may get on a
	// direct path before every candidate is probed again: WireGuard
	// rehandshakes every 2 minutes while keepalives flow.
	StaleHandshake = 150 * time.Second
)

// RelayOffer is what the relay side offers for a peer.
type RelayOffer struct {
	Endpoint netip.AddrPort // the local proxy socket WireGuard sends to
	Via      string         // relay node name
	OK       bool
}

// PeerState is a peer's path machine between two decisions. The zero value
// is a peer nothing is known about yet.
type PeerState struct {
	State    string
	Endpoint netip.AddrPort // chosen endpoint (direct candidate or relay proxy)
	Via      string         // relay node, in StateRelay
	// Searching is when the current search for a direct path began (the
	// path went stale, or the peer is new); zero while direct.
	Searching time.Time
	// LastFull is when every candidate was last pinged; LastCheck when the
	// chosen path was last pinged.
	LastFull, LastCheck time.Time
}

// Input is what Decide knows about a peer now.
type Input struct {
	// Candidates are the peer's addresses in its order of preference (LAN
	// addresses first): from the map.
	Candidates []netip.AddrPort
	// Pongs holds, per candidate, when it last answered a ping of ours.
	Pongs map[netip.AddrPort]time.Time
	// LastHandshake is WireGuard's last handshake with the peer (zero: none).
	LastHandshake time.Time
	// LastReceive is when WireGuard last received from the peer, on
	// whatever endpoint it uses (zero: never).
	LastReceive time.Time
	// Answers is whether the peer ever answered a probe of ours.
	Answers bool
	// Relay is the relay half's offer for the peer.
	Relay RelayOffer
	// Reprobe asks for every candidate to be pinged now (the candidates
	// changed in the map: the other side is probing us at the same time).
	Reprobe bool
}

// Decision is what to do for a peer now.
type Decision struct {
	// Path and Endpoint are the path to use; Endpoint zero means leave
	// WireGuard's endpoint as it is.
	Path     string
	Endpoint netip.AddrPort
	Via      string
	// Ping lists the candidates to ping now.
	Ping []netip.AddrPort
}

// alive returns the first candidate (in preference order) that answered
// within AliveFor, and whether there is one.
func alive(in Input, now time.Time) (netip.AddrPort, bool) {
	for _, c := range in.Candidates {
		if t, ok := in.Pongs[c]; ok && now.Sub(t) < AliveFor {
			return c, true
		}
	}
	return netip.AddrPort{}, false
}

// Decide is the path machine: from the peer's state and what is known now
// it returns the next state and what to do. It is pure: the engine feeds it
// the clock, the probes' results, WireGuard's handshakes and the relay's
// offer.
//
//	probing --a candidate answers--> direct
//	probing --RelayAfter without answer, relay up--> relay (a peer that never
//	          answered a probe: once WireGuard heard nothing for HeardFor)
//	direct  --its candidate stops answering--> direct on another one, or probing
//	direct  --handshake older than StaleHandshake--> pings every candidate again
//	relay   --a candidate answers (pinged every RelayProbeInterval)--> direct
//	relay   --relay goes away--> probing
func Decide(st PeerState, in Input, now time.Time) (PeerState, Decision) {
	best, found := alive(in, now)
	full := func(every time.Duration) bool {
		return in.Reprobe || st.LastFull.IsZero() || now.Sub(st.LastFull) >= every
	}
	var d Decision
	switch {
	case found:
		// A direct path works: the most preferred answering candidate.
		st.State, st.Endpoint, st.Via, st.Searching = StateDirect, best, "", time.Time{}
		// Check it, and the candidates ranked before it (a LAN address
		// that starts answering beats the public one).
		stale := !in.LastHandshake.IsZero() && now.Sub(in.LastHandshake) > StaleHandshake
		if stale && full(ProbeInterval) || in.Reprobe {
			d.Ping = slices.Clone(in.Candidates)
			st.LastFull, st.LastCheck = now, now
		} else if st.LastCheck.IsZero() || now.Sub(st.LastCheck) >= CheckInterval {
			i := slices.Index(in.Candidates, best)
			d.Ping = slices.Clone(in.Candidates[:i+1])
			st.LastCheck = now
		}
	case st.State == StateRelay && in.Relay.OK:
		st.Endpoint, st.Via = in.Relay.Endpoint, in.Relay.Via
		if full(RelayProbeInterval) {
			d.Ping = slices.Clone(in.Candidates)
			st.LastFull = now
		}
	default:
		// No direct path (new peer, the path went stale, or the relay went
		// away): search, keeping the endpoint in use meanwhile.
		if st.State != StateProbing {
			st.State, st.Searching, st.LastFull = StateProbing, now, time.Time{}
			if st.Via != "" { // the relay went away: its proxy leads nowhere
				st.Endpoint, st.Via = netip.AddrPort{}, ""
			}
		}
		if st.Searching.IsZero() {
			st.Searching = now
		}
		// A peer that never answered a probe but that WireGuard hears
		// from is reachable on the endpoint in use: no reason to relay it.
		heard := !in.Answers && !in.LastReceive.IsZero() && now.Sub(in.LastReceive) < HeardFor
		if in.Relay.OK && !heard && now.Sub(st.Searching) >= RelayAfter {
			st.State, st.Endpoint, st.Via = StateRelay, in.Relay.Endpoint, in.Relay.Via
			st.LastFull = now // keep probing at the relayed pace from here
		} else if full(ProbeInterval) {
			st.LastFull = now
		}
		if st.LastFull == now {
			d.Ping = slices.Clone(in.Candidates)
		}
	}
	switch st.State {
	case StateDirect:
		d.Path = PathDirect
	case StateRelay:
		d.Path = PathRelay
	}
	d.Endpoint, d.Via = st.Endpoint, st.Via
	return st, d
}

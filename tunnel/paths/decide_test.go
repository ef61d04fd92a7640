package paths

import (
	"net/netip"
	"slices"
	"testing"
	"time"
)

var (
	lanB    = netip.MustParseAddrPort("192.168.1.20:51820")
	publicB = netip.MustParseAddrPort("203.0.113.7:51820")
	relayEP = netip.MustParseAddrPort("127.0.0.1:40001")
	t0      = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
)

func offer() RelayOffer { return RelayOffer{Endpoint: relayEP, Via: "manager-1", OK: true} }

func TestDecideNewPeerPingsEveryCandidateAndChoosesNothingYet(t *testing.T) {
	st, d := Decide(PeerState{}, Input{Candidates: []netip.AddrPort{lanB, publicB}, Reprobe: true}, t0)
	if st.State != StateProbing || d.Path != PathNone || d.Endpoint.IsValid() {
		t.Fatalf("new peer: state %q path %q endpoint %v, want probing with no endpoint", st.State, d.Path, d.Endpoint)
	}
	if !slices.Equal(d.Ping, []netip.AddrPort{lanB, publicB}) {
		t.Fatalf("pinged %v, want every candidate", d.Ping)
	}
	// Half a second later nothing is pinged again (ProbeInterval).
	if _, d := Decide(st, Input{Candidates: []netip.AddrPort{lanB, publicB}}, t0.Add(500*time.Millisecond)); len(d.Ping) != 0 {
		t.Fatalf("pinged again after 0.5 s: %v", d.Ping)
	}
}

func TestDecidePrefersTheLANCandidateWhenBothAnswer(t *testing.T) {
	in := Input{Candidates: []netip.AddrPort{lanB, publicB}, Pongs: map[netip.AddrPort]time.Time{publicB: t0, lanB: t0.Add(time.Second)}}
	_, d := Decide(PeerState{}, in, t0.Add(2*time.Second))
	if d.Path != PathDirect || d.Endpoint != lanB {
		t.Fatalf("got %q %v, want direct to the LAN address %v", d.Path, d.Endpoint, lanB)
	}
	// Only the public one answers: it is used.
	in.Pongs = map[netip.AddrPort]time.Time{publicB: t0}
	if _, d := Decide(PeerState{}, in, t0.Add(2*time.Second)); d.Endpoint != publicB {
		t.Fatalf("got %v, want %v", d.Endpoint, publicB)
	}
}

// The whole life of a pair behind NATs: direct, the NAT forgets the mapping
// (stale), re-probing, relay fallback after RelayAfter, still probing while
// relayed, and back to direct when a candidate answers again.
func TestDecideDirectStaleRelayAndBackToDirect(t *testing.T) {
	cands := []netip.AddrPort{lanB, publicB}
	pongs := map[netip.AddrPort]time.Time{publicB: t0}
	in := Input{Candidates: cands, Pongs: pongs, Relay: offer(), LastHandshake: t0}
	now := t0.Add(time.Second)
	st, d := Decide(PeerState{}, in, now)
	if d.Path != PathDirect || d.Endpoint != publicB {
		t.Fatalf("direct: got %q %v", d.Path, d.Endpoint)
	}
	// Checks come every CheckInterval and cover the candidates up to the
	// chosen one.
	st, d = Decide(st, in, now.Add(CheckInterval))
	if !slices.Equal(d.Ping, cands) {
		t.Fatalf("check pinged %v, want %v", d.Ping, cands)
	}

	// No pong for AliveFor: the path is stale; the endpoint is kept (no
	// tunnel drop) while every candidate is probed.
	now = t0.Add(AliveFor + time.Second)
	st, d = Decide(st, in, now)
	if st.State != StateProbing || d.Endpoint != publicB || len(d.Ping) != 2 {
		t.Fatalf("stale: state %q endpoint %v pings %v; want probing, old endpoint kept, every candidate pinged", st.State, d.Endpoint, d.Ping)
	}
	searching := now
	// Still probing just before RelayAfter, every ProbeInterval.
	st, d = Decide(st, in, searching.Add(ProbeInterval))
	if st.State != StateProbing || len(d.Ping) != 2 {
		t.Fatalf("re-probe: state %q pings %v", st.State, d.Ping)
	}
	// RelayAfter without an answer: relayed.
	st, d = Decide(st, in, searching.Add(RelayAfter))
	if st.State != StateRelay || d.Path != PathRelay || d.Endpoint != relayEP || d.Via != "manager-1" {
		t.Fatalf("fallback: state %q path %q endpoint %v via %q; want relay via manager-1 at %v", st.State, d.Path, d.Endpoint, d.Via, relayEP)
	}
	// A relayed pair keeps probing direct, every RelayProbeInterval.
	at := searching.Add(RelayAfter + RelayProbeInterval)
	st, d = Decide(st, in, at)
	if d.Path != PathRelay || !slices.Equal(d.Ping, cands) {
		t.Fatalf("relayed: path %q pings %v; want relay and every candidate pinged", d.Path, d.Ping)
	}
	// The public candidate answers again: direct, without waiting.
	pongs[publicB] = at.Add(time.Second)
	st, d = Decide(st, in, at.Add(time.Second))
	if st.State != StateDirect || d.Path != PathDirect || d.Endpoint != publicB || d.Via != "" {
		t.Fatalf("back: state %q path %q endpoint %v via %q; want direct to %v", st.State, d.Path, d.Endpoint, d.Via, publicB)
	}
}

func TestDecideWithoutRelayKeepsProbing(t *testing.T) {
	in := Input{Candidates: []netip.AddrPort{publicB}}
	st, _ := Decide(PeerState{}, in, t0)
	st, d := Decide(st, in, t0.Add(5*RelayAfter))
	if st.State != StateProbing || d.Path != PathNone || len(d.Ping) != 1 {
		t.Fatalf("no relay: state %q path %q pings %v; want probing on", st.State, d.Path, d.Ping)
	}
}

func TestDecideRelayGoneProbesAgainAndDropsTheProxy(t *testing.T) {
	in := Input{Candidates: []netip.AddrPort{publicB}, Relay: offer()}
	st, _ := Decide(PeerState{}, in, t0)
	st, d := Decide(st, in, t0.Add(RelayAfter))
	if d.Path != PathRelay {
		t.Fatalf("want relay, got %q", d.Path)
	}
	in.Relay = RelayOffer{}
	st, d = Decide(st, in, t0.Add(RelayAfter+time.Second))
	if st.State != StateProbing || d.Endpoint.IsValid() || len(d.Ping) != 1 {
		t.Fatalf("relay gone: state %q endpoint %v pings %v; want probing, no endpoint, a ping", st.State, d.Endpoint, d.Ping)
	}
}

func TestDecideStaleHandshakeReprobesEveryCandidate(t *testing.T) {
	pongs := map[netip.AddrPort]time.Time{publicB: t0}
	in := Input{Candidates: []netip.AddrPort{lanB, publicB}, Pongs: pongs, LastHandshake: t0}
	st, _ := Decide(PeerState{}, in, t0)
	// Pongs keep coming, but WireGuard has not completed a handshake for
	// StaleHandshake: every candidate is pinged at the probing pace.
	now := t0.Add(StaleHandshake + time.Second)
	pongs[publicB] = now
	st, d := Decide(st, in, now)
	if !slices.Equal(d.Ping, in.Candidates) || d.Path != PathDirect {
		t.Fatalf("stale handshake: pings %v path %q; want every candidate, still direct", d.Ping, d.Path)
	}
	if _, d = Decide(st, in, now.Add(ProbeInterval)); len(d.Ping) != 2 {
		t.Fatalf("stale handshake, %v later: pings %v", ProbeInterval, d.Ping)
	}
}

func TestDecideReprobeWhenCandidatesChange(t *testing.T) {
	pongs := map[netip.AddrPort]time.Time{publicB: t0}
	in := Input{Candidates: []netip.AddrPort{lanB, publicB}, Pongs: pongs}
	st, _ := Decide(PeerState{}, in, t0)
	in.Reprobe = true
	if _, d := Decide(st, in, t0.Add(time.Second)); len(d.Ping) != 2 {
		t.Fatalf("reprobe: pings %v, want every candidate", d.Ping)
	}
}

func TestCandidatesOrderAndBounds(t *testing.T) {
	local := []netip.AddrPort{netip.MustParseAddrPort("192.168.1.5:51820")}
	conf := []netip.AddrPort{netip.MustParseAddrPort("198.51.100.1:51820")}
	refl := []netip.AddrPort{netip.MustParseAddrPort("198.51.100.1:51820"), netip.MustParseAddrPort("[::ffff:203.0.113.9]:40000")}
	got := Candidates(local, conf, refl)
	want := []netip.AddrPort{local[0], conf[0], netip.MustParseAddrPort("203.0.113.9:40000")}
	if !slices.Equal(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	var many []netip.AddrPort
	for i := range 40 {
		many = append(many, netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 9, 0, byte(i)}), 1))
	}
	if n := len(Candidates(many, nil, nil)); n != MaxCandidates {
		t.Fatalf("%d candidates, want at most %d", n, MaxCandidates)
	}
}

func TestUsableLocal(t *testing.T) {
	excl := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/16")}
	for a, want := range map[string]bool{
		"192.168.1.5": true, "10.0.1.1": false, "127.0.0.1": false, "169.254.1.1": false, "fd00::1": false, "172.16.0.2": true,
	} {
		if got := usableLocal(netip.MustParseAddr(a), excl); got != want {
			t.Errorf("usableLocal(%s) = %v, want %v", a, got, want)
		}
	}
}

// A peer that never answered a probe but that WireGuard hears from (a node
// of an older version during an upgrade) keeps its endpoint: it is not
// relayed until WireGuard stops hearing from it. A peer that answers probes
// is relayed when they stop, whatever WireGuard receives (a site whose
// outgoing UDP is cut still receives).
func TestDecideDoesNotRelayAPeerWireGuardHears(t *testing.T) {
	in := Input{Candidates: []netip.AddrPort{publicB}, Relay: offer(), LastReceive: t0}
	st, _ := Decide(PeerState{}, in, t0)
	for at := t0; at.Before(t0.Add(3 * RelayAfter)); at = at.Add(ProbeInterval) {
		in.LastReceive = at // WireGuard receives all along
		if st, _ = Decide(st, in, at); st.State == StateRelay {
			t.Fatalf("relayed at +%s although WireGuard hears the peer", at.Sub(t0))
		}
	}
	last := t0.Add(3 * RelayAfter)
	st, d := Decide(st, in, last.Add(HeardFor))
	if d.Path != PathRelay {
		t.Fatalf("WireGuard silent for %s: path %q, want relay", HeardFor, d.Path)
	}
}

func TestDecideRelaysAPeerThatAnsweredProbesEvenIfWireGuardHearsIt(t *testing.T) {
	in := Input{Candidates: []netip.AddrPort{publicB}, Relay: offer(), LastReceive: t0, Answers: true}
	st, _ := Decide(PeerState{}, in, t0)
	in.LastReceive = t0.Add(RelayAfter)
	if _, d := Decide(st, in, t0.Add(RelayAfter)); d.Path != PathRelay {
		t.Fatalf("path %q, want relay: a peer that speaks probes is judged by them", d.Path)
	}
}

package dns

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	miekg "github.com/miekg/dns"
)

// maxInflightForwards bounds concurrent upstream exchanges. Past it a
// query fails at once (SERVFAIL) instead of queueing: a flood of external
// names must not pile up sockets and goroutines on a 512 MB board.
const maxInflightForwards = 512

// maxInflightPerSource bounds one client's share of those slots: one task
// that floods slow external names fails its own queries, not everyone's.
const maxInflightPerSource = 64

var (
	errNoUpstream  = errors.New("no usable upstream resolver")
	errOverloaded  = errors.New("too many forwarded queries in flight")
	errProbing     = errors.New("loop probe of upstream still running")
	errWrongAnswer = errors.New("upstream answered another question")
)

// forwarder relays queries outside the domain to the host's resolvers,
// refusing any resolver that leads back to this server.
type forwarder struct {
	log      *slog.Logger
	set      atomic.Pointer[upstreamSet]
	inflight chan struct{}
	// perSource counts each client's queries in flight (maxInflightPerSource).
	sourceMu  sync.Mutex
	perSource map[netip.Addr]int

	// Loop probes in flight: a query for one of these names reaching our
	// own handler proves that the upstream it was sent to forwards to us.
	probeMu    sync.Mutex
	probes     map[string]*probe
	probeCount atomic.Int32
	probeWG    sync.WaitGroup
	// overloaded is signalled (without blocking) when the forwarding slots
	// run out: a loop that appeared since the last probe looks like that.
	overloaded chan struct{}
}

func newForwarder(log *slog.Logger) *forwarder {
	return &forwarder{
		log:        log,
		inflight:   make(chan struct{}, maxInflightForwards),
		perSource:  make(map[netip.Addr]int),
		probes:     make(map[string]*probe),
		overloaded: make(chan struct{}, 1),
	}
}

// setUpstreams installs a new resolver list: upstreams equal to one of our
// own listen addresses are dropped (logged once), the rest are probed for
// loops in the background with the given timeout.
func (f *forwarder) setUpstreams(ctx context.Context, source string, addrs []netip.AddrPort, listens []netip.AddrPort, probeTimeout time.Duration) {
	isLocal := hostAddrs()
	set := &upstreamSet{source: source}
	seen := make(map[netip.AddrPort]bool)
	for _, a := range addrs {
		if seen[a] {
			continue
		}
		seen[a] = true
		if loopsBack(a, listens, isLocal) {
			f.log.Warn("upstream resolver is this server itself; skipping it", "upstream", a, "source", source)
			continue
		}
		set.upstreams = append(set.upstreams, &upstream{addr: a, probed: make(chan struct{})})
	}
	if len(set.upstreams) == 0 {
		set.warnNone(f.log)
	} else {
		f.log.Info("upstream resolvers", "source", source, "upstreams", set.addrs())
	}
	for _, up := range set.upstreams {
		f.probeWG.Add(1)
		go func() {
			defer f.probeWG.Done()
			defer close(up.probed)
			f.probe(ctx, up, probeTimeout)
		}()
	}
	f.set.Store(set)
}

func (s *upstreamSet) addrs() []string {
	out := make([]string, len(s.upstreams))
	for i, up := range s.upstreams {
		out[i] = up.addr.String()
	}
	return out
}

// probe is one loop probe in flight.
type probe struct {
	up     *upstream
	caught atomic.Bool
}

// reprobe probes every upstream of the current set again: a resolver may
// start (or stop) forwarding to us after its first probe, e.g. when it was
// down at boot or its own configuration changed.
func (f *forwarder) reprobe(ctx context.Context, timeout time.Duration) {
	set := f.set.Load()
	if set == nil {
		return
	}
	for _, up := range set.upstreams {
		f.probeWG.Add(1)
		go func() {
			defer f.probeWG.Done()
			f.probe(ctx, up, timeout)
		}()
	}
}

// probe sends up a query for a random name outside any zone (as CoreDNS's
// loop plugin does). If that query comes back to our handler, up forwards
// to us and is marked looped; if up answers without it coming back, a
// loop seen before is over.
func (f *forwarder) probe(ctx context.Context, up *upstream, timeout time.Duration) {
	name := randomLabel() + "." + randomLabel() + "."
	p := &probe{up: up}
	f.probeMu.Lock()
	f.probes[name] = p
	f.probeMu.Unlock()
	f.probeCount.Add(1)
	defer func() {
		f.probeMu.Lock()
		delete(f.probes, name)
		f.probeMu.Unlock()
		f.probeCount.Add(-1)
	}()

	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	m := new(miekg.Msg)
	m.SetQuestion(name, miekg.TypeHINFO)
	if _, err := roundTrip(ctx, "udp", m, up.addr.String()); err != nil {
		f.log.Debug("loop probe got no answer", "upstream", up.addr, "err", err)
		return
	}
	if !p.caught.Load() && up.looped.CompareAndSwap(true, false) {
		f.log.Info("upstream resolver no longer forwards back to this server; using it again", "upstream", up.addr)
	}
}

// catchProbe reports whether the lowercase name is one of our loop probes,
// marking its upstream looped. The caller answers SERVFAIL, ending the loop.
func (f *forwarder) catchProbe(name string) bool {
	if f.probeCount.Load() == 0 {
		return false
	}
	f.probeMu.Lock()
	p := f.probes[name]
	f.probeMu.Unlock()
	if p == nil {
		return false
	}
	p.caught.Store(true)
	if p.up.looped.CompareAndSwap(false, true) {
		f.log.Warn("upstream resolver forwards back to this server (loop); skipping it", "upstream", p.up.addr)
	}
	return true
}

// forward sends req to the upstreams in turn, starting with the one that
// answered last, splitting what is left of ctx's deadline evenly among the
// remaining ones. SERVFAIL/REFUSED from one upstream moves on to the next.
// src is the client: it holds at most maxInflightPerSource slots.
func (f *forwarder) forward(ctx context.Context, req *miekg.Msg, overTCP bool, src netip.Addr) (*miekg.Msg, error) {
	set := f.set.Load()
	var usable []int
	if set != nil {
		for i, up := range set.upstreams {
			if !up.looped.Load() {
				usable = append(usable, i)
			}
		}
	}
	if len(usable) == 0 {
		if set != nil {
			set.warnNone(f.log)
		}
		return nil, errNoUpstream
	}

	if !f.takeSource(src) {
		// A loop looks like this too: one query bouncing between us and
		// an upstream comes back from that upstream's address each time.
		select {
		case f.overloaded <- struct{}{}:
		default:
		}
		return nil, errOverloaded
	}
	defer f.releaseSource(src)
	select {
	case f.inflight <- struct{}{}:
		defer func() { <-f.inflight }()
	default:
		select {
		case f.overloaded <- struct{}{}:
		default:
		}
		return nil, errOverloaded
	}

	out := req.Copy()
	out.Id = miekg.Id() // our own ID towards the upstream, not the client's
	network := "udp"
	if overTCP {
		network = "tcp"
	}

	// Rotate so the last good upstream goes first.
	first := 0
	pref := int(set.preferred.Load())
	for k, i := range usable {
		if i == pref {
			first = k
		}
	}
	var (
		fallback *miekg.Msg
		errs     []error
	)
	for k := range usable {
		i := usable[(first+k)%len(usable)]
		up := set.upstreams[i]
		share := time.Second
		if deadline, ok := ctx.Deadline(); ok {
			share = time.Until(deadline) / time.Duration(len(usable)-k)
		}
		actx, cancel := context.WithTimeout(ctx, share)
		resp, err := f.exchange(actx, up, out, network)
		cancel()
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", up.addr, err))
			continue
		}
		if resp.Rcode == miekg.RcodeServerFailure || resp.Rcode == miekg.RcodeRefused {
			fallback = resp
			continue
		}
		set.preferred.Store(int32(i))
		return resp, nil
	}
	if fallback != nil {
		return fallback, nil
	}
	return nil, errors.Join(errs...)
}

// takeSource takes one of src's slots, if it has one left.
func (f *forwarder) takeSource(src netip.Addr) bool {
	f.sourceMu.Lock()
	defer f.sourceMu.Unlock()
	if f.perSource[src] >= maxInflightPerSource {
		return false
	}
	f.perSource[src]++
	return true
}

func (f *forwarder) releaseSource(src netip.Addr) {
	f.sourceMu.Lock()
	defer f.sourceMu.Unlock()
	if f.perSource[src]--; f.perSource[src] <= 0 {
		delete(f.perSource, src)
	}
}

func (f *forwarder) exchange(ctx context.Context, up *upstream, out *miekg.Msg, network string) (*miekg.Msg, error) {
	select {
	case <-up.probed:
	case <-ctx.Done():
		return nil, errProbing
	}
	if up.looped.Load() {
		return nil, errors.New("upstream loops back to us")
	}
	resp, err := roundTrip(ctx, network, out, up.addr.String())
	if err != nil {
		return nil, err
	}
	if len(resp.Question) != 1 || !sameQuestion(resp.Question[0], out.Question[0]) {
		return nil, errWrongAnswer
	}
	return resp, nil
}

func sameQuestion(a, b miekg.Question) bool {
	return a.Qtype == b.Qtype && a.Qclass == b.Qclass && strings.EqualFold(a.Name, b.Name)
}

func randomLabel() string {
	var b [8]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails (Go 1.24+)
	return hex.EncodeToString(b[:])
}

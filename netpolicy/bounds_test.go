package netpolicy

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/warren-appliance/warren/cluster/clustermap"
)

// aliasBomb is a billion-laughs document shaped as a valid policy: about
// 5 KB of YAML whose aliases expand, through the selector, requirement,
// peer and rule lists, to 10^8 values.
func aliasBomb() string {
	rep := func(item string, n int) string { return strings.TrimSuffix(strings.Repeat(item+", ", n), ", ") }
	var b strings.Builder
	b.WriteString("apiVersion: warren.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: bomb\nspec:\n")
	fmt.Fprintf(&b, "  podSelector: &s {matchExpressions: [&r {key: a, operator: In, values: [%s]}, %s]}\n", rep("x", 100), rep("*r", 99))
	fmt.Fprintf(&b, "  ingress: [&i {from: &f [%s]}, %s]\n", rep("{podSelector: *s}", 100), rep("{from: *f}", 99))
	return b.String()
}

// Finding 6 of hardening-2: a small alias bomb hung `policy apply` (each
// UnmarshalYAML starts a fresh decoder, so yaml.v3's own alias limit never
// saw the total). Aliases are refused before anything is decoded.
func TestParseRefusesYAMLAliasesFast(t *testing.T) {
	done := make(chan error, 1)
	go func() {
		_, err := Parse("bomb.yaml", []byte(aliasBomb()))
		done <- err
	}()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "alias") {
			t.Fatalf("alias bomb: %v, want an error about aliases", err)
		}
	case <-time.After(20 * time.Second): // a hang, not a timing assert
		t.Fatalf("Parse of a %d-byte alias bomb did not return in 20 s", len(aliasBomb()))
	}
	// A single harmless alias is refused too, naming its line.
	doc := "apiVersion: warren.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: a\n  labels: &l {app: x}\nspec:\n  podSelector:\n    matchLabels: *l\n"
	if _, err := Parse("a.yaml", []byte(doc)); err == nil || !strings.Contains(err.Error(), "line 8") {
		t.Fatalf("alias: %v, want an error naming line 8", err)
	}
}

func blockPeer(cidr string, except ...string) clustermap.PolicyPeer {
	return clustermap.PolicyPeer{IPBlock: &clustermap.IPBlock{CIDR: cidr, Except: except}}
}

// Sizes and counts are bounded per policy, and the error names the limit.
func TestValidateBoundsPolicySizes(t *testing.T) {
	port := func(n int) clustermap.PolicyPort { return clustermap.PolicyPort{Protocol: "TCP", Port: uint16(n)} }
	sel := &clustermap.LabelSelector{MatchLabels: map[string]string{"app": "x"}}
	many := func(n int, f func(i int) clustermap.PolicyRule) []clustermap.PolicyRule {
		var out []clustermap.PolicyRule
		for i := range n {
			out = append(out, f(i))
		}
		return out
	}
	var peers []clustermap.PolicyPeer
	for range MaxPeers + 1 {
		peers = append(peers, clustermap.PolicyPeer{PodSelector: sel})
	}
	var ports []clustermap.PolicyPort
	for i := range MaxPorts + 1 {
		ports = append(ports, port(i+1))
	}
	var except []string
	for i := range MaxExcept + 1 {
		except = append(except, fmt.Sprintf("10.%d.%d.0/24", i/256, i%256))
	}
	// peers × ports within each bound, but rendering too many rules.
	var somePeers []clustermap.PolicyPeer
	var somePorts []clustermap.PolicyPort
	for i := range MaxPeers {
		somePeers = append(somePeers, blockPeer(fmt.Sprintf("10.0.%d.0/24", i)))
	}
	for i := range MaxPorts {
		somePorts = append(somePorts, port(i+1))
	}
	for _, tc := range []struct {
		name  string
		p     clustermap.Policy
		limit string
	}{
		{"rules", clustermap.Policy{Ingress: many(MaxRules+1, func(int) clustermap.PolicyRule { return clustermap.PolicyRule{} })}, "MaxRules"},
		{"peers", clustermap.Policy{Ingress: []clustermap.PolicyRule{{Peers: peers}}}, "MaxPeers"},
		{"ports", clustermap.Policy{Ingress: []clustermap.PolicyRule{{Ports: ports}}}, "MaxPorts"},
		{"except", clustermap.Policy{Ingress: []clustermap.PolicyRule{{Peers: []clustermap.PolicyPeer{blockPeer("10.0.0.0/8", except...)}}}}, "MaxExcept"},
		{"rendered", clustermap.Policy{Ingress: []clustermap.PolicyRule{{Peers: somePeers, Ports: somePorts}}}, "MaxRenderedRules"},
	} {
		tc.p.Name = "big"
		err := Validate(&tc.p)
		if err == nil || !strings.Contains(err.Error(), limitNames[tc.limit]) {
			t.Errorf("%s: %v, want an error naming %q", tc.name, err, limitNames[tc.limit])
		}
	}
	// At the bounds, a policy is fine.
	ok := clustermap.Policy{Name: "ok", Ingress: []clustermap.PolicyRule{{Peers: somePeers[:MaxRenderedRules/MaxPorts], Ports: somePorts}}}
	if err := Validate(&ok); err != nil {
		t.Fatal(err)
	}
}

// limitNames are the words the errors use for each bound.
var limitNames = map[string]string{
	"MaxRules": fmt.Sprintf("at most %d rules", MaxRules), "MaxPeers": fmt.Sprintf("at most %d peers", MaxPeers),
	"MaxPorts": fmt.Sprintf("at most %d ports", MaxPorts), "MaxExcept": fmt.Sprintf("at most %d except", MaxExcept),
	"MaxRenderedRules": fmt.Sprintf("at most %d rendered rules", MaxRenderedRules),
}

// subtractReference is the original quadratic subtraction: the sorted one
// must give exactly its prefixes.
func subtractReference(cidr netip.Prefix, excepts []netip.Prefix) []netip.Prefix {
	out := []netip.Prefix{cidr}
	for _, ex := range excepts {
		var next []netip.Prefix
		for _, p := range out {
			next = append(next, subtract(p, ex)...)
		}
		out = next
	}
	slices.SortFunc(out, func(a, b netip.Prefix) int { return a.Addr().Compare(b.Addr()) })
	return out
}

func TestBlockPrefixesMatchesTheReference(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for range 300 {
		cidr := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(r.IntN(256)), 0, 0}), 8+r.IntN(9)).Masked()
		var exs []netip.Prefix
		var strs []string
		for range r.IntN(40) {
			a := cidr.Addr().As4()
			v := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])
			v |= r.Uint32() & (1<<(32-cidr.Bits()) - 1)
			ex := netip.PrefixFrom(netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}), cidr.Bits()+r.IntN(33-cidr.Bits())).Masked()
			exs = append(exs, ex)
			strs = append(strs, ex.String())
		}
		got, err := BlockPrefixes(clustermap.IPBlock{CIDR: cidr.String(), Except: strs})
		if err != nil {
			t.Fatal(err)
		}
		if want := subtractReference(cidr, exs); !slices.Equal(got, want) {
			t.Fatalf("%s except %v:\n got  %v\n want %v", cidr, strs, got, want)
		}
	}
}

// 4,000 except entries took 13-18 s (quadratic); sorted, they take
// milliseconds. Measured as a ratio against a tenth of the entries in the
// same run, not against a clock: 10x the entries cost about 12x sorted and
// 100x or more quadratic (151x measured for the old subtraction). Each
// side is the best of several rounds of at least 20 ms, after a GC, so
// that noise on a shared machine does not decide.
func TestBlockPrefixesIsNotQuadratic(t *testing.T) {
	cost := func(n int) time.Duration {
		b := blockForTest(n)
		best := time.Duration(1 << 62)
		for range 5 {
			runtime.GC()
			iters, start := 0, time.Now()
			for time.Since(start) < 20*time.Millisecond {
				if _, err := BlockPrefixes(b); err != nil {
					t.Fatal(err)
				}
				iters++
			}
			best = min(best, time.Since(start)/time.Duration(iters))
		}
		return best
	}
	small, big := cost(1000), cost(10000)
	t.Logf("1000 entries %s, 10000 entries %s: %.1fx", small, big, float64(big)/float64(small))
	if ratio := float64(big) / float64(small); ratio > 50 {
		t.Fatalf("10000 except entries cost %.0fx 1000 (%s vs %s): quadratic", ratio, big, small)
	}
}

// subtract returns p minus ex as disjoint prefixes (the original
// algorithm, kept as the reference).
func subtract(p, ex netip.Prefix) []netip.Prefix {
	if !p.Overlaps(ex) {
		return []netip.Prefix{p}
	}
	if ex.Bits() <= p.Bits() {
		return nil // ex covers p
	}
	// Split p in halves and keep the half without ex whole.
	lo := netip.PrefixFrom(p.Addr(), p.Bits()+1)
	hiAddr := p.Addr().As4()
	bit := p.Bits()
	hiAddr[bit/8] |= 0x80 >> (bit % 8)
	hi := netip.PrefixFrom(netip.AddrFrom4(hiAddr), p.Bits()+1)
	return append(subtract(lo, ex), subtract(hi, ex)...)
}

// blockForTest is 10.0.0.0/8 except n /32s spread over it.
func blockForTest(n int) clustermap.IPBlock {
	b := clustermap.IPBlock{CIDR: "10.0.0.0/8"}
	for i := range n {
		// Spread over the block: each leaves its own gap prefixes.
		v := i * 4096 * 4000 / n
		b.Except = append(b.Except, fmt.Sprintf("10.%d.%d.%d/32", v>>16&255, v>>8&255, v&255|1))
	}
	return b
}

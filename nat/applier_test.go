package nat

import (
	"github.com/warren-appliance/warren/hostfw"

	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"
)

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// applierIn creates an Applier inside ns.
func applierIn(t testing.TB, ns string) *Applier {
	t.Helper()
	var a *Applier
	mustInNetns(t, ns, func() (err error) {
		a, err = NewApplier(testLogger(t))
		return err
	})
	return a
}

func syncIn(t testing.TB, ns string, a *Applier, services []Service, opts Options) {
	t.Helper()
	mustInNetns(t, ns, func() error { return a.Sync(services, opts) })
}

// saved is iptables-save of ns without comments and counters: the exact
// rules the kernel holds.
func saved(t testing.TB, ns string, a *Applier) string {
	t.Helper()
	// stdout only: iptables-nft-save warns on stderr about legacy tables.
	raw, err := exec.Command("nsenter", "--net=/run/netns/"+ns, a.command+"-save").Output()
	if err != nil {
		t.Fatalf("%s-save: %v", a.command, err)
	}
	out := string(raw)
	var lines []string
	for _, l := range strings.Split(out, "\n") {
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		if strings.HasPrefix(l, ":") { // ":CHAIN POLICY [packets:bytes]"
			l = l[:strings.LastIndex(l, " ")]
		}
		lines = append(lines, l)
	}
	return strings.Join(lines, "\n") + "\n"
}

// chainRules returns the -A lines of chain in table from saved output.
func chainRules(save, table, chain string) []string {
	var out []string
	current := ""
	for _, l := range strings.Split(save, "\n") {
		if strings.HasPrefix(l, "*") {
			current = l[1:]
		}
		if current == table && strings.HasPrefix(l, "-A "+chain+" ") {
			out = append(out, l)
		}
	}
	return out
}

func services3x3() []Service {
	var out []Service
	for i := 1; i <= 3; i++ {
		s := Service{
			Name:  fmt.Sprintf("svc%d", i),
			VIP:   netip.MustParseAddr(fmt.Sprintf("10.1.0.%d", i)),
			Ports: []Port{{Protocol: "tcp", Port: 80, TargetPort: 8080}, {Protocol: "udp", Port: 53, Published: uint16(5300 + i)}},
		}
		for j := 1; j <= 3; j++ {
			s.Endpoints = append(s.Endpoints, ep(fmt.Sprintf("svc%d-%d", i, j), fmt.Sprintf("10.0.%d.%d", i, j+1)))
		}
		out = append(out, s)
	}
	out = append(out, Service{Name: "empty", VIP: netip.MustParseAddr("10.1.0.99"),
		Ports: []Port{{Protocol: "tcp", Port: 80, Published: 8099}}})
	return out
}

// assertMatchesRender checks that every chain Render declares exists in
// the kernel with as many rules as rendered, and that no -A line appears twice.
func assertMatchesRender(t *testing.T, save string, services []Service, opts Options) {
	t.Helper()
	rs := plan(services, opts)
	for table, chains := range rs {
		for chain, rules := range chains {
			if !strings.Contains(save, ":"+chain+" -") {
				t.Errorf("%s chain %s missing in iptables-save", table, chain)
				continue
			}
			if got := chainRules(save, table, chain); len(got) != len(rules) {
				t.Errorf("%s chain %s holds %d rules, rendered %d:\n%s", table, chain, len(got), len(rules), strings.Join(got, "\n"))
			}
		}
	}
	var rules []string
	table := ""
	for _, l := range strings.Split(save, "\n") {
		if strings.HasPrefix(l, "*") {
			table = l
		}
		if strings.HasPrefix(l, "-A ") || strings.HasPrefix(l, ":") {
			rules = append(rules, table+" "+l)
		}
	}
	slices.Sort(rules)
	for i := 1; i < len(rules); i++ {
		if rules[i] == rules[i-1] && strings.Contains(rules[i], "WARREN") {
			t.Errorf("duplicate line in iptables-save: %s", rules[i])
		}
	}
}

func TestApplierSyncIsIdempotent(t *testing.T) {
	requireRoot(t)
	ns := newNetns(t, "idem")
	a := applierIn(t, ns)
	services := services3x3()

	syncIn(t, ns, a, services, baseOpts)
	first := saved(t, ns, a)
	assertMatchesRender(t, first, services, baseOpts)
	for _, j := range jumps {
		if n := strings.Count(first, "-A "+j.chain+" "); n == 0 {
			t.Errorf("no jump from %s %s", j.table, j.chain)
		}
	}
	if got := chainRules(first, "filter", chainServices); !slices.ContainsFunc(got, func(r string) bool {
		return strings.HasPrefix(r, "-A WARREN-SERVICES -d 10.1.0.99/32 -m comment") && strings.Contains(r, "-j REJECT")
	}) {
		t.Errorf("service without endpoints is not rejected in filter WARREN-SERVICES: %q", got)
	}

	for i := range 5 {
		syncIn(t, ns, a, services, baseOpts)
		if got := saved(t, ns, a); got != first {
			t.Fatalf("sync %d changed iptables-save:\n%s", i+2, diffLines(first, got))
		}
	}
	// A restarted daemon (new Applier, full sync) converges to the same rules.
	for i := range 3 {
		b := applierIn(t, ns)
		syncIn(t, ns, b, services, baseOpts)
		if got := saved(t, ns, b); got != first {
			t.Fatalf("restart %d changed iptables-save:\n%s", i+1, diffLines(first, got))
		}
	}
}

func TestApplierPartialChanges(t *testing.T) {
	requireRoot(t)
	ns := newNetns(t, "partial")
	a := applierIn(t, ns)
	services := services3x3()
	syncIn(t, ns, a, services, baseOpts)
	before := saved(t, ns, a)

	// One endpoint moves: only its chains and its service chain change.
	changed := services3x3()
	changed[1].Endpoints[2].IP = netip.MustParseAddr("10.0.2.200")
	syncIn(t, ns, a, changed, baseOpts)
	after := saved(t, ns, a)
	assertMatchesRender(t, after, changed, baseOpts)
	allowed := []string{"10.0.2.4", "10.0.2.200"}
	for _, p := range changed[1].Ports {
		allowed = append(allowed, serviceChain("svc2", p),
			endpointChain("svc2", p, services[1].Endpoints[2]), endpointChain("svc2", p, changed[1].Endpoints[2]))
	}
	for _, l := range diffSet(before, after) {
		if !slices.ContainsFunc(allowed, func(s string) bool { return strings.Contains(l, s) }) {
			t.Errorf("unrelated line changed: %s", l)
		}
	}
	if strings.Contains(after, "10.0.2.4") || !strings.Contains(after, "10.0.2.200") {
		t.Errorf("endpoint move not applied:\n%s", after)
	}

	// Remove a service: all its chains go, nothing else is left behind.
	removed := slices.Clone(changed[:1])
	removed = append(removed, changed[2:]...)
	syncIn(t, ns, a, removed, baseOpts)
	gone := saved(t, ns, a)
	for _, p := range changed[1].Ports {
		for _, c := range []string{serviceChain("svc2", p), externalChain("svc2", p)} {
			if strings.Contains(gone, c) {
				t.Errorf("chain %s of removed service still present", c)
			}
		}
		for _, e := range changed[1].Endpoints {
			if c := endpointChain("svc2", p, e); strings.Contains(gone, c) {
				t.Errorf("endpoint chain %s of removed service still present", c)
			}
		}
	}
	if strings.Contains(gone, "10.1.0.2/32") {
		t.Error("removed service's VIP still matched")
	}
	assertMatchesRender(t, gone, removed, baseOpts)
	if n := strings.Count(gone, "\n:WARREN-"); n != countChains(plan(removed, baseOpts)) {
		t.Errorf("%d WARREN chains in the kernel, want %d", n, countChains(plan(removed, baseOpts)))
	}

	// Invalid input is refused and the rules stay as they were.
	bad := append(slices.Clone(removed), Service{Name: "bad name", VIP: netip.MustParseAddr("10.1.0.50")})
	if err := inNetns(ns, func() error { return a.Sync(bad, baseOpts) }); err == nil {
		t.Error("invalid services accepted")
	}
	if got := saved(t, ns, a); got != gone {
		t.Errorf("refused sync changed the rules:\n%s", diffLines(gone, got))
	}
}

func countChains(rs ruleset) int {
	n := 0
	for _, chains := range rs {
		n += len(chains)
	}
	return n
}

func TestApplierCanaryAndCleanup(t *testing.T) {
	requireRoot(t)
	ns := newNetns(t, "canary")
	a := applierIn(t, ns)
	services := services3x3()
	syncIn(t, ns, a, services, baseOpts)
	want := saved(t, ns, a)

	canary := func() bool {
		t.Helper()
		var missing bool
		mustInNetns(t, ns, func() (err error) { missing, err = a.CanaryMissing(); return err })
		return missing
	}
	if canary() {
		t.Fatal("canary reported missing right after a sync")
	}
	sabotage := map[string][]string{
		"flush nat WARREN-SERVICES":    {"-t", "nat", "-F", chainServices},
		"flush filter WARREN-SERVICES": {"-t", "filter", "-F", chainServices},
		"flush nat PREROUTING":         {"-t", "nat", "-F", "PREROUTING"},
		"flush filter table":           {"-t", "filter", "-F"},
		"delete filter OUTPUT jump":    append([]string{"-t", "filter", "-D", "OUTPUT"}, jumps[7].spec...),
	}
	for _, name := range slices.Sorted(func(yield func(string) bool) {
		for k := range sabotage {
			if !yield(k) {
				return
			}
		}
	}) {
		nsRun(t, ns, a.command, sabotage[name]...)
		if !canary() {
			t.Errorf("%s: canary not noticed", name)
		}
		syncIn(t, ns, a, services, baseOpts)
		if got := saved(t, ns, a); got != want {
			t.Errorf("%s: resync did not restore the rules:\n%s", name, diffLines(want, got))
		}
		if canary() {
			t.Errorf("%s: canary still missing after resync", name)
		}
	}

	// The whole nat table flushed and its chains deleted.
	nsRun(t, ns, a.command, "-t", "nat", "-F")
	nsRun(t, ns, a.command, "-t", "nat", "-X")
	if !canary() {
		t.Error("nat table wiped: canary not noticed")
	}
	syncIn(t, ns, a, services, baseOpts)
	if got := saved(t, ns, a); got != want {
		t.Errorf("nat table wiped: resync did not restore the rules:\n%s", diffLines(want, got))
	}

	// A rule of someone else must survive Cleanup.
	nsRun(t, ns, a.command, "-t", "nat", "-A", "POSTROUTING", "-o", "lo", "-j", "ACCEPT")
	mustInNetns(t, ns, a.Cleanup)
	after := saved(t, ns, a)
	if strings.Contains(after, "WARREN") {
		t.Errorf("Cleanup left WARREN rules:\n%s", after)
	}
	if !strings.Contains(after, "-A POSTROUTING -o lo -j ACCEPT") {
		t.Errorf("Cleanup removed a foreign rule:\n%s", after)
	}
	// Cleanup by a fresh process (warren-appliance --cleanup) with leftovers
	// of an earlier run, and Cleanup with nothing to do.
	syncIn(t, ns, a, services, baseOpts)
	fresh := applierIn(t, ns)
	mustInNetns(t, ns, fresh.Cleanup)
	mustInNetns(t, ns, fresh.Cleanup)
	if got := saved(t, ns, a); strings.Contains(got, "WARREN") {
		t.Errorf("fresh Cleanup left WARREN rules:\n%s", got)
	}
	if !canary() {
		t.Error("canary not missing after Cleanup")
	}
}

func TestApplierDeduplicatesJumps(t *testing.T) {
	requireRoot(t)
	ns := newNetns(t, "dedup")
	a := applierIn(t, ns)
	syncIn(t, ns, a, services3x3(), baseOpts)
	// Another copy of a jump (say, from a crashed older run) is removed
	// by the next full sync, the original stays.
	nsRun(t, ns, a.command, append([]string{"-t", "nat", "-A", "OUTPUT"}, jumps[1].spec...)...)
	b := applierIn(t, ns)
	syncIn(t, ns, b, services3x3(), baseOpts)
	got := saved(t, ns, b)
	if n := len(chainRules(got, "nat", "OUTPUT")); n != 1 {
		t.Errorf("nat OUTPUT holds %d rules, want the one jump:\n%s", n, got)
	}
}

func TestNewApplierDetectsBackend(t *testing.T) {
	requireRoot(t)
	ns := newNetns(t, "backend")
	var before *Applier
	before = applierIn(t, ns)
	if before.Backend() != "nf_tables" && before.Backend() != "legacy" {
		t.Fatalf("backend %q", before.Backend())
	}
	// Rules only in the legacy backend make it the one to use.
	if _, err := os.Stat("/usr/sbin/iptables-legacy"); err != nil {
		t.Skip("iptables-legacy not installed")
	}
	nsRun(t, ns, "iptables-legacy", "-t", "filter", "-A", "INPUT", "-i", "lo", "-j", "ACCEPT")
	t.Cleanup(func() {
		_ = exec.Command("nsenter", "--net=/run/netns/"+ns, "iptables-legacy", "-t", "filter", "-F").Run()
	})
	legacy := applierIn(t, ns)
	if legacy.Backend() != "legacy" || legacy.command != "iptables-legacy" {
		t.Errorf("with legacy rules present got %s (%s)", legacy.Backend(), legacy.command)
	}
}

func diffSet(a, b string) []string {
	as := strings.Split(a, "\n")
	bs := strings.Split(b, "\n")
	var out []string
	for _, l := range as {
		if !slices.Contains(bs, l) {
			out = append(out, "-"+l)
		}
	}
	for _, l := range bs {
		if !slices.Contains(as, l) {
			out = append(out, "+"+l)
		}
	}
	return out
}

func diffLines(a, b string) string { return strings.Join(diffSet(a, b), "\n") }

func discardLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }

func TestApplierFailedSyncChangesNothing(t *testing.T) {
	requireRoot(t)
	ns := newNetns(t, "fail")
	a := applierIn(t, ns)
	services := services3x3()
	syncIn(t, ns, a, services, baseOpts)
	before := saved(t, ns, a)

	// A foreign rule pins one endpoint chain, so deleting it must fail.
	pinned := endpointChain("svc1", services[0].Ports[0], services[0].Endpoints[0])
	nsRun(t, ns, a.command, "-t", "nat", "-N", "OTHER")
	nsRun(t, ns, a.command, "-t", "nat", "-A", "OTHER", "-j", pinned)
	before = saved(t, ns, a)

	changed := services3x3()
	changed[0].Endpoints = changed[0].Endpoints[1:] // drops the pinned chain
	changed[2].Endpoints = nil                      // and changes another service
	err := inNetns(ns, func() error { return a.Sync(changed, baseOpts) })
	if err == nil {
		t.Fatal("sync deleting a referenced chain succeeded")
	}
	if !strings.Contains(err.Error(), "-X "+pinned) {
		t.Errorf("error does not name the failing line: %v", err)
	}
	// nat is written first and failed, so iptables-restore stopped there:
	// nothing changed in any table.
	if got := saved(t, ns, a); got != before {
		t.Errorf("failed transaction changed the rules:\n%s", diffLines(before, got))
	}

	// Once the reference is gone the next (full) sync converges.
	nsRun(t, ns, a.command, "-t", "nat", "-F", "OTHER")
	nsRun(t, ns, a.command, "-t", "nat", "-X", "OTHER")
	syncIn(t, ns, a, changed, baseOpts)
	assertMatchesRender(t, saved(t, ns, a), changed, baseOpts)
}

func TestApplierLegacyBackend(t *testing.T) {
	requireRoot(t)
	if _, err := exec.LookPath("iptables-legacy"); err != nil {
		t.Skip("iptables-legacy not installed")
	}
	ns := newNetns(t, "legacy")
	// A host already on legacy iptables: its rules live there.
	nsRun(t, ns, "iptables-legacy", "-t", "filter", "-A", "INPUT", "-i", "lo", "-j", "ACCEPT")
	t.Cleanup(func() {
		_ = exec.Command("nsenter", "--net=/run/netns/"+ns, "iptables-legacy", "-t", "filter", "-F").Run()
	})
	a := applierIn(t, ns)
	if a.command != "iptables-legacy" || a.Backend() != "legacy" {
		t.Fatalf("picked %s (%s) on a legacy host", a.command, a.Backend())
	}
	services := services3x3()
	syncIn(t, ns, a, services, baseOpts)
	first := saved(t, ns, a)
	assertMatchesRender(t, first, services, baseOpts)

	// Someone fills nft with more rules than legacy holds: a restarted
	// daemon still finds its own chains in legacy and stays there.
	var many strings.Builder
	many.WriteString("*filter\n:OTHER - [0:0]\n")
	for i := range 300 {
		fmt.Fprintf(&many, "-A OTHER -s 192.0.2.%d/32 -j ACCEPT\n", i%250)
	}
	many.WriteString("COMMIT\n")
	cmd := exec.Command("nsenter", "--net=/run/netns/"+ns, "iptables-nft-restore", "--noflush")
	cmd.Stdin = strings.NewReader(many.String())
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("fill nft: %v: %s", err, out)
	}
	b := applierIn(t, ns)
	if b.command != "iptables-legacy" {
		t.Fatalf("restart picked %s although our chains are in legacy", b.command)
	}
	syncIn(t, ns, b, services, baseOpts)
	if got := saved(t, ns, b); got != first {
		t.Errorf("restart on legacy changed the rules:\n%s", diffLines(first, got))
	}
	// Leftovers from a time this host ran on nft are cleaned up as well
	// by the node's one cleanup (--cleanup, package purge).
	nsRun(t, ns, "iptables-nft", "-t", "nat", "-N", "WARREN-LEFTOVER")
	nsRun(t, ns, "iptables-nft", "-t", "nat", "-A", "PREROUTING", "-j", "WARREN-LEFTOVER")
	mustInNetns(t, ns, func() error { return hostfw.Cleanup(nil) })
	if got := saved(t, ns, b); strings.Contains(got, "WARREN") {
		t.Errorf("Cleanup left WARREN rules in legacy:\n%s", got)
	}
	if got, _ := exec.Command("nsenter", "--net=/run/netns/"+ns, "iptables-nft-save").Output(); strings.Contains(string(got), "WARREN") {
		t.Errorf("Cleanup left WARREN rules in nft:\n%s", got)
	}
}

// randomServices makes a valid but irregular service set: names using the
// whole allowed alphabet, protocols in either case, published ports,
// affinity, 0 to 5 endpoints.
func randomServices(r *rand.Rand) []Service {
	const alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-"
	name := func(prefix string) string {
		b := []byte(prefix)
		for range r.IntN(40) {
			b = append(b, alphabet[r.IntN(len(alphabet))])
		}
		return string(b)
	}
	var out []Service
	published := map[string]bool{}
	for i := range 1 + r.IntN(12) {
		s := Service{
			Name:     name(fmt.Sprintf("s%d", i)),
			VIP:      netip.AddrFrom4([4]byte{10, 1, byte(i), byte(1 + r.IntN(250))}),
			Affinity: r.IntN(3) == 0,
		}
		used := map[string]bool{}
		for range 1 + r.IntN(3) {
			p := Port{Protocol: []string{"tcp", "udp", "TCP", "Udp"}[r.IntN(4)], Port: uint16(1 + r.IntN(65535)), TargetPort: uint16(r.IntN(65536))}
			key := fmt.Sprintf("%s/%d", strings.ToLower(p.Protocol), p.Port)
			if used[key] {
				continue
			}
			used[key] = true
			if r.IntN(2) == 0 {
				p.Published = uint16(1024 + r.IntN(60000))
				pk := fmt.Sprintf("%s/%d", strings.ToLower(p.Protocol), p.Published)
				if published[pk] {
					p.Published = 0
				}
				published[pk] = true
			}
			s.Ports = append(s.Ports, p)
		}
		for j := range r.IntN(6) {
			s.Endpoints = append(s.Endpoints, Endpoint{Name: name(fmt.Sprintf("e%d", j)),
				IP: netip.AddrFrom4([4]byte{10, 0, byte(i), byte(j + 2)}), Local: r.IntN(2) == 0})
		}
		out = append(out, s)
	}
	return out
}

func TestApplierRandomValidInput(t *testing.T) {
	requireRoot(t)
	ns := newNetns(t, "random")
	a := applierIn(t, ns)
	for seed := range uint64(15) {
		r := rand.New(rand.NewPCG(seed, 42))
		services := randomServices(r)
		opts := baseOpts
		if seed%3 == 1 {
			opts = Options{Persistence: true, PersistenceTimeout: time.Duration(1+r.IntN(100000)) * time.Second,
				NodeAddresses: []netip.Addr{netip.MustParseAddr("192.0.2.1")}}
		}
		if err := Validate(services, opts); err != nil {
			t.Fatalf("seed %d: generator made invalid input: %v", seed, err)
		}
		if err := inNetns(ns, func() error { return a.Sync(services, opts) }); err != nil {
			t.Fatalf("seed %d: valid input refused by iptables: %v", seed, err)
		}
		assertMatchesRender(t, saved(t, ns, a), services, opts)
	}
}

func TestApplierRemovesOutdatedChains(t *testing.T) {
	requireRoot(t)
	ns := newNetns(t, "upgrade")
	a := applierIn(t, ns)
	// What an older version might have left: a chain of another name,
	// jumped to from a built-in chain, and an orphan chain.
	nsRun(t, ns, a.command, "-t", "nat", "-N", "WARREN-OLD-SERVICES")
	nsRun(t, ns, a.command, "-t", "nat", "-A", "WARREN-OLD-SERVICES", "-j", "RETURN")
	nsRun(t, ns, a.command, "-t", "nat", "-A", "PREROUTING", "-j", "WARREN-OLD-SERVICES")
	nsRun(t, ns, a.command, "-t", "filter", "-N", "WARREN-SVC-ORPHAN")
	syncIn(t, ns, a, services3x3(), baseOpts)
	got := saved(t, ns, a)
	if strings.Contains(got, "WARREN-OLD-SERVICES") || strings.Contains(got, "WARREN-SVC-ORPHAN") {
		t.Errorf("outdated chains survived a full sync:\n%s", got)
	}
	assertMatchesRender(t, got, services3x3(), baseOpts)
}

func TestApplierLeavesTaskChainsAlone(t *testing.T) {
	requireRoot(t)
	ns := newNetns(t, "task")
	a := applierIn(t, ns)
	// Package orchestrate's chains share the WARREN- prefix.
	nsRun(t, ns, a.command, "-t", "filter", "-N", "WARREN-TASK-FORWARD")
	nsRun(t, ns, a.command, "-t", "filter", "-A", "WARREN-TASK-FORWARD", "-i", "warren-br0", "-j", "ACCEPT")
	nsRun(t, ns, a.command, "-t", "filter", "-A", "FORWARD", "-j", "WARREN-TASK-FORWARD")
	nsRun(t, ns, a.command, "-t", "nat", "-N", "WARREN-TASK-EGRESS")
	nsRun(t, ns, a.command, "-t", "nat", "-A", "POSTROUTING", "-j", "WARREN-TASK-EGRESS")
	// So do package netpolicy's.
	nsRun(t, ns, a.command, "-t", "filter", "-N", "WARREN-POL-INGRESS")
	nsRun(t, ns, a.command, "-t", "filter", "-N", "WARREN-POLICY")
	nsRun(t, ns, a.command, "-t", "filter", "-A", "WARREN-POLICY", "-j", "WARREN-POL-INGRESS")
	nsRun(t, ns, a.command, "-t", "filter", "-I", "FORWARD", "-j", "WARREN-POLICY")
	want := []string{
		"-A FORWARD -j WARREN-POLICY",
		"-A WARREN-POLICY -j WARREN-POL-INGRESS",
		"-A FORWARD -j WARREN-TASK-FORWARD",
		"-A WARREN-TASK-FORWARD -i warren-br0 -j ACCEPT",
		"-A POSTROUTING -j WARREN-TASK-EGRESS",
		":WARREN-TASK-EGRESS -",
	}
	check := func(when string) {
		t.Helper()
		got := saved(t, ns, a)
		for _, w := range want {
			if !strings.Contains(got, w) {
				t.Errorf("%s: task networking rule %q gone:\n%s", when, w, got)
			}
		}
	}
	syncIn(t, ns, a, services3x3(), baseOpts)
	check("after a full sync")
	fresh := applierIn(t, ns)
	syncIn(t, ns, fresh, nil, baseOpts)
	check("after a restart's full sync with no services")
	mustInNetns(t, ns, fresh.Cleanup)
	check("after Cleanup")
	if got := saved(t, ns, a); strings.Contains(strings.NewReplacer("WARREN-TASK-", "", "WARREN-POL", "").Replace(got), "WARREN-") {
		t.Errorf("Cleanup left service rules:\n%s", got)
	}
}

package hostfw

import (
	"errors"
	"io"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"testing"
)

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// Parts shaped like the real ones: a policy part with a hook first in
// mangle FORWARD and, to test the order in one chain, a second one in
// filter FORWARD; the task network with an ACCEPTing chain and its
// bridge chain; nat with three hooks in filter FORWARD.
func policyPart(members ...string) Part {
	set := Set{Name: SetPrefix + "API", Comment: "tasks app=api"}
	for _, m := range members {
		set.Members = append(set.Members, netip.MustParsePrefix(m))
	}
	return Part{
		Tables: map[string]Chains{
			"mangle": {"WARREN-POLICY": {`-m set --match-set ` + set.Name + ` dst -m comment --comment "api" -j DROP`}},
			"filter": {"WARREN-POL-CHECK": {`-m set --match-set ` + set.Name + ` dst -j DROP`}},
		},
		Hooks: []Hook{
			{"mangle", "FORWARD", `-m comment --comment "warren network policies" -j WARREN-POLICY`},
			{"filter", "FORWARD", `-m comment --comment "warren policy check" -j WARREN-POL-CHECK`},
		},
		Sets: []Set{set},
	}
}

func tasksPart(ports ...string) Part {
	bridge := []string{}
	for _, p := range ports {
		bridge = append(bridge, "-p IPv4 -i "+p+" -j RETURN")
	}
	bridge = append(bridge, "-i wv+ -j DROP")
	return Part{
		Tables: map[string]Chains{
			"filter": {"WARREN-TASK-FORWARD": {"-i warren-br0 -j ACCEPT"}},
			"nat":    {"WARREN-TASK-EGRESS": {"-s 10.0.1.0/24 -j MASQUERADE"}},
		},
		Hooks: []Hook{
			{"filter", "FORWARD", `-m comment --comment "warren task forwarding" -j WARREN-TASK-FORWARD`},
			{"nat", "POSTROUTING", `-m comment --comment "warren task egress" -j WARREN-TASK-EGRESS`},
		},
		Bridge:      bridge,
		BridgeHooks: []string{"INPUT", "FORWARD"},
	}
}

func natPart(services ...string) Part {
	svc := []string{`-m comment --comment "canary" -j WARREN-CANARY`}
	for _, s := range services {
		svc = append(svc, "-d "+s+"/32 -p tcp -m tcp --dport 80 -j WARREN-SVC-"+strings.ReplaceAll(s, ".", ""))
	}
	nat := Chains{"WARREN-SERVICES": svc, "WARREN-CANARY": nil}
	for _, s := range services {
		nat["WARREN-SVC-"+strings.ReplaceAll(s, ".", "")] = []string{"-p tcp -j DNAT --to-destination 10.0.1.5:80"}
	}
	return Part{
		Tables: map[string]Chains{
			"nat":    nat,
			"filter": {"WARREN-FORWARD": {"-m conntrack --ctstate DNAT -j ACCEPT"}, "WARREN-SERVICES": {"-d 10.1.0.9/32 -j REJECT", "-d 10.1.0.10/32 -j REJECT"}},
		},
		Hooks: []Hook{
			{"nat", "PREROUTING", `-m comment --comment "warren service portals" -j WARREN-SERVICES`},
			{"filter", "FORWARD", `-m conntrack --ctstate NEW -m comment --comment "warren service portals" -j WARREN-SERVICES`},
			{"filter", "FORWARD", `-m comment --comment "warren forwarding rules" -j WARREN-FORWARD`},
		},
		Canaries: []Hook{{"nat", "WARREN-SERVICES", `-m comment --comment "canary" -j WARREN-CANARY`}},
	}
}

// wantForward is filter FORWARD with every part set: policy, tasks, nat.
var wantForward = []string{
	`-m comment --comment "warren policy check" -j WARREN-POL-CHECK`,
	`-m comment --comment "warren task forwarding" -j WARREN-TASK-FORWARD`,
	`-m conntrack --ctstate NEW -m comment --comment "warren service portals" -j WARREN-SERVICES`,
	`-m comment --comment "warren forwarding rules" -j WARREN-FORWARD`,
}

func setAll(t *testing.T, s *Syncer) {
	t.Helper()
	for _, c := range []struct {
		owner string
		part  Part
	}{{OwnerNAT, natPart("10.1.0.1")}, {OwnerTasks, tasksPart("wva")}, {OwnerPolicy, policyPart("10.0.1.5/32")}} {
		if err := s.SetPart(c.owner, c.part); err != nil {
			t.Fatalf("set %s: %v", c.owner, err)
		}
	}
}

func checkForward(t *testing.T, f *Fake, when string, foreign ...string) {
	t.Helper()
	want := append(slices.Clone(wantForward), foreign...)
	if got := f.Rules("filter", "FORWARD"); !slices.Equal(got, want) {
		t.Fatalf("%s: filter FORWARD =\n%s\nwant\n%s", when, strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if got := f.Rules("mangle", "FORWARD"); len(got) == 0 || !strings.HasSuffix(got[0], "-j WARREN-POLICY") {
		t.Fatalf("%s: mangle FORWARD = %q, want the policy hook first", when, got)
	}
}

// Whatever order the owners sync in (here nat first, as a canary resync
// of nat alone used to), the hooks end up in the hook table's order: the
// policy hook first.
func TestHookOrderWhateverTheSyncOrder(t *testing.T) {
	f := NewFake()
	s := NewSyncer(f, quiet())
	setAll(t, s)
	checkForward(t, f, "after nat, tasks, policy")
	if in, _ := f.BridgeList("INPUT"); len(in) != 1 || in[0] != "-j "+BridgeChain {
		t.Fatalf("bridge INPUT = %q", in)
	}
}

// `iptables -F FORWARD` (a firewall reload) and then a rule of someone
// else's first: the next sync of any single owner (here the task
// network's, as its periodic host check does) puts every hook back in
// order in its one transaction, policy first; so does the canary.
func TestHookOrderAfterFlush(t *testing.T) {
	for _, repair := range []string{"tasks sync", "nat sync", "canary"} {
		t.Run(repair, func(t *testing.T) {
			f := NewFake()
			s := NewSyncer(f, quiet())
			setAll(t, s)
			f.Flush("filter", "FORWARD")
			f.Flush("mangle", "FORWARD")
			f.Insert("filter", "FORWARD", 1, "-i eth9 -j ACCEPT")
			restores := len(f.Restores)
			var err error
			switch repair {
			case "tasks sync":
				err = s.SetPart(OwnerTasks, tasksPart("wva", "wvb"))
			case "nat sync":
				err = s.SetPart(OwnerNAT, natPart("10.1.0.1", "10.1.0.2"))
			case "canary":
				var repaired bool
				repaired, err = s.Check(false)
				if !repaired {
					t.Fatal("the canary did not notice the flush")
				}
			}
			if err != nil {
				t.Fatal(err)
			}
			checkForward(t, f, "after the flush and a "+repair, "-i eth9 -j ACCEPT")
			// One transaction did it: the hooks of a table are never
			// written in two steps, so no packet sees an ACCEPT hook
			// without the policy hook ahead of it.
			if n := len(f.Restores) - restores; n != 1 {
				t.Fatalf("%d restores, want 1:\n%s", n, strings.Join(f.Restores[restores:], "---\n"))
			}
			if repaired, err := s.Check(true); err != nil || repaired {
				t.Fatalf("canary after the repair: %v %v", repaired, err)
			}
		})
	}
}

// A hook moved behind a foreign rule, or duplicated (a crashed older
// run), is put back first exactly once.
func TestHookReorderedAndDuplicated(t *testing.T) {
	f := NewFake()
	s := NewSyncer(f, quiet())
	setAll(t, s)
	f.Insert("filter", "FORWARD", 1, "-j ACCEPT")
	f.Insert("filter", "FORWARD", 3, wantForward[2])
	if repaired, err := s.Check(false); err != nil || !repaired {
		t.Fatalf("Check = %v, %v", repaired, err)
	}
	checkForward(t, f, "after the repair", "-j ACCEPT")
}

// A second sync with nothing changed writes nothing; a forced (full) one
// and a restarted Syncer (a daemon restart) leave the same state.
func TestSyncIsIdempotent(t *testing.T) {
	f := NewFake()
	s := NewSyncer(f, quiet())
	setAll(t, s)
	want := f.Dump()
	restores := len(f.Restores)
	for range 3 {
		if err := s.Sync(false); err != nil {
			t.Fatal(err)
		}
	}
	if len(f.Restores) != restores {
		t.Fatalf("unchanged syncs wrote:\n%s", strings.Join(f.Restores[restores:], "---\n"))
	}
	if err := s.Sync(true); err != nil {
		t.Fatal(err)
	}
	if got := f.Dump(); got != want {
		t.Fatalf("forced sync changed the state:\n%s\nwant\n%s", got, want)
	}
	restarted := NewSyncer(f, quiet())
	setAll(t, restarted)
	if got := f.Dump(); got != want {
		t.Fatalf("restart changed the state:\n%s\nwant\n%s", got, want)
	}
	if repaired, err := restarted.Check(true); err != nil || repaired {
		t.Fatalf("canary after a restart: %v %v", repaired, err)
	}
}

// Task churn changes set members only: no restore runs.
func TestSetChurnWritesNoRules(t *testing.T) {
	f := NewFake()
	s := NewSyncer(f, quiet())
	setAll(t, s)
	restores := len(f.Restores)
	if err := s.SetPart(OwnerPolicy, policyPart("10.0.1.6/32", "10.0.2.7/32")); err != nil {
		t.Fatal(err)
	}
	if len(f.Restores) != restores {
		t.Fatalf("set churn wrote rules:\n%s", f.Restores[len(f.Restores)-1])
	}
	m := f.SetMembers(SetPrefix + "API")
	if len(m) != 2 || !m[netip.MustParsePrefix("10.0.2.7/32")] || m[netip.MustParsePrefix("10.0.1.5/32")] {
		t.Fatalf("set members %v", m)
	}
}

// Until an owner has a part (at start, before the first map), what a
// previous run left for it stays: its chains, its hooks (first, where
// they were) and its sets.
func TestUnsetOwnersKeepTheirRules(t *testing.T) {
	f := NewFake()
	setAll(t, NewSyncer(f, quiet()))
	fresh := NewSyncer(f, quiet())
	if err := fresh.SetPart(OwnerNAT, natPart("10.1.0.3")); err != nil {
		t.Fatal(err)
	}
	checkForward(t, f, "after a restart's nat sync alone")
	if f.SetMembers(SetPrefix+"API") == nil {
		t.Fatal("the policy set went before the policy part was set")
	}
	if f.Rules("nat", "WARREN-SVC-10101") != nil {
		t.Fatal("a stale nat chain stayed")
	}
}

// A failed restore leaves the next sync a full one, which repairs
// whatever the failure left.
func TestFailedSyncIsRetriedInFull(t *testing.T) {
	f := NewFake()
	s := NewSyncer(f, quiet())
	setAll(t, s)
	f.FailRestore = errors.New("xtables lock")
	if err := s.SetPart(OwnerNAT, natPart("10.1.0.1", "10.1.0.2")); err == nil {
		t.Fatal("sync did not fail")
	}
	f.Flush("filter", "FORWARD")
	if repaired, err := s.Check(false); err != nil || !repaired {
		t.Fatalf("Check after a failure = %v, %v", repaired, err)
	}
	checkForward(t, f, "after the retry")
	if f.Rules("nat", "WARREN-SVC-10102") == nil {
		t.Fatal("the retry did not write the new service")
	}
}

// A flushed bridge chain or a canary chain flushed inside warren's own
// rules is noticed by the slow check and restored; the bridge chain
// alone when only it was touched.
func TestSlowCanary(t *testing.T) {
	f := NewFake()
	s := NewSyncer(f, quiet())
	setAll(t, s)
	want := f.Dump()
	f.Flush("nat", "WARREN-SERVICES")
	if repaired, _ := s.Check(false); repaired {
		t.Fatal("the quick check looked inside warren's chains")
	}
	if repaired, err := s.Check(true); err != nil || !repaired {
		t.Fatalf("slow check = %v, %v", repaired, err)
	}
	f.BridgeFlush(BridgeChain)
	restores := len(f.Restores)
	if repaired, err := s.Check(true); err != nil || !repaired {
		t.Fatalf("slow check after a bridge flush = %v, %v", repaired, err)
	}
	// Only the bridge chain is written again, not every table (with
	// nftables a full rewrite would replace every chain).
	if n := len(f.Restores) - restores; n != 0 {
		t.Fatalf("a bridge flush rewrote the tables (%d restores)", n)
	}
	if got := f.Dump(); got != want {
		t.Fatalf("not restored:\n%s\nwant\n%s", got, want)
	}
}

// Cleanup leaves nothing of warren's and keeps other rules; a part taken
// out alone takes only its own rules.
func TestCleanupAndRemovePart(t *testing.T) {
	f := NewFake()
	s := NewSyncer(f, quiet())
	setAll(t, s)
	f.Insert("filter", "FORWARD", 5, "-i eth9 -j ACCEPT")
	if err := s.RemovePart(OwnerTasks); err != nil {
		t.Fatal(err)
	}
	if d := f.Dump(); strings.Contains(d, "WARREN-TASK") || !strings.Contains(d, "WARREN-SERVICES") || !strings.Contains(d, "WARREN-POLICY") {
		t.Fatalf("after removing the task part:\n%s", d)
	}
	for range 2 {
		if err := CleanupRunner(f, tables); err != nil {
			t.Fatal(err)
		}
	}
	if d := f.Dump(); strings.Contains(d, "WARREN") || !strings.Contains(d, "-A FORWARD -i eth9 -j ACCEPT") {
		t.Fatalf("after cleanup:\n%s", d)
	}
}

// An upgrade from the version with three writers: the policy chains sat
// in filter, hooked first into filter FORWARD. Until the policy part is
// set, that hook stays first (nat's and the task network's go after it);
// the policy part's first sync moves the policies to mangle and removes
// the old chains and hook in the same transaction as it writes the new.
func TestUpgradeFromFilterPolicies(t *testing.T) {
	f := NewFake()
	old := `-m comment --comment "warren network policies" -j WARREN-POLICY`
	if err := f.CreateSet(SetPrefix + "API"); err != nil {
		t.Fatal(err)
	}
	if err := f.Restore([]byte("*filter\n:WARREN-POLICY - [0:0]\n:WARREN-POL-INGRESS - [0:0]\n" +
		"-A WARREN-POL-INGRESS -m set --match-set " + SetPrefix + "API dst -j DROP\n-A WARREN-POLICY -j WARREN-POL-INGRESS\n" +
		"-I FORWARD 1 " + old + "\nCOMMIT\n")); err != nil {
		t.Fatal(err)
	}
	s := NewSyncer(f, quiet())
	for _, c := range []struct {
		owner string
		part  Part
	}{{OwnerTasks, tasksPart("wva")}, {OwnerNAT, natPart("10.1.0.1")}} {
		if err := s.SetPart(c.owner, c.part); err != nil {
			t.Fatal(err)
		}
	}
	if got := f.Rules("filter", "FORWARD"); len(got) != 4 || got[0] != old {
		t.Fatalf("before the policy part, filter FORWARD = %q: want the old policy hook first", got)
	}
	restores := len(f.Restores)
	if err := s.SetPart(OwnerPolicy, policyPart("10.0.1.5/32")); err != nil {
		t.Fatal(err)
	}
	if n := len(f.Restores) - restores; n != 1 {
		t.Fatalf("%d restores, want 1", n)
	}
	checkForward(t, f, "after the policy part")
	if d := f.Dump(); strings.Contains(d, "WARREN-POL-INGRESS") {
		t.Fatalf("the old policy chains stayed:\n%s", d)
	}
}

// Owners write only their own chains and hook only built-in chains.
func TestPartsStayInTheirNamespace(t *testing.T) {
	s := NewSyncer(NewFake(), quiet())
	for name, c := range map[string]struct {
		owner string
		part  Part
	}{
		"nat writing a task chain": {OwnerNAT, Part{Tables: map[string]Chains{"filter": {"WARREN-TASK-FORWARD": nil}}}},
		"policy hook into nat's":   {OwnerPolicy, Part{Hooks: []Hook{{"filter", "FORWARD", `-m comment --comment "x" -j WARREN-SERVICES`}}}},
		"hook without comment":     {OwnerNAT, Part{Hooks: []Hook{{"filter", "FORWARD", `-j WARREN-SERVICES`}}}},
		"hook from our own chain":  {OwnerNAT, Part{Hooks: []Hook{{"filter", "WARREN-X", `-m comment --comment "x" -j WARREN-SERVICES`}}}},
		"unknown table":            {OwnerNAT, Part{Tables: map[string]Chains{"raw": {"WARREN-X": nil}}}},
		"unknown owner":            {"dns", Part{}},
	} {
		if err := s.SetPart(c.owner, c.part); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestSplitArgs(t *testing.T) {
	for rule, want := range map[string][]string{
		`-d 10.1.0.5/32 -j REJECT`:                        {"-d", "10.1.0.5/32", "-j", "REJECT"},
		`  -m comment --comment "web has no ports"  -j X`: {"-m", "comment", "--comment", "web has no ports", "-j", "X"},
		`--comment "a \"quoted\" \\ word" -j X`:           {"--comment", `a "quoted" \ word`, "-j", "X"},
		`--comment "" -j X`:                               {"--comment", "", "-j", "X"},
		`a"b c"d e\f`:                                     {"ab cd", `e\f`},
		``:                                                {},
	} {
		if got := splitArgs(rule); !slices.Equal(got, want) {
			t.Errorf("splitArgs(%q) = %q, want %q", rule, got, want)
		}
	}
}

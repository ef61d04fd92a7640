package hostfw

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/warren-appliance/warren/internal/netnstest"
	"golang.org/x/sys/unix"
)

// targets are the jump targets of `iptables -S chain`, in order.
func targets(t *testing.T, ns, command, table, chain string) []string {
	t.Helper()
	var out []string
	for _, l := range strings.Split(netnstest.Run(t, ns, command, "-w", "5", "-t", table, "-S", chain), "\n") {
		if strings.HasPrefix(l, "-A ") {
			target, _ := hookKey(l)
			out = append(out, target)
		}
	}
	return out
}

var counterRE = regexp.MustCompile(`\[\d+:\d+\]|(?m)^#.*$`)

func saveAll(t *testing.T, ns, command string) string {
	t.Helper()
	var sets map[string]map[netip.Prefix]bool
	netnstest.MustIn(t, ns, func() (err error) { sets, err = (&Iptables{}).Sets(); return err })
	return counterRE.ReplaceAllString(netnstest.Run(t, ns, command+"-save"), "") +
		netnstest.Run(t, ns, "ebtables-nft", "-t", "filter", "-L") + fmt.Sprint(sets)
}

// The same scenarios as the fake's, against the kernel: the hooks are in
// order after the parts sync in any order; `iptables -F FORWARD` with a
// foreign rule inserted is repaired by the canary in one sync (policy
// first); a restarted Syncer changes nothing; Cleanup leaves nothing.
func TestKernelHookOrderFlushRestartCleanup(t *testing.T) {
	netnstest.RequireRoot(t)
	ns := netnstest.New(t, "whfw", "flush")
	var s *Syncer
	var command string
	netnstest.MustIn(t, ns, func() error {
		var err error
		s, err = New(quiet())
		if err == nil {
			command = s.Runner().(*Iptables).Command()
			for _, c := range []struct {
				owner string
				part  Part
			}{{OwnerNAT, natPart("10.1.0.1")}, {OwnerTasks, tasksPart("wva")}, {OwnerPolicy, policyPart("10.0.1.5/32")}} {
				if err = s.SetPart(c.owner, c.part); err != nil {
					break
				}
			}
		}
		return err
	})
	wantFilter := []string{"WARREN-POL-CHECK", "WARREN-TASK-FORWARD", "WARREN-SERVICES", "WARREN-FORWARD"}
	check := func(when string, foreign ...string) {
		t.Helper()
		if got := targets(t, ns, command, "filter", "FORWARD"); !slices.Equal(got, append(slices.Clone(wantFilter), foreign...)) {
			t.Fatalf("%s: filter FORWARD jumps to %v", when, got)
		}
		if got := targets(t, ns, command, "mangle", "FORWARD"); len(got) == 0 || got[0] != "WARREN-POLICY" {
			t.Fatalf("%s: mangle FORWARD jumps to %v", when, got)
		}
	}
	check("after nat, tasks, policy")
	want := saveAll(t, ns, command)

	netnstest.Run(t, ns, command, "-w", "5", "-F", "FORWARD")
	netnstest.Run(t, ns, command, "-w", "5", "-t", "mangle", "-F", "FORWARD")
	netnstest.Run(t, ns, command, "-w", "5", "-I", "FORWARD", "-i", "eth9", "-j", "ACCEPT")
	netnstest.MustIn(t, ns, func() error {
		repaired, err := s.Check(false)
		if err == nil && !repaired {
			t.Error("the canary did not notice the flush")
		}
		return err
	})
	check("after the flush and the canary", "ACCEPT")
	netnstest.Run(t, ns, command, "-w", "5", "-D", "FORWARD", "-i", "eth9", "-j", "ACCEPT")

	netnstest.MustIn(t, ns, func() error {
		fresh, err := New(quiet())
		if err != nil {
			return err
		}
		for _, c := range []struct {
			owner string
			part  Part
		}{{OwnerTasks, tasksPart("wva")}, {OwnerPolicy, policyPart("10.0.1.5/32")}, {OwnerNAT, natPart("10.1.0.1")}} {
			if err := fresh.SetPart(c.owner, c.part); err != nil {
				return err
			}
		}
		if repaired, err := fresh.Check(true); err != nil || repaired {
			t.Errorf("canary after a restart: %v %v", repaired, err)
		}
		return nil
	})
	if got := saveAll(t, ns, command); got != want {
		t.Fatalf("a restart changed the kernel:\n%s\n---\n%s", want, got)
	}

	for range 2 { // the second finds nothing to do
		netnstest.MustIn(t, ns, func() error { return Cleanup(quiet()) })
	}
	if got := saveAll(t, ns, command); strings.Contains(got, "WARREN") {
		t.Fatalf("Cleanup left:\n%s", got)
	}
}

// The nftables backend against the kernel: everything in table inet
// warren and nothing in iptables; "auto" picks it on a namespace whose
// iptables is empty; the canary repairs `nft flush table` and a deleted
// chain in one sync; a restarted Syncer writes the same table; Cleanup
// removes it. The table is not owned here, as on a kernel without owned
// persistent tables (before 6.9), so that others can break it;
// TestKernelNftablesOwnedTable has the owned one.
func TestKernelNftables(t *testing.T) {
	netnstest.RequireRoot(t)
	ownTables = false
	t.Cleanup(func() { ownTables = true })
	ns := netnstest.New(t, "whfw", "nft")
	parts := []struct {
		owner string
		part  Part
	}{{OwnerNAT, natPart("10.1.0.1")}, {OwnerTasks, tasksPart("wva")}, {OwnerPolicy, policyPart("10.0.1.5/32")}}
	start := func() *Syncer {
		var s *Syncer
		netnstest.MustIn(t, ns, func() error {
			var err error
			if s, err = NewBackend(BackendAuto, quiet()); err != nil {
				return err
			}
			if _, ok := s.Runner().(*Nftables); !ok {
				return fmt.Errorf("auto chose %s on an empty namespace", s.Runner().Name())
			}
			for _, c := range parts {
				if err := s.SetPart(c.owner, c.part); err != nil {
					return err
				}
			}
			return nil
		})
		return s
	}
	s := start()
	listTable := func() string { return netnstest.Run(t, ns, "nft", "list", "table", "inet", NftTable) }
	want := listTable()
	for _, c := range []string{"mangle-FORWARD", "filter-FORWARD", "nat-PREROUTING", "nat-WARREN-SERVICES", "mangle-WARREN-POLICY", "set WARREN-PS-"} {
		if !strings.Contains(want, c) {
			t.Fatalf("table inet warren lacks %q:\n%s", c, want)
		}
	}
	// VIP dispatch is one verdict-map lookup.
	if !regexp.MustCompile(`ip daddr \. meta l4proto \. th dport vmap \{[^}]*10\.1\.0\.1 \. tcp \. \d+ : jump nat-WARREN-SVC-`).MatchString(want) {
		t.Fatalf("nat-WARREN-SERVICES has no verdict map for 10.1.0.1:\n%s", want)
	}
	// Rules differing only in their exact destination: one set lookup.
	if !regexp.MustCompile(`ip daddr \{ 10\.1\.0\.9, 10\.1\.0\.10 \} reject`).MatchString(want) {
		t.Fatalf("filter-WARREN-SERVICES has no set rule for 10.1.0.9 and 10.1.0.10:\n%s", want)
	}
	// The policy hook runs first: mangle priority -150 in the forward hook.
	if !regexp.MustCompile(`chain mangle-FORWARD \{\s+type filter hook forward priority mangle;`).MatchString(want) {
		t.Fatalf("mangle-FORWARD is not at the mangle priority:\n%s", want)
	}
	if save := netnstest.Run(t, ns, "iptables-save"); strings.Contains(save, "WARREN") {
		t.Fatalf("iptables-save shows warren's chains:\n%s", save)
	}
	for i, sabotage := range [][]string{
		{"nft", "flush", "table", "inet", NftTable},
		{"nft", "delete", "chain", "inet", NftTable, "mangle-FORWARD"},
		{"nft", "delete", "table", "inet", NftTable},
		{"nft", "flush", "chain", "inet", NftTable, "filter-WARREN-FORWARD"}, // the slow check's
	} {
		netnstest.Run(t, ns, sabotage[0], sabotage[1:]...)
		netnstest.MustIn(t, ns, func() error {
			repaired, err := s.Check(i == 3)
			if err == nil && !repaired {
				t.Errorf("the canary did not notice %v", sabotage)
			}
			return err
		})
		if got := listTable(); got != want {
			t.Fatalf("after %v and the canary:\n%s\nwant\n%s", sabotage, got, want)
		}
	}
	netnstest.MustIn(t, ns, func() error {
		if repaired, err := s.Check(true); err != nil || repaired {
			return fmt.Errorf("canary on an intact table: %v %v", repaired, err)
		}
		return nil
	})
	// A restart: the first part set keeps the others' chains, sets and
	// hooks (in hook order) until they are set too.
	netnstest.MustIn(t, ns, func() error {
		fresh, err := NewBackend(BackendNftables, quiet())
		if err != nil {
			return err
		}
		if err := fresh.SetPart(OwnerTasks, tasksPart("wva")); err != nil {
			return err
		}
		got := listTable()
		fwd := regexp.MustCompile(`(?s)chain filter-FORWARD \{.*?\n\t\}`).FindString(got)
		order := regexp.MustCompile(`jump (\S+)`).FindAllStringSubmatch(fwd, -1)
		var jumps []string
		for _, m := range order {
			jumps = append(jumps, m[1])
		}
		if !slices.Equal(jumps, []string{"filter-WARREN-POL-CHECK", "filter-WARREN-TASK-FORWARD", "filter-WARREN-SERVICES", "filter-WARREN-FORWARD"}) {
			return fmt.Errorf("after a restart and the tasks' part, filter-FORWARD jumps to %v:\n%s", jumps, got)
		}
		for _, c := range []string{"jump mangle-WARREN-POLICY", "jump nat-WARREN-SERVICES", "set WARREN-PS-API", "chain nat-WARREN-SVC-10101"} {
			if !strings.Contains(got, c) {
				return fmt.Errorf("after a restart and the tasks' part, %q is gone:\n%s", c, got)
			}
		}
		return nil
	})
	start()
	if got := listTable(); normalNft(got) != normalNft(want) {
		t.Fatalf("a restart changed the table:\n%s\nwant\n%s", got, want)
	}
	for range 2 {
		netnstest.MustIn(t, ns, func() error { return Cleanup(quiet()) })
	}
	if out := netnstest.Run(t, ns, "nft", "list", "tables"); strings.Contains(out, NftTable) {
		t.Fatalf("Cleanup left: %s", out)
	}
}

// normalNft is `nft list table` with its chains and sets in name order
// (an incremental write appends new chains where a full one sorts them).
func normalNft(out string) string {
	out = strings.TrimSuffix(strings.TrimSpace(out), "}") // the table's own brace
	blocks := regexp.MustCompile(`(?m)^\t(chain|set) `).Split(out, -1)
	for i, b := range blocks {
		blocks[i] = strings.TrimSpace(b)
	}
	slices.Sort(blocks)
	return strings.Join(blocks, "\n--\n")
}

// dropEmptyChains is a normalNft listing without its empty regular
// chains.
func dropEmptyChains(normal string) string {
	var keep []string
	for _, b := range strings.Split(normal, "\n--\n") {
		if lines := strings.Split(b, "\n"); len(lines) == 2 && strings.HasSuffix(lines[0], "{") && strings.TrimSpace(lines[1]) == "}" {
			continue // "NAME {" and "}": an empty regular chain
		}
		keep = append(keep, b)
	}
	return strings.Join(keep, "\n--\n")
}

// Incremental nftables syncs (a chain added, changed, removed; set
// members changed; a set and its owner removed; a hook removed) leave
// the table exactly as a full rewrite of the same parts does.
func TestKernelNftablesIncremental(t *testing.T) {
	netnstest.RequireRoot(t)
	ns := netnstest.New(t, "whfw", "nfti")
	list := func() string { return normalNft(netnstest.Run(t, ns, "nft", "list", "table", "inet", NftTable)) }
	netnstest.MustIn(t, ns, func() error {
		s, err := NewBackend(BackendNftables, quiet())
		if err != nil {
			return err
		}
		steps := []struct {
			owner string
			part  Part
		}{
			{OwnerNAT, natPart("10.1.0.1", "10.1.0.2")},
			{OwnerTasks, tasksPart("wva")},
			{OwnerPolicy, policyPart("10.0.1.5/32")},
			{OwnerNAT, natPart("10.1.0.2", "10.1.0.3")},
			{OwnerPolicy, policyPart("10.0.1.6/32", "10.0.2.0/24")},
			{OwnerNAT, natPart()},
		}
		// A chain an incremental sync no longer wants is emptied at once
		// and deleted by the canary's next slow check (DeleteStale): after
		// that check the table is what a full write makes.
		defer func(age time.Duration) { staleChainAge = age }(staleChainAge)
		staleChainAge = 0
		for i, st := range steps {
			if err := s.SetPart(st.owner, st.part); err != nil {
				return fmt.Errorf("step %d: %w", i, err)
			}
			emptied := list()
			if repaired, err := s.Check(true); err != nil || repaired {
				return fmt.Errorf("step %d: the slow check after an incremental sync: %v %v", i, repaired, err)
			}
			got := list()
			if dropEmptyChains(emptied) != dropEmptyChains(got) {
				return fmt.Errorf("step %d (%s): the slow check changed more than emptied chains:\n%s\nto\n%s", i, st.owner, emptied, got)
			}
			if err := s.Sync(true); err != nil {
				return err
			}
			if want := list(); got != want {
				return fmt.Errorf("step %d (%s): the incremental sync wrote\n%s\nthe full one\n%s", i, st.owner, got, want)
			}
		}
		if err := s.RemovePart(OwnerPolicy); err != nil {
			return err
		}
		if got := list(); strings.Contains(got, "WARREN-PS-") || strings.Contains(got, "mangle-") {
			return fmt.Errorf("the policy part's set or chains stayed:\n%s", got)
		}
		return Cleanup(quiet())
	})
}

// TestBatchErrorAbortsEverything: the batch writer asks only the last
// message for an acknowledgement; an error earlier in the batch still
// comes back, names the message, and nothing of the batch is applied.
func TestBatchErrorAbortsEverything(t *testing.T) {
	netnstest.RequireRoot(t)
	ns := netnstest.New(t, "whfw", "bat")
	netnstest.MustIn(t, ns, func() error {
		b, err := newNftBatch()
		if err != nil {
			return err
		}
		tb := &nftables.Table{Family: nftables.TableFamilyINet, Name: "warren-batch-test"}
		ch := &nftables.Chain{Table: tb, Name: "a"}
		b.conn.AddTable(tb)
		b.conn.AddChain(ch)
		b.conn.AddRule(&nftables.Rule{Table: tb, Chain: ch, Exprs: []expr.Any{&expr.Verdict{Kind: expr.VerdictAccept}}})
		b.conn.AddRule(&nftables.Rule{Table: tb, Chain: ch, Exprs: []expr.Any{&expr.Verdict{Kind: expr.VerdictJump, Chain: "missing"}}})
		b.conn.AddChain(&nftables.Chain{Table: tb, Name: "b"})
		err = b.commit(nil)
		if err == nil || !strings.Contains(err.Error(), "message 4 of 7 (add rule)") || !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("commit: %v, want ENOENT naming message 4 of 7 (add rule)", err)
		}
		c, err := nftables.New()
		if err != nil {
			return err
		}
		tables, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
		if err != nil {
			return err
		}
		if len(tables) != 0 {
			return fmt.Errorf("a failed batch left %d tables", len(tables))
		}
		// The same batch without the bad rule applies whole.
		b.conn.AddTable(tb)
		b.conn.AddChain(ch)
		b.conn.AddRule(&nftables.Rule{Table: tb, Chain: ch, Exprs: []expr.Any{&expr.Verdict{Kind: expr.VerdictAccept}}})
		if err := b.commit(nil); err != nil {
			return err
		}
		rules, err := c.GetRules(tb, ch)
		if err != nil || len(rules) != 1 {
			return fmt.Errorf("after a good batch: %d rules, %v", len(rules), err)
		}
		return nil
	})
}

// TestKernelNftablesAffinitySurvivesFullWriteAndRestart: what session
// affinity learned (a client's address in a recent set, with the time it
// has left) is still there after a full rewrite of the table and after a
// restart, as xt_recent's lists outlive iptables rule rewrites.
func TestKernelNftablesAffinitySurvivesFullWriteAndRestart(t *testing.T) {
	netnstest.RequireRoot(t)
	ns := netnstest.New(t, "whfw", "aff")
	part := Part{
		Tables: map[string]Chains{"nat": {
			"WARREN-SERVICES": {"-d 10.1.0.5/32 -p tcp -m tcp --dport 80 -j WARREN-SVC-A"},
			"WARREN-SVC-A":    {"-m recent --name WARREN-SEP-A --rcheck --seconds 10800 --reap -j WARREN-SEP-A", "-j WARREN-SEP-A"},
			"WARREN-SEP-A":    {"-p tcp -m recent --name WARREN-SEP-A --set -m tcp -j DNAT --to-destination 10.0.1.6:8080"},
		}},
		Hooks: []Hook{{"nat", "PREROUTING", `-m comment --comment "warren service portals" -j WARREN-SERVICES`}},
	}
	set := "recent-WARREN-SEP-A"
	var s *Syncer
	netnstest.MustIn(t, ns, func() error {
		var err error
		if s, err = NewBackend(BackendNftables, quiet()); err != nil {
			return err
		}
		return s.SetPart(OwnerNAT, part)
	})
	// A client learned (through the owning socket: the table is ours).
	netnstest.MustIn(t, ns, func() error {
		b, err := newNftBatch()
		if err != nil {
			return err
		}
		tb := &nftables.Table{Family: nftables.TableFamilyINet, Name: NftTable}
		if err := b.conn.SetAddElements(&nftables.Set{Table: tb, Name: set, KeyType: nftables.TypeIPAddr, HasTimeout: true},
			[]nftables.SetElement{{Key: []byte{10, 0, 0, 9}, Timeout: time.Hour}}); err != nil {
			return err
		}
		return b.commit(existingOwner())
	})
	timeoutRE := regexp.MustCompile(`10\.0\.0\.9 timeout (\S+) expires`)
	for _, step := range []struct {
		name string
		do   func() error
	}{
		{"a full write", func() error { return s.Sync(true) }},
		{"a restart", func() error {
			releaseOwner() // the daemon's exit
			s2, err := NewBackend(BackendNftables, quiet())
			if err != nil {
				return err
			}
			return s2.SetPart(OwnerNAT, part)
		}},
	} {
		netnstest.MustIn(t, ns, step.do)
		listed := netnstest.Run(t, ns, "nft", "list", "set", "inet", NftTable, set)
		m := timeoutRE.FindStringSubmatch(listed)
		if m == nil {
			t.Fatalf("after %s the affinity set forgot 10.0.0.9:\n%s", step.name, listed)
		}
		// Carried with the time it had left, not given the set's 3 h anew.
		if d, err := time.ParseDuration(m[1]); err != nil || d > time.Hour {
			t.Fatalf("after %s 10.0.0.9 has timeout %s, want at most the 1h it was given:\n%s", step.name, m[1], listed)
		}
	}
}

// TestKernelNftablesOwnedTable: table inet warren belongs to the daemon.
// A firewall reload's `nft flush ruleset` passes it by, other processes
// cannot flush or delete it or its chains; when the daemon exits it stays
// (persistent, no owner), the next daemon takes it over, even when it
// keeps rules of owners that have no part yet; Cleanup in the daemon
// removes it.
func TestKernelNftablesOwnedTable(t *testing.T) {
	netnstest.RequireRoot(t)
	ns := netnstest.New(t, "whfw", "own")
	listTable := func() string { return netnstest.Run(t, ns, "nft", "list", "table", "inet", NftTable) }
	var s *Syncer
	netnstest.MustIn(t, ns, func() error {
		var err error
		if s, err = NewBackend(BackendNftables, quiet()); err != nil {
			return err
		}
		if !s.Runner().(*Nftables).Owned() {
			return errors.New("the table is not owned on a kernel that can (Linux >= 6.9)")
		}
		setAll(t, s)
		// The ruleset generation read on the owner's socket is the one a
		// socket of its own reads (the canary's fast check compares it).
		mine, err := s.Runner().(*Nftables).sock.generation()
		theirs, err2 := nftGen()
		if err != nil || err2 != nil || mine == 0 || mine != theirs {
			return fmt.Errorf("generation on the owner's socket %d (%v), on another %d (%v)", mine, err, theirs, err2)
		}
		return nil
	})
	want := listTable()
	netnstest.Run(t, ns, "nft", "flush", "ruleset")
	if got := listTable(); got != want {
		t.Fatalf("nft flush ruleset changed the owned table:\n%s\nwant\n%s", got, want)
	}
	for _, other := range [][]string{
		{"flush", "table", "inet", NftTable},
		{"delete", "table", "inet", NftTable},
		{"flush", "chain", "inet", NftTable, "mangle-FORWARD"},
		{"delete", "rule", "inet", NftTable, "mangle-FORWARD", "handle", "1"},
	} {
		out, err := exec.Command("ip", append([]string{"netns", "exec", ns, "nft"}, other...)...).CombinedOutput()
		if err == nil || !strings.Contains(string(out), "Operation not permitted") {
			t.Errorf("nft %v from another process: %v %s, want Operation not permitted", other, err, out)
		}
	}
	if got := listTable(); got != want {
		t.Fatalf("another process changed the owned table:\n%s\nwant\n%s", got, want)
	}
	// `warren-appliance --cleanup` while the daemon runs: another
	// process's DeleteNftTable says what to do.
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("ip", "netns", "exec", ns, self, "-test.run=^TestDeleteNftTableFromAnotherProcess$", "-test.v")
	cmd.Env = append(os.Environ(), "WARREN_HOSTFW_DELETE_HELPER=1")
	out, _ := cmd.CombinedOutput()
	if !strings.Contains(string(out), "owned by a running warren-appliance; stop it first") {
		t.Fatalf("DeleteNftTable from another process while the owner runs:\n%s", out)
	}

	// The daemon exits: the table stays. The next one starts with only
	// the nat part (the others' rules are kept, the table claimed), then
	// the rest.
	if !strings.Contains(want, "\tflags owner") {
		t.Fatalf("the table is not listed as owned:\n%s", want)
	}
	netnstest.MustIn(t, ns, func() error { releaseOwner(); return nil })
	// The owner shows as the table's flags and a "# progname" comment.
	tableFlags := regexp.MustCompile(`(?m)^\tflags .*\n| # progname .*$`)
	if got := listTable(); tableFlags.ReplaceAllString(got, "") != tableFlags.ReplaceAllString(want, "") || strings.Contains(got, "\tflags owner") {
		t.Fatalf("after the owner's exit (the table stays, owned by nobody):\n%s\nwant\n%s", got, want)
	}
	netnstest.MustIn(t, ns, func() error {
		s2, err := NewBackend(BackendNftables, quiet())
		if err != nil {
			return err
		}
		if err := s2.SetPart(OwnerNAT, natPart("10.1.0.1", "10.1.0.2")); err != nil {
			return fmt.Errorf("a new daemon's first sync: %w", err)
		}
		setAll(t, s2)
		return nil
	})
	if got := listTable(); tableFlags.ReplaceAllString(got, "") != tableFlags.ReplaceAllString(want, "") || !strings.Contains(got, "\tflags owner") {
		t.Fatalf("after the next daemon's syncs (the table is theirs):\n%s\nwant\n%s", got, want)
	}
	if out, err := exec.Command("ip", "netns", "exec", ns, "nft", "flush", "table", "inet", NftTable).CombinedOutput(); err == nil {
		t.Fatalf("the next daemon does not own the table: flush worked: %s", out)
	}
	netnstest.MustIn(t, ns, func() error { return Cleanup(quiet()) })
	if out, err := exec.Command("ip", "netns", "exec", ns, "nft", "list", "table", "inet", NftTable).CombinedOutput(); err == nil {
		t.Fatalf("Cleanup left the table:\n%s", out)
	}
}

// TestDeleteNftTableFromAnotherProcess is TestKernelNftablesOwnedTable's
// other process (it does nothing on its own).
func TestDeleteNftTableFromAnotherProcess(t *testing.T) {
	if os.Getenv("WARREN_HOSTFW_DELETE_HELPER") == "" {
		t.Skip("run by TestKernelNftablesOwnedTable")
	}
	t.Logf("DeleteNftTable: %v", DeleteNftTable())
}

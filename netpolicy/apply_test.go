package netpolicy

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/warren-appliance/warren/hostfw"
)

func kernelMembers(t *testing.T, ns string) map[string]map[netip.Prefix]bool {
	t.Helper()
	var out map[string]map[netip.Prefix]bool
	mustInNetns(t, ns, func() (err error) { out, err = (&hostfw.Iptables{}).Sets(); return err })
	return out
}

// newApplier is an Applier writing through a hostfw syncer of ns, and the
// iptables command that syncer uses.
func newApplier(t *testing.T, ns string) (*Applier, *hostfw.Syncer, string) {
	t.Helper()
	var fw *hostfw.Syncer
	mustInNetns(t, ns, func() (err error) { fw, err = hostfw.New(nil); return err })
	command := "" // the nftables backend runs no iptables command
	if x, ok := fw.Runner().(*hostfw.Iptables); ok {
		command = x.Command()
	}
	return NewApplier(fw), fw, command
}

func syncIn(t *testing.T, ns string, a *Applier, r Rules) SyncStats {
	t.Helper()
	var st SyncStats
	mustInNetns(t, ns, func() (err error) { st, err = a.Sync(r); return err })
	return st
}

func TestApplierSetsRulesChurnCleanup(t *testing.T) {
	requireRoot(t)
	ns := newNetns(t, "apply")
	a, _, command := newApplier(t, ns)
	// Something else's rule already first in FORWARD: ours goes before it.
	nsRun(t, ns, command, "-t", "mangle", "-A", "FORWARD", "-i", "x0", "-j", "ACCEPT")

	pols := append(mustParse(t, egressYAML), seedPolicy(t))
	in := Input{Policies: pols, Tasks: labTasks, NodeSubnet: netip.MustParsePrefix("10.0.0.0/24"), Overlay: "warren0"}
	r := Render(in)
	st := syncIn(t, ns, a, r)
	if !st.Full || !st.RulesWritten || st.SetsCreated != len(r.Sets) {
		t.Fatalf("first sync: %+v", st)
	}
	saved := nsRun(t, ns, command+"-save", "-t", "mangle")
	for _, want := range []string{
		"-A FORWARD -m comment --comment \"warren network policies\" -j WARREN-POLICY\n-A FORWARD -i x0 -j ACCEPT",
		`api-policy ingress[0]" -j RETURN`,
		`selected by deny-other: not allowed" -j DROP`,
	} {
		if !strings.Contains(saved, want) {
			t.Errorf("iptables lacks %q:\n%s", want, saved)
		}
	}
	have := kernelMembers(t, ns)
	for _, s := range r.Sets {
		if len(have[s.Name]) != len(s.Members) {
			t.Errorf("set %s (%s) has %d members, want %d", s.Name, s.Comment, len(have[s.Name]), len(s.Members))
		}
	}

	// A task moves: set members change, the rules are not rewritten.
	in.Tasks = append(labTasks[1:], task("api-3", "10.0.3.2", "app", "api"))
	st = syncIn(t, ns, a, Render(in))
	if st.Full || st.RulesWritten || st.Added != 3 || st.Removed != 3 {
		t.Fatalf("churn sync: %+v, want 3 added (api-3 in app=api, app in (api), all tasks) and 3 removed (api-1 out of the same)", st)
	}
	apiSet := SetName("tasks app=api")
	if m := kernelMembers(t, ns)[apiSet]; !m[netip.MustParsePrefix("10.0.3.2/32")] || m[netip.MustParsePrefix("10.0.1.2/32")] {
		t.Fatalf("app=api set = %v", m)
	}

	// A restarted applier (a new syncer) reads the kernel and changes
	// nothing.
	before := nsRun(t, ns, command+"-save", "-t", "mangle")
	fresh, fw, _ := newApplier(t, ns)
	syncIn(t, ns, fresh, Render(in))
	if after := nsRun(t, ns, command+"-save", "-t", "mangle"); stripCounters(after) != stripCounters(before) {
		t.Fatalf("restart sync changed the rules:\n%s\n---\n%s", before, after)
	}
	if !equalMembers(kernelMembers(t, ns), Render(in).Sets) {
		t.Fatalf("restart sync changed the sets")
	}

	// The hook is moved back to first place when something got before it:
	// the canary notices and runs the sync, which repairs it.
	nsRun(t, ns, command, "-t", "mangle", "-I", "FORWARD", "-i", "y0", "-j", "ACCEPT")
	mustInNetns(t, ns, func() error {
		if repaired, err := fw.Check(false); err != nil || !repaired {
			t.Errorf("Check = %v, %v after a rule was inserted before the hook", repaired, err)
		}
		return nil
	})
	if out := nsRun(t, ns, command, "-t", "mangle", "-S", "FORWARD", "1"); !strings.Contains(out, "WARREN-POLICY") {
		t.Fatalf("first FORWARD rule = %s", out)
	}

	// No policies: unused sets go.
	st = syncIn(t, ns, fresh, Render(Input{Tasks: in.Tasks}))
	if st.SetsDestroyed != len(r.Sets) || len(kernelMembers(t, ns)) != 0 {
		t.Fatalf("no policies: %+v, kernel sets %v", st, kernelMembers(t, ns))
	}

	syncIn(t, ns, fresh, r)
	for range 2 { // a second cleanup finds nothing to do
		mustInNetns(t, ns, func() error { return hostfw.Cleanup(nil) })
	}
	saved = nsRun(t, ns, command+"-save")
	if strings.Contains(saved, "WARREN-POL") {
		t.Fatalf("cleanup left rules:\n%s", saved)
	}
	mustInNetns(t, ns, func() error {
		all, err := netlink.IpsetListAll()
		for _, s := range all {
			t.Errorf("cleanup left ipset %s", s.SetName)
		}
		return err
	})
}

// The benchmark's input (200 policies over 1000 tasks, make bench times
// it) loads completely, and one task moving changes one set member out
// and one in, with no iptables run.
func TestSync200Policies1000Tasks(t *testing.T) {
	requireRoot(t)
	ns := newNetns(t, "big")
	a, fw, command := newApplier(t, ns)
	in := benchInput()
	r := Render(in)
	if st := syncIn(t, ns, a, r); !st.RulesWritten || st.SetsCreated != len(r.Sets) {
		t.Fatalf("full sync: %+v", st)
	}
	if got := strings.Count(nsRun(t, ns, command+"-save", "-t", "mangle"), "\n-A WARREN-POL"); got != strings.Count(string(r.Restore), "\n-A WARREN-POL") {
		t.Fatalf("%d policy rules in the kernel, %d rendered", got, strings.Count(string(r.Restore), "\n-A WARREN-POL"))
	}
	have := kernelMembers(t, ns)
	for _, s := range r.Sets {
		if len(have[s.Name]) != len(s.Members) {
			t.Fatalf("set %s (%s): %d members in the kernel, %d rendered", s.Name, s.Comment, len(have[s.Name]), len(s.Members))
		}
	}
	moved := in
	moved.Tasks = append([]Task(nil), in.Tasks...)
	old := moved.Tasks[500].IP
	moved.Tasks[500].IP = netip.MustParseAddr("10.0.9.9")
	restores := fw.Syncs()
	if st := syncIn(t, ns, a, Render(moved)); st.RulesWritten || st.Added != 1 || st.Removed != 1 || fw.Syncs() != restores {
		t.Fatalf("one task moved: %+v, %d restores, want one member in and one out and no rules written", st, fw.Syncs()-restores)
	}
	m := kernelMembers(t, ns)[SetName("tasks app="+moved.Tasks[500].Labels["app"])]
	if !m[netip.MustParsePrefix("10.0.9.9/32")] || m[netip.PrefixFrom(old, 32)] {
		t.Fatalf("set of the moved task: %v", m)
	}
}

// stripCounters drops iptables-save's comment and counter lines, which
// change between two saves.
func stripCounters(saved string) string {
	var out []string
	for _, l := range strings.Split(saved, "\n") {
		if !strings.HasPrefix(l, "#") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

func equalMembers(have map[string]map[netip.Prefix]bool, sets []Set) bool {
	if len(have) != len(sets) {
		return false
	}
	for _, s := range sets {
		if len(have[s.Name]) != len(s.Members) {
			return false
		}
		for _, m := range s.Members {
			if !have[s.Name][m] {
				return false
			}
		}
	}
	return true
}

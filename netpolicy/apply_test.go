package netpolicy

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
)

func kernelMembers(t *testing.T, ns string) map[string]map[netip.Prefix]bool {
	t.Helper()
	var out map[string]map[netip.Prefix]bool
	mustInNetns(t, ns, func() (err error) { out, err = kernelSets(); return err })
	return out
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
	var a *Applier
	mustInNetns(t, ns, func() (err error) { a, err = NewApplier(nil); return err })
	// Something else's rule already first in FORWARD: ours goes before it.
	nsRun(t, ns, a.command, "-A", "FORWARD", "-i", "x0", "-j", "ACCEPT")

	pols := append(mustParse(t, egressYAML), seedPolicy(t))
	in := Input{Policies: pols, Tasks: labTasks, NodeSubnet: netip.MustParsePrefix("10.0.0.0/24"), Overlay: "warren0"}
	r := Render(in)
	st := syncIn(t, ns, a, r)
	if !st.Full || !st.RulesWritten || st.SetsCreated != len(r.Sets) {
		t.Fatalf("first sync: %+v", st)
	}
	saved := nsRun(t, ns, a.command+"-save", "-t", "filter")
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

	// A restarted applier reads the kernel and changes nothing.
	var fresh *Applier
	mustInNetns(t, ns, func() (err error) { fresh, err = NewApplier(nil); return err })
	st = syncIn(t, ns, fresh, Render(in))
	if !st.Full || st.Added != 0 || st.Removed != 0 || st.SetsCreated != 0 || st.SetsDestroyed != 0 {
		t.Fatalf("restart sync: %+v", st)
	}

	// The jump is moved back to first place when something got before it.
	nsRun(t, ns, a.command, "-I", "FORWARD", "-i", "y0", "-j", "ACCEPT")
	mustInNetns(t, ns, func() error {
		if first, err := fresh.JumpFirst(); err != nil || first {
			t.Errorf("JumpFirst = %v, %v after a rule was inserted before it", first, err)
		}
		return fresh.EnsureJump()
	})
	if out := nsRun(t, ns, a.command, "-S", "FORWARD", "1"); !strings.Contains(out, "WARREN-POLICY") {
		t.Fatalf("first FORWARD rule = %s", out)
	}

	// No policies: unused sets go.
	st = syncIn(t, ns, fresh, Render(Input{Tasks: in.Tasks}))
	if st.SetsDestroyed != len(r.Sets) || len(kernelMembers(t, ns)) != 0 {
		t.Fatalf("no policies: %+v, kernel sets %v", st, kernelMembers(t, ns))
	}

	syncIn(t, ns, fresh, r)
	for range 2 { // a second cleanup finds nothing to do
		mustInNetns(t, ns, fresh.Cleanup)
	}
	saved = nsRun(t, ns, a.command+"-save", "-t", "filter")
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
	var a *Applier
	mustInNetns(t, ns, func() (err error) { a, err = NewApplier(nil); return err })
	in := benchInput()
	r := Render(in)
	if st := syncIn(t, ns, a, r); !st.RulesWritten || st.SetsCreated != len(r.Sets) {
		t.Fatalf("full sync: %+v", st)
	}
	if got := strings.Count(nsRun(t, ns, a.command+"-save", "-t", "filter"), "\n-A WARREN-POL"); got != strings.Count(string(r.Restore), "\n-A WARREN-POL") {
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
	if st := syncIn(t, ns, a, Render(moved)); st.RulesWritten || st.Added != 1 || st.Removed != 1 {
		t.Fatalf("one task moved: %+v, want one member in and one out and no rules written", st)
	}
	m := kernelMembers(t, ns)[SetName("tasks app="+moved.Tasks[500].Labels["app"])]
	if !m[netip.MustParsePrefix("10.0.9.9/32")] || m[netip.PrefixFrom(old, 32)] {
		t.Fatalf("set of the moved task: %v", m)
	}
}

package hostfw

import (
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/warren-appliance/warren/internal/netnstest"
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

package netpolicy

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"sync"
	"syscall"

	"github.com/coreos/go-iptables/iptables"
	"github.com/vishvananda/netlink"

	"github.com/warren-appliance/warren/internal/iptbackend"
)

// jumpSpec is the one rule outside our chains: the first rule of FORWARD.
var jumpSpec = []string{"-m", "comment", "--comment", "warren network policies", "-j", ChainPolicy}

// Applier loads rendered policies into the kernel of the network
// namespace it runs in: ipsets through netlink, rules with one
// iptables-restore --noflush transaction. Safe for concurrent use.
type Applier struct {
	log     *slog.Logger
	command string
	restore string
	ipt     *iptables.IPTables

	mu           sync.Mutex
	members      map[string]map[netip.Prefix]bool // set -> members as applied; nil: read the kernel
	appliedRules []byte
}

// NewApplier finds the iptables variant the host uses.
func NewApplier(log *slog.Logger) (*Applier, error) {
	if log == nil {
		log = slog.Default()
	}
	command := iptbackend.Detect("filter", ChainPolicy)
	ipt, err := iptables.New(iptables.Path(command), iptables.Timeout(60))
	if err != nil {
		return nil, fmt.Errorf("set up %s: %w", command, err)
	}
	restore, err := exec.LookPath(command + "-restore")
	if err != nil {
		return nil, fmt.Errorf("find %s-restore: %w", command, err)
	}
	return &Applier{log: log, command: command, restore: restore, ipt: ipt}, nil
}

// SyncStats says what a sync changed.
type SyncStats struct {
	Full          bool
	SetsCreated   int
	SetsDestroyed int
	Added         int
	Removed       int
	RulesWritten  bool
}

// Sync makes the kernel hold exactly r. Sets are created and filled
// first, then the rules are written in one transaction and the jump from
// FORWARD is made the first rule there (both only when the rules changed
// or after a restart or error), then
// sets no rule uses any more are destroyed. Task churn therefore costs a
// few set additions and removals and no iptables run. After an error the
// next sync starts from what the kernel holds.
func (a *Applier) Sync(r Rules) (SyncStats, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	st, err := a.sync(r)
	if err != nil {
		a.members, a.appliedRules = nil, nil
	}
	return st, err
}

func (a *Applier) sync(r Rules) (SyncStats, error) {
	var st SyncStats
	if a.members == nil {
		st.Full = true
		have, err := kernelSets()
		if err != nil {
			return st, err
		}
		a.members = have
		a.appliedRules = nil
	}
	want := map[string]bool{}
	for _, s := range r.Sets {
		want[s.Name] = true
		have, ok := a.members[s.Name]
		if !ok {
			if err := netlink.IpsetCreate(s.Name, "hash:net", netlink.IpsetCreateOptions{Replace: true}); err != nil {
				return st, fmt.Errorf("create ipset %s (%s): %w", s.Name, s.Comment, err)
			}
			have = map[netip.Prefix]bool{}
			a.members[s.Name] = have
			st.SetsCreated++
		}
		keep := make(map[netip.Prefix]bool, len(s.Members))
		for _, m := range s.Members {
			keep[m] = true
			if have[m] {
				continue
			}
			if err := netlink.IpsetAdd(s.Name, entry(m)); err != nil && !errors.Is(err, syscall.EEXIST) {
				return st, fmt.Errorf("add %s to ipset %s (%s): %w", m, s.Name, s.Comment, err)
			}
			have[m] = true
			st.Added++
		}
		for m := range have {
			if keep[m] {
				continue
			}
			if err := netlink.IpsetDel(s.Name, entry(m)); err != nil && !isMissing(err) {
				return st, fmt.Errorf("remove %s from ipset %s (%s): %w", m, s.Name, s.Comment, err)
			}
			delete(have, m)
			st.Removed++
		}
	}
	if !bytes.Equal(r.Restore, a.appliedRules) {
		if err := a.restoreRules(r.Restore); err != nil {
			return st, err
		}
		a.appliedRules = bytes.Clone(r.Restore)
		st.RulesWritten = true
		// Only with the rules: a sync that changes set members runs no
		// iptables at all (JumpFirst tells the caller when to resync).
		if err := a.ensureJump(); err != nil {
			return st, err
		}
	}
	for name := range a.members {
		if want[name] {
			continue
		}
		if err := netlink.IpsetDestroy(name); err != nil && !isMissing(err) {
			return st, fmt.Errorf("destroy unused ipset %s: %w", name, err)
		}
		delete(a.members, name)
		st.SetsDestroyed++
	}
	return st, nil
}

func entry(p netip.Prefix) *netlink.IPSetEntry {
	return &netlink.IPSetEntry{IP: net.IP(p.Addr().AsSlice()), CIDR: uint8(p.Bits())}
}

func isMissing(err error) bool {
	return errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ENOEXEC) || errors.Is(err, syscall.EINVAL) ||
		strings.Contains(err.Error(), "does not exist")
}

// kernelSets lists our ipsets and their members.
func kernelSets() (map[string]map[netip.Prefix]bool, error) {
	all, err := netlink.IpsetListAll()
	if err != nil {
		return nil, fmt.Errorf("list ipsets: %w", err)
	}
	out := map[string]map[netip.Prefix]bool{}
	for _, s := range all {
		if !strings.HasPrefix(s.SetName, SetPrefix) {
			continue
		}
		members := out[s.SetName]
		if members == nil {
			members = map[netip.Prefix]bool{}
			out[s.SetName] = members
		}
		for _, e := range s.Entries {
			addr, ok := netip.AddrFromSlice(e.IP)
			if !ok {
				continue
			}
			bits := int(e.CIDR)
			if bits == 0 {
				bits = 32
			}
			members[netip.PrefixFrom(addr.Unmap(), bits)] = true
		}
	}
	return out, nil
}

func (a *Applier) restoreRules(text []byte) error {
	cmd := exec.Command(a.restore, "-w", "60", "--noflush")
	cmd.Stdin = bytes.NewReader(text)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s: %w: %s", a.restore, err, strings.TrimSpace(stderr.String()))
	}
	return nil
}

// ensureJump makes the jump to WARREN-POLICY the first rule of FORWARD
// (exactly once): the task and service rules behind it ACCEPT.
func (a *Applier) ensureJump() error {
	rules, err := a.ipt.List("filter", "FORWARD")
	if err != nil {
		return fmt.Errorf("list FORWARD: %w", err)
	}
	count, first := 0, false
	for i, r := range rules {
		if strings.HasSuffix(r, "-j "+ChainPolicy) {
			count++
			if i == 1 { // rules[0] is the policy line "-P FORWARD ..."
				first = true
			}
		}
	}
	if first && count == 1 {
		return nil
	}
	for range count {
		if err := a.ipt.DeleteIfExists("filter", "FORWARD", jumpSpec...); err != nil {
			return fmt.Errorf("move the policy jump: %w", err)
		}
	}
	if err := a.ipt.Insert("filter", "FORWARD", 1, jumpSpec...); err != nil {
		return fmt.Errorf("hook %s into FORWARD: %w", ChainPolicy, err)
	}
	return nil
}

// EnsureJump makes the jump to WARREN-POLICY the first rule of FORWARD
// again (after JumpFirst said it is not).
func (a *Applier) EnsureJump() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.ensureJump()
}

// JumpFirst reports whether the jump is in place as the first rule of
// FORWARD (a flush or another tool inserting before it needs a resync).
func (a *Applier) JumpFirst() (bool, error) {
	rules, err := a.ipt.List("filter", "FORWARD")
	if err != nil {
		return false, fmt.Errorf("list FORWARD: %w", err)
	}
	return len(rules) > 1 && strings.HasSuffix(rules[1], "-j "+ChainPolicy), nil
}

// Cleanup removes the jump, our chains and our sets (for --cleanup). A
// second run finds nothing to do.
func (a *Applier) Cleanup() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.members, a.appliedRules = nil, nil
	var errs []error
	if ok, err := a.ipt.ChainExists("filter", ChainPolicy); err == nil && ok {
		for {
			exists, err := a.ipt.Exists("filter", "FORWARD", jumpSpec...)
			if err != nil || !exists {
				break
			}
			if err := a.ipt.Delete("filter", "FORWARD", jumpSpec...); err != nil {
				errs = append(errs, fmt.Errorf("unhook %s: %w", ChainPolicy, err))
				break
			}
		}
	}
	for _, c := range []string{ChainPolicy, ChainIngress, ChainEgress} {
		if ok, err := a.ipt.ChainExists("filter", c); err == nil && ok {
			if err := a.ipt.ClearChain("filter", c); err != nil {
				errs = append(errs, fmt.Errorf("flush %s: %w", c, err))
			}
		}
	}
	for _, c := range []string{ChainPolicy, ChainIngress, ChainEgress} {
		if ok, err := a.ipt.ChainExists("filter", c); err == nil && ok {
			if err := a.ipt.DeleteChain("filter", c); err != nil {
				errs = append(errs, fmt.Errorf("delete %s: %w", c, err))
			}
		}
	}
	sets, err := kernelSets()
	if err != nil {
		errs = append(errs, err)
	}
	for name := range sets {
		if err := netlink.IpsetDestroy(name); err != nil && !isMissing(err) {
			errs = append(errs, fmt.Errorf("destroy ipset %s: %w", name, err))
		}
	}
	return errors.Join(errs...)
}

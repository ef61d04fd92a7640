package hostfw

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"github.com/coreos/go-iptables/iptables"
	"github.com/vishvananda/netlink"

	"github.com/warren-appliance/warren/internal/iptbackend"
)

// lockWaitSeconds is how long one iptables call waits for the xtables lock.
const lockWaitSeconds = 60

// detectChain is the chain whose presence tells which iptables variant
// warren used before (a restart): nat's canary, which every version has.
const detectTable, detectChain = "nat", "WARREN-CANARY"

// Iptables is the Runner of one iptables variant (iptables-nft or
// iptables-legacy), with ipsets through netlink and the bridge table
// through ebtables.
type Iptables struct {
	ipt     *iptables.IPTables
	command string // iptables, iptables-nft or iptables-legacy
	restore string // the matching iptables-restore
	backend string // "nf_tables" or "legacy"
}

// NewIptables sets up the given variant.
func NewIptables(command string) (*Iptables, error) {
	ipt, err := iptables.New(iptables.Path(command), iptables.Timeout(lockWaitSeconds))
	if err != nil {
		return nil, fmt.Errorf("set up %s: %w", command, err)
	}
	restore, err := exec.LookPath(command + "-restore")
	if err != nil {
		return nil, fmt.Errorf("find %s-restore: %w", command, err)
	}
	out, err := exec.Command(command, "--version").Output()
	if err != nil {
		return nil, fmt.Errorf("%s --version: %w", command, err)
	}
	backend := "legacy"
	if strings.Contains(string(out), "nf_tables") {
		backend = "nf_tables"
	}
	return &Iptables{ipt: ipt, command: command, restore: restore, backend: backend}, nil
}

// Detect is the one backend detection of a node: the iptables variant
// the host already uses (iptbackend.Detect, keyed on warren's canary).
func Detect() (*Iptables, error) {
	return NewIptables(iptbackend.Detect(detectTable, detectChain))
}

// Backends of the [firewall] backend key.
const (
	BackendIptables = "iptables"
	BackendNftables = "nftables"
	BackendAuto     = "auto"
)

// Backends are the two backends New can write through, for tests that
// run against each.
var Backends = []string{BackendIptables, BackendNftables}

var (
	backendMu sync.Mutex
	backend   = BackendIptables
)

// SetBackend chooses the backend New uses for the rest of the process
// ([firewall] backend; the daemon sets it once at start, tests per test).
func SetBackend(name string) error {
	switch name {
	case BackendIptables, BackendNftables, BackendAuto:
	default:
		return fmt.Errorf("firewall backend %q: want iptables, nftables or auto", name)
	}
	backendMu.Lock()
	defer backendMu.Unlock()
	backend = name
	return nil
}

// UseBackend sets the backend for one test and restores the previous one
// when it ends.
func UseBackend(t interface{ Cleanup(func()) }, name string) error {
	prev := CurrentBackend()
	if err := SetBackend(name); err != nil {
		return err
	}
	t.Cleanup(func() { _ = SetBackend(prev) })
	return nil
}

// CurrentBackend is the backend New uses.
func CurrentBackend() string {
	backendMu.Lock()
	defer backendMu.Unlock()
	return backend
}

// chooseAuto is "auto": nftables when the kernel answers nf_tables
// requests, the host's iptables is iptables-nft, legacy iptables holds no
// rules, and the host's filter FORWARD chain accepts by policy and holds
// no rules of its own; iptables otherwise. It says why.
func chooseAuto() (string, string) {
	r, err := Detect()
	if err != nil {
		return BackendIptables, "no iptables: " + err.Error()
	}
	if r.backend != "nf_tables" {
		return BackendIptables, "the host uses legacy iptables"
	}
	if n := iptbackend.CountRules("iptables-legacy-save"); n > 0 {
		return BackendIptables, "legacy iptables holds rules"
	}
	// An accept in table inet warren ends only that table's base chain:
	// the host's own filter FORWARD (a DROP policy, Docker's chains) would
	// still judge forwarded task and service traffic. iptables keeps ours
	// in the same chain as the host's, ahead of them.
	if rules, err := r.List("filter", "FORWARD"); err != nil {
		return BackendIptables, "cannot list the host's FORWARD chain: " + err.Error()
	} else if !forwardOpen(rules) {
		return BackendIptables, "the host's iptables FORWARD chain drops or holds rules of its own"
	}
	if _, err := NewNftables(); err != nil {
		return BackendIptables, err.Error()
	}
	return BackendNftables, "kernel nf_tables and iptables-nft, no legacy rules"
}

// forwardOpen reports whether an iptables FORWARD listing has policy
// ACCEPT and no rules but warren's hooks.
func forwardOpen(rules []string) bool {
	if len(rules) == 0 || rules[0] != "-P FORWARD ACCEPT" {
		return false
	}
	for _, r := range rules[1:] {
		if !targetsOurs(r) {
			return false
		}
	}
	return true
}

// New makes a Syncer with the backend SetBackend chose (default
// iptables): for tests and tools.
func New(log *slog.Logger) (*Syncer, error) { return NewBackend(CurrentBackend(), log) }

// NewBackend makes the node's Syncer with the named backend ([firewall]
// backend: iptables, nftables or auto; "" is iptables). Whatever the
// other backend left (a node that switched) is removed first.
func NewBackend(name string, log *slog.Logger) (*Syncer, error) {
	if log == nil {
		log = slog.Default()
	}
	if name == "" {
		name = BackendIptables
	}
	if !slices.Contains([]string{BackendIptables, BackendNftables, BackendAuto}, name) {
		return nil, fmt.Errorf("firewall backend %q: want iptables, nftables or auto", name)
	}
	why := "configured"
	if name == BackendAuto {
		name, why = chooseAuto()
	}
	if name == BackendNftables {
		n, err := NewNftables()
		if err != nil {
			return nil, err
		}
		if r, err := Detect(); err == nil {
			if err := cleanupTables(r, presentTables(r)); err != nil {
				return nil, fmt.Errorf("remove warren's iptables rules before using nftables: %w", err)
			}
			sets, _ := r.Sets()
			for set := range sets {
				if err := r.DestroySet(set); err != nil {
					log.Warn("could not destroy an ipset of the iptables backend", "set", set, "err", err)
				}
			}
		}
		s := NewSyncer(n, log)
		s.log.Info("firewall backend", "backend", "nftables", "table", "inet "+NftTable, "why", why, "owned", n.Owned())
		if !n.Owned() {
			s.log.Warn("this kernel cannot keep table inet warren owned and persistent (Linux >= 6.9): `nft flush ruleset` or another process can take the rules away until the canary's next check (1 s)")
		}
		return s, nil
	}
	r, err := Detect()
	if err != nil {
		return nil, err
	}
	if err := DeleteNftTable(); err != nil {
		log.Debug("no nftables table to remove", "err", err)
	}
	s := NewSyncer(r, log)
	s.log.Info("firewall backend", "command", r.command, "backend", r.backend, "why", why)
	return s, nil
}

// presentTables are the tables of r that exist (legacy tables not loaded
// are not listed: listing would create them).
func presentTables(r *Iptables) []string {
	if r.backend != "legacy" {
		return tables
	}
	return slices.DeleteFunc(slices.Clone(tables), func(t string) bool { return !slices.Contains(iptbackend.LegacyTables(), t) })
}

// Name is the command and its backend, e.g. "iptables-nft (nf_tables)".
func (x *Iptables) Name() string { return x.command + " (" + x.backend + ")" }

// Backend is "nf_tables" or "legacy".
func (x *Iptables) Backend() string { return x.backend }

// Command is the iptables command in use.
func (x *Iptables) Command() string { return x.command }

func (x *Iptables) List(table, chain string) ([]string, error) { return x.ipt.List(table, chain) }

func (x *Iptables) ListChains(table string) ([]string, error) { return x.ipt.ListChains(table) }

func (x *Iptables) Exists(table, chain, rule string) (bool, error) {
	return x.ipt.Exists(table, chain, splitArgs(rule)...)
}

// failedLine finds the line iptables-restore names on error: "line 5
// failed" (legacy) or "line 5: CHAIN_DEL failed (...)" (nf_tables).
var failedLine = regexp.MustCompile(`line (\d+)`)

// Restore feeds text to iptables-restore --noflush: one atomic commit per
// table section.
func (x *Iptables) Restore(text []byte) error {
	cmd := exec.Command(x.restore, "--noflush", "--wait", strconv.Itoa(lockWaitSeconds))
	cmd.Stdin = bytes.NewReader(text)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(stderr.String())
		if m := failedLine.FindStringSubmatch(msg); m != nil {
			if n, _ := strconv.Atoi(m[1]); n >= 1 {
				if lines := strings.Split(string(text), "\n"); n <= len(lines) {
					msg += fmt.Sprintf(" (line %d: %q)", n, lines[n-1])
				}
			}
		}
		var exitErr *exec.ExitError
		if errors.As(err, &exitErr) {
			return fmt.Errorf("%s: %s: %w", x.restore, msg, err)
		}
		return fmt.Errorf("run %s: %w", x.restore, err)
	}
	return nil
}

// Sets lists our ipsets and their members.
func (x *Iptables) Sets() (map[string]map[netip.Prefix]bool, error) {
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

func (x *Iptables) CreateSet(name string) error {
	return netlink.IpsetCreate(name, "hash:net", netlink.IpsetCreateOptions{Replace: true})
}

func entry(p netip.Prefix) *netlink.IPSetEntry {
	return &netlink.IPSetEntry{IP: net.IP(p.Addr().AsSlice()), CIDR: uint8(p.Bits())}
}

func (x *Iptables) AddToSet(name string, p netip.Prefix) error {
	if err := netlink.IpsetAdd(name, entry(p)); err != nil && !errors.Is(err, syscall.EEXIST) {
		return err
	}
	return nil
}

func (x *Iptables) DelFromSet(name string, p netip.Prefix) error {
	if err := netlink.IpsetDel(name, entry(p)); err != nil && !isMissing(err) {
		return err
	}
	return nil
}

func (x *Iptables) DestroySet(name string) error {
	if err := netlink.IpsetDestroy(name); err != nil && !isMissing(err) {
		return err
	}
	return nil
}

func isMissing(err error) bool {
	return errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ENOEXEC) || errors.Is(err, syscall.EINVAL) ||
		strings.Contains(err.Error(), "does not exist")
}

// ebtables finds the ebtables variant to use: the nf_tables one first
// (iptables' package ships it), then whatever `ebtables` is.
func ebtables() (cmd, restore string, err error) {
	for _, c := range []string{"ebtables-nft", "ebtables"} {
		cmdPath, err := exec.LookPath(c)
		if err != nil {
			continue
		}
		restorePath, err := exec.LookPath(c + "-restore")
		if err != nil {
			continue
		}
		return cmdPath, restorePath, nil
	}
	return "", "", errors.New("ebtables-nft (Debian's iptables package) or ebtables with ebtables-restore is needed to check task source addresses: install iptables >= 1.8")
}

func (x *Iptables) BridgeRestore(text []byte) error {
	_, restore, err := ebtables()
	if err != nil {
		return err
	}
	cmd := exec.Command(restore, "--noflush")
	cmd.Stdin = bytes.NewReader(text)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%s: %w: %s", restore, err, strings.TrimSpace(string(out)))
	}
	return nil
}

func (x *Iptables) BridgeList(chain string) ([]string, error) {
	cmd, _, err := ebtables()
	if err != nil {
		return nil, err
	}
	out, err := exec.Command(cmd, "-t", "filter", "-L", chain).CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("ebtables -L %s: %w: %s", chain, err, strings.TrimSpace(string(out)))
	}
	var rules []string
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		if l := strings.TrimSpace(sc.Text()); strings.HasPrefix(l, "-") {
			rules = append(rules, l)
		}
	}
	return rules, nil
}

func (x *Iptables) BridgeExec(args ...string) error {
	cmd, _, err := ebtables()
	if err != nil {
		return err
	}
	if out, err := exec.Command(cmd, append([]string{"-t", "filter"}, args...)...).CombinedOutput(); err != nil {
		return fmt.Errorf("ebtables %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

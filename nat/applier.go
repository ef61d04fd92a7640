package nat

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/coreos/go-iptables/iptables"

	"github.com/warren-appliance/warren/internal/iptbackend"
)

// fullSyncInterval bounds how long a chain edited behind our back (without
// removing the canary) can stay wrong: partial syncs only rewrite chains
// whose desired rules changed.
const fullSyncInterval = time.Hour

// lockWaitSeconds is how long one iptables call waits for the xtables lock.
const lockWaitSeconds = 60

// jump is a rule in a built-in chain that enters one of our chains. These
// are the only rules outside WARREN-* chains, kept exactly once each.
type jump struct {
	table, chain string
	spec         []string
}

var jumps = []jump{
	{"nat", "PREROUTING", []string{"-m", "comment", "--comment", "warren service portals", "-j", chainServices}},
	{"nat", "OUTPUT", []string{"-m", "comment", "--comment", "warren service portals", "-j", chainServices}},
	{"nat", "POSTROUTING", []string{"-m", "comment", "--comment", "warren postrouting rules", "-j", chainPostrouting}},
	{"filter", "INPUT", []string{"-m", "conntrack", "--ctstate", "NEW", "-m", "comment", "--comment", "warren published ports without endpoints", "-j", chainExternal}},
	{"filter", "FORWARD", []string{"-m", "conntrack", "--ctstate", "NEW", "-m", "comment", "--comment", "warren service portals", "-j", chainServices}},
	{"filter", "FORWARD", []string{"-m", "conntrack", "--ctstate", "NEW", "-m", "comment", "--comment", "warren published ports without endpoints", "-j", chainExternal}},
	{"filter", "FORWARD", []string{"-m", "comment", "--comment", "warren forwarding rules", "-j", chainForward}},
	{"filter", "OUTPUT", []string{"-m", "conntrack", "--ctstate", "NEW", "-m", "comment", "--comment", "warren service portals", "-j", chainServices}},
}

// builtinChains are the built-in chains Cleanup searches for jumps to ours.
var builtinChains = map[string][]string{
	"filter": {"INPUT", "FORWARD", "OUTPUT"},
	"nat":    {"PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"},
}

// canarySpec is the first rule of both WARREN-SERVICES chains (see plan).
var canarySpec = []string{"-m", "comment", "--comment", "canary: gone when this chain is flushed", "-j", chainCanary}

// Applier loads rendered rules into the iptables of the network namespace
// it runs in. It is safe for concurrent use; syncs are serialized.
type Applier struct {
	xtables
	logger *slog.Logger

	mu       sync.Mutex
	applied  ruleset // what the kernel holds; nil forces a full sync
	udp      udpBackends
	lastFull time.Time
	parts    partCache
}

// xtables is one iptables variant: the command, its library handle and
// its restore tool.
type xtables struct {
	ipt     *iptables.IPTables
	command string // iptables, iptables-nft or iptables-legacy
	restore string // path of the matching iptables-restore
	backend string // "nf_tables" or "legacy"
}

func newXtables(command string) (xtables, error) {
	ipt, err := iptables.New(iptables.Path(command), iptables.Timeout(lockWaitSeconds))
	if err != nil {
		return xtables{}, fmt.Errorf("set up %s: %w", command, err)
	}
	restore, err := exec.LookPath(command + "-restore")
	if err != nil {
		return xtables{}, fmt.Errorf("find %s-restore: %w", command, err)
	}
	out, err := exec.Command(command, "--version").Output()
	if err != nil {
		return xtables{}, fmt.Errorf("%s --version: %w", command, err)
	}
	backend := "legacy"
	if strings.Contains(string(out), "nf_tables") {
		backend = "nf_tables"
	}
	return xtables{ipt: ipt, command: command, restore: restore, backend: backend}, nil
}

// NewApplier finds the iptables backend the host already uses
// (iptbackend.Detect, keyed on our canary chain) and the matching
// iptables-restore.
func NewApplier(logger *slog.Logger) (*Applier, error) {
	if logger == nil {
		logger = slog.Default()
	}
	logger = logger.With("component", "nat")
	x, err := newXtables(iptbackend.Detect("nat", chainCanary))
	if err != nil {
		return nil, err
	}
	a := &Applier{xtables: x, logger: logger, udp: newUDPBackends(nil)}
	logger.Info("iptables backend", "command", x.command, "backend", x.backend)
	return a, nil
}

// Backend is "nf_tables" or "legacy".
func (a *Applier) Backend() string { return a.backend }

// Sync makes the kernel hold exactly the rules for services. The first
// sync (and any after an error, a missing canary or an hour) writes every
// chain and deletes leftover WARREN-* chains and the jumps to them; later
// ones write only the chains that changed. Either way it is one
// iptables-restore --noflush run in which each table (nat, then filter)
// commits atomically, so traffic never sees a half-written chain. Invalid
// input is refused and the rules in place are kept.
func (a *Applier) Sync(services []Service, opts Options) error {
	if err := Validate(services, opts); err != nil {
		return err
	}
	start := time.Now()
	a.mu.Lock()
	defer a.mu.Unlock()
	desired := a.parts.plan(services, opts)

	full := a.applied == nil || time.Since(a.lastFull) > fullSyncInterval
	applied := a.applied
	var stale map[string][]string
	var builtins chainListing
	if full {
		applied = nil
		var err error
		if builtins, err = a.listChains(builtinChainKeys(tables)); err != nil {
			return err
		}
		if err := a.deleteJumps(builtins, isCurrentJump); err != nil {
			return err
		}
		if stale, err = a.ownedChains(tables); err != nil {
			return err
		}
	}
	text := restoreText(desired, applied, stale)
	restoreBytes := len(text)
	if len(text) > 0 {
		if err := a.runRestore(text); err != nil {
			a.applied = nil
			return err
		}
	}
	if full {
		if err := a.ensureJumps(builtins); err != nil {
			a.applied = nil
			return err
		}
		a.lastFull = time.Now()
	}
	a.applied = desired

	udp := newUDPBackends(services)
	if full || !udp.equal(a.udp) {
		local, err := localAddresses(opts)
		if err != nil {
			return fmt.Errorf("rules applied, but: %w", err)
		}
		n, err := deleteStaleUDPFlows(newStaleUDPFilter(a.udp, udp, local))
		if err != nil {
			return fmt.Errorf("rules applied, but: %w", err)
		}
		if n > 0 {
			a.logger.Info("deleted stale UDP conntrack entries", "count", n)
		}
		a.udp = udp
	}
	a.logger.Debug("synced", "services", len(services), "full", full, "restore_bytes", restoreBytes, "took", time.Since(start))
	return nil
}

// CanaryMissing reports whether someone removed our rules behind our back:
// a WARREN-SERVICES chain flushed or deleted, a whole table flushed, or a
// jump from a built-in chain deleted. When it returns true the next Sync
// rewrites everything.
func (a *Applier) CanaryMissing() (bool, error) {
	missing, err := a.canaryMissing()
	if err != nil {
		return false, err
	}
	if missing {
		a.mu.Lock()
		a.applied = nil
		a.mu.Unlock()
		a.logger.Warn("rules were flushed by someone else; the next sync restores them")
	}
	return missing, nil
}

// canaryMissing uses the cheapest checks measured on nf_tables with
// thousands of rules: listing an empty chain or a built-in chain, and one
// -C in WARREN-SERVICES (which is also false when the chain is gone).
func (a *Applier) canaryMissing() (bool, error) {
	for _, table := range tables {
		ok, err := a.ipt.ChainExists(table, chainCanary)
		if err != nil {
			return false, fmt.Errorf("check %s chain %s: %w", table, chainCanary, err)
		}
		if !ok {
			return true, nil
		}
		ok, err = a.ipt.Exists(table, chainServices, canarySpec...)
		if err != nil {
			return false, fmt.Errorf("check %s canary rule: %w", table, err)
		}
		if !ok {
			return true, nil
		}
	}
	listed, err := a.listChains(jumpChainKeys())
	if err != nil {
		return false, err
	}
	for _, j := range jumps {
		if countJump(listed[[2]string{j.table, j.chain}], j) == 0 {
			return true, nil
		}
	}
	return false, nil
}

// Cleanup removes every rule and chain this package owns: jumps to
// WARREN-* chains from the built-in chains, then all WARREN-* chains,
// except WARREN-TASK-* (package orchestrate's, see ownedChain). It
// cleans the backend NewApplier chose and then the other one, so a host
// that switched between nft and legacy is left clean too (legacy tables
// that were never loaded are not touched: listing would create them).
func (a *Applier) Cleanup() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.applied = nil
	a.udp = newUDPBackends(nil)
	a.parts = partCache{}

	if err := a.cleanup(tables); err != nil {
		return err
	}
	other, otherTables := "iptables-legacy", iptbackend.LegacyTables()
	if a.backend == "legacy" {
		other, otherTables = "iptables-nft", tables
	}
	if _, err := exec.LookPath(other); err == nil && len(otherTables) > 0 {
		x, err := newXtables(other)
		if err != nil {
			return err
		}
		if err := x.cleanup(otherTables); err != nil {
			return fmt.Errorf("%s: %w", other, err)
		}
	}
	a.logger.Info("removed all warren rules")
	return nil
}

// cleanup removes our jumps and chains from the given tables.
func (x *xtables) cleanup(tables []string) error {
	listed, err := x.listChains(builtinChainKeys(tables))
	if err != nil {
		return err
	}
	if err := x.deleteJumps(listed, nil); err != nil {
		return err
	}
	owned, err := x.ownedChains(tables)
	if err != nil {
		return err
	}
	if text := restoreText(ruleset{"filter": {}, "nat": {}}, nil, owned); len(text) > 0 {
		if err := x.runRestore(text); err != nil {
			return fmt.Errorf("delete warren chains: %w", err)
		}
	}
	return nil
}

// chainListing is `iptables -S` of some built-in chains, keyed by table
// and chain; line 0 of each is the policy, line i is rule number i.
type chainListing map[[2]string][]string

// listChains lists each of the given built-in chains once: on nf_tables a
// listing costs about what a single -C check costs, so one listing serves
// all checks of a chain.
func (x *xtables) listChains(chains [][2]string) (chainListing, error) {
	listed := chainListing{}
	for _, key := range chains {
		if _, ok := listed[key]; ok {
			continue
		}
		rules, err := x.ipt.List(key[0], key[1])
		if err != nil {
			return nil, fmt.Errorf("list %s %s: %w", key[0], key[1], err)
		}
		listed[key] = rules
	}
	return listed, nil
}

// builtinChainKeys are the built-in chains of tables, for listChains.
func builtinChainKeys(tables []string) [][2]string {
	var keys [][2]string
	for _, table := range tables {
		for _, chain := range builtinChains[table] {
			keys = append(keys, [2]string{table, chain})
		}
	}
	return keys
}

// jumpChainKeys are the built-in chains holding our jumps.
func jumpChainKeys() [][2]string {
	var keys [][2]string
	for _, j := range jumps {
		keys = append(keys, [2]string{j.table, j.chain})
	}
	return keys
}

// deleteJumps deletes the listed rules that jump to a chain of ours,
// except those keep accepts (keep may be nil), by rule number from the
// bottom so numbers stay valid, and drops them from listed.
func (x *xtables) deleteJumps(listed chainListing, keep func(table, chain, rule string) bool) error {
	for key, rules := range listed {
		table, chain := key[0], key[1]
		for i := len(rules) - 1; i >= 1; i-- {
			if !targetsOurs(rules[i]) || (keep != nil && keep(table, chain, rules[i])) {
				continue
			}
			if err := x.ipt.DeleteById(table, chain, i); err != nil {
				return fmt.Errorf("delete rule %d of %s %s: %w", i, table, chain, err)
			}
			rules = slices.Delete(rules, i, i+1)
		}
		listed[key] = rules
	}
	return nil
}

// isCurrentJump reports whether rule is one of the jumps table's for its
// chain. Jumps to chains of ours that are not (left by an older version)
// would keep stale chains from being deleted.
func isCurrentJump(table, chain, rule string) bool {
	for _, j := range jumps {
		if j.table == table && j.chain == chain && countJump([]string{rule}, j) == 1 {
			return true
		}
	}
	return false
}

func targetsOurs(rule string) bool {
	for _, verb := range []string{" -j ", " -g "} {
		if i := strings.Index(rule, verb+chainPrefix); i >= 0 && ownedChain(rule[i+len(verb):]) {
			return true
		}
	}
	return false
}

// ownedChain reports whether chain (or a rule text starting with it) is
// this package's: WARREN-*, except the WARREN-TASK-* chains that the task
// networking (package orchestrate) owns and the WARREN-POL* chains of the
// network policies (package netpolicy), which sync themselves.
func ownedChain(chain string) bool {
	return strings.HasPrefix(chain, chainPrefix) && !strings.HasPrefix(chain, taskChainPrefix) &&
		!strings.HasPrefix(chain, policyChainPrefix)
}

// ensureJumps makes each jump from a built-in chain exist exactly once,
// inserting missing ones at the top (before host rules that might drop)
// and deleting duplicates, never leaving a moment without one. listed is
// the current content of the built-in chains holding jumps.
func (x *xtables) ensureJumps(listed chainListing) error {
	// Insert missing jumps in reverse, so each chain's jumps end up at the
	// top in the order of the jumps table.
	for i := len(jumps) - 1; i >= 0; i-- {
		j := jumps[i]
		if countJump(listed[[2]string{j.table, j.chain}], j) > 0 {
			continue
		}
		if err := x.ipt.Insert(j.table, j.chain, 1, j.spec...); err != nil {
			return fmt.Errorf("insert jump from %s %s to %s: %w", j.table, j.chain, j.spec[len(j.spec)-1], err)
		}
	}
	for _, j := range jumps {
		for n := countJump(listed[[2]string{j.table, j.chain}], j); n > 1; n-- {
			// Delete removes the first copy; another stays in place.
			if err := x.ipt.Delete(j.table, j.chain, j.spec...); err != nil {
				return fmt.Errorf("delete duplicate jump from %s %s: %w", j.table, j.chain, err)
			}
		}
	}
	return nil
}

// countJump counts the copies of j among rules (`iptables -S` lines),
// comparing target and comment: iptables prints matches in its own
// canonical form, not necessarily as given.
func countJump(rules []string, j jump) int {
	target := "-j " + j.spec[len(j.spec)-1]
	comment := ""
	for i, s := range j.spec {
		if s == "--comment" {
			comment = `"` + j.spec[i+1] + `"`
		}
	}
	n := 0
	for _, r := range rules {
		if strings.HasSuffix(r, target) && strings.Contains(r, comment) {
			n++
		}
	}
	return n
}

// ownedChains lists the WARREN-* chains present in each of tables.
func (x *xtables) ownedChains(tables []string) (map[string][]string, error) {
	owned := map[string][]string{}
	for _, table := range tables {
		chains, err := x.ipt.ListChains(table)
		if err != nil {
			return nil, fmt.Errorf("list %s chains: %w", table, err)
		}
		for _, c := range chains {
			if ownedChain(c) {
				owned[table] = append(owned[table], c)
			}
		}
	}
	return owned, nil
}

// failedLine finds the line iptables-restore names on error: "line 5
// failed" (legacy) or "line 5: CHAIN_DEL failed (...)" (nf_tables).
var failedLine = regexp.MustCompile(`line (\d+)`)

// runRestore feeds text to iptables-restore --noflush: one atomic
// commit per table section.
func (x *xtables) runRestore(text []byte) error {
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

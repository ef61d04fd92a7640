package nat

import (
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/warren-appliance/warren/hostfw"
)

// jump is a rule in a built-in chain that enters one of our chains.
type jump struct {
	table, chain string
	spec         []string
}

// jumps are this package's hooks, in order within each built-in chain
// (package hostfw puts the policy and task hooks before them).
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

// canarySpec is the first rule of both WARREN-SERVICES chains (see plan).
var canarySpec = []string{"-m", "comment", "--comment", "canary: gone when this chain is flushed", "-j", chainCanary}

// ruleText is spec as one rule of iptables text (comments quoted).
func ruleText(spec []string) string {
	out := make([]string, len(spec))
	for i, a := range spec {
		out[i] = a
		if i > 0 && spec[i-1] == "--comment" {
			out[i] = fmt.Sprintf("%q", a)
		}
	}
	return strings.Join(out, " ")
}

// part is what package hostfw writes for rs: the chains, the hooks and
// the canaries.
func part(rs ruleset) hostfw.Part {
	p := hostfw.Part{Tables: map[string]hostfw.Chains{}}
	for t, chains := range rs {
		p.Tables[t] = hostfw.Chains(chains)
	}
	for _, j := range jumps {
		p.Hooks = append(p.Hooks, hostfw.Hook{Table: j.table, Chain: j.chain, Rule: ruleText(j.spec)})
	}
	for _, t := range tables {
		p.Canaries = append(p.Canaries, hostfw.Hook{Table: t, Chain: chainServices, Rule: ruleText(canarySpec)})
	}
	return p
}

// Applier plans the service rules and hands them to the node's one
// firewall owner (package hostfw), then deletes stale UDP conntrack
// entries. It is safe for concurrent use; syncs are serialized.
type Applier struct {
	fw      *hostfw.Syncer
	logger  *slog.Logger
	command string // the iptables command, when fw writes through one
	backend string

	mu     sync.Mutex
	synced bool // a sync went through since the start or the last error
	udp    udpBackends
	parts  partCache
}

// NewApplier is an Applier with a Syncer of its own (the backend the host
// already uses, see hostfw.Detect): for tests and tools that write
// service rules alone.
func NewApplier(logger *slog.Logger) (*Applier, error) {
	fw, err := hostfw.New(logger)
	if err != nil {
		return nil, err
	}
	return NewApplierWith(fw, logger), nil
}

// NewApplierWith writes through fw, the node's firewall owner.
func NewApplierWith(fw *hostfw.Syncer, logger *slog.Logger) *Applier {
	if logger == nil {
		logger = slog.Default()
	}
	a := &Applier{fw: fw, logger: logger.With("component", "nat"), udp: newUDPBackends(nil)}
	if x, ok := fw.Runner().(*hostfw.Iptables); ok {
		a.command, a.backend = x.Command(), x.Backend()
	}
	return a
}

// Backend is "nf_tables" or "legacy" ("" for another runner).
func (a *Applier) Backend() string { return a.backend }

// Sync makes the kernel hold exactly the rules for services, through the
// firewall owner's sync: a chain is written only when its rules changed
// (a full rewrite after an error, a flush or an hour), all tables in one
// iptables-restore --noflush run in which each table commits atomically,
// so traffic never sees a half-written chain. Invalid input is refused
// and the rules in place are kept.
func (a *Applier) Sync(services []Service, opts Options) error {
	if err := Validate(services, opts); err != nil {
		return err
	}
	start := time.Now()
	a.mu.Lock()
	defer a.mu.Unlock()
	desired := a.parts.plan(services, opts)
	if err := a.fw.SetPart(hostfw.OwnerNAT, part(desired)); err != nil {
		a.synced = false
		return err
	}
	full := !a.synced
	a.synced = true

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
	a.logger.Debug("synced", "services", len(services), "took", time.Since(start))
	return nil
}

// CanaryMissing runs the firewall owner's canary (hostfw.Syncer.Check):
// it reports whether someone removed or reordered our rules behind our
// back (a WARREN-SERVICES chain flushed, a whole table flushed, a hook
// deleted), in which case everything was written again already.
func (a *Applier) CanaryMissing() (bool, error) {
	return a.fw.Check(true)
}

// Cleanup removes every rule and chain of the service rules (the hooks
// and WARREN-* chains of this package; not the task or policy ones).
func (a *Applier) Cleanup() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.synced = false
	a.udp = newUDPBackends(nil)
	a.parts = partCache{}
	if err := a.fw.RemovePart(hostfw.OwnerNAT); err != nil {
		return err
	}
	a.logger.Info("removed all warren service rules")
	return nil
}

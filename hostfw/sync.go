package hostfw

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"
)

// Runner is the kernel side of a Syncer: one iptables variant, the
// address sets and the bridge table. Every method works on the network
// namespace the process runs in.
type Runner interface {
	// List is `iptables -t table -S chain`: line 0 is the policy (-P) or
	// declaration (-N), then "-A chain ..." per rule.
	List(table, chain string) ([]string, error)
	// ListChains names every chain of table (built-in ones included).
	ListChains(table string) ([]string, error)
	// Exists is `iptables -t table -C chain rule`.
	Exists(table, chain, rule string) (bool, error)
	// Restore runs iptables-restore --noflush on text.
	Restore(text []byte) error

	// Sets lists the sets named SetPrefix* with their members.
	Sets() (map[string]map[netip.Prefix]bool, error)
	CreateSet(name string) error
	AddToSet(name string, p netip.Prefix) error
	DelFromSet(name string, p netip.Prefix) error
	DestroySet(name string) error

	// BridgeRestore runs ebtables-restore --noflush on text.
	BridgeRestore(text []byte) error
	// BridgeList lists a bridge filter chain (ebtables -S CHAIN style:
	// one "-A CHAIN ..." line per rule); a missing chain is an error.
	BridgeList(chain string) ([]string, error)
	// BridgeExec runs ebtables -t filter with args.
	BridgeExec(args ...string) error

	// Name says which variant this is, for logs.
	Name() string
}

// fullSyncInterval bounds how long a chain edited behind our back (with
// the hooks and canaries left in place) can stay wrong.
const fullSyncInterval = time.Hour

// Syncer writes the parts of every owner. Safe for concurrent use; syncs
// are serialised.
type Syncer struct {
	r   Runner
	log *slog.Logger

	mu       sync.Mutex
	parts    map[string]Part
	applied  map[string]Chains      // table -> chains as the kernel holds them; nil: full sync next
	hooked   map[[2]string][]string // the hooks the last sync wrote
	members  map[string]map[netip.Prefix]bool
	nftSets  []Set  // the sets the last nftables sync wrote
	bridge   []byte // bridge text last written; nil: write at the next sync
	lastFull time.Time
	syncs    int
}

// NewSyncer makes a Syncer that writes through r.
func NewSyncer(r Runner, log *slog.Logger) *Syncer {
	if log == nil {
		log = slog.Default()
	}
	return &Syncer{r: r, log: log.With("component", "hostfw", "runner", r.Name()), parts: map[string]Part{}}
}

// Runner is the runner the Syncer writes through.
func (s *Syncer) Runner() Runner { return s.r }

// SetPart replaces owner's part and syncs everything.
func (s *Syncer) SetPart(owner string, p Part) error {
	if !slices.Contains(owners, owner) {
		return fmt.Errorf("hostfw: unknown owner %q", owner)
	}
	if err := checkPart(owner, p); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, had := s.parts[owner]; !had {
		// An owner's first part: a full sync finds what an earlier run
		// (or version) left of its chains and hooks, and removes it.
		s.applied = nil
	}
	s.parts[owner] = p
	return s.syncLocked()
}

// checkPart refuses a part that names chains outside its owner's part of
// the namespace (see ownerOf) or hooks into chains that are not built-in:
// two owners must never write the same chain.
func checkPart(owner string, p Part) error {
	for t, chains := range p.Tables {
		if !slices.Contains(tables, t) {
			return fmt.Errorf("hostfw: %s part: unknown table %q", owner, t)
		}
		for c := range chains {
			if ownerOf(c) != owner {
				return fmt.Errorf("hostfw: %s part: chain %s/%s is not in its namespace", owner, t, c)
			}
		}
	}
	for _, h := range p.Hooks {
		target, comment := hookKey(h.Rule)
		if !slices.Contains(builtinChains[h.Table], h.Chain) || ownerOf(target) != owner || comment == "" {
			return fmt.Errorf("hostfw: %s part: hook %s/%s %q must jump from a built-in chain to one of its chains, with a comment", owner, h.Table, h.Chain, h.Rule)
		}
	}
	return nil
}

// RemovePart takes owner's part out of the kernel: its hooks, chains,
// sets and bridge chain.
func (s *Syncer) RemovePart(owner string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !slices.Contains(owners, owner) {
		return fmt.Errorf("hostfw: unknown owner %q", owner)
	}
	// An empty part of the owner: the full sync deletes whatever the
	// owner had (its chains and sets are found by name), then the part
	// goes.
	s.parts[owner] = Part{}
	s.applied = nil
	err := s.syncLocked()
	if err == nil && owner == OwnerTasks {
		err = removeBridge(s.r, bridgeHooks)
		s.bridge = nil
	}
	delete(s.parts, owner)
	return err
}

// Sync writes every part again, rewriting everything when force is set.
func (s *Syncer) Sync(force bool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if force {
		s.applied, s.bridge = nil, nil
	}
	return s.syncLocked()
}

// Syncs counts the syncs that ran iptables-restore (for tests).
func (s *Syncer) Syncs() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.syncs
}

// desired merges the parts: tables, hooks per built-in chain in owner
// order, sets.
func (s *Syncer) desired() (map[string]Chains, map[[2]string][]string, []Set) {
	chains := map[string]Chains{}
	for _, t := range tables {
		chains[t] = Chains{}
	}
	hooks := map[[2]string][]string{}
	var sets []Set
	for _, o := range owners {
		p, ok := s.parts[o]
		if !ok {
			continue
		}
		for t, cs := range p.Tables {
			if chains[t] == nil {
				chains[t] = Chains{}
			}
			for c, rules := range cs {
				chains[t][c] = rules
			}
		}
		for _, h := range p.Hooks {
			k := [2]string{h.Table, h.Chain}
			hooks[k] = append(hooks[k], h.Rule)
		}
		sets = append(sets, p.Sets...)
	}
	return chains, hooks, sets
}

// registered reports whether owner has a part: only registered owners'
// stray chains and hooks are deleted, so a part not set yet (at start,
// before the first map) keeps what a previous run left for it.
func (s *Syncer) registered(chain string) bool {
	_, ok := s.parts[ownerOf(chain)]
	return ok
}

func (s *Syncer) syncLocked() error {
	err := s.sync()
	if err != nil {
		s.applied, s.members, s.bridge = nil, nil, nil
	}
	return err
}

func (s *Syncer) sync() error {
	if w, ok := s.r.(tableWriter); ok {
		return s.syncNft(w)
	}
	start := time.Now()
	chains, hooks, sets := s.desired()
	full := s.applied == nil || time.Since(s.lastFull) > fullSyncInterval

	// 1. Sets first: rules may reference them.
	if err := s.syncSets(sets); err != nil {
		return err
	}

	// 2. One restore: chains, hooks, stale chains.
	listed := map[[2]string][]string{}
	var keys [][2]string
	if full {
		for _, t := range tables {
			for _, c := range builtinChains[t] {
				keys = append(keys, [2]string{t, c})
			}
		}
	} else {
		// A partial sync checks the FORWARD chains, where policies and
		// accepting rules meet (two listings); the canary's slow check and
		// every full sync look at every hooked chain.
		// Chains whose hooks changed since the last sync are looked at too.
		for k, want := range hooks {
			if k[1] == "FORWARD" || !slices.Equal(want, s.hooked[k]) {
				keys = append(keys, k)
			}
		}
		for k := range s.hooked {
			if _, ok := hooks[k]; !ok {
				keys = append(keys, k) // its hooks are gone: delete them
			}
		}
	}
	for _, k := range keys {
		rules, err := s.r.List(k[0], k[1])
		if err != nil {
			return fmt.Errorf("list %s %s: %w", k[0], k[1], err)
		}
		listed[k] = rules
	}
	var stale map[string][]string
	if full {
		stale = map[string][]string{}
		for _, t := range tables {
			names, err := s.r.ListChains(t)
			if err != nil {
				return fmt.Errorf("list %s chains: %w", t, err)
			}
			for _, c := range names {
				if _, want := chains[t][c]; !want && ownerOf(c) != "" && s.registered(c) {
					stale[t] = append(stale[t], c)
				}
			}
		}
	}
	applied := s.applied
	if full {
		applied = nil
	}
	text := s.restoreText(chains, applied, hooks, listed, stale)
	if len(text) > 0 {
		if err := s.r.Restore(text); err != nil {
			return err
		}
		s.syncs++
	}
	s.applied, s.hooked = chains, hooks
	if full {
		s.lastFull = time.Now()
	}

	// 3. The bridge chain.
	if err := s.syncBridge(full); err != nil {
		return err
	}

	// 4. Sets nothing uses.
	want := map[string]bool{}
	for _, st := range sets {
		want[st.Name] = true
	}
	_, setsOwned := s.parts[OwnerPolicy] // the sets are the policies'
	for name := range s.members {
		if want[name] || !setsOwned {
			continue
		}
		if err := s.r.DestroySet(name); err != nil {
			return fmt.Errorf("destroy unused set %s: %w", name, err)
		}
		delete(s.members, name)
	}
	s.log.Debug("synced", "full", full, "restore_bytes", len(text), "took", time.Since(start))
	return nil
}

func (s *Syncer) syncSets(sets []Set) error {
	if s.members == nil {
		have, err := s.r.Sets()
		if err != nil {
			return fmt.Errorf("list sets: %w", err)
		}
		s.members = have
	}
	for _, st := range sets {
		have, ok := s.members[st.Name]
		if !ok {
			if err := s.r.CreateSet(st.Name); err != nil {
				return fmt.Errorf("create set %s (%s): %w", st.Name, st.Comment, err)
			}
			have = map[netip.Prefix]bool{}
			s.members[st.Name] = have
		}
		keep := make(map[netip.Prefix]bool, len(st.Members))
		for _, m := range st.Members {
			keep[m] = true
			if have[m] {
				continue
			}
			if err := s.r.AddToSet(st.Name, m); err != nil {
				return fmt.Errorf("add %s to set %s (%s): %w", m, st.Name, st.Comment, err)
			}
			have[m] = true
		}
		for m := range have {
			if keep[m] {
				continue
			}
			if err := s.r.DelFromSet(st.Name, m); err != nil {
				return fmt.Errorf("remove %s from set %s (%s): %w", m, st.Name, st.Comment, err)
			}
			delete(have, m)
		}
	}
	return nil
}

// restoreText is the one transaction of a sync. Per table: the chains
// that changed since applied (all with applied == nil) are declared and
// filled; each built-in chain whose hooks are not exactly the first
// rules in hook order gets its hooks deleted and inserted again at the
// top, in the same table commit (so no packet sees the chain without
// them or in another order); then chains nobody wants are deleted.
func (s *Syncer) restoreText(chains, applied map[string]Chains, hooks, listed map[[2]string][]string, stale map[string][]string) []byte {
	var buf bytes.Buffer
	for _, t := range tables {
		want := chains[t]
		var write, remove []string
		for _, c := range slices.Sorted(maps.Keys(want)) {
			if applied != nil {
				if have, ok := applied[t][c]; ok && slices.Equal(have, want[c]) {
					continue
				}
			}
			write = append(write, c)
		}
		for c := range applied[t] {
			if _, ok := want[c]; !ok {
				remove = append(remove, c)
			}
		}
		for _, c := range stale[t] {
			if !slices.Contains(remove, c) {
				remove = append(remove, c)
			}
		}
		slices.Sort(remove)
		var hookLines []string
		for _, c := range builtinChains[t] {
			k := [2]string{t, c}
			rules, ok := listed[k]
			if !ok {
				continue
			}
			hookLines = append(hookLines, s.fixHooks(c, rules, hooks[k])...)
		}
		if len(write) == 0 && len(remove) == 0 && len(hookLines) == 0 {
			continue
		}
		buf.WriteString("*" + t + "\n")
		for _, c := range append(slices.Clone(write), remove...) {
			buf.WriteString(":" + c + " - [0:0]\n")
		}
		for _, c := range write {
			for _, rule := range want[c] {
				buf.WriteString("-A " + c + " " + rule + "\n")
			}
		}
		for _, l := range hookLines {
			buf.WriteString(l + "\n")
		}
		for _, c := range remove {
			buf.WriteString("-X " + c + "\n")
		}
		buf.WriteString("COMMIT\n")
	}
	return buf.Bytes()
}

// fixHooks returns the restore lines that make want the first rules of
// chain, in order, and delete every other rule jumping to a chain of a
// registered owner; none when it is so already. rules is the chain's
// listing.
func (s *Syncer) fixHooks(chain string, rules, want []string) []string {
	// Hooks of owners without a part in this syncer (not registered yet)
	// at the top stay there: ours go right after them.
	lead := 0
	for lead+1 < len(rules) && targetsOurs(rules[lead+1]) && !s.mine(rules[lead+1], want) {
		lead++
	}
	var ours []int // rule numbers (1-based) of rules jumping to ours
	for i := 1; i < len(rules); i++ {
		if targetsOurs(rules[i]) && s.mine(rules[i], want) {
			ours = append(ours, i)
		}
	}
	ok := len(ours) == len(want)
	for j, w := range want {
		if !ok {
			break
		}
		ok = ours[j] == lead+j+1 && sameHook(rules[ours[j]], w)
	}
	if ok {
		return nil
	}
	var out []string
	for _, i := range ours {
		out = append(out, "-D "+chain+" "+strings.TrimPrefix(rules[i], "-A "+chain+" "))
	}
	for j := len(want) - 1; j >= 0; j-- {
		out = append(out, fmt.Sprintf("-I %s %d %s", chain, lead+1, want[j]))
	}
	return out
}

// mine reports whether a listed rule jumping to a chain of ours belongs to
// a registered owner (or is one of want).
func (s *Syncer) mine(rule string, want []string) bool {
	target, _ := hookKey(rule)
	return s.registered(target) || slices.ContainsFunc(want, func(w string) bool { return sameHook(rule, w) })
}

// Check is the canary: it lists the FORWARD chains holding hooks (slow:
// every built-in chain holding hooks, the parts' canary rules and the
// bridge chain), and when anything is missing or out of order runs a
// full sync, the same sync that wrote the rules. It reports whether it
// had to.
func (s *Syncer) Check(slow bool) (bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.applied == nil {
		// The last sync failed (or none ran): retry it.
		return true, s.syncLocked()
	}
	_, hooks, _ := s.desired()
	broken := ""
	if w, ok := s.r.(tableWriter); ok {
		intact, err := w.Intact(slow)
		if err != nil {
			return false, err
		}
		if !intact {
			broken = "table inet " + NftTable
		} else if d, ok := w.(interface{ DeleteStale() error }); ok && slow {
			if err := d.DeleteStale(); err != nil {
				s.log.Warn("deleting emptied nftables chains", "err", err)
			}
		}
		hooks = nil
	}
	for _, k := range slices.SortedFunc(maps.Keys(hooks), func(a, b [2]string) int { return strings.Compare(a[0]+a[1], b[0]+b[1]) }) {
		want := hooks[k]
		if !slow && k[1] != "FORWARD" {
			continue // the quick check: FORWARD, where policies are at stake
		}
		rules, err := s.r.List(k[0], k[1])
		if err != nil {
			return false, fmt.Errorf("list %s %s: %w", k[0], k[1], err)
		}
		if len(s.fixHooks(k[1], rules, want)) > 0 {
			broken = k[0] + " " + k[1]
			break
		}
	}
	if _, nft := s.r.(tableWriter); broken == "" && slow && !nft { // nftables: Intact counted every chain's rules
		for _, o := range owners {
			for _, c := range s.parts[o].Canaries {
				ok, err := s.r.Exists(c.Table, c.Chain, c.Rule)
				if err != nil || !ok {
					broken = c.Table + " " + c.Chain
					break
				}
			}
		}
	}
	if broken == "" && slow {
		if b := s.bridgeBroken(); b != "" {
			// The bridge chain is a table of its own (ebtables): write it
			// again alone. A full sync would rewrite warren's other
			// tables too; with nftables that replaces every chain, and
			// the kernel swaps chains one by one: a packet could pass
			// between an emptied old chain and a not yet filled new one.
			s.log.Warn("warren's rules were changed by someone else; restoring them", "chain", b)
			return true, s.syncBridge(true)
		}
	}
	if broken == "" {
		return false, nil
	}
	s.log.Warn("warren's rules were changed by someone else; restoring them", "chain", broken)
	s.applied, s.bridge = nil, nil
	return true, s.syncLocked()
}

// bridgeBroken names what is wrong with the bridge chain or its hooks
// ("" when all is in place).
func (s *Syncer) bridgeBroken() string {
	for _, o := range owners {
		p, ok := s.parts[o]
		if !ok || p.Bridge == nil {
			continue
		}
		if rules, err := s.r.BridgeList(BridgeChain); err != nil || len(rules) != len(p.Bridge) {
			return "bridge " + BridgeChain
		}
		for _, c := range p.BridgeHooks {
			if rules, err := s.r.BridgeList(c); err != nil || len(rules) == 0 || !strings.HasSuffix(rules[0], "-j "+BridgeChain) {
				return "bridge " + c
			}
		}
	}
	return ""
}

// BridgeText is the ebtables-restore input that makes BridgeChain hold
// exactly rules.
func BridgeText(rules []string) []byte {
	var b strings.Builder
	b.WriteString("*filter\n:" + BridgeChain + " RETURN\n")
	for _, r := range rules {
		b.WriteString("-A " + BridgeChain + " " + r + "\n")
	}
	b.WriteString("COMMIT\n")
	return []byte(b.String())
}

func (s *Syncer) syncBridge(full bool) error {
	var p *Part
	for _, o := range owners {
		if part, ok := s.parts[o]; ok && part.Bridge != nil {
			p = &part
			break
		}
	}
	if p == nil {
		return nil
	}
	text := BridgeText(p.Bridge)
	if !full && bytes.Equal(text, s.bridge) {
		return nil
	}
	if err := s.r.BridgeRestore(text); err != nil {
		return fmt.Errorf("write bridge chain %s: %w", BridgeChain, err)
	}
	s.bridge = text
	for _, c := range p.BridgeHooks {
		rules, err := s.r.BridgeList(c)
		if err != nil {
			return fmt.Errorf("list bridge %s: %w", c, err)
		}
		first := len(rules) > 0 && strings.HasSuffix(rules[0], "-j "+BridgeChain)
		var copies []int // positions of the hooks there are
		for i, r := range rules {
			if strings.HasSuffix(r, "-j "+BridgeChain) {
				copies = append(copies, i+1)
			}
		}
		if first && len(copies) == 1 {
			continue
		}
		// The new hook goes in first, then the old copies (one place
		// further down now) go, from the bottom: never a moment without.
		if err := s.r.BridgeExec("-I", c, "1", "-j", BridgeChain); err != nil {
			return fmt.Errorf("hook %s into bridge %s: %w", BridgeChain, c, err)
		}
		for i := len(copies) - 1; i >= 0; i-- {
			if err := s.r.BridgeExec("-D", c, fmt.Sprint(copies[i]+1)); err != nil {
				return fmt.Errorf("delete a stray hook of bridge %s: %w", c, err)
			}
		}
	}
	return nil
}

// removeBridge unhooks and deletes BridgeChain; nothing when it is gone.
func removeBridge(r Runner, hooks []string) error {
	if _, err := r.BridgeList(BridgeChain); err != nil {
		return nil
	}
	var errs []error
	for _, c := range hooks {
		rules, err := r.BridgeList(c)
		if err != nil {
			continue
		}
		for i := len(rules) - 1; i >= 0; i-- {
			if strings.HasSuffix(rules[i], "-j "+BridgeChain) {
				if err := r.BridgeExec("-D", c, fmt.Sprint(i+1)); err != nil {
					errs = append(errs, fmt.Errorf("unhook %s from bridge %s: %w", BridgeChain, c, err))
				}
			}
		}
	}
	for _, args := range [][]string{{"-F", BridgeChain}, {"-X", BridgeChain}} {
		if err := r.BridgeExec(args...); err != nil {
			errs = append(errs, fmt.Errorf("remove bridge chain %s: %w", BridgeChain, err))
		}
	}
	return errors.Join(errs...)
}

package hostfw

import (
	"cmp"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// NftTable is the one nftables table warren writes with the nftables
// backend: family inet, so one table serves the filter, nat and mangle
// hooks (inet nat needs Linux >= 5.2). Our base chains only jump to our
// chains for IPv4 packets, as iptables (IPv4 only) did.
const NftTable = "warren"

// nftBase is where an iptables built-in chain sits in table inet warren:
// its chain type, hook and priority (the priorities of iptables' own
// tables: mangle -150, dstnat -100, filter 0, srcnat 100).
type nftBase struct {
	typ  nftables.ChainType
	hook *nftables.ChainHook
	prio int32
}

var nftBases = map[[2]string]nftBase{
	{"mangle", "FORWARD"}:  {nftables.ChainTypeFilter, nftables.ChainHookForward, -150},
	{"filter", "INPUT"}:    {nftables.ChainTypeFilter, nftables.ChainHookInput, 0},
	{"filter", "FORWARD"}:  {nftables.ChainTypeFilter, nftables.ChainHookForward, 0},
	{"filter", "OUTPUT"}:   {nftables.ChainTypeFilter, nftables.ChainHookOutput, 0},
	{"nat", "PREROUTING"}:  {nftables.ChainTypeNAT, nftables.ChainHookPrerouting, -100},
	{"nat", "INPUT"}:       {nftables.ChainTypeNAT, nftables.ChainHookInput, 100},
	{"nat", "OUTPUT"}:      {nftables.ChainTypeNAT, nftables.ChainHookOutput, -100},
	{"nat", "POSTROUTING"}: {nftables.ChainTypeNAT, nftables.ChainHookPostrouting, 100},
}

// nftPlan is the whole table, built (and every rule translated) before
// anything is written: a rule the translator cannot express fails the
// sync with nothing applied.
type nftPlan struct {
	table  *nftables.Table
	sets   []*nftables.Set
	elems  map[string][]nftables.SetElement
	chains []*nftables.Chain
	rules  []nftPlanRule
	// count is the number of rules per chain, for the canary.
	count map[string]int
	// lastID is the highest set ID the plan gave out.
	lastID uint32
}

// nftPlanRule is a rule of the plan and the chain it goes in.
type nftPlanRule struct {
	chain *nftables.Chain
	nftOut
}

// setElements turns prefixes into the elements of an interval set:
// overlapping and adjacent prefixes are merged (the kernel refuses
// overlapping intervals), each range is a start and an end (exclusive)
// element; a range up to 255.255.255.255 has no end.
func setElements(members []netip.Prefix) []nftables.SetElement {
	type rng struct{ lo, hi uint64 } // hi exclusive
	var rs []rng
	for _, p := range members {
		if !p.Addr().Is4() {
			continue
		}
		p = p.Masked()
		b := p.Addr().As4()
		lo := uint64(b[0])<<24 | uint64(b[1])<<16 | uint64(b[2])<<8 | uint64(b[3])
		rs = append(rs, rng{lo, lo + 1<<(32-p.Bits())})
	}
	slices.SortFunc(rs, func(a, b rng) int { return cmp.Compare(a.lo, b.lo) })
	var merged []rng
	for _, r := range rs {
		if n := len(merged); n > 0 && r.lo <= merged[n-1].hi {
			merged[n-1].hi = max(merged[n-1].hi, r.hi)
			continue
		}
		merged = append(merged, r)
	}
	key := func(v uint64) []byte { return []byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)} }
	var out []nftables.SetElement
	for _, r := range merged {
		out = append(out, nftables.SetElement{Key: key(r.lo)})
		if r.hi < 1<<32 {
			out = append(out, nftables.SetElement{Key: key(r.hi), IntervalEnd: true})
		}
	}
	return out
}

// buildNft translates the merged parts into table inet warren.
func buildNft(chains map[string]Chains, hooks map[[2]string][]string, sets []Set) (*nftPlan, error) {
	t := &nftables.Table{Family: nftables.TableFamilyINet, Name: NftTable}
	p := &nftPlan{table: t, elems: map[string][]nftables.SetElement{}, count: map[string]int{}}
	byName := map[string]*nftables.Set{}
	id := uint32(0)
	for _, st := range sets {
		if byName[st.Name] != nil {
			continue
		}
		id++
		s := &nftables.Set{Table: t, Name: st.Name, ID: id, KeyType: nftables.TypeIPAddr, Interval: true}
		byName[st.Name] = s
		p.sets = append(p.sets, s)
		p.elems[st.Name] = setElements(st.Members)
	}
	var all []string
	for _, tbl := range tables {
		for _, c := range slices.Sorted(maps.Keys(chains[tbl])) {
			all = append(all, chains[tbl][c]...)
		}
	}
	recent, err := recentTimeouts(all)
	if err != nil {
		return nil, fmt.Errorf("nftables: %w", err)
	}
	for _, name := range slices.Sorted(maps.Keys(recent)) {
		id++
		s := &nftables.Set{Table: t, Name: recentSetName(name), ID: id, KeyType: nftables.TypeIPAddr,
			Dynamic: true, HasTimeout: true, Timeout: recent[name]}
		byName[s.Name] = s
		p.sets = append(p.sets, s)
	}
	newID := func() uint32 { id++; return id }
	add := func(ctx *nftCtx, ch *nftables.Chain, rules []string, base bool) error {
		outs, err := ctx.chainRules(rules, newID)
		if err != nil {
			return fmt.Errorf("%s: %w", ch.Name, err)
		}
		for _, o := range outs {
			if base { // base chains: IPv4 only, as iptables
				o.exprs = ipv4Only(o.exprs)
			}
			p.rules = append(p.rules, nftPlanRule{chain: ch, nftOut: o})
		}
		p.count[ch.Name] += len(outs)
		return nil
	}
	// Regular chains first (a jump needs its target), then the base chains.
	for _, tbl := range tables {
		ctx := &nftCtx{table: t, sets: byName, family: tbl}
		names := slices.Sorted(maps.Keys(chains[tbl]))
		byChain := map[string]*nftables.Chain{}
		for _, c := range names {
			ch := &nftables.Chain{Table: t, Name: nftChainName(tbl, c)}
			byChain[c] = ch
			p.chains = append(p.chains, ch)
			p.count[ch.Name] += 0
		}
		for _, c := range names {
			if err := add(ctx, byChain[c], chains[tbl][c], false); err != nil {
				return nil, err
			}
		}
	}
	keys := slices.SortedFunc(maps.Keys(hooks), func(a, b [2]string) int { return cmp.Compare(a[0]+" "+a[1], b[0]+" "+b[1]) })
	for _, k := range keys {
		b, ok := nftBases[k]
		if !ok {
			return nil, fmt.Errorf("nftables: no base chain for %s %s", k[0], k[1])
		}
		prio := nftables.ChainPriority(b.prio)
		accept := nftables.ChainPolicyAccept
		ch := &nftables.Chain{Table: t, Name: nftChainName(k[0], k[1]), Type: b.typ, Hooknum: b.hook, Priority: &prio, Policy: &accept}
		p.chains = append(p.chains, ch)
		ctx := &nftCtx{table: t, sets: byName, family: k[0]}
		if err := add(ctx, ch, hooks[k], true); err != nil { // in hook order: the policy's first
			return nil, err
		}
	}
	p.lastID = id
	return p, nil
}

// carryRecent puts into the plan what session affinity has learned: the
// elements the plan's recent sets hold in the kernel now, each with the
// time it has left (at most the set's timeout). A full write recreates
// those sets; written back, clients stay on their endpoints, as
// xt_recent's lists outlive iptables rule rewrites. A set that cannot be
// read (no table yet, a new set) starts empty.
func (p *nftPlan) carryRecent() {
	var c *nftables.Conn
	for _, s := range p.sets {
		if !s.Dynamic {
			continue
		}
		if c == nil {
			var err error
			if c, err = nftables.New(); err != nil {
				return
			}
			if _, err := c.ListTableOfFamily(NftTable, nftables.TableFamilyINet); err != nil {
				return
			}
		}
		live, err := c.GetSetElements(&nftables.Set{Table: p.table, Name: s.Name})
		if err != nil {
			continue
		}
		for _, e := range live {
			left := e.Expires
			if left <= 0 || left > s.Timeout {
				left = s.Timeout
			}
			p.elems[s.Name] = append(p.elems[s.Name], nftables.SetElement{Key: e.Key, Timeout: left})
		}
	}
}

// Nftables is the Runner of the nftables backend: one table of our own,
// table inet warren, replaced in one netlink batch per sync, with the
// bridge chain through ebtables (as with iptables: Debian's ebtables is
// ebtables-nft, itself nf_tables).
type Nftables struct {
	bridge Iptables // only its ebtables methods
	count  map[string]int
	// What the last write left in the table (nil: write it all next).
	prev *nftState
	// setIDs numbers the sets added in a batch.
	setIDs uint32
	// gen is the nf_tables ruleset generation after our last write or
	// last check that found the table intact (0: unknown): any commit by
	// anyone changes it, so an unchanged one means an unchanged table.
	gen uint32
	// sock owns the table and carries every write; tableFlags make it
	// owned and persistent (nftowner.go). Both zero where the kernel
	// cannot: then each batch has a socket of its own.
	sock       *nfSocket
	tableFlags uint32
	// stale are the chains update emptied and DeleteStale has yet to
	// delete, with when they were emptied.
	stale map[string]time.Time
}

// batch is a new batch for this table.
func (n *Nftables) batch() (*nftBatch, error) {
	b, err := newNftBatch()
	if err != nil {
		return nil, err
	}
	b.tableFlags = n.tableFlags
	return b, nil
}

// Owned reports whether the table is owned by this process (so `nft
// flush ruleset` and other processes leave it alone).
func (n *Nftables) Owned() bool { return n.sock != nil }

// nftGen is the ruleset generation (NFT_MSG_GETGEN).
func nftGen() (uint32, error) {
	sock, err := openNfSocket()
	if err != nil {
		return 0, err
	}
	defer sock.close()
	return sock.generation()
}

// generation is the ruleset generation, asked on the table owner's
// socket when there is one.
func (n *Nftables) generation() (uint32, error) {
	if n.sock != nil {
		return n.sock.generation()
	}
	return nftGen()
}

// noteGen remembers the generation after a write (0 when unknown).
func (n *Nftables) noteGen() {
	g, err := n.generation()
	if err != nil {
		g = 0
	}
	n.gen = g
}

// nftState is what a Replace wrote, as the Syncer's plain data.
type nftState struct {
	chains map[string]Chains
	hooks  map[[2]string][]string
	sets   map[string][]netip.Prefix
	recent map[string]time.Duration
}

// NewNftables checks that the kernel answers nf_tables requests.
func NewNftables() (*Nftables, error) {
	c, err := nftables.New()
	if err != nil {
		return nil, fmt.Errorf("nftables: %w", err)
	}
	if _, err := c.ListTablesOfFamily(nftables.TableFamilyINet); err != nil {
		return nil, fmt.Errorf("nftables: list tables: %w", err)
	}
	sock, err := ownerSocket()
	if err != nil {
		return nil, fmt.Errorf("nftables: %w", err)
	}
	n := &Nftables{sock: sock, stale: map[string]time.Time{}}
	if sock != nil {
		n.tableFlags = nftTableOwner | nftTablePersist
	}
	return n, nil
}

func (n *Nftables) Name() string { return "nftables (table inet " + NftTable + ")" }

// Replace makes table inet warren hold exactly the plan, in one netlink
// batch (one nf_tables transaction): create the table if missing, delete
// it with everything in it, create it again and fill it. Packets see the
// old table or the new one, never a mix or none.
func (n *Nftables) replaceAll(chains map[string]Chains, hooks map[[2]string][]string, sets []Set) error {
	p, err := buildNft(chains, hooks, sets)
	if err != nil {
		return err
	}
	p.carryRecent()

	b, err := n.batch()
	if err != nil {
		return err
	}
	c := b.conn
	// Delete the table (with everything in it) if it is there, and make
	// it anew: anyone may delete an orphaned or unowned table, and the
	// new one is ours (owned) where the kernel can.
	lc, err := nftables.New()
	if err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	if _, err := lc.ListTableOfFamily(NftTable, nftables.TableFamilyINet); err == nil {
		c.DelTable(p.table)
	}
	c.AddTable(p.table)
	for _, s := range p.sets {
		if err := c.AddSet(s, p.elems[s.Name]); err != nil {
			return fmt.Errorf("nftables: set %s: %w", s.Name, err)
		}
	}
	for _, ch := range p.chains {
		c.AddChain(ch)
	}
	for _, r := range p.rules {
		if err := addOut(c, p.table, r.chain, r.nftOut); err != nil {
			return fmt.Errorf("nftables: %w", err)
		}
	}
	if err := b.commit(n.sock); err != nil {
		return fmt.Errorf("nftables: replace table inet %s (%d chains, %d rules, %d sets): %w", NftTable, len(p.chains), len(p.rules), len(p.sets), err)
	}
	n.count = p.count
	clear(n.stale) // the table is new
	n.setIDs = p.lastID
	n.noteGen()
	return nil
}

// Replace makes table inet warren hold the parts. With full, or when the
// last write is unknown, the whole table is replaced (replaceAll);
// otherwise one batch changes only what differs from the last write:
// new chains and sets are added, changed chains are flushed and
// refilled, changed sets get their elements replaced, and chains and
// sets no longer wanted are deleted. Either way one netlink batch, one
// nf_tables transaction: packets never see half of it.
func (n *Nftables) Replace(full bool, keep func(owner string) bool, chains map[string]Chains, hooks map[[2]string][]string, sets []Set) error {
	next := &nftState{chains: chains, hooks: hooks, sets: map[string][]netip.Prefix{}}
	for _, st := range sets {
		if _, dup := next.sets[st.Name]; !dup {
			next.sets[st.Name] = st.Members
		}
	}
	var diff chainDiff
	var recent map[string]time.Duration
	if n.prev != nil && !full {
		diff = diffChains(n.prev.chains, chains)
		if !diff.namesRecent(n.prev.chains, chains) {
			recent = n.prev.recent // a one-change sync need not scan 12,000 rules
		}
	}
	if recent == nil {
		var all []string
		for _, tbl := range tables {
			for _, rules := range chains[tbl] {
				all = append(all, rules...)
			}
		}
		var err error
		if recent, err = recentTimeouts(all); err != nil {
			return fmt.Errorf("nftables: %w", err)
		}
	}
	next.recent = recent
	if full || n.prev == nil || !maps.Equal(n.prev.recent, recent) {
		n.prev = nil
		adopt := false
		if keep != nil {
			for _, o := range owners {
				adopt = adopt || keep(o)
			}
		}
		if adopt {
			// Some owner has no part yet (a daemon start): what the last
			// run wrote for it stays (as with iptables), so no table delete.
			done, err := n.adopt(keep, chains, hooks, sets)
			if err != nil || done {
				return err // n.prev stays nil: the next sync is full again
			}
		}
		if err := n.replaceAll(chains, hooks, sets); err != nil {
			return err
		}
		n.prev = next
		return nil
	}
	if err := n.update(n.prev, next, diff); err != nil {
		n.prev = nil // the next sync writes it all
		return err
	}
	n.prev = next
	return nil
}

// chainDiff is what changed in the regular chains between two writes,
// as (iptables table, chain) keys.
type chainDiff struct{ added, changed, removed [][2]string }

func diffChains(prev, next map[string]Chains) chainDiff {
	var d chainDiff
	for _, tbl := range tables {
		for c, rules := range next[tbl] {
			if old, had := prev[tbl][c]; !had {
				d.added = append(d.added, [2]string{tbl, c})
			} else if !slices.Equal(old, rules) {
				d.changed = append(d.changed, [2]string{tbl, c})
			}
		}
		for c := range prev[tbl] {
			if _, keep := next[tbl][c]; !keep {
				d.removed = append(d.removed, [2]string{tbl, c})
			}
		}
	}
	return d
}

// namesRecent reports whether a chain the diff touches has, before or
// after, a rule that names a recent list.
func (d chainDiff) namesRecent(prev, next map[string]Chains) bool {
	names := func(rules []string) bool {
		return slices.ContainsFunc(rules, func(r string) bool { return strings.Contains(r, "--name") })
	}
	for _, keys := range [][][2]string{d.added, d.changed, d.removed} {
		for _, k := range keys {
			if names(prev[k[0]][k[1]]) || names(next[k[0]][k[1]]) {
				return true
			}
		}
	}
	return false
}

// ownerOfNft is the owner of a chain of table inet warren (TABLE-CHAIN)
// or of a set ("" for neither).
func ownerOfNft(name string) string {
	if strings.HasPrefix(name, SetPrefix) {
		return OwnerPolicy
	}
	if strings.HasPrefix(name, "recent-"+ChainPrefix) {
		return OwnerNAT
	}
	if _, chain, ok := strings.Cut(name, "-"); ok {
		return ownerOf(chain)
	}
	return ""
}

// jumpOwner is the owner of the chain a rule jumps to ("" for none).
func jumpOwner(r *nftables.Rule) string {
	for _, e := range r.Exprs {
		if v, ok := e.(*expr.Verdict); ok && (v.Kind == expr.VerdictJump || v.Kind == expr.VerdictGoto) {
			return ownerOfNft(v.Chain)
		}
	}
	return ""
}

// adopt is the full sync of a start, when some owners have no part yet
// and table inet warren exists: in one batch, every wanted chain and set
// is created or flushed and refilled, chains and sets of owners with a
// part that are no longer wanted are deleted, and each base chain gets,
// in owner order, the hooks of owners with a part and the rules the
// kernel holds for owners without one. Chains and sets of owners without
// a part are not touched. It reports false (nothing done) when the table
// does not exist or holds nothing of owners without a part.
func (n *Nftables) adopt(keep func(string) bool, chains map[string]Chains, hooks map[[2]string][]string, sets []Set) (bool, error) {
	c, err := nftables.New()
	if err != nil {
		return false, fmt.Errorf("nftables: %w", err)
	}
	t := &nftables.Table{Family: nftables.TableFamilyINet, Name: NftTable}
	have, err := c.ListTableOfFamily(NftTable, nftables.TableFamilyINet)
	if err != nil {
		return false, nil
	}
	p, err := buildNft(chains, hooks, sets)
	if err != nil {
		return false, err
	}
	p.carryRecent()
	obs, err := observeNft(c, t, p, keep)
	if err != nil || !obs.keeping {
		return false, err // nothing of owners without a part: a plain full write
	}
	// The table is claimed when a daemon before us left it orphaned
	// (persistent, owner gone); one made without flags (an older version)
	// keeps them until the next full write makes it anew.
	flags := n.tableFlags
	if now := tableFlagsOf(have); now != flags && now != nftTablePersist {
		flags = now
	}
	if err := n.writeAdoption(t, p, obs, keep, flags); err != nil {
		return false, err
	}
	n.count = obs.count
	clear(n.stale) // adopt deleted what no owner wants
	n.noteGen()
	return true, nil
}

// nftObserved is table inet warren as a start finds it, sorted against
// the plan: the base chains' rules (kept), the chains no owner wants
// (gone), the rule counts the canary will expect, and whether anything
// belongs to an owner without a part yet (keeping).
type nftObserved struct {
	have      []*nftables.Set
	wantChain map[string]bool
	wantSet   map[string]bool
	kept      map[string][]*nftables.Rule
	gone      []*nftables.Chain
	count     map[string]int
	keeping   bool
}

func observeNft(c *nftables.Conn, t *nftables.Table, p *nftPlan, keep func(string) bool) (*nftObserved, error) {
	all, err := c.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		return nil, fmt.Errorf("nftables: list chains: %w", err)
	}
	have, err := c.GetSets(t)
	if err != nil {
		return nil, fmt.Errorf("nftables: list sets: %w", err)
	}
	wantChain := map[string]bool{}
	for _, ch := range p.chains {
		wantChain[ch.Name] = true
	}
	wantSet := map[string]bool{}
	for _, st := range p.sets {
		wantSet[st.Name] = true
	}
	count := maps.Clone(p.count)
	// Base chains: the kernel's rules of owners without a part, in order.
	kept := map[string][]*nftables.Rule{}
	var gone []*nftables.Chain
	for _, ch := range all {
		if ch.Table.Name != NftTable {
			continue
		}
		o := ownerOfNft(ch.Name)
		switch {
		case ch.Hooknum != nil:
			rules, err := c.GetRules(t, ch)
			if err != nil {
				return nil, fmt.Errorf("nftables: list rules of %s: %w", ch.Name, err)
			}
			kept[ch.Name] = rules
		case wantChain[ch.Name]:
		case o != "" && keep(o):
			rules, err := c.GetRules(t, ch)
			if err != nil {
				return nil, fmt.Errorf("nftables: list rules of %s: %w", ch.Name, err)
			}
			count[ch.Name] = len(rules)
		default:
			gone = append(gone, ch)
		}
	}
	keeping := false
	for _, ch := range all {
		if ch.Table.Name == NftTable && ch.Hooknum == nil && !wantChain[ch.Name] {
			if o := ownerOfNft(ch.Name); o != "" && keep(o) {
				keeping = true
			}
		}
	}
	for _, rules := range kept {
		for _, r := range rules {
			if o := jumpOwner(r); o != "" && keep(o) {
				keeping = true
			}
		}
	}
	for _, st := range have {
		if o := ownerOfNft(st.Name); o != "" && keep(o) && !wantSet[st.Name] {
			keeping = true
		}
	}
	return &nftObserved{have: have, wantChain: wantChain, wantSet: wantSet, kept: kept, gone: gone, count: count, keeping: keeping}, nil
}

// writeAdoption is adopt's one batch: every wanted chain and set created
// or flushed and refilled, each base chain refilled in owner order with
// the planned hooks and the kernel's rules of owners without a part, and
// what no owner wants deleted.
func (n *Nftables) writeAdoption(t *nftables.Table, p *nftPlan, obs *nftObserved, keep func(string) bool, tableFlags uint32) error {
	kept, gone, have, wantSet, count := obs.kept, obs.gone, obs.have, obs.wantSet, obs.count
	b, err := n.batch()
	if err != nil {
		return err
	}
	w := b.conn
	b.tableFlags = tableFlags
	w.AddTable(t)
	for _, st := range p.sets {
		if err := w.AddSet(st, nil); err != nil {
			return fmt.Errorf("nftables: set %s: %w", st.Name, err)
		}
		w.FlushSet(st)
		if el := p.elems[st.Name]; len(el) > 0 {
			if err := w.SetAddElements(st, el); err != nil {
				return fmt.Errorf("nftables: set %s: %w", st.Name, err)
			}
		}
	}
	for _, ch := range p.chains {
		w.AddChain(ch)
		w.FlushChain(ch)
	}
	baseRules := map[string][]*nftables.Rule{}
	for _, r := range p.rules {
		if r.chain.Hooknum != nil {
			baseRules[r.chain.Name] = append(baseRules[r.chain.Name], &nftables.Rule{Table: t, Chain: r.chain, Exprs: r.exprs, UserData: r.userData})
			continue
		}
		if err := addOut(w, t, r.chain, r.nftOut); err != nil {
			return fmt.Errorf("nftables: %w", err)
		}
	}
	bases := map[string]*nftables.Chain{}
	for _, ch := range p.chains {
		if ch.Hooknum != nil {
			bases[ch.Name] = ch
		}
	}
	for name, rules := range kept {
		if bases[name] == nil {
			for _, r := range rules {
				if o := jumpOwner(r); o != "" && keep(o) {
					ch := *r.Chain
					ch.Table = t
					bases[name] = &ch
					w.FlushChain(&ch)
					break
				}
			}
		}
	}
	for name, ch := range bases {
		added := 0
		for _, o := range owners {
			if keep(o) {
				for _, r := range kept[name] {
					if jumpOwner(r) == o {
						w.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: r.Exprs, UserData: r.UserData})
						added++
					}
				}
				continue
			}
			for _, r := range baseRules[name] {
				if jumpOwner(r) == o {
					w.AddRule(r)
					added++
				}
			}
		}
		count[name] = added
	}
	for name, rules := range kept {
		if bases[name] == nil && len(rules) > 0 {
			w.FlushChain(&nftables.Chain{Table: t, Name: name})
		}
	}
	for _, ch := range gone {
		w.FlushChain(ch)
	}
	for name := range kept {
		if bases[name] == nil {
			w.DelChain(&nftables.Chain{Table: t, Name: name})
		}
	}
	for _, ch := range gone {
		w.DelChain(ch)
	}
	for _, st := range have {
		if o := ownerOfNft(st.Name); !wantSet[st.Name] && o != "" && !keep(o) {
			w.DelSet(st)
		}
	}
	if err := b.commit(n.sock); err != nil {
		return fmt.Errorf("nftables: take over table inet %s: %w", NftTable, err)
	}
	return nil
}

// queueSetChanges queues the policy sets that are new (added) or changed
// (flushed and refilled), and returns every set a rule may name by name.
func (n *Nftables) queueSetChanges(c *nftables.Conn, t *nftables.Table, prev, next *nftState) (map[string]*nftables.Set, error) {
	sets := map[string]*nftables.Set{}
	for name := range next.recent {
		sets[recentSetName(name)] = &nftables.Set{Table: t, Name: recentSetName(name), Timeout: next.recent[name]}
	}
	for _, name := range slices.Sorted(maps.Keys(next.sets)) {
		members := next.sets[name]
		old, had := prev.sets[name]
		set := &nftables.Set{Table: t, Name: name, KeyType: nftables.TypeIPAddr, Interval: true}
		sets[name] = set
		switch {
		case !had:
			n.setIDs++
			set.ID = n.setIDs
			if err := c.AddSet(set, setElements(members)); err != nil {
				return nil, fmt.Errorf("nftables: set %s: %w", name, err)
			}
		case !slices.Equal(old, members):
			c.FlushSet(set)
			if elems := setElements(members); len(elems) > 0 {
				if err := c.SetAddElements(set, elems); err != nil {
					return nil, fmt.Errorf("nftables: set %s: %w", name, err)
				}
			}
		}
	}
	return sets, nil
}

// update writes the difference between prev and next in one batch.
func (n *Nftables) update(prev, next *nftState, diff chainDiff) error {
	t := &nftables.Table{Family: nftables.TableFamilyINet, Name: NftTable}
	b, err := n.batch()
	if err != nil {
		return err
	}
	sets, err := n.queueSetChanges(b.conn, t, prev, next)
	if err != nil {
		return err
	}
	u := &nftUpdate{n: n, c: b.conn, t: t, sets: sets, count: maps.Clone(n.count)}
	emptied, err := u.queueRegularChains(prev, next, diff)
	if err != nil {
		return err
	}
	if err := u.queueBaseChains(prev, next); err != nil {
		return err
	}
	for name := range prev.sets {
		if _, keep := next.sets[name]; !keep {
			b.conn.DelSet(&nftables.Set{Table: t, Name: name})
		}
	}
	if err := b.commit(n.sock); err != nil {
		return fmt.Errorf("nftables: update table inet %s: %w", NftTable, err)
	}
	n.count = u.count
	for _, name := range emptied {
		n.stale[name] = time.Now()
	}
	for _, tbl := range tables {
		for ch := range next.chains[tbl] {
			delete(n.stale, nftChainName(tbl, ch)) // in use again
		}
	}
	n.noteGen()
	return nil
}

// nftUpdate is one update's batch being queued: the sets rules may name,
// and the rule count per chain as it will be once the batch commits.
type nftUpdate struct {
	n     *Nftables
	c     *nftables.Conn
	t     *nftables.Table
	sets  map[string]*nftables.Set
	count map[string]int
}

// refill queues a chain's rules (after flushing it when it had some); base
// chains' rules see IPv4 only.
func (u *nftUpdate) refill(family string, ch *nftables.Chain, rules []string, flush, base bool) error {
	if flush {
		u.c.FlushChain(ch)
	}
	ctx := &nftCtx{table: u.t, sets: u.sets, family: family}
	outs, err := ctx.chainRules(rules, func() uint32 { u.n.setIDs++; return u.n.setIDs })
	if err != nil {
		return fmt.Errorf("%s: %w", ch.Name, err)
	}
	for _, o := range outs {
		if base {
			o.exprs = ipv4Only(o.exprs)
		}
		if err := addOut(u.c, u.t, ch, o); err != nil {
			return fmt.Errorf("nftables: %w", err)
		}
	}
	u.count[ch.Name] = len(outs)
	return nil
}

// queueRegularChains queues the added, changed and removed regular chains
// and returns the names of those it emptied.
func (u *nftUpdate) queueRegularChains(prev, next *nftState, diff chainDiff) (emptied []string, err error) {
	// Declare the new ones first (a jump needs its target).
	for _, k := range diff.added {
		u.c.AddChain(&nftables.Chain{Table: u.t, Name: nftChainName(k[0], k[1])})
	}
	for _, keys := range [][][2]string{diff.added, diff.changed} {
		for _, k := range keys {
			_, had := prev.chains[k[0]][k[1]]
			if err := u.refill(k[0], &nftables.Chain{Table: u.t, Name: nftChainName(k[0], k[1])}, next.chains[k[0]][k[1]], had, false); err != nil {
				return nil, err
			}
		}
	}
	for _, k := range diff.removed {
		// Emptied now, deleted later with others (DeleteStale): every
		// commit that deletes a chain waits for the kernel's RCU grace
		// period (8-16 ms here), so a moved endpoint would pay it each
		// time (kube-proxy's nftables mode defers it too).
		name := nftChainName(k[0], k[1])
		u.c.FlushChain(&nftables.Chain{Table: u.t, Name: name})
		u.count[name] = 0
		emptied = append(emptied, name)
	}
	return emptied, nil
}

// queueBaseChains queues the hooks' base chains whose rules changed, and
// deletes those no longer hooked.
func (u *nftUpdate) queueBaseChains(prev, next *nftState) error {
	for k, rules := range next.hooks {
		old, had := prev.hooks[k]
		if had && slices.Equal(old, rules) {
			continue
		}
		b, ok := nftBases[k]
		if !ok {
			return fmt.Errorf("nftables: no base chain for %s %s", k[0], k[1])
		}
		prio := nftables.ChainPriority(b.prio)
		accept := nftables.ChainPolicyAccept
		ch := &nftables.Chain{Table: u.t, Name: nftChainName(k[0], k[1]), Type: b.typ, Hooknum: b.hook, Priority: &prio, Policy: &accept}
		if !had {
			u.c.AddChain(ch)
		}
		if err := u.refill(k[0], ch, rules, had, true); err != nil {
			return err
		}
	}
	for k := range prev.hooks {
		if _, keep := next.hooks[k]; !keep {
			ch := &nftables.Chain{Table: u.t, Name: nftChainName(k[0], k[1])}
			u.c.FlushChain(ch)
			u.c.DelChain(ch)
			delete(u.count, ch.Name)
		}
	}
	return nil
}

// staleChainAge is how long an emptied chain waits before DeleteStale
// deletes it (a variable for tests).
var staleChainAge = 5 * time.Second

// DeleteStale deletes, in one batch, the chains update emptied at least
// staleChainAge ago (one grace period for all of them); the canary's
// slow check calls it.
func (n *Nftables) DeleteStale() error {
	var names []string
	for name, since := range n.stale {
		if time.Since(since) >= staleChainAge {
			names = append(names, name)
		}
	}
	if len(names) == 0 {
		return nil
	}
	b, err := n.batch()
	if err != nil {
		return err
	}
	t := &nftables.Table{Family: nftables.TableFamilyINet, Name: NftTable}
	for _, name := range names {
		b.conn.DelChain(&nftables.Chain{Table: t, Name: name})
	}
	if err := b.commit(n.sock); err != nil {
		return fmt.Errorf("nftables: delete %d emptied chains: %w", len(names), err)
	}
	for _, name := range names {
		delete(n.stale, name)
		delete(n.count, name)
	}
	n.noteGen()
	return nil
}

// Intact reports whether table inet warren still has the chains the last
// Replace wrote, each with as many rules (slow: every chain's rules are
// counted; quick: the base chains' only). When the nf_tables generation
// has not moved since our last write or full check, nothing changed and
// nothing is listed.
func (n *Nftables) Intact(slow bool) (bool, error) {
	g, gerr := n.generation()
	if gerr == nil && g != 0 && g == n.gen {
		return true, nil // nobody committed anything since
	}
	intact, err := n.intact(slow)
	if err == nil && intact && gerr == nil && slow {
		n.gen = g // every chain counted at generation g (or later: checked again next time)
	}
	return intact, err
}

func (n *Nftables) intact(slow bool) (bool, error) {
	c, err := nftables.New()
	if err != nil {
		return false, fmt.Errorf("nftables: %w", err)
	}
	t := &nftables.Table{Family: nftables.TableFamilyINet, Name: NftTable}
	if !slow {
		// The quick check (every second): the base chains' rules only, a
		// few small listings; a missing chain or table is "not intact".
		for k := range nftBases {
			name := nftChainName(k[0], k[1])
			want, ok := n.count[name]
			if !ok {
				continue
			}
			rules, err := c.GetRules(t, &nftables.Chain{Table: t, Name: name})
			if err != nil || len(rules) != want {
				return false, nil
			}
		}
		return true, nil
	}
	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		return false, fmt.Errorf("nftables: list chains: %w", err)
	}
	seen := 0
	for _, ch := range chains {
		if ch.Table.Name != NftTable {
			continue
		}
		want, ok := n.count[ch.Name]
		if !ok {
			return false, nil
		}
		seen++
		rules, err := c.GetRules(t, ch)
		if err != nil {
			return false, fmt.Errorf("nftables: list rules of %s: %w", ch.Name, err)
		}
		if len(rules) != want {
			return false, nil
		}
	}
	return seen == len(n.count), nil
}

// DeleteNftTable removes table inet warren; nothing when it is not there
// or the kernel has no nf_tables.
func DeleteNftTable() error {
	c, err := nftables.New()
	if err != nil {
		return nil // no netfilter netlink: nothing of ours can be there
	}
	if _, err := c.ListTableOfFamily(NftTable, nftables.TableFamilyINet); err != nil {
		if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.EPROTONOSUPPORT) || errors.Is(err, unix.EAFNOSUPPORT) || errors.Is(err, unix.EOPNOTSUPP) {
			return nil // no table, or no nf_tables in this kernel
		}
		return fmt.Errorf("nftables: look for table inet %s: %w", NftTable, err)
	}
	b, err := newNftBatch()
	if err != nil {
		return err
	}
	b.conn.DelTable(&nftables.Table{Family: nftables.TableFamilyINet, Name: NftTable})
	// Through this process's owning socket if it has one (its own table).
	if err := b.commit(existingOwner()); err != nil {
		if errors.Is(err, unix.EPERM) {
			return fmt.Errorf("nftables: delete table inet %s: it is owned by a running warren-appliance; stop it first: %w", NftTable, err)
		}
		return fmt.Errorf("nftables: delete table inet %s: %w", NftTable, err)
	}
	return nil
}

var errNotIptables = errors.New("the nftables backend writes no iptables chains or ipsets")

// The iptables side of Runner: the Syncer never calls it with this
// runner (it calls Replace and Intact).
func (n *Nftables) List(table, chain string) ([]string, error)     { return nil, errNotIptables }
func (n *Nftables) ListChains(table string) ([]string, error)      { return nil, errNotIptables }
func (n *Nftables) Exists(table, chain, rule string) (bool, error) { return false, errNotIptables }
func (n *Nftables) Restore([]byte) error                           { return errNotIptables }
func (n *Nftables) Sets() (map[string]map[netip.Prefix]bool, error) {
	return nil, errNotIptables
}
func (n *Nftables) CreateSet(string) error                    { return errNotIptables }
func (n *Nftables) AddToSet(string, netip.Prefix) error       { return errNotIptables }
func (n *Nftables) DelFromSet(string, netip.Prefix) error     { return errNotIptables }
func (n *Nftables) DestroySet(string) error                   { return errNotIptables }
func (n *Nftables) BridgeRestore(text []byte) error           { return n.bridge.BridgeRestore(text) }
func (n *Nftables) BridgeList(chain string) ([]string, error) { return n.bridge.BridgeList(chain) }
func (n *Nftables) BridgeExec(args ...string) error           { return n.bridge.BridgeExec(args...) }

// tableWriter is a Runner that replaces a table of its own per sync.
type tableWriter interface {
	// keep reports whether an owner has no part yet: what a previous run
	// wrote for it stays until it has.
	Replace(full bool, keep func(owner string) bool, chains map[string]Chains, hooks map[[2]string][]string, sets []Set) error
	Intact(slow bool) (bool, error)
}

// syncNft is sync for a tableWriter: the whole table in one batch, then
// the bridge chain.
func (s *Syncer) syncNft(w tableWriter) error {
	start := time.Now()
	chains, hooks, sets := s.desired()
	full := s.applied == nil
	if !full && reflect.DeepEqual(hooks, s.hooked) && reflect.DeepEqual(sets, s.nftSets) && sameChains(chains, s.applied) {
		return s.syncBridge(false) // nothing changed in the table
	}
	keep := func(owner string) bool { _, ok := s.parts[owner]; return !ok }
	if err := w.Replace(full, keep, chains, hooks, sets); err != nil {
		return err
	}
	s.applied, s.hooked, s.nftSets = chains, hooks, sets
	s.syncs++
	if err := s.syncBridge(full); err != nil {
		return err
	}
	s.log.Debug("synced", "backend", "nftables", "took", time.Since(start))
	return nil
}

// sameChains reports whether a and b hold the same chains and rules (as
// reflect.DeepEqual, at a fraction of its cost for 4,000 chains).
func sameChains(a, b map[string]Chains) bool {
	if len(a) != len(b) {
		return false
	}
	for tbl, ca := range a {
		cb, ok := b[tbl]
		if !ok || len(ca) != len(cb) {
			return false
		}
		for c, rules := range ca {
			if other, ok := cb[c]; !ok || !slices.Equal(rules, other) {
				return false
			}
		}
	}
	return true
}

// NftCheck translates the parts as the nftables backend would, touching
// nothing: for the rule builders' tests (every rule they emit must have
// an nftables form).
func NftCheck(parts ...Part) error {
	s := &Syncer{parts: map[string]Part{}}
	for i, p := range parts {
		s.parts[owners[i%len(owners)]] = p
	}
	chains, hooks, sets := s.desired()
	_, err := buildNft(chains, hooks, sets)
	return err
}

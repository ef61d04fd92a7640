package hostfw

import (
	"bufio"
	"bytes"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
)

// Fake is an in-memory Runner, as kube-proxy's iptablestest.NewFake: it
// parses what a sync writes (iptables-restore input, set operations, the
// bridge chain) and keeps tables, chains, sets and bridge rules, refusing
// what the kernel would refuse (a rule in or a jump to a missing chain,
// deleting a chain still referenced or a rule that is not there, an
// unknown set), so unit tests see the same failures. Each table section
// of a restore commits atomically, as iptables-restore's do.
type Fake struct {
	mu     sync.Mutex
	tables map[string]*fakeTable
	sets   map[string]map[netip.Prefix]bool
	bridge map[string][]string // bridge filter chains: INPUT, FORWARD, ours

	// Restores is every restore text written, in order.
	Restores []string
	// FailRestore, when set, fails the next restore with it.
	FailRestore error
}

type fakeTable struct {
	order  []string // chain names, built-in first
	chains map[string][]string
}

func (t *fakeTable) clone() *fakeTable {
	c := &fakeTable{order: slices.Clone(t.order), chains: map[string][]string{}}
	for k, v := range t.chains {
		c.chains[k] = slices.Clone(v)
	}
	return c
}

// NewFake is an empty host: the built-in chains, no rules.
func NewFake() *Fake {
	f := &Fake{tables: map[string]*fakeTable{}, sets: map[string]map[netip.Prefix]bool{},
		bridge: map[string][]string{"INPUT": nil, "FORWARD": nil, "OUTPUT": nil}}
	for _, t := range tables {
		ft := &fakeTable{chains: map[string][]string{}}
		for _, c := range builtinChains[t] {
			ft.order = append(ft.order, c)
			ft.chains[c] = nil
		}
		f.tables[t] = ft
	}
	return f
}

func (f *Fake) Name() string { return "fake" }

func isBuiltin(table, chain string) bool { return slices.Contains(builtinChains[table], chain) }

// builtinTargets are the targets that are not chains.
var builtinTargets = []string{"ACCEPT", "DROP", "RETURN", "REJECT", "MASQUERADE", "DNAT", "SNAT", "MARK", "LOG"}

func (f *Fake) List(table, chain string) ([]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	t, ok := f.tables[table]
	if !ok {
		return nil, fmt.Errorf("no table %s", table)
	}
	rules, ok := t.chains[chain]
	if !ok {
		return nil, fmt.Errorf("no chain %s in table %s", chain, table)
	}
	out := []string{"-N " + chain}
	if isBuiltin(table, chain) {
		out[0] = "-P " + chain + " ACCEPT"
	}
	for _, r := range rules {
		out = append(out, "-A "+chain+" "+r)
	}
	return out, nil
}

func (f *Fake) ListChains(table string) ([]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	t, ok := f.tables[table]
	if !ok {
		return nil, fmt.Errorf("no table %s", table)
	}
	return slices.Clone(t.order), nil
}

func (f *Fake) Exists(table, chain, rule string) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	t := f.tables[table]
	if t == nil {
		return false, fmt.Errorf("no table %s", table)
	}
	rules, ok := t.chains[chain]
	if !ok {
		return false, nil
	}
	return slices.Contains(rules, rule), nil
}

// Flush empties a chain, as `iptables -t table -F chain` does.
func (f *Fake) Flush(table, chain string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if t := f.tables[table]; t != nil {
		if _, ok := t.chains[chain]; ok {
			t.chains[chain] = nil
		}
	}
}

// Insert puts rule at position pos (1-based) of a chain, as a host's
// firewall script would.
func (f *Fake) Insert(table, chain string, pos int, rule string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	t := f.tables[table]
	t.chains[chain] = slices.Insert(t.chains[chain], pos-1, rule)
}

// Rules returns a chain's rules (nil for a missing chain).
func (f *Fake) Rules(table, chain string) []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	if t := f.tables[table]; t != nil {
		return slices.Clone(t.chains[chain])
	}
	return nil
}

// Dump is the whole state in a stable text form, for comparisons.
func (f *Fake) Dump() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var b strings.Builder
	for _, tn := range tables {
		t := f.tables[tn]
		b.WriteString("*" + tn + "\n")
		for _, c := range slices.Sorted(slices.Values(t.order)) {
			b.WriteString(":" + c + "\n")
			for _, r := range t.chains[c] {
				b.WriteString("-A " + c + " " + r + "\n")
			}
		}
	}
	for _, s := range slices.Sorted(maps.Keys(f.sets)) {
		b.WriteString("set " + s + ":")
		for _, m := range slices.SortedFunc(maps.Keys(f.sets[s]), func(a, b netip.Prefix) int { return strings.Compare(a.String(), b.String()) }) {
			b.WriteString(" " + m.String())
		}
		b.WriteString("\n")
	}
	for _, c := range slices.Sorted(maps.Keys(f.bridge)) {
		b.WriteString("bridge " + c + "\n")
		for _, r := range f.bridge[c] {
			b.WriteString("-A " + c + " " + r + "\n")
		}
	}
	return b.String()
}

func (f *Fake) Restore(text []byte) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.Restores = append(f.Restores, string(text))
	if err := f.FailRestore; err != nil {
		f.FailRestore = nil
		return err
	}
	var cur *fakeTable
	var name string
	sc := bufio.NewScanner(bytes.NewReader(text))
	sc.Buffer(nil, 1<<26)
	n := 0
	for sc.Scan() {
		n++
		line := sc.Text()
		fail := func(format string, a ...any) error {
			return fmt.Errorf("fake iptables-restore: line %d (%q): %s", n, line, fmt.Sprintf(format, a...))
		}
		switch {
		case line == "" || strings.HasPrefix(line, "#"):
		case strings.HasPrefix(line, "*"):
			name = line[1:]
			t, ok := f.tables[name]
			if !ok {
				return fail("no table %s", name)
			}
			cur = t.clone()
		case line == "COMMIT":
			if cur == nil {
				return fail("COMMIT outside a table")
			}
			f.tables[name] = cur
			cur = nil
		case cur == nil:
			return fail("outside a table")
		case strings.HasPrefix(line, ":"):
			chain := strings.Fields(line[1:])[0]
			if _, ok := cur.chains[chain]; !ok {
				cur.order = append(cur.order, chain)
			}
			if !isBuiltin(name, chain) {
				cur.chains[chain] = nil // declaring a chain flushes it
			}
		default:
			args := splitArgs(line)
			if len(args) < 2 {
				return fail("short line")
			}
			verb, chain := args[0], args[1]
			if _, ok := cur.chains[chain]; !ok {
				return fail("no chain %s", chain)
			}
			rest := strings.TrimSpace(strings.TrimPrefix(line, verb+" "+chain))
			switch verb {
			case "-A", "-I":
				pos := len(cur.chains[chain]) + 1
				if verb == "-I" {
					pos = 1
					if fs := strings.Fields(rest); len(fs) > 0 {
						if p, err := strconv.Atoi(fs[0]); err == nil {
							pos = p
							rest = strings.TrimSpace(strings.TrimPrefix(rest, fs[0]))
						}
					}
					if pos < 1 || pos > len(cur.chains[chain])+1 {
						return fail("index %d out of range", pos)
					}
				}
				if err := f.checkRule(cur, rest); err != nil {
					return fail("%v", err)
				}
				cur.chains[chain] = slices.Insert(cur.chains[chain], pos-1, rest)
			case "-D":
				i := slices.Index(cur.chains[chain], rest)
				if i < 0 {
					return fail("no such rule in %s", chain)
				}
				cur.chains[chain] = slices.Delete(cur.chains[chain], i, i+1)
			case "-X":
				if isBuiltin(name, chain) {
					return fail("cannot delete built-in chain %s", chain)
				}
				if len(cur.chains[chain]) > 0 {
					return fail("chain %s is not empty", chain)
				}
				for c, rules := range cur.chains {
					for _, r := range rules {
						if t, _ := hookKey(r); t == chain {
							return fail("chain %s is referenced by %s", chain, c)
						}
					}
				}
				delete(cur.chains, chain)
				cur.order = slices.DeleteFunc(cur.order, func(c string) bool { return c == chain })
			default:
				return fail("unknown command %s", verb)
			}
		}
	}
	if cur != nil {
		return fmt.Errorf("fake iptables-restore: table %s not committed", name)
	}
	return nil
}

// checkRule refuses jumps to missing chains and unknown sets.
func (f *Fake) checkRule(t *fakeTable, rule string) error {
	args := splitArgs(rule)
	for i := 0; i+1 < len(args); i++ {
		switch args[i] {
		case "-j", "-g":
			target := args[i+1]
			if _, ok := t.chains[target]; !ok && !slices.Contains(builtinTargets, target) {
				return fmt.Errorf("no chain or target %s", target)
			}
		case "--match-set":
			if _, ok := f.sets[args[i+1]]; !ok {
				return fmt.Errorf("no set %s", args[i+1])
			}
		}
	}
	return nil
}

func (f *Fake) Sets() (map[string]map[netip.Prefix]bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := map[string]map[netip.Prefix]bool{}
	for k, v := range f.sets {
		out[k] = maps.Clone(v)
	}
	return out, nil
}

func (f *Fake) CreateSet(name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.sets[name] = map[netip.Prefix]bool{}
	return nil
}

func (f *Fake) AddToSet(name string, p netip.Prefix) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	s, ok := f.sets[name]
	if !ok {
		return fmt.Errorf("no set %s", name)
	}
	s[p] = true
	return nil
}

func (f *Fake) DelFromSet(name string, p netip.Prefix) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if s, ok := f.sets[name]; ok {
		delete(s, p)
	}
	return nil
}

func (f *Fake) DestroySet(name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, t := range f.tables {
		for _, rules := range t.chains {
			for _, r := range rules {
				if strings.Contains(r, "--match-set "+name+" ") {
					return fmt.Errorf("set %s is in use", name)
				}
			}
		}
	}
	delete(f.sets, name)
	return nil
}

// SetMembers returns a set's members (nil when it does not exist).
func (f *Fake) SetMembers(name string) map[netip.Prefix]bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return maps.Clone(f.sets[name])
}

func (f *Fake) BridgeRestore(text []byte) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	var chain string
	var rules []string
	for _, line := range strings.Split(string(text), "\n") {
		switch {
		case strings.HasPrefix(line, ":"):
			chain = strings.Fields(line[1:])[0]
		case strings.HasPrefix(line, "-A "):
			rules = append(rules, strings.TrimPrefix(line, "-A "+chain+" "))
		}
	}
	if chain == "" {
		return fmt.Errorf("fake ebtables-restore: no chain declared")
	}
	f.bridge[chain] = rules
	return nil
}

func (f *Fake) BridgeList(chain string) ([]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	rules, ok := f.bridge[chain]
	if !ok {
		return nil, fmt.Errorf("no bridge chain %s", chain)
	}
	return slices.Clone(rules), nil
}

// BridgeFlush empties a bridge chain, as `ebtables -F chain` does.
func (f *Fake) BridgeFlush(chain string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.bridge[chain]; ok {
		f.bridge[chain] = nil
	}
}

func (f *Fake) BridgeExec(args ...string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(args) < 2 {
		return fmt.Errorf("fake ebtables: %v", args)
	}
	chain := args[1]
	rules, ok := f.bridge[chain]
	if !ok {
		return fmt.Errorf("fake ebtables: no chain %s", chain)
	}
	switch args[0] {
	case "-I":
		pos, err := strconv.Atoi(args[2])
		if err != nil || pos < 1 || pos > len(rules)+1 {
			return fmt.Errorf("fake ebtables: bad position in %v", args)
		}
		f.bridge[chain] = slices.Insert(rules, pos-1, strings.Join(args[3:], " "))
	case "-D":
		pos, err := strconv.Atoi(args[2])
		if err != nil || pos < 1 || pos > len(rules) {
			return fmt.Errorf("fake ebtables: bad position in %v", args)
		}
		f.bridge[chain] = slices.Delete(rules, pos-1, pos)
	case "-F":
		f.bridge[chain] = nil
	case "-X":
		if len(rules) > 0 {
			return fmt.Errorf("fake ebtables: chain %s not empty", chain)
		}
		delete(f.bridge, chain)
	default:
		return fmt.Errorf("fake ebtables: unknown %v", args)
	}
	return nil
}

package netpolicy

import (
	"bytes"
	"cmp"
	"crypto/sha256"
	"encoding/base32"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/warren-appliance/warren/cluster/clustermap"
	"github.com/warren-appliance/warren/hostfw"
)

// Chains of the policies, all in the mangle table (see package hostfw:
// mangle's FORWARD runs before filter's, so no ACCEPT there gets ahead of
// a policy, and a flush of filter's FORWARD leaves policies in force).
// WARREN-POLICY is jumped to first in mangle FORWARD: it returns at once for packets of known
// connections (replies pass), and sends new ones through the ingress and
// egress chains, which RETURN what some policy allows and DROP the rest
// for selected tasks. Nothing here ACCEPTs: allowed traffic goes on to the
// filter table (the task and service forwarding rules).
const (
	ChainPolicy  = "WARREN-POLICY"
	ChainIngress = "WARREN-POL-INGRESS"
	ChainEgress  = "WARREN-POL-EGRESS"
	// SetPrefix starts the name of every ipset this package owns.
	SetPrefix = hostfw.SetPrefix
	// Table holds the policy chains.
	Table = "mangle"
)

// hook enters the policy chains: the first rule of mangle FORWARD.
var hook = hostfw.Hook{Table: Table, Chain: "FORWARD", Rule: `-m comment --comment "warren network policies" -j ` + ChainPolicy}

// Task is one task as policies see it: an address and its labels.
type Task struct {
	Name   string
	IP     netip.Addr
	Labels map[string]string
}

// Input is everything the rules depend on.
type Input struct {
	Policies []clustermap.Policy
	Tasks    []Task
	// NodeSubnet holds the nodes' own (overlay) addresses. New connections
	// from them that arrive on Overlay are not subject to ingress
	// policies: they are the other nodes themselves, or published-port
	// traffic that a node masqueraded after checking it against its
	// original source. (This node's own traffic to its tasks leaves
	// through OUTPUT and never passes FORWARD.)
	NodeSubnet netip.Prefix
	// Overlay is the WireGuard interface (warren0), the only way traffic
	// of other nodes comes in: the exemption is tied to it, so a packet
	// with a node's address arriving from the bridge (a task forging its
	// source) gets no exemption. Empty: no exemption at all.
	Overlay string
	// Peers are peered clusters whose gateway link ends on this node
	// (federation): new connections from a peer's container subnet may
	// reach only its Exposed task IPs (this cluster's exported services),
	// and are then subject to the ingress policies like any other.
	Peers []Peer
}

// Peer is a peered cluster as the policy chain filters it.
type Peer struct {
	Name    string
	Subnet  netip.Prefix
	Exposed []netip.Addr
}

// Set is one ipset: its members are task addresses (/32) or blocks.
type Set struct {
	Name    string
	Comment string // what it stands for, e.g. "tasks app=frontend"
	Members []netip.Prefix
}

// Rules are the rendered rules: the chains of the mangle table (and the
// same as iptables-restore text, the dry run), and the sets they
// reference.
type Rules struct {
	Chains  hostfw.Chains
	Restore []byte
	Sets    []Set // sorted by name
}

// Part is what package hostfw writes for r: the chains, the hook from
// mangle FORWARD and the sets.
func (r Rules) Part() hostfw.Part {
	p := hostfw.Part{Tables: map[string]hostfw.Chains{Table: r.Chains}, Hooks: []hostfw.Hook{hook}}
	for _, s := range r.Sets {
		p.Sets = append(p.Sets, hostfw.Set{Name: s.Name, Comment: s.Comment, Members: s.Members})
	}
	return p
}

// TasksOf returns the tasks of a map as policies see them: tasks meant to
// run that have an address, with their service's labels.
func TasksOf(m *clustermap.Map) []Task {
	labels := m.ServiceLabels()
	var out []Task
	for _, t := range m.Tasks {
		if t.DesiredState != clustermap.TaskRunning || !t.IP.Is4() {
			continue
		}
		out = append(out, Task{Name: t.Name, IP: t.IP, Labels: labels[t.Service]})
	}
	return out
}

// Render turns policies and tasks into rules and sets. It is pure and
// deterministic. The rules depend on the policies only: which tasks a
// selector matches is in the sets, so tasks coming and going change set
// members and never the rules.
func Render(in Input) Rules {
	r := renderer{in: in, sets: map[string]*Set{}}
	return r.render()
}

type renderer struct {
	in      Input
	sets    map[string]*Set
	byLabel map[string][]int // "key=value" -> indexes of tasks with it
}

func (r *renderer) render() Rules {
	policies := slices.Clone(r.in.Policies)
	slices.SortFunc(policies, func(a, b clustermap.Policy) int { return cmp.Compare(a.Name, b.Name) })

	chains := map[string][]string{ChainPolicy: nil, ChainIngress: nil, ChainEgress: nil}
	add := func(chain, rule string) { chains[chain] = append(chains[chain], rule) }

	add(ChainPolicy, `-m conntrack --ctstate RELATED,ESTABLISHED -m comment --comment "replies and known connections" -j RETURN`)
	peers := slices.Clone(r.in.Peers)
	slices.SortFunc(peers, func(a, b Peer) int { return cmp.Compare(a.Name, b.Name) })
	for _, p := range peers {
		if !p.Subnet.Addr().Is4() {
			continue
		}
		set := r.set("peer "+p.Name+" may reach", func() []netip.Prefix {
			var out []netip.Prefix
			for _, ip := range p.Exposed {
				if ip.Is4() {
					out = append(out, netip.PrefixFrom(ip, 32))
				}
			}
			return out
		})
		add(ChainPolicy, fmt.Sprintf(`-s %s -m set ! --match-set %s dst -m comment --comment %q -j DROP`,
			p.Subnet.Masked(), set, "peer "+p.Name+": only exported services"))
	}
	add(ChainPolicy, "-j "+ChainIngress)
	add(ChainPolicy, "-j "+ChainEgress)
	if r.in.NodeSubnet.IsValid() && r.in.NodeSubnet.Addr().Is4() && r.in.Overlay != "" {
		add(ChainIngress, fmt.Sprintf(`-i %s -s %s -m comment --comment "from nodes (published ports are checked where they enter)" -j RETURN`, r.in.Overlay, r.in.NodeSubnet.Masked()))
	}

	for _, d := range []struct {
		chain, typ, self, peer string
		rules                  func(clustermap.Policy) []clustermap.PolicyRule
	}{
		{ChainIngress, clustermap.PolicyIngress, "dst", "src", func(p clustermap.Policy) []clustermap.PolicyRule { return p.Ingress }},
		{ChainEgress, clustermap.PolicyEgress, "src", "dst", func(p clustermap.Policy) []clustermap.PolicyRule { return p.Egress }},
	} {
		var isolated []string
		isolatedBy := map[string][]string{}
		for _, p := range policies {
			if !slices.Contains(p.PolicyTypes, d.typ) {
				continue
			}
			sel := r.selectorSet(p.PodSelector)
			if _, ok := isolatedBy[sel]; !ok {
				isolated = append(isolated, sel)
			}
			isolatedBy[sel] = append(isolatedBy[sel], p.Name)
			for i, rule := range d.rules(p) {
				comment := fmt.Sprintf("%s %s[%d]", p.Name, strings.ToLower(d.typ), i)
				peers := []string{""}
				if len(rule.Peers) > 0 {
					peers = peers[:0]
					for _, peer := range rule.Peers {
						peers = append(peers, fmt.Sprintf("-m set --match-set %s %s ", r.peerSet(peer), d.peer))
					}
				}
				for _, peer := range peers {
					for _, port := range portMatches(rule.Ports) {
						add(d.chain, fmt.Sprintf("-m set --match-set %s %s %s%s-m comment --comment %q -j RETURN", sel, d.self, peer, port, comment))
					}
				}
			}
		}
		for _, sel := range isolated {
			add(d.chain, fmt.Sprintf("-m set --match-set %s %s -m comment --comment %q -j DROP", sel, d.self,
				"selected by "+strings.Join(isolatedBy[sel], ",")+": not allowed"))
		}
	}

	var buf bytes.Buffer
	buf.WriteString("*" + Table + "\n")
	names := []string{ChainEgress, ChainIngress, ChainPolicy}
	for _, c := range names {
		buf.WriteString(":" + c + " - [0:0]\n")
	}
	for _, c := range names {
		for _, rule := range chains[c] {
			buf.WriteString("-A " + c + " " + rule + "\n")
		}
	}
	buf.WriteString("COMMIT\n")

	out := Rules{Chains: hostfw.Chains(chains), Restore: buf.Bytes()}
	for _, s := range r.sets {
		out.Sets = append(out.Sets, *s)
	}
	slices.SortFunc(out.Sets, func(a, b Set) int { return cmp.Compare(a.Name, b.Name) })
	return out
}

// portMatches are the port matches of a rule, each ending in a space;
// one empty match when the rule has no ports (every port).
func portMatches(ports []clustermap.PolicyPort) []string {
	if len(ports) == 0 {
		return []string{""}
	}
	var out []string
	for _, p := range ports {
		proto := strings.ToLower(p.Protocol)
		switch {
		case p.Port == 0:
			out = append(out, fmt.Sprintf("-p %s ", proto))
		case p.EndPort > p.Port:
			out = append(out, fmt.Sprintf("-p %s -m %s --dport %d:%d ", proto, proto, p.Port, p.EndPort))
		default:
			out = append(out, fmt.Sprintf("-p %s -m %s --dport %d ", proto, proto, p.Port))
		}
	}
	return slices.Compact(out)
}

// selectorSet returns the name of the set of tasks sel matches, making it
// on first use. Sets are named by what they stand for, so policies with
// the same selector share one.
func (r *renderer) selectorSet(sel clustermap.LabelSelector) string {
	desc := "tasks " + SelectorString(sel)
	return r.set(desc, func() []netip.Prefix {
		var out []netip.Prefix
		for _, i := range r.candidates(sel) {
			t := r.in.Tasks[i]
			if t.IP.Is4() && Matches(sel, t.Labels) {
				out = append(out, netip.PrefixFrom(t.IP, 32))
			}
		}
		return out
	})
}

// candidates are the indexes of the tasks that can match sel: those with
// one of its matchLabels pairs (from an index built on first use), or
// every task for a selector of expressions only.
func (r *renderer) candidates(sel clustermap.LabelSelector) []int {
	for k, v := range sel.MatchLabels {
		if r.byLabel == nil {
			r.byLabel = map[string][]int{}
			for i, t := range r.in.Tasks {
				for tk, tv := range t.Labels {
					r.byLabel[tk+"="+tv] = append(r.byLabel[tk+"="+tv], i)
				}
			}
		}
		return r.byLabel[k+"="+v]
	}
	all := make([]int, len(r.in.Tasks))
	for i := range all {
		all[i] = i
	}
	return all
}

func (r *renderer) peerSet(p clustermap.PolicyPeer) string {
	if p.PodSelector != nil {
		return r.selectorSet(*p.PodSelector)
	}
	b := *p.IPBlock
	except := slices.Clone(b.Except)
	slices.Sort(except)
	desc := "block " + b.CIDR
	if len(except) > 0 {
		desc += " except " + strings.Join(except, ",")
	}
	return r.set(desc, func() []netip.Prefix {
		prefixes, _ := BlockPrefixes(b) // validated before
		var out []netip.Prefix
		for _, p := range prefixes {
			if p.Bits() == 0 { // hash:net cannot hold /0: two halves do
				out = append(out, netip.MustParsePrefix("0.0.0.0/1"), netip.MustParsePrefix("128.0.0.0/1"))
				continue
			}
			out = append(out, p)
		}
		return out
	})
}

func (r *renderer) set(desc string, members func() []netip.Prefix) string {
	name := SetName(desc)
	if _, ok := r.sets[name]; !ok {
		m := members()
		slices.SortFunc(m, func(a, b netip.Prefix) int {
			return cmp.Or(a.Addr().Compare(b.Addr()), cmp.Compare(a.Bits(), b.Bits()))
		})
		r.sets[name] = &Set{Name: name, Comment: desc, Members: slices.Compact(m)}
	}
	return name
}

// SetName is the ipset name for what a set stands for: the prefix and 16
// base32 characters of its hash (26 characters; ipset allows 31).
func SetName(desc string) string {
	sum := sha256.Sum256([]byte(desc))
	return SetPrefix + base32.StdEncoding.EncodeToString(sum[:])[:16]
}

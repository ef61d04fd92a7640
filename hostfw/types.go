// Package hostfw is the one owner of every packet-filter rule and set
// warren writes on a node. The rule builders of nat (VIPs, published
// ports), netpolicy (network policies) and orchestrate (task forwarding,
// node ports, anti-spoofing) return plain data, a Part per owner:
// tables of chains of rules, the hooks that enter them from the built-in
// chains, address sets, and the bridge (ebtables) chain. A Syncer writes
// all parts together, in one order:
//
//  1. sets are created and filled (so rules never reference a missing one);
//  2. one iptables-restore --noflush run writes the chains that changed in
//     every table and, in the same per-table transaction, puts the hooks of
//     each built-in chain first in the order of the hook table (policy,
//     then tasks, then nat), deleting stray copies;
//  3. the bridge chain is written (ebtables-restore) and hooked;
//  4. sets nothing uses any more are destroyed.
//
// The hook order is an invariant of every sync, not a timer's job: a sync
// lists the built-in chains it hooks and repairs their order inside its
// transaction. Network policies are enforced from the mangle table's
// FORWARD chain, which the kernel runs before the filter table's FORWARD
// (priority -150 against 0), so no ACCEPT in filter (ours or anybody's)
// can get ahead of them and `iptables -F FORWARD` does not touch them.
// The canary (Check) lists the hooked built-in chains and calls the same
// sync when something is off. Cleanup removes everything, in both
// iptables variants. Runner is the kernel side; NewFake is an in-memory
// one for unit tests.
//
// The nftables backend (Nftables, chosen by [firewall] backend) writes the
// same parts as one table of its own, table inet warren, in one netlink
// batch per sync; the rules' iptables text is translated to nft
// expressions (nftrule.go), and anything outside the translated subset is
// an error, never dropped.
package hostfw

import (
	"net/netip"
	"strings"
)

// Owners of parts, in hook order: in every built-in chain the hooks of
// the policy part come first, then the task network's, then nat's.
const (
	OwnerPolicy = "policy"
	OwnerTasks  = "tasks"
	OwnerNAT    = "nat"
)

var owners = []string{OwnerPolicy, OwnerTasks, OwnerNAT}

// ChainPrefix starts the name of every chain warren owns.
const ChainPrefix = "WARREN-"

// SetPrefix starts the name of every address set warren owns.
const SetPrefix = "WARREN-PS-"

// BridgeChain is the one ebtables chain (bridge family, filter table).
const BridgeChain = "WARREN-TASK-SRC"

// ownerOf says which owner a chain name belongs to: the namespace of
// chain names is hostfw's, so no builder needs to know another's.
func ownerOf(chain string) string {
	switch {
	case !strings.HasPrefix(chain, ChainPrefix):
		return ""
	case strings.HasPrefix(chain, "WARREN-POL"):
		return OwnerPolicy
	case strings.HasPrefix(chain, "WARREN-TASK-"):
		return OwnerTasks
	}
	return OwnerNAT
}

// Chains are the rules of some chains of one table: chain -> rules, each
// rule the iptables arguments after "-A CHAIN". A chain with no rules
// (nil) still exists.
type Chains map[string][]string

// Hook is a rule in a built-in chain that jumps to one of ours. Rule is
// the arguments after "-A CHAIN" and must carry a comment (the comment
// and the target identify it in a listing, as iptables prints matches in
// its own canonical form).
type Hook struct {
	Table, Chain string
	Rule         string
}

// Set is an address set (ipset hash:net, or an nft set).
type Set struct {
	Name    string
	Comment string
	Members []netip.Prefix
}

// Part is everything one owner wants in the kernel.
type Part struct {
	// Tables: table (filter, nat, mangle) -> its chains.
	Tables map[string]Chains
	// Hooks in this owner's order.
	Hooks []Hook
	Sets  []Set
	// Canaries are rules of ours (table, chain, rule) whose absence means
	// someone flushed our chains; Check looks for them now and then.
	Canaries []Hook
	// Bridge, when not nil, is the content of BridgeChain; BridgeHooks
	// are the bridge built-in chains (INPUT, FORWARD) that jump to it.
	Bridge      []string
	BridgeHooks []string
}

// tables are the iptables tables, in restore order: mangle (policies)
// first, so a failure there changes nothing else; nat before filter.
var tables = []string{"mangle", "nat", "filter"}

// builtinChains are the built-in chains a full sync and Cleanup search
// for hooks to our chains.
var builtinChains = map[string][]string{
	"mangle": {"FORWARD"}, // the policies; warren hooks nothing else there
	"filter": {"INPUT", "FORWARD", "OUTPUT"},
	"nat":    {"PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"},
}

// targetsOurs reports whether a listed rule jumps to a chain of ours.
func targetsOurs(rule string) bool {
	for _, verb := range []string{" -j ", " -g "} {
		if i := strings.Index(rule, verb+ChainPrefix); i >= 0 {
			return true
		}
	}
	return false
}

// hookKey identifies a hook in a listing: its target and comment.
func hookKey(rule string) (target, comment string) {
	fields := splitArgs(rule)
	for i := 0; i+1 < len(fields); i++ {
		switch fields[i] {
		case "-j", "-g":
			target = fields[i+1]
		case "--comment":
			comment = fields[i+1]
		}
	}
	return target, comment
}

// splitArgs splits a rule into arguments, honouring double quotes.
func splitArgs(rule string) []string {
	out := make([]string, 0, 16)
	for i := 0; i < len(rule); {
		if rule[i] == ' ' {
			i++
			continue
		}
		// A plain argument is a slice of the rule (no copy); one with
		// quotes or escapes is built.
		end := i
		for end < len(rule) && rule[end] != ' ' && rule[end] != '"' {
			end++
		}
		if end == len(rule) || rule[end] == ' ' {
			out = append(out, rule[i:end])
			i = end
			continue
		}
		var cur strings.Builder
		quoted := false
		for ; i < len(rule) && (quoted || rule[i] != ' '); i++ {
			switch c := rule[i]; {
			case c == '\\' && quoted && i+1 < len(rule):
				i++
				cur.WriteByte(rule[i])
			case c == '"':
				quoted = !quoted
			default:
				cur.WriteByte(c)
			}
		}
		out = append(out, cur.String())
	}
	return out
}

func sameHook(listed, want string) bool {
	lt, lc := hookKey(listed)
	wt, wc := hookKey(want)
	return lt == wt && lc == wc
}

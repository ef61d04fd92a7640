package netpolicy

import (
	"cmp"
	"fmt"
	"math/bits"
	"net/netip"
	"regexp"
	"slices"
	"strings"

	"github.com/warren-appliance/warren/cluster/clustermap"
)

// Policy names are DNS labels (they appear in rule comments and the CLI).
var policyNameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

// Bounds of one policy, so that no policy makes the manager or the nodes
// render and apply without end (one 1 MiB policy used to render about two
// million rules on every node).
const (
	MaxRules         = 100  // ingress plus egress rules
	MaxPeers         = 100  // peers of one rule
	MaxPorts         = 100  // ports of one rule
	MaxExcept        = 1024 // except entries of one ipBlock
	MaxRenderedRules = 2000 // iptables rules the policy renders (peers x ports, summed over its rules)
)

// CheckName reports why name is not a valid policy name.
func CheckName(name string) error {
	if !policyNameRE.MatchString(name) {
		return fmt.Errorf("policy name %q is not valid: use 1-63 lowercase letters, digits and '-', starting and ending with a letter or digit", name)
	}
	return nil
}

// Validate checks a policy as the manager receives it (the YAML parser
// runs the same checks and names the line). It also fills in PolicyTypes
// as Kubernetes does when they are not given: Ingress, plus Egress when
// there are egress rules.
func Validate(p *clustermap.Policy) error {
	if err := CheckName(p.Name); err != nil {
		return err
	}
	if err := checkSelector(p.PodSelector); err != nil {
		return fmt.Errorf("policy %s: podSelector: %w", p.Name, err)
	}
	if len(p.PolicyTypes) == 0 {
		p.PolicyTypes = []string{clustermap.PolicyIngress}
		if len(p.Egress) > 0 {
			p.PolicyTypes = append(p.PolicyTypes, clustermap.PolicyEgress)
		}
	}
	for _, t := range p.PolicyTypes {
		if err := checkPolicyType(t); err != nil {
			return fmt.Errorf("policy %s: policyTypes: %w", p.Name, err)
		}
	}
	if len(p.Egress) > 0 && !slices.Contains(p.PolicyTypes, clustermap.PolicyEgress) {
		return fmt.Errorf("policy %s: has egress rules but policyTypes %v leaves out Egress", p.Name, p.PolicyTypes)
	}
	if len(p.Ingress) > 0 && !slices.Contains(p.PolicyTypes, clustermap.PolicyIngress) {
		return fmt.Errorf("policy %s: has ingress rules but policyTypes %v leaves out Ingress", p.Name, p.PolicyTypes)
	}
	if err := checkBounds(p); err != nil {
		return err
	}
	for dir, rules := range map[string][]clustermap.PolicyRule{"ingress": p.Ingress, "egress": p.Egress} {
		for i, r := range rules {
			for j, peer := range r.Peers {
				if err := checkPeer(peer); err != nil {
					return fmt.Errorf("policy %s: %s[%d] peer %d: %w", p.Name, dir, i, j, err)
				}
			}
			for j, port := range r.Ports {
				if err := checkPort(port); err != nil {
					return fmt.Errorf("policy %s: %s[%d].ports[%d]: %w", p.Name, dir, i, j, err)
				}
			}
		}
	}
	return nil
}

func checkPolicyType(t string) error {
	if t != clustermap.PolicyIngress && t != clustermap.PolicyEgress {
		return fmt.Errorf("%q is not a policy type: want Ingress or Egress", t)
	}
	return nil
}

func checkSelector(sel clustermap.LabelSelector) error {
	if err := CheckLabels(sel.MatchLabels); err != nil {
		return fmt.Errorf("matchLabels: %w", err)
	}
	for _, r := range sel.MatchExpressions {
		if err := checkRequirement(r); err != nil {
			return err
		}
	}
	return nil
}

func checkRequirement(r clustermap.LabelRequirement) error {
	if err := CheckLabelKey(r.Key); err != nil {
		return fmt.Errorf("matchExpressions: %w", err)
	}
	switch r.Operator {
	case OpIn, OpNotIn:
		if len(r.Values) == 0 {
			return fmt.Errorf("matchExpressions: key %s: operator %s needs at least one value", r.Key, r.Operator)
		}
		for _, v := range r.Values {
			if err := CheckLabelValue(v); err != nil {
				return fmt.Errorf("matchExpressions: key %s: %w", r.Key, err)
			}
		}
	case OpExists, OpDoesNotExist:
		if len(r.Values) != 0 {
			return fmt.Errorf("matchExpressions: key %s: operator %s takes no values", r.Key, r.Operator)
		}
	default:
		return fmt.Errorf("matchExpressions: key %s: operator %q is not In, NotIn, Exists or DoesNotExist", r.Key, r.Operator)
	}
	return nil
}

func checkPeer(p clustermap.PolicyPeer) error {
	switch {
	case p.PodSelector != nil && p.IPBlock != nil:
		return fmt.Errorf("a peer is either a podSelector or an ipBlock, not both (write two list items)")
	case p.PodSelector != nil:
		return checkSelector(*p.PodSelector)
	case p.IPBlock != nil:
		_, err := BlockPrefixes(*p.IPBlock)
		return err
	}
	return fmt.Errorf("a peer needs a podSelector or an ipBlock")
}

func checkPort(p clustermap.PolicyPort) error {
	if p.Protocol != "TCP" && p.Protocol != "UDP" {
		return fmt.Errorf("protocol %q is not supported: want TCP or UDP", p.Protocol)
	}
	if p.EndPort != 0 {
		if p.Port == 0 {
			return fmt.Errorf("endPort %d needs a port", p.EndPort)
		}
		if p.EndPort < p.Port {
			return fmt.Errorf("endPort %d is below port %d", p.EndPort, p.Port)
		}
	}
	return nil
}

// BlockPrefixes turns an ipBlock into the IPv4 prefixes it covers: the
// CIDR minus every except (each must be inside it), in address order.
func BlockPrefixes(b clustermap.IPBlock) ([]netip.Prefix, error) {
	cidr, err := parseCanonical(b.CIDR)
	if err != nil {
		return nil, fmt.Errorf("ipBlock cidr: %w", err)
	}
	excepts := make([]netip.Prefix, 0, len(b.Except))
	for _, e := range b.Except {
		ex, err := parseCanonical(e)
		if err != nil {
			return nil, fmt.Errorf("ipBlock except: %w", err)
		}
		if !cidr.Contains(ex.Addr()) || ex.Bits() < cidr.Bits() {
			return nil, fmt.Errorf("ipBlock except %s is not inside cidr %s", ex, cidr)
		}
		excepts = append(excepts, ex)
	}
	// Sorted by address, wider first: an except inside an earlier one
	// follows it, and the rest are disjoint and in order, so one walk
	// yields the gaps between them (O(n log n); it was O(n^2)).
	slices.SortFunc(excepts, func(a, b netip.Prefix) int {
		return cmp.Or(a.Addr().Compare(b.Addr()), cmp.Compare(a.Bits(), b.Bits()))
	})
	var out []netip.Prefix
	next := v4(cidr.Addr()) // first address not yet covered or excepted
	var covered netip.Prefix
	for _, ex := range excepts {
		if covered.IsValid() && covered.Contains(ex.Addr()) {
			continue // inside an except already taken out
		}
		covered = ex
		out = appendRange(out, next, v4(ex.Addr()))
		next = v4(ex.Addr()) + 1<<(32-ex.Bits())
	}
	return appendRange(out, next, v4(cidr.Addr())+1<<(32-cidr.Bits())), nil
}

// v4 is an IPv4 address as a number (uint64, so that the end of the
// address space, 2^32, fits).
func v4(a netip.Addr) uint64 {
	b := a.As4()
	return uint64(b[0])<<24 | uint64(b[1])<<16 | uint64(b[2])<<8 | uint64(b[3])
}

// appendRange appends the fewest prefixes covering [from, to), in order.
func appendRange(out []netip.Prefix, from, to uint64) []netip.Prefix {
	for from < to {
		size := uint64(1) << 32
		if from != 0 {
			size = from & -from // the largest block aligned at from
		}
		for size > to-from {
			size >>= 1
		}
		n := 32 - (bits.Len64(size) - 1)
		out = append(out, netip.PrefixFrom(netip.AddrFrom4([4]byte{byte(from >> 24), byte(from >> 16), byte(from >> 8), byte(from)}), n))
		from += size
	}
	return out
}

func parseCanonical(s string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(strings.TrimSpace(s))
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q is not a CIDR such as 192.168.1.0/24", s)
	}
	if !p.Addr().Is4() {
		return netip.Prefix{}, fmt.Errorf("%s: only IPv4 is supported", p)
	}
	if p.Masked() != p {
		return netip.Prefix{}, fmt.Errorf("%s: host bits set, did you mean %s?", p, p.Masked())
	}
	return p, nil
}

// checkBounds refuses a policy beyond the Max* bounds, naming the bound.
func checkBounds(p *clustermap.Policy) error {
	if n := len(p.Ingress) + len(p.Egress); n > MaxRules {
		return fmt.Errorf("policy %s: %d rules: a policy holds at most %d rules (ingress plus egress); split it into several policies", p.Name, n, MaxRules)
	}
	rendered := 0
	for dir, rules := range map[string][]clustermap.PolicyRule{"ingress": p.Ingress, "egress": p.Egress} {
		for i, r := range rules {
			if len(r.Peers) > MaxPeers {
				return fmt.Errorf("policy %s: %s[%d]: %d peers: a rule holds at most %d peers", p.Name, dir, i, len(r.Peers), MaxPeers)
			}
			if len(r.Ports) > MaxPorts {
				return fmt.Errorf("policy %s: %s[%d]: %d ports: a rule holds at most %d ports (use endPort for ranges)", p.Name, dir, i, len(r.Ports), MaxPorts)
			}
			for j, peer := range r.Peers {
				if peer.IPBlock != nil && len(peer.IPBlock.Except) > MaxExcept {
					return fmt.Errorf("policy %s: %s[%d] peer %d: %d except entries: an ipBlock holds at most %d except entries", p.Name, dir, i, j, len(peer.IPBlock.Except), MaxExcept)
				}
			}
			rendered += max(len(r.Peers), 1) * max(len(r.Ports), 1)
		}
	}
	if rendered > MaxRenderedRules {
		return fmt.Errorf("policy %s: renders %d rules (peers x ports of each rule): a policy renders at most %d rendered rules; use fewer peers or ports per rule, or port ranges", p.Name, rendered, MaxRenderedRules)
	}
	return nil
}

package netpolicy

import (
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"strings"

	"github.com/warren-appliance/warren/cluster/clustermap"
)

// Policy names are DNS labels (they appear in rule comments and the CLI).
var policyNameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

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
	out := []netip.Prefix{cidr}
	for _, e := range b.Except {
		ex, err := parseCanonical(e)
		if err != nil {
			return nil, fmt.Errorf("ipBlock except: %w", err)
		}
		if !cidr.Contains(ex.Addr()) || ex.Bits() < cidr.Bits() {
			return nil, fmt.Errorf("ipBlock except %s is not inside cidr %s", ex, cidr)
		}
		var next []netip.Prefix
		for _, p := range out {
			next = append(next, subtract(p, ex)...)
		}
		out = next
	}
	slices.SortFunc(out, func(a, b netip.Prefix) int { return a.Addr().Compare(b.Addr()) })
	return out, nil
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

// subtract returns p minus ex as disjoint prefixes.
func subtract(p, ex netip.Prefix) []netip.Prefix {
	if !p.Overlaps(ex) {
		return []netip.Prefix{p}
	}
	if ex.Bits() <= p.Bits() {
		return nil // ex covers p
	}
	// Split p in halves and keep the half without ex whole.
	lo := netip.PrefixFrom(p.Addr(), p.Bits()+1)
	hiAddr := p.Addr().As4()
	bit := p.Bits()
	hiAddr[bit/8] |= 0x80 >> (bit % 8)
	hi := netip.PrefixFrom(netip.AddrFrom4(hiAddr), p.Bits()+1)
	return append(subtract(lo, ex), subtract(hi, ex)...)
}

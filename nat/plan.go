package nat

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// ruleset is the desired content of every chain this package owns:
// table -> chain -> rules (the arguments after "-A CHAIN").
type ruleset map[string]map[string][]string

// tables are the iptables tables the rules use. iptables-restore commits
// each table's section on its own and stops at the first failure, so nat,
// the table whose failure would matter most, goes first: if it fails,
// nothing at all is changed.
var tables = []string{"nat", "filter"}

func (rs ruleset) add(table, chain string, rule ...string) {
	rs[table][chain] = append(rs[table][chain], rule...)
}

// declare makes sure chain exists even when it holds no rules.
func (rs ruleset) declare(table, chain string) {
	if _, ok := rs[table][chain]; !ok {
		rs[table][chain] = nil
	}
}

// plan computes the rules for services. Entries Validate would reject
// (non-IPv4 addresses, unknown protocols) are skipped; duplicate names or
// ports must be caught by Validate before.
func plan(services []Service, opts Options) ruleset {
	ctx := newPlanContext(opts)
	return assemble(services, ctx, func(s Service) ruleset { return planService(s, ctx) })
}

// planContext holds what every service's rules derive from the options.
type planContext struct {
	opts            Options
	localDst        []string
	affinitySeconds int
}

func newPlanContext(opts Options) planContext {
	seconds := int(opts.PersistenceTimeout.Seconds())
	if opts.PersistenceTimeout <= 0 {
		seconds = int(DefaultPersistenceTimeout.Seconds())
	}
	return planContext{opts: opts, localDst: localDestinations(opts), affinitySeconds: max(seconds, 1)}
}

// assemble builds the whole ruleset: the fixed chains, then each
// service's part (from partOf, which the Applier may answer from a cache)
// in name order, then the last rule of the dispatch chain.
func assemble(services []Service, ctx planContext, partOf func(Service) ruleset) ruleset {
	rs := ruleset{"filter": {}, "nat": {}}

	// The canary jump is the first rule of both WARREN-SERVICES chains, so
	// a flush of either is noticed.
	canary := fmt.Sprintf(`-m comment --comment %q -j %s`, "canary: gone when this chain is flushed", chainCanary)
	for _, t := range tables {
		rs.declare(t, chainCanary)
		rs.add(t, chainServices, canary)
	}
	rs.add("nat", chainMarkMasq, "-j MARK --or-mark "+masqMark)
	peerNAT, peerFilter := gatewayRules(ctx.opts)
	rs.add("nat", chainPostrouting, peerNAT...)
	rs.add("filter", chainExternal, peerFilter...)
	rs.declare("filter", chainExternal)
	rs.add("nat", chainPostrouting,
		fmt.Sprintf("-m mark ! --mark %s/%s -j RETURN", masqMark, masqMark),
		// Clear the bit so a packet re-entering the stack (e.g. through a
		// tunnel) is not masqueraded twice.
		"-j MARK --xor-mark "+masqMark,
		fmt.Sprintf(`-m comment --comment %q -j MASQUERADE --random-fully`, "warren service traffic requiring SNAT"))
	rs.declare("nat", chainNodePorts)
	for _, rule := range forwardRules(ctx.opts) {
		rs.add("filter", chainForward, rule)
	}

	for _, s := range sortedServices(services) {
		for table, chains := range partOf(s) {
			for chain, rules := range chains {
				if _, shared := rs[table][chain]; shared {
					rs[table][chain] = append(rs[table][chain], rules...)
				} else {
					// Clipped: a later append must never write into a
					// cached part's spare capacity.
					rs[table][chain] = slices.Clip(rules)
				}
			}
		}
	}

	// Last rule of the dispatch chain: published ports on local addresses.
	for _, dst := range ctx.localDst {
		rs.add("nat", chainServices, fmt.Sprintf(`%s -m comment --comment %q -j %s`, dst, "published ports on this node", chainNodePorts))
	}
	return rs
}

// planService is the rules one service adds: its own chains, and its
// rules in the shared chains (WARREN-SERVICES, WARREN-NODEPORTS,
// WARREN-EXTERNAL-SERVICES), which assemble appends in service order.
func planService(s Service, ctx planContext) ruleset {
	rs := ruleset{"filter": {}, "nat": {}}
	if !s.VIP.Is4() {
		return rs
	}
	opts := ctx.opts
	endpoints := sortedEndpoints(s.Endpoints)
	for _, p := range servicePorts(s) {
		proto := strings.ToLower(p.Protocol)
		var vipMatch string
		switch proto {
		case "tcp", "udp":
			vipMatch = fmt.Sprintf("-d %s/32 -p %s -m %s --dport %d", s.VIP, proto, proto, p.Port)
		case protoAll:
			vipMatch = fmt.Sprintf("-d %s/32", s.VIP)
		default:
			continue
		}
		name := portKey(s.Name, p)

		if len(endpoints) == 0 {
			// No endpoint: refuse at once (ICMP port unreachable, which a
			// TCP client sees as connection refused) instead of letting
			// clients time out. Declared ports are covered by the VIP's
			// catch-all below.
			if proto == protoAll {
				rs.add("filter", chainServices, fmt.Sprintf(`%s -m comment --comment %q -j REJECT`, vipMatch, name+" has no endpoints"))
			}
			if p.Published != 0 {
				for _, dst := range ctx.localDst {
					rs.add("filter", chainExternal, fmt.Sprintf(`%s -p %s -m %s --dport %d -m comment --comment %q -j REJECT`,
						dst, proto, proto, p.Published, name+" has no endpoints"))
				}
			}
			continue
		}

		svc := serviceChain(s.Name, p)
		rs.add("nat", chainServices, fmt.Sprintf(`%s -m comment --comment %q -j %s`, vipMatch, name+" virtual IP", svc))

		// Traffic from outside the container subnet (this host, other
		// hosts) is masqueraded so the endpoint replies through us.
		if opts.ContainerSubnet.IsValid() && opts.ContainerSubnet.Addr().Is4() {
			rs.add("nat", svc, fmt.Sprintf(`! -s %s -m comment --comment %q -j %s`, opts.ContainerSubnet.Masked(), name+" from outside the container subnet", chainMarkMasq))
		} else {
			rs.add("nat", svc, fmt.Sprintf(`-m comment --comment %q -j %s`, name+" masquerade (no container subnet set)", chainMarkMasq))
		}
		affinity := s.Affinity || opts.Persistence
		if affinity {
			for _, e := range endpoints {
				sep := endpointChain(s.Name, p, e)
				rs.add("nat", svc, fmt.Sprintf(`-m comment --comment %q -m recent --name %s --rcheck --seconds %d --reap -j %s`, e.Name, sep, ctx.affinitySeconds, sep))
			}
		}
		for i, e := range endpoints {
			sep := endpointChain(s.Name, p, e)
			remaining := len(endpoints) - i
			if remaining > 1 {
				rs.add("nat", svc, fmt.Sprintf(`-m comment --comment %q -m statistic --mode random --probability %s -j %s`, e.Name, probability(remaining), sep))
			} else {
				rs.add("nat", svc, fmt.Sprintf(`-m comment --comment %q -j %s`, e.Name, sep))
			}

			// Hairpin: a task that reaches its own VIP and draws itself
			// must see the reply come from elsewhere, so masquerade it.
			rs.add("nat", sep, fmt.Sprintf(`-s %s/32 -m comment --comment %q -j %s`, e.IP, e.Name+" hairpin", chainMarkMasq))
			recent := ""
			if affinity {
				recent = " -m recent --name " + sep + " --set"
			}
			if proto == protoAll {
				rs.add("nat", sep, fmt.Sprintf(`-m comment --comment %q%s -j DNAT --to-destination %s`, e.Name, recent, e.IP))
			} else {
				rs.add("nat", sep, fmt.Sprintf(`-p %s -m comment --comment %q%s -m %s -j DNAT --to-destination %s`,
					proto, e.Name, recent, proto, netip.AddrPortFrom(e.IP, p.targetPort())))
			}
		}

		if p.Published != 0 {
			ext := externalChain(s.Name, p)
			rs.add("nat", chainNodePorts, fmt.Sprintf(`-p %s -m %s --dport %d -m comment --comment %q -j %s`, proto, proto, p.Published, name+" published", ext))
			rs.add("nat", ext,
				fmt.Sprintf(`-m comment --comment %q -j %s`, "masquerade published traffic", chainMarkMasq),
				"-j "+svc)
		}
	}
	if len(s.Ports) > 0 {
		// Traffic to the VIP that was not DNATed (a port the service does
		// not have, or no endpoints at all) is refused rather than routed
		// nowhere: DNATed packets no longer carry the VIP when filter sees
		// them.
		why := s.Name + " has no other ports"
		if len(endpoints) == 0 {
			why = s.Name + " has no endpoints"
		}
		rs.add("filter", chainServices, fmt.Sprintf(`-d %s/32 -m comment --comment %q -j REJECT`, s.VIP, why))
	}
	return rs
}

// probability is the chance of picking the first of the remaining n
// endpoints so that each of them ends up with 1/n overall; ten decimals as
// kube-proxy prints them (two decimals would skew the split).
func probability(remaining int) string {
	return fmt.Sprintf("%0.10f", 1.0/float64(remaining))
}

// localDestinations are the destination matches of published ports.
// Loopback is excluded: DNAT of 127.0.0.1 to another host needs
// route_localnet, which would expose localhost services.
func localDestinations(opts Options) []string {
	if len(opts.NodeAddresses) == 0 {
		return []string{"! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL"}
	}
	addrs := slices.Clone(opts.NodeAddresses)
	slices.SortFunc(addrs, func(a, b netip.Addr) int { return a.Compare(b) })
	addrs = slices.Compact(addrs)
	var out []string
	for _, a := range addrs {
		if a.Is4() {
			out = append(out, fmt.Sprintf("-d %s/32", a))
		}
	}
	return out
}

// forwardRules accept forwarded packets of DNATed connections, so service
// traffic passes hosts whose FORWARD policy is DROP (e.g. with Docker).
func forwardRules(opts Options) []string {
	const comment = "warren service traffic"
	var ifaces []string
	for _, i := range []string{opts.Bridge, opts.Overlay} {
		if i != "" && !slices.Contains(ifaces, i) {
			ifaces = append(ifaces, i)
		}
	}
	if len(ifaces) == 0 {
		return []string{fmt.Sprintf(`-m conntrack --ctstate DNAT -m comment --comment %q -j ACCEPT`, comment)}
	}
	var rules []string
	for _, i := range ifaces {
		rules = append(rules,
			fmt.Sprintf(`-i %s -m conntrack --ctstate DNAT -m comment --comment %q -j ACCEPT`, i, comment),
			fmt.Sprintf(`-o %s -m conntrack --ctstate DNAT -m comment --comment %q -j ACCEPT`, i, comment))
	}
	return rules
}

// gatewayRules are the gateway node's rules for peered clusters: the
// peer's traffic is masqueraded into this cluster's container subnet
// (other nodes accept only the mesh's addresses), and new connections from
// the peer's container subnet to this node itself are dropped (the peer
// reaches exported tasks only; which tasks is the policy chain's job:
// package netpolicy, Input.Peers, first in FORWARD).
func gatewayRules(opts Options) (natRules, filterRules []string) {
	peers := slices.Clone(opts.PeerGateways)
	slices.SortFunc(peers, func(a, b PeerGateway) int { return cmp.Compare(a.Peer, b.Peer) })
	for _, p := range peers {
		if !p.Subnet.Addr().Is4() {
			continue
		}
		src := p.Subnet.Masked().String()
		filterRules = append(filterRules, fmt.Sprintf(`-s %s -m addrtype --dst-type LOCAL -m comment --comment %q -j DROP`, src, "peer "+p.Peer+": no port of this node"))
		if opts.ContainerSubnet.IsValid() && opts.ContainerSubnet.Addr().Is4() {
			natRules = append(natRules, fmt.Sprintf(`-s %s -d %s -m comment --comment %q -j MASQUERADE`, src, opts.ContainerSubnet.Masked(), "peer "+p.Peer+" into this cluster"))
		}
	}
	return natRules, filterRules
}

func sortedServices(in []Service) []Service {
	out := slices.Clone(in)
	slices.SortStableFunc(out, func(a, b Service) int { return cmp.Compare(a.Name, b.Name) })
	return out
}

// protoAll is the protocol of the one implicit port of a service that
// declares none: every port of every protocol on its VIP.
const protoAll = "all"

// servicePorts are the ports of s to render, sorted; a service without
// ports gets the implicit all-ports port.
func servicePorts(s Service) []Port {
	if len(s.Ports) == 0 {
		return []Port{{Protocol: protoAll}}
	}
	return sortedPorts(s.Ports)
}

func sortedPorts(in []Port) []Port {
	out := slices.Clone(in)
	slices.SortStableFunc(out, func(a, b Port) int {
		return cmp.Or(cmp.Compare(strings.ToLower(a.Protocol), strings.ToLower(b.Protocol)), cmp.Compare(a.Port, b.Port))
	})
	return out
}

// sortedEndpoints orders endpoints by name (then address) so the rendered
// probabilities do not depend on the caller's order.
func sortedEndpoints(in []Endpoint) []Endpoint {
	var out []Endpoint
	for _, e := range in {
		if e.IP.Is4() {
			out = append(out, e)
		}
	}
	slices.SortStableFunc(out, func(a, b Endpoint) int {
		return cmp.Or(cmp.Compare(a.Name, b.Name), a.IP.Compare(b.IP))
	})
	return out
}

// Package nat turns services (a VIP, ports, endpoints) into iptables rules:
// a pure renderer that produces the chains as plain data (and as
// iptables-restore text, the dry run), and an Applier that hands them to
// the node's one firewall owner (package hostfw), which writes them with
// the policy and task rules in one transaction per sync, in the style of
// kube-proxy's iptables mode.
//
// Traffic flow (nat table): PREROUTING and OUTPUT jump to WARREN-SERVICES,
// which matches VIP:port and jumps to a per-service-port WARREN-SVC-* chain;
// that chain picks an endpoint chain WARREN-SEP-* at random (or by client
// affinity), which DNATs to the endpoint. Published ports are matched in
// WARREN-NODEPORTS on this node's own addresses. Marked traffic is
// masqueraded in WARREN-POSTROUTING. In the filter table, new connections
// to a VIP that were not DNATed (no endpoints, or a port the service does
// not have) and to published ports without endpoints are REJECTed, so
// clients fail fast instead of timing out; forwarded traffic of DNATed
// connections is accepted (WARREN-FORWARD).
//
// Requirements on the rest of the node: VIPs must be routable (the host
// needs a route for the VIP subnet, e.g. via the overlay or the bridge,
// or connect() fails before the nat table is consulted); and when the
// br_netfilter module is loaded (Docker loads it), bridge ports of tasks
// need hairpin mode, or a task that draws itself behind its own VIP gets no
// answer: the DNAT happens on the bridge path and the frame must leave by
// the port it came in.
//
// Limits: IPv4 only. Affinity uses xt_recent, whose lists hold 100
// clients each by default (module parameter ip_list_tot).
package nat

import (
	"fmt"
	"net/netip"
	"regexp"
	"strings"
	"time"
)

// Endpoint is one backend of a service: a running task with an IP.
type Endpoint struct {
	Name  string     // task name, e.g. web-1 (shown in comments and summaries)
	IP    netip.Addr // the task's container address
	Local bool       // the task runs on this node
}

// Port is one port of a service. A service with no ports is reachable on
// every port (and protocol) of its VIP, as a Docker Swarm VIP is: traffic
// goes to the endpoints unchanged.
type Port struct {
	Protocol   string // "tcp" or "udp"
	Port       uint16 // port on the VIP
	TargetPort uint16 // port on the endpoints; 0 means the same as Port
	Published  uint16 // port on every address of this node (routing mesh); 0 = none
}

// Service is a set of endpoints behind one virtual IP.
type Service struct {
	Name      string
	VIP       netip.Addr
	Ports     []Port
	Endpoints []Endpoint
	Affinity  bool // stick each client address to one endpoint
}

// PeerGateway is a peered cluster whose gateway links end on this node
// (federation): its traffic is masqueraded into the cluster (other nodes
// accept only the mesh's addresses) and reaches no port of this node.
type PeerGateway struct {
	Peer   string
	Subnet netip.Prefix
}

// Options are the node-wide settings of the rules.
type Options struct {
	// PeerGateways are set on a cluster's gateway node only.
	PeerGateways []PeerGateway
	// Persistence turns on client-address affinity for every service.
	Persistence bool
	// PersistenceTimeout is how long an idle client stays stuck to its
	// endpoint; zero means DefaultPersistenceTimeout.
	PersistenceTimeout time.Duration
	// NodeAddresses restricts published ports to these destination
	// addresses; empty means every local address except loopback.
	NodeAddresses []netip.Addr
	// ContainerSubnet is the cluster's container range: VIP traffic from
	// outside it (the host itself, off-cluster clients) is masqueraded so
	// replies come back through this node with an overlay source. When
	// invalid (unset), all VIP traffic is masqueraded.
	ContainerSubnet netip.Prefix
	// Bridge and Overlay name the container bridge and the WireGuard
	// interface. Forwarding of DNATed traffic is accepted on them; when
	// both are empty it is accepted on any interface.
	Bridge  string
	Overlay string
}

// DefaultPersistenceTimeout matches the reference configuration ("3h").
const DefaultPersistenceTimeout = 3 * time.Hour

var namePattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$`)

// targetPort is the endpoint port of p.
func (p Port) targetPort() uint16 {
	if p.TargetPort == 0 {
		return p.Port
	}
	return p.TargetPort
}

// Validate reports every reason services cannot be rendered faithfully:
// bad names (they end up in rule comments), non-IPv4 addresses, unknown
// protocols, and clashes of VIP ports or published ports between services.
func Validate(services []Service, opts Options) error {
	var problems []string
	add := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }

	names := map[string]bool{}
	vips := map[netip.Addr]string{}
	vipPorts := map[string]string{}
	published := map[string]string{}
	for _, s := range services {
		if !namePattern.MatchString(s.Name) {
			add("service %q: name must match %s", s.Name, namePattern)
		}
		if names[s.Name] {
			add("service %q: listed twice", s.Name)
		}
		names[s.Name] = true
		if !s.VIP.Is4() {
			add("service %q: VIP %v is not an IPv4 address", s.Name, s.VIP)
		} else if other, ok := vips[s.VIP]; ok {
			add("service %q: VIP %v already used by %q", s.Name, s.VIP, other)
		}
		vips[s.VIP] = s.Name
		ips := map[netip.Addr]bool{}
		for _, e := range s.Endpoints {
			if !namePattern.MatchString(e.Name) {
				add("service %q: endpoint name %q must match %s", s.Name, e.Name, namePattern)
			}
			if !e.IP.Is4() {
				add("service %q: endpoint %s address %v is not IPv4", s.Name, e.Name, e.IP)
			}
			if ips[e.IP] {
				add("service %q: endpoint address %v listed twice", s.Name, e.IP)
			}
			ips[e.IP] = true
		}
		for _, p := range s.Ports {
			proto := strings.ToLower(p.Protocol)
			if proto != "tcp" && proto != "udp" {
				add("service %q: protocol %q is not tcp or udp", s.Name, p.Protocol)
				continue
			}
			if p.Port == 0 {
				add("service %q: port 0", s.Name)
			}
			key := fmt.Sprintf("%v:%d/%s", s.VIP, p.Port, proto)
			if other, ok := vipPorts[key]; ok {
				add("service %q: %s already used by %q", s.Name, key, other)
			}
			vipPorts[key] = s.Name
			if p.Published != 0 {
				key := fmt.Sprintf("%d/%s", p.Published, proto)
				if other, ok := published[key]; ok {
					add("service %q: published port %s already used by %q", s.Name, key, other)
				}
				published[key] = s.Name
			}
		}
	}
	for _, a := range opts.NodeAddresses {
		if !a.Is4() {
			add("node address %v is not IPv4", a)
		}
	}
	for _, ifname := range []string{opts.Bridge, opts.Overlay} {
		if ifname != "" && (!namePattern.MatchString(ifname) || len(ifname) > 15) {
			add("interface name %q is not valid", ifname)
		}
	}
	if len(problems) > 0 {
		return fmt.Errorf("invalid services: %s", strings.Join(problems, "; "))
	}
	return nil
}

package cluster

import (
	"fmt"
	"github.com/warren-appliance/warren/cluster/api"
	"net"
	"net/http"
	"net/netip"
	"strconv"

	"github.com/warren-appliance/warren/cluster/clustermap"
)

// ReservedPort is a host port the appliance itself uses: publishing it
// would DNAT the appliance's own traffic into a task.
type ReservedPort struct {
	Port     uint16
	Protocol string // "tcp" | "udp"
	What     string // what uses it, for the error message
}

// reservedPortsLocked lists the ports --publish must not take: DNS, the
// node API, every member's WireGuard port, every relay's port (TCP and
// UDP: published ports are DNATed on every node), and what the integrator adds
// (ManagerConfig.ReservedPorts: metrics, Raft, ...). m.mu is held.
func (m *Manager) reservedPortsLocked(s *state) []ReservedPort {
	out := []ReservedPort{
		{53, "udp", "the DNS server on every node"},
		{53, "tcp", "the DNS server on every node"},
		{api.NodeLogsPort, "tcp", "the task log server on every node (service logs, volumes)"},
		{api.NodeBlobsPort, "tcp", "the image blob server on every node (one pull per cluster)"},
	}
	for _, addr := range []string{m.cfg.APIListen, m.servingAddr} {
		if _, p, err := net.SplitHostPort(addr); err == nil {
			if n, err := strconv.ParseUint(p, 10, 16); err == nil && n != 0 {
				out = append(out, ReservedPort{uint16(n), "tcp", "the manager's node API (cluster.api_listen)"})
			}
		}
	}
	for _, n := range s.sortedNodes() {
		if p := n.Endpoint.Port(); p != 0 {
			out = append(out, ReservedPort{p, "udp", fmt.Sprintf("the WireGuard port of node %s (wireguard.listen_port)", n.Name)})
		}
		if ap, err := netip.ParseAddrPort(n.Relay); err == nil && ap.Port() != 0 {
			what := fmt.Sprintf("the relay of node %s ([relay])", n.Name)
			out = append(out, ReservedPort{ap.Port(), "udp", what}, ReservedPort{ap.Port(), "tcp", what})
		}
	}
	return append(out, m.cfg.ReservedPorts...)
}

// checkReservedPorts refuses published ports the appliance uses.
func (m *Manager) checkReservedPortsLocked(s *state, ports []clustermap.Port) error {
	reserved := m.reservedPortsLocked(s)
	for _, p := range ports {
		if p.Published == 0 {
			continue
		}
		for _, r := range reserved {
			if r.Port == p.Published && r.Protocol == p.Protocol {
				return errorf(http.StatusConflict, "host port %d/%s is reserved: it is %s; publish the service on another host port", p.Published, p.Protocol, r.What)
			}
		}
	}
	return nil
}

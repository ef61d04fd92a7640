package nat

import (
	"fmt"
	"maps"
	"net/netip"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// udpBackends is, for every UDP service port, the endpoints (address and
// target port) that flows to it may legitimately be DNATed to. UDP flows
// stick to their conntrack entry until it expires, so entries pointing
// anywhere else must be deleted when endpoints change.
type udpBackends struct {
	vips      map[netip.AddrPort]map[netip.AddrPort]bool // VIP:port -> endpoints
	published map[uint16]map[netip.AddrPort]bool         // published port -> endpoints
	allPorts  map[netip.Addr]map[netip.Addr]bool         // VIP of a service without ports -> endpoint addresses
}

func newUDPBackends(services []Service) udpBackends {
	b := udpBackends{vips: map[netip.AddrPort]map[netip.AddrPort]bool{}, published: map[uint16]map[netip.AddrPort]bool{},
		allPorts: map[netip.Addr]map[netip.Addr]bool{}}
	for _, s := range services {
		if len(s.Ports) == 0 {
			eps := map[netip.Addr]bool{}
			for _, e := range s.Endpoints {
				eps[e.IP] = true
			}
			b.allPorts[s.VIP] = eps
		}
		for _, p := range s.Ports {
			if strings.ToLower(p.Protocol) != "udp" {
				continue
			}
			eps := map[netip.AddrPort]bool{}
			for _, e := range s.Endpoints {
				eps[netip.AddrPortFrom(e.IP, p.targetPort())] = true
			}
			b.vips[netip.AddrPortFrom(s.VIP, p.Port)] = eps
			if p.Published != 0 {
				b.published[p.Published] = eps
			}
		}
	}
	return b
}

func (b udpBackends) equal(o udpBackends) bool {
	eq := func(x, y map[netip.AddrPort]bool) bool { return maps.Equal(x, y) }
	eqAddr := func(x, y map[netip.Addr]bool) bool { return maps.Equal(x, y) }
	return maps.EqualFunc(b.vips, o.vips, eq) && maps.EqualFunc(b.published, o.published, eq) &&
		maps.EqualFunc(b.allPorts, o.allPorts, eqAddr)
}

// staleUDPFilter matches UDP conntrack entries towards a service (its VIP
// port, or a published port on a local address) whose reply does not come
// from a current endpoint: flows DNATed to a removed endpoint, flows that
// were never DNATed because the service had no endpoint yet, and flows to
// ports that were removed (those keep an empty endpoint set).
type staleUDPFilter struct {
	current udpBackends
	local   map[netip.Addr]bool // this node's addresses, for published ports
}

// newStaleUDPFilter covers the ports of current and, with no endpoints
// left, the ports only previous had.
func newStaleUDPFilter(previous, current udpBackends, local map[netip.Addr]bool) *staleUDPFilter {
	f := &staleUDPFilter{current: udpBackends{vips: maps.Clone(current.vips), published: maps.Clone(current.published),
		allPorts: maps.Clone(current.allPorts)}, local: local}
	for vip := range previous.allPorts {
		if _, ok := f.current.allPorts[vip]; !ok {
			f.current.allPorts[vip] = nil
		}
	}
	for vip := range previous.vips {
		if _, ok := f.current.vips[vip]; !ok {
			f.current.vips[vip] = nil
		}
	}
	for port := range previous.published {
		if _, ok := f.current.published[port]; !ok {
			f.current.published[port] = nil
		}
	}
	return f
}

// MatchConntrackFlow implements netlink.CustomConntrackFilter.
func (f *staleUDPFilter) MatchConntrackFlow(flow *netlink.ConntrackFlow) bool {
	if flow.Forward.Protocol != unix.IPPROTO_UDP {
		return false
	}
	dstIP, ok1 := netip.AddrFromSlice(flow.Forward.DstIP)
	replyIP, ok2 := netip.AddrFromSlice(flow.Reverse.SrcIP)
	if !ok1 || !ok2 {
		return false
	}
	dst := netip.AddrPortFrom(dstIP.Unmap(), flow.Forward.DstPort)
	reply := netip.AddrPortFrom(replyIP.Unmap(), flow.Reverse.SrcPort)
	if eps, ok := f.current.vips[dst]; ok {
		return !eps[reply]
	}
	if eps, ok := f.current.allPorts[dst.Addr()]; ok {
		return !eps[reply.Addr()] // all-ports DNAT keeps the port
	}
	if eps, ok := f.current.published[dst.Port()]; ok && f.local[dst.Addr()] {
		return !eps[reply]
	}
	return false
}

// localAddresses are the IPv4 addresses published ports answer on:
// NodeAddresses when given, otherwise every address of this namespace.
func localAddresses(opts Options) (map[netip.Addr]bool, error) {
	local := map[netip.Addr]bool{}
	if len(opts.NodeAddresses) > 0 {
		for _, a := range opts.NodeAddresses {
			local[a] = true
		}
		return local, nil
	}
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_V4)
	if err != nil {
		return nil, fmt.Errorf("list local addresses: %w", err)
	}
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP); ok {
			local[ip.Unmap()] = true
		}
	}
	return local, nil
}

// deleteStaleUDPFlows removes the conntrack entries f matches.
func deleteStaleUDPFlows(f *staleUDPFilter) (uint, error) {
	n, err := netlink.ConntrackDeleteFilters(netlink.ConntrackTable, unix.AF_INET, f)
	if err != nil {
		return n, fmt.Errorf("delete stale UDP conntrack entries: %w", err)
	}
	return n, nil
}

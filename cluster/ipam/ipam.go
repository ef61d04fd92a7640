// Package ipam hands out the cluster's addresses: node overlay IPs, per-node
// container blocks and service VIPs. It is pure: callers pass what is taken
// (in use or held back) and persist the result themselves.
package ipam

import (
	"fmt"
	"net/netip"

	"github.com/warren-appliance/warren/internal/netaddr"
)

// NextAddr returns the lowest usable address of subnet that is not taken,
// skipping the network address and, for IPv4 prefixes shorter than /31, the
// broadcast address. Sequential lowest-free keeps managers created first on
// the lowest addresses (10.0.0.1) and later nodes on 10.0.0.2, .3, ...
func NextAddr(subnet netip.Prefix, taken func(netip.Addr) bool) (netip.Addr, error) {
	subnet = subnet.Masked()
	if !subnet.IsValid() {
		return netip.Addr{}, fmt.Errorf("invalid subnet")
	}
	last := netaddr.Last(subnet)
	a := subnet.Addr()
	if subnet.Bits() < subnet.Addr().BitLen()-1 {
		a = a.Next() // skip the network address
	}
	for ; a.IsValid() && subnet.Contains(a); a = a.Next() {
		if a == last && subnet.Addr().Is4() && subnet.Bits() < 31 {
			break // broadcast
		}
		if !taken(a) {
			return a, nil
		}
	}
	return netip.Addr{}, fmt.Errorf("subnet %s is full", subnet)
}

// NextBlock returns the lowest /bits block of subnet that neither overlaps
// any prefix in avoid (e.g. the WireGuard subnet) nor is taken.
func NextBlock(subnet netip.Prefix, bits int, avoid []netip.Prefix, taken func(netip.Prefix) bool) (netip.Prefix, error) {
	subnet = subnet.Masked()
	if bits < subnet.Bits() || bits > subnet.Addr().BitLen() {
		return netip.Prefix{}, fmt.Errorf("block size /%d does not fit in %s", bits, subnet)
	}
	for a := subnet.Addr(); a.IsValid() && subnet.Contains(a); {
		block := netip.PrefixFrom(a, bits)
		free := !taken(block)
		for _, p := range avoid {
			if p.Overlaps(block) {
				free = false
			}
		}
		if free {
			return block, nil
		}
		a = netaddr.Last(block).Next()
	}
	return netip.Prefix{}, fmt.Errorf("container subnet %s has no free /%d block left", subnet, bits)
}

// Package netaddr holds address arithmetic that IPAM, the scheduler and the
// task network share, and the one rule for a node block's bridge address.
package netaddr

import "net/netip"

// Last returns the highest address of p (its broadcast address for IPv4).
func Last(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().AsSlice()
	host := len(b)*8 - p.Bits()
	for i := len(b) - 1; i >= 0 && host > 0; i-- {
		n := min(host, 8)
		b[i] |= byte(1<<n - 1)
		host -= n
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

// Bridge returns the bridge's address in a node's container block: its
// first address, the tasks' gateway and their DNS resolver. Task addresses
// come after it.
func Bridge(block netip.Prefix) netip.Addr {
	return block.Masked().Addr().Next()
}

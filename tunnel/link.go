package tunnel

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// routeProtocol tags the routes this package installs (rtnetlink protocol
// field, as routing daemons do), so a sync removes exactly its own routes
// and never one an operator added to the interface by hand.
const routeProtocol = netlink.RouteProtocol(0x57) // 'W'

// kernelLink applies address, MTU and routes of the TUN interface.
type kernelLink struct {
	name  string
	index int
}

func lookupLink(name string) (*kernelLink, error) {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return nil, fmt.Errorf("find interface %s: %w", name, err)
	}
	return &kernelLink{name: name, index: l.Attrs().Index}, nil
}

func (k *kernelLink) get() (netlink.Link, error) {
	l, err := netlink.LinkByIndex(k.index)
	if err != nil {
		return nil, fmt.Errorf("interface %s: %w", k.name, err)
	}
	return l, nil
}

// configure sets the overlay address (the kernel then adds the subnet's
// route itself), the MTU, and brings the link up.
func (k *kernelLink) configure(addr netip.Prefix, mtu int) error {
	l, err := k.get()
	if err != nil {
		return err
	}
	if err := netlink.LinkSetMTU(l, mtu); err != nil {
		return fmt.Errorf("set mtu %d on %s: %w", mtu, k.name, err)
	}
	nlAddr := &netlink.Addr{IPNet: prefixToIPNet(addr)}
	if err := netlink.AddrReplace(l, nlAddr); err != nil {
		return fmt.Errorf("set address %s on %s: %w", addr, k.name, err)
	}
	if err := netlink.LinkSetUp(l); err != nil {
		return fmt.Errorf("bring up %s: %w", k.name, err)
	}
	return nil
}

// syncRoutes makes this package's routes on the link exactly want, each
// with src so that host-originated packets carry the overlay address that
// the peers' AllowedIPs accept.
func (k *kernelLink) syncRoutes(want []netip.Prefix, src netip.Addr) error {
	have, err := k.routes()
	if err != nil {
		return err
	}
	wantSet := make(map[netip.Prefix]bool, len(want))
	for _, p := range want {
		wantSet[p] = true
	}
	var errs []error
	for p, r := range have {
		if !wantSet[p] {
			if err := netlink.RouteDel(&r); err != nil && !errors.Is(err, unix.ESRCH) {
				errs = append(errs, fmt.Errorf("remove route %s dev %s: %w", p, k.name, err))
			}
		}
	}
	for _, p := range want {
		r := netlink.Route{
			LinkIndex: k.index,
			Dst:       prefixToIPNet(p),
			Protocol:  routeProtocol,
			Scope:     netlink.SCOPE_LINK,
		}
		if p.Addr().Is4() == src.Is4() {
			r.Src = net.IP(src.AsSlice())
		}
		if old, ok := have[p]; ok && old.Src.Equal(r.Src) {
			continue
		}
		if err := netlink.RouteReplace(&r); err != nil {
			errs = append(errs, fmt.Errorf("add route %s dev %s src %s: %w", p, k.name, src, err))
		}
	}
	return errors.Join(errs...)
}

// routes lists this package's routes on the link, by destination.
func (k *kernelLink) routes() (map[netip.Prefix]netlink.Route, error) {
	filter := &netlink.Route{LinkIndex: k.index, Protocol: routeProtocol}
	rs, err := netlink.RouteListFiltered(netlink.FAMILY_ALL, filter, netlink.RT_FILTER_OIF|netlink.RT_FILTER_PROTOCOL)
	if err != nil {
		return nil, fmt.Errorf("list routes of %s: %w", k.name, err)
	}
	out := make(map[netip.Prefix]netlink.Route, len(rs))
	for _, r := range rs {
		if r.Dst == nil {
			continue
		}
		p, ok := ipNetToPrefix(r.Dst)
		if !ok {
			continue
		}
		out[p] = r
	}
	return out, nil
}

// waitGone waits for the kernel to drop the interface after its TUN file
// was closed; the removal is asynchronous.
func (k *kernelLink) waitGone(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		l, err := netlink.LinkByIndex(k.index)
		if err != nil || l.Attrs().Name != k.name {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("interface %s still present %s after close", k.name, timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func prefixToIPNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: net.IP(p.Addr().AsSlice()), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

func ipNetToPrefix(n *net.IPNet) (netip.Prefix, bool) {
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, _ := n.Mask.Size()
	if a.Is4In6() {
		a = a.Unmap()
	}
	return netip.PrefixFrom(a, ones).Masked(), true
}

package orchestrate

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/warren-appliance/warren/hostfw"
	"github.com/warren-appliance/warren/internal/atomicfile"

	"github.com/warren-appliance/warren/internal/netaddr"
)

// network applies the node's container network to the kernel: the bridge,
// forwarding, the task network's firewall rules (through package hostfw)
// and one namespace + veth per task.
type network struct {
	bridge  string
	overlay string
	block   netip.Prefix
	// containerSubnet is the cluster's container range (every node's
	// block): tasks of other nodes, which reach no port of this node.
	containerSubnet netip.Prefix
	// nodeSubnet holds the nodes' overlay addresses (inside
	// containerSubnet): they keep reaching this node.
	nodeSubnet netip.Prefix
	nsDir      string
	// forwardOrig remembers ip_forward's value before we turned it on, so
	// that --cleanup (and so a package purge) puts it back.
	forwardOrig string

	// fw writes the task network's rules (with everybody else's); made on
	// first use when nil.
	fwOnce sync.Once
	fw     *hostfw.Syncer
	fwErr  error

	isolationMu sync.Mutex // syncIsolation: tasks are set up in parallel

	portsMu sync.Mutex          // tasks are set up in parallel
	ports   map[string]taskPort // task -> its port; nil: not read from the namespaces yet
}

const ipForwardSysctl = "/proc/sys/net/ipv4/ip_forward"

// ensureHost converges the bridge, IP forwarding and the task network's
// part of the node's firewall (chains, hooks, the bridge chain; written
// by package hostfw).
func (n *network) ensureHost() error {
	if err := os.MkdirAll(n.nsDir, 0o755); err != nil {
		return fmt.Errorf("create netns dir: %w", err)
	}
	if _, err := n.ensureBridge(); err != nil {
		return err
	}
	if err := enableForwarding(ipForwardSysctl, n.forwardOrig); err != nil {
		return err
	}
	return n.syncPortSources()
}

// enableForwarding turns the sysctl at path on; the first time it changes
// it, the previous value is saved in orig for restoreForwarding.
func enableForwarding(path, orig string) error {
	cur, err := os.ReadFile(path)
	if err == nil && bytes.Equal(bytes.TrimSpace(cur), []byte("1")) {
		return nil
	}
	if err == nil && orig != "" {
		if _, statErr := os.Stat(orig); errors.Is(statErr, os.ErrNotExist) {
			if err := atomicfile.Write(orig, cur, 0o600); err != nil {
				return fmt.Errorf("remember ip forwarding: %w", err)
			}
		}
	}
	if err := os.WriteFile(path, []byte("1\n"), 0o644); err != nil {
		return fmt.Errorf("enable ip forwarding: %w", err)
	}
	return nil
}

// restoreForwarding puts back the value enableForwarding saved, if it
// changed the sysctl; nothing otherwise.
func restoreForwarding(path, orig string) error {
	if orig == "" {
		return nil
	}
	old, err := os.ReadFile(orig)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read saved ip forwarding: %w", err)
	}
	if err := os.WriteFile(path, old, 0o644); err != nil {
		return fmt.Errorf("restore ip forwarding: %w", err)
	}
	return os.Remove(orig)
}

func (n *network) ensureBridge() (netlink.Link, error) {
	link, err := netlink.LinkByName(n.bridge)
	var notFound netlink.LinkNotFoundError
	switch {
	case errors.As(err, &notFound):
		br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: n.bridge, HardwareAddr: bridgeMAC(n.block)}}
		if err := netlink.LinkAdd(br); err != nil {
			return nil, fmt.Errorf("create bridge %s: %w", n.bridge, err)
		}
		if link, err = netlink.LinkByName(n.bridge); err != nil {
			return nil, fmt.Errorf("find new bridge %s: %w", n.bridge, err)
		}
	case err != nil:
		return nil, fmt.Errorf("find bridge %s: %w", n.bridge, err)
	case link.Type() != "bridge":
		return nil, fmt.Errorf("%s exists and is a %s, not a bridge", n.bridge, link.Type())
	}

	// A bridge whose MAC was not set takes the lowest MAC of its ports,
	// so a new task's port could change it under the running tasks,
	// whose neighbour entries for their gateway (and, on an isolated
	// bridge, for every other task) would keep the old MAC: their frames
	// would be dropped until those entries time out (about 20 s, seen as
	// a new task unreachable across nodes). A MAC set here stays.
	if mac := bridgeMAC(n.block); !bytes.Equal(link.Attrs().HardwareAddr, mac) {
		if err := netlink.LinkSetHardwareAddr(link, mac); err != nil {
			return nil, fmt.Errorf("set the MAC of bridge %s: %w", n.bridge, err)
		}
	}

	want := &net.IPNet{IP: netaddr.Bridge(n.block).AsSlice(), Mask: net.CIDRMask(n.block.Bits(), 32)}
	addrs, err := netlink.AddrList(link, netlink.FAMILY_V4)
	if err != nil {
		return nil, fmt.Errorf("list bridge addresses: %w", err)
	}
	have := false
	for _, a := range addrs {
		if a.IPNet.String() == want.String() {
			have = true
			continue
		}
		// The block changed: the old address would route the old block here.
		if err := netlink.AddrDel(link, &a); err != nil {
			return nil, fmt.Errorf("remove stale bridge address %s: %w", a.IPNet, err)
		}
	}
	if !have {
		if err := netlink.AddrAdd(link, &netlink.Addr{IPNet: want}); err != nil {
			return nil, fmt.Errorf("add bridge address %s: %w", want, err)
		}
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return nil, fmt.Errorf("bring bridge up: %w", err)
	}
	// Strict reverse-path filtering on the bridge: a routed packet from a
	// task whose source is not reached through the bridge (a WireGuard
	// subnet address, another node's block) is dropped. A second layer
	// under the per-port source check (ebtables), which also covers
	// bridged frames and addresses of the node's own block.
	if err := setSysctl(filepath.Join("/proc/sys/net/ipv4/conf", n.bridge, "rp_filter"), "1"); err != nil {
		return nil, err
	}
	if _, err := n.syncIsolation(); err != nil {
		return nil, err
	}
	return link, nil
}

// taskMAC is a task's eth0 MAC, derived from its IP: 02:42 (locally
// administered, unicast) then the four address bytes.
func taskMAC(ip netip.Addr) net.HardwareAddr {
	a := ip.As4()
	return net.HardwareAddr{0x02, 0x42, a[0], a[1], a[2], a[3]}
}

// bridgeMAC is the bridge's own MAC: locally administered, unicast, and
// derived from the node's block, so it is the same after a restart.
func bridgeMAC(block netip.Prefix) net.HardwareAddr {
	sum := sha256.Sum256([]byte("warren bridge " + block.Masked().String()))
	mac := net.HardwareAddr(sum[:6])
	mac[0] = mac[0]&^0x01 | 0x02
	return mac
}

// brNetfilterSysctl says whether bridged IPv4 frames pass iptables in
// this network namespace (missing: br_netfilter is not loaded).
const brNetfilterSysctl = "/proc/sys/net/bridge/bridge-nf-call-iptables"

// isolateTaskPorts reports whether task ports must be isolated so that
// task-to-task traffic is routed through the host's FORWARD chain: when
// br_netfilter does not send bridged frames through iptables.
func isolateTaskPorts() bool {
	cur, err := os.ReadFile(brNetfilterSysctl)
	return err != nil || string(bytes.TrimSpace(cur)) != "1"
}

// syncIsolation decides whether task ports are isolated and makes the
// bridge's proxy_arp_pvlan agree, in one step: ensureTask calls it before
// it isolates (or opens) a port, so a port is never isolated while the
// host does not answer ARP for the other tasks (isolated tasks could not
// resolve each other at all), whenever br_netfilter was switched.
//
// Without br_netfilter, frames between two tasks' ports would be bridged
// past iptables. Then task ports are isolated from each other and the
// host answers the tasks' ARP requests for each other's addresses
// (proxy_arp_pvlan), so it routes their traffic through FORWARD, where
// network policies are enforced. With br_netfilter on, bridged frames
// already pass FORWARD, and isolation would block its bridged DNAT (a
// task reaching a task of the same node, or itself, through a VIP), so
// ports stay open. The sysctl is read on every call, so a module loaded
// later (Docker loads it) is followed.
func (n *network) syncIsolation() (bool, error) {
	n.isolationMu.Lock()
	defer n.isolationMu.Unlock()
	isolate := isolateTaskPorts()
	want := "0"
	if isolate {
		want = "1"
	}
	if err := setSysctl(filepath.Join("/proc/sys/net/ipv4/conf", n.bridge, "proxy_arp_pvlan"), want); err != nil {
		return false, err
	}
	if isolate {
		// An isolated port cannot hear another task answer, so the host
		// answers at once instead of after a random delay of up to
		// proxy_delay (0.8 s by default) left for the real owner.
		if err := setSysctl(filepath.Join("/proc/sys/net/ipv4/neigh", n.bridge, "proxy_delay"), "0"); err != nil {
			return false, err
		}
	}
	return isolate, nil
}

// setSysctl writes value to the sysctl file path unless it holds it.
func setSysctl(path, value string) error {
	if cur, err := os.ReadFile(path); err == nil && string(bytes.TrimSpace(cur)) == value {
		return nil
	}
	if err := os.WriteFile(path, []byte(value+"\n"), 0o644); err != nil {
		return fmt.Errorf("set %s to %s: %w", path, value, err)
	}
	return nil
}

// firewall is the Syncer the task network writes through.
func (n *network) firewall() (*hostfw.Syncer, error) {
	n.fwOnce.Do(func() {
		if n.fw == nil {
			n.fw, n.fwErr = hostfw.New(nil)
		}
	})
	return n.fw, n.fwErr
}

// syncFirewallLocked hands the task network's part (chains, hooks, the
// bridge chain with every known port) to the firewall owner, which writes
// what changed. portsMu is held and ports loaded.
func (n *network) syncFirewallLocked() error {
	fw, err := n.firewall()
	if err != nil {
		return err
	}
	ports := make([]taskPort, 0, len(n.ports))
	for _, p := range n.ports {
		ports = append(ports, p)
	}
	if err := fw.SetPart(hostfw.OwnerTasks, taskPart(n.bridge, n.overlay, n.block, n.containerSubnet, n.nodeSubnet, ports)); err != nil {
		return fmt.Errorf("task network rules: %w", err)
	}
	return nil
}

// removeHost deletes the bridge and our chains (for --cleanup).
func (n *network) removeHost() error {
	var errs []error
	if err := n.removePortSources(); err != nil {
		errs = append(errs, err)
	}
	if link, err := netlink.LinkByName(n.bridge); err == nil {
		if err := netlink.LinkDel(link); err != nil {
			errs = append(errs, fmt.Errorf("delete bridge: %w", err))
		}
	}
	if err := restoreForwarding(ipForwardSysctl, n.forwardOrig); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func (n *network) netnsPath(task string) string { return filepath.Join(n.nsDir, task) }

// ensureTask gives task its namespace with eth0 (a veth into the bridge),
// ip, a default route via the bridge, and lo up; it returns the namespace
// path. An existing, complete setup is left untouched.
func (n *network) ensureTask(task string, ip netip.Addr) (string, error) {
	path := n.netnsPath(task)
	if !isNetnsMount(path) {
		if err := createNetns(path); err != nil {
			return "", fmt.Errorf("task %s: %w", task, err)
		}
	}
	nsh, err := netns.GetFromPath(path)
	if err != nil {
		return "", fmt.Errorf("open netns of %s: %w", task, err)
	}
	defer nsh.Close()
	h, err := netlink.NewHandleAt(nsh)
	if err != nil {
		return "", fmt.Errorf("netlink in netns of %s: %w", task, err)
	}
	defer h.Close()

	br, err := netlink.LinkByName(n.bridge)
	if err != nil {
		return "", fmt.Errorf("find bridge %s: %w", n.bridge, err)
	}
	isolate, err := n.syncIsolation()
	if err != nil {
		return "", err
	}
	hostName := hostVethName(task)
	if n.taskLinkComplete(h, br, hostName, ip) {
		if err := n.refreshTaskPort(task, h, br, hostName, isolate); err != nil {
			return "", err
		}
		if err := n.setPort(task, h, ip); err != nil {
			return "", err
		}
		return path, nil
	}

	// Rebuild from scratch: a half-made pair from a crash, or a new IP.
	if err := deleteTaskLink(task, h, hostName); err != nil {
		return "", err
	}
	host, err := addTaskVeth(task, nsh, br, hostName, ip, isolate)
	if err != nil {
		return "", err
	}
	// The port's source check is written before the port comes up; a
	// port without one is closed by the chain's catch-all rule.
	if err := n.setPort(task, h, ip); err != nil {
		return "", err
	}
	if err := netlink.LinkSetUp(host); err != nil {
		return "", fmt.Errorf("bring %s up: %w", hostName, err)
	}
	if err := n.configureTaskSide(task, h, ip); err != nil {
		return "", err
	}
	return path, nil
}

// refreshTaskPort brings a complete task port up to date: ports get
// hairpin mode if made before it was set here, and follow br_netfilter
// being switched on or off (see syncIsolation). The task's neighbour
// entries are flushed when they were resolved the other way or for an
// older bridge MAC.
func (n *network) refreshTaskPort(task string, h *netlink.Handle, br netlink.Link, hostName string, isolate bool) error {
	host, err := netlink.LinkByName(hostName)
	if err != nil {
		return nil // gone since taskLinkComplete found it: nothing to refresh
	}
	if pi, err := netlink.LinkGetProtinfo(host); err == nil && !pi.Hairpin {
		if err := netlink.LinkSetHairpin(host, true); err != nil {
			return fmt.Errorf("hairpin on %s: %w", hostName, err)
		}
	}
	if pi, err := netlink.LinkGetProtinfo(host); err == nil && pi.Isolated != isolate {
		if err := netlink.LinkSetIsolated(host, isolate); err != nil {
			return fmt.Errorf("isolation of bridge port %s: %w", hostName, err)
		}
		// The task's neighbours were resolved the other way (the
		// other tasks' own MACs, which an isolated port cannot
		// reach, or the host's): resolve them again now rather
		// than when the entries time out.
		if err := flushNeighbours(h); err != nil {
			return fmt.Errorf("task %s: %w", task, err)
		}
	} else if stale, err := staleNeighbours(h, br.Attrs().HardwareAddr, netaddr.Bridge(n.block), isolate); err == nil && stale {
		// The bridge's MAC changed (see ensureBridge): resolve again.
		if err := flushNeighbours(h); err != nil {
			return fmt.Errorf("task %s: %w", task, err)
		}
	}
	return nil
}

// deleteTaskLink deletes what is left of a task's veth pair: eth0 in its
// namespace (h) and hostName on the host.
func deleteTaskLink(task string, h *netlink.Handle, hostName string) error {
	if l, err := h.LinkByName("eth0"); err == nil {
		if err := h.LinkDel(l); err != nil {
			return fmt.Errorf("delete old eth0 of %s: %w", task, err)
		}
	}
	if l, err := netlink.LinkByName(hostName); err == nil {
		if err := netlink.LinkDel(l); err != nil {
			return fmt.Errorf("delete old veth %s: %w", hostName, err)
		}
	}
	return nil
}

// addTaskVeth creates the task's veth pair: hostName, a port of the bridge
// br with hairpin mode (isolated when isolate), and eth0 in the task's
// namespace (nsh) with the MAC that follows ip. It returns the host end,
// still down.
func addTaskVeth(task string, nsh netns.NsHandle, br netlink.Link, hostName string, ip netip.Addr, isolate bool) (netlink.Link, error) {
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: hostName, MasterIndex: br.Attrs().Index},
		PeerName:      "eth0",
		PeerNamespace: netlink.NsFd(int(nsh)),
		// The MAC follows the IP (as Docker's 02:42:<ip>): a task
		// recreated on the same IP (a rolling update) is reached at once,
		// where a new random MAC would leave the host's neighbour entry
		// pointing at the old one for seconds.
		PeerHardwareAddr: taskMAC(ip),
	}
	if err := netlink.LinkAdd(veth); err != nil {
		return nil, fmt.Errorf("create veth %s for %s: %w", hostName, task, err)
	}
	host, err := netlink.LinkByName(hostName)
	if err != nil {
		return nil, fmt.Errorf("find veth %s: %w", hostName, err)
	}
	// Hairpin: with br_netfilter loaded (Docker loads it) a task that
	// reaches its own VIP and draws itself is DNATed on the bridge path,
	// and the frame must leave by the port it came in on.
	if err := netlink.LinkSetHairpin(host, true); err != nil {
		return nil, fmt.Errorf("hairpin on %s: %w", hostName, err)
	}
	// Isolated (without br_netfilter, see syncIsolation): frames from
	// this port reach the host but no other task port, so task-to-task
	// traffic is routed by the host, through FORWARD and the policies.
	if isolate {
		if err := netlink.LinkSetIsolated(host, true); err != nil {
			return nil, fmt.Errorf("isolate bridge port %s: %w", hostName, err)
		}
	}
	return host, nil
}

// configureTaskSide sets up the task's side in its namespace (h): lo up,
// ip on eth0, eth0 up, and the default route via the bridge.
func (n *network) configureTaskSide(task string, h *netlink.Handle, ip netip.Addr) error {
	lo, err := h.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("find lo of %s: %w", task, err)
	}
	if err := h.LinkSetUp(lo); err != nil {
		return fmt.Errorf("bring lo of %s up: %w", task, err)
	}
	eth0, err := h.LinkByName("eth0")
	if err != nil {
		return fmt.Errorf("find eth0 of %s: %w", task, err)
	}
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: ip.AsSlice(), Mask: net.CIDRMask(n.block.Bits(), 32)}}
	if err := h.AddrAdd(eth0, addr); err != nil {
		return fmt.Errorf("add %s to eth0 of %s: %w", addr.IPNet, task, err)
	}
	if err := h.LinkSetUp(eth0); err != nil {
		return fmt.Errorf("bring eth0 of %s up: %w", task, err)
	}
	route := &netlink.Route{LinkIndex: eth0.Attrs().Index, Gw: netaddr.Bridge(n.block).AsSlice()}
	if err := h.RouteReplace(route); err != nil {
		return fmt.Errorf("default route of %s: %w", task, err)
	}
	return nil
}

// flushNeighbours deletes the IPv4 neighbour entries of eth0 in a task's
// namespace (h).
func flushNeighbours(h *netlink.Handle) error {
	eth0, err := h.LinkByName("eth0")
	if err != nil {
		return fmt.Errorf("find eth0: %w", err)
	}
	neighs, err := h.NeighList(eth0.Attrs().Index, netlink.FAMILY_V4)
	if err != nil {
		return fmt.Errorf("list neighbours: %w", err)
	}
	for _, nb := range neighs {
		if err := h.NeighDel(&nb); err != nil && !errors.Is(err, syscall.ENOENT) {
			return fmt.Errorf("delete neighbour %s: %w", nb.IP, err)
		}
	}
	return nil
}

// staleNeighbours reports whether a task's neighbour entries (in h) point
// at a MAC the host no longer has: its entry for the gateway (the bridge
// address), or, on an isolated port, where the host answers for every
// other task, any entry.
func staleNeighbours(h *netlink.Handle, bridgeMAC net.HardwareAddr, gateway netip.Addr, isolated bool) (bool, error) {
	eth0, err := h.LinkByName("eth0")
	if err != nil {
		return false, err
	}
	neighs, err := h.NeighList(eth0.Attrs().Index, netlink.FAMILY_V4)
	if err != nil {
		return false, err
	}
	for _, nb := range neighs {
		if len(nb.HardwareAddr) == 0 || bytes.Equal(nb.HardwareAddr, bridgeMAC) {
			continue
		}
		if ip, ok := netip.AddrFromSlice(nb.IP); isolated || (ok && ip.Unmap() == gateway) {
			return true, nil
		}
	}
	return false, nil
}

// taskLinkComplete reports whether task's veth is in place and configured.
func (n *network) taskLinkComplete(h *netlink.Handle, br netlink.Link, hostName string, ip netip.Addr) bool {
	host, err := netlink.LinkByName(hostName)
	if err != nil || host.Attrs().MasterIndex != br.Attrs().Index || host.Attrs().Flags&net.FlagUp == 0 {
		return false
	}
	eth0, err := h.LinkByName("eth0")
	if err != nil || eth0.Attrs().Flags&net.FlagUp == 0 {
		return false
	}
	addrs, err := h.AddrList(eth0, netlink.FAMILY_V4)
	if err != nil || len(addrs) != 1 {
		return false
	}
	if a, ok := netip.AddrFromSlice(addrs[0].IP); !ok || a.Unmap() != ip {
		return false
	}
	if ones, _ := addrs[0].Mask.Size(); ones != n.block.Bits() {
		return false
	}
	routes, err := h.RouteList(eth0, netlink.FAMILY_V4)
	if err != nil {
		return false
	}
	for _, r := range routes {
		if isDefaultRoute(r) && r.Gw.Equal(netaddr.Bridge(n.block).AsSlice()) {
			return true
		}
	}
	return false
}

// isDefaultRoute reports whether r is a default route: netlink (since
// v1.3) lists its destination as 0.0.0.0/0, older versions as nil.
func isDefaultRoute(r netlink.Route) bool {
	if r.Dst == nil {
		return true
	}
	ones, _ := r.Dst.Mask.Size()
	return ones == 0 && r.Dst.IP.IsUnspecified()
}

// removeTask deletes task's veth and namespace.
func (n *network) removeTask(task string) error {
	var errs []error
	if err := n.dropPort(task); err != nil {
		errs = append(errs, err)
	}
	if l, err := netlink.LinkByName(hostVethName(task)); err == nil {
		if err := netlink.LinkDel(l); err != nil {
			errs = append(errs, fmt.Errorf("delete veth of %s: %w", task, err))
		}
	}
	if err := removeNetns(n.netnsPath(task)); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// taskNamespaces lists the tasks that have a namespace file.
func (n *network) taskNamespaces() ([]string, error) {
	entries, err := os.ReadDir(n.nsDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list netns dir: %w", err)
	}
	names := make([]string, 0, len(entries))
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names, nil
}

// removeStrayVeths deletes host veth ends on our bridge that belong to no
// task in keep (their namespace is gone, e.g. after a reboot).
func (n *network) removeStrayVeths(keep map[string]bool) error {
	br, err := netlink.LinkByName(n.bridge)
	if err != nil {
		return nil // no bridge, no veths on it
	}
	links, err := netlink.LinkList()
	if err != nil {
		return fmt.Errorf("list links: %w", err)
	}
	wanted := map[string]bool{}
	for name := range keep {
		wanted[hostVethName(name)] = true
	}
	var errs []error
	for _, l := range links {
		a := l.Attrs()
		if l.Type() != "veth" || a.MasterIndex != br.Attrs().Index || !strings.HasPrefix(a.Name, hostVethPrefix) || wanted[a.Name] {
			continue
		}
		if err := netlink.LinkDel(l); err != nil {
			errs = append(errs, fmt.Errorf("delete stray veth %s: %w", a.Name, err))
		}
	}
	return errors.Join(errs...)
}

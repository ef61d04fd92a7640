package orchestrate

import (
	"github.com/warren-appliance/warren/hostfw"

	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// Anti-spoofing: each task's bridge port lets through only frames that
// carry the task's own address (and its eth0's MAC). Without it, a task
// with CAP_NET_RAW (or root in its namespace) could send from a WireGuard
// subnet address, which policies exempt as node traffic, from a neighbour
// task's address, which other policies allow, or from an unused address
// of its block, which no egress policy's set holds.
//
// Why ebtables (the bridge family of nf_tables, through ebtables-nft):
// its INPUT and FORWARD chains see every frame that enters the bridge
// from a port, whether the host routes it (isolated ports without
// br_netfilter) or the bridge forwards it to another port (with
// br_netfilter), so one check covers both modes. iptables' physdev match
// needs br_netfilter; tc filters need the gact action (or flower), which
// kernels such as this project's test VMs leave out, while the bridge
// family of nf_tables (CONFIG_NF_TABLES_BRIDGE) is in Debian's kernels.
// ebtables-nft ships with Debian's iptables package, which the appliance
// depends on already, and ebtables-restore (run by package hostfw, the
// node's one firewall owner, as one step of its sync) writes the chain in one
// transaction.

// readPort reads what task's port may send from its namespace (h): the
// address ip and eth0's MAC.
func readPort(task string, h *netlink.Handle, ip netip.Addr) (taskPort, error) {
	eth0, err := h.LinkByName("eth0")
	if err != nil {
		return taskPort{}, fmt.Errorf("find eth0 of %s: %w", task, err)
	}
	return taskPort{Veth: hostVethName(task), IP: ip, MAC: eth0.Attrs().HardwareAddr}, nil
}

// setPort records task's port (address ip) and writes the source checks
// if they changed.
func (n *network) setPort(task string, h *netlink.Handle, ip netip.Addr) error {
	p, err := readPort(task, h, ip)
	if err != nil {
		return err
	}
	n.portsMu.Lock()
	defer n.portsMu.Unlock()
	if err := n.loadPortsLocked(); err != nil {
		return err
	}
	n.ports[task] = p
	return n.syncFirewallLocked()
}

// dropPort forgets task's port and writes the source checks without it.
func (n *network) dropPort(task string) error {
	n.portsMu.Lock()
	defer n.portsMu.Unlock()
	if n.ports == nil {
		// Not loaded: nothing was written by this process; the next load
		// reads the namespaces, where the task is gone.
		return nil
	}
	if _, ok := n.ports[task]; !ok {
		return nil
	}
	delete(n.ports, task)
	return n.syncFirewallLocked()
}

// syncPortSources writes the task network's rules with the source
// checks of every known port (what changed; the firewall owner's canary
// restores what someone else flushed).
func (n *network) syncPortSources() error {
	n.portsMu.Lock()
	defer n.portsMu.Unlock()
	if err := n.loadPortsLocked(); err != nil {
		return err
	}
	return n.syncFirewallLocked()
}

// loadPortsLocked fills n.ports from the task namespaces on first use
// (after a restart), so the first task set up does not close the ports
// of the others, which are still running.
func (n *network) loadPortsLocked() error {
	if n.ports != nil {
		return nil
	}
	tasks, err := n.taskNamespaces()
	if err != nil {
		return err
	}
	ports := map[string]taskPort{}
	for _, task := range tasks {
		if p, ok := n.observePort(task); ok {
			ports[task] = p
		}
	}
	n.ports = ports
	return nil
}

// observePort reads task's port from its namespace: eth0's IPv4 address
// and MAC. A namespace without a configured eth0 has no port yet.
func (n *network) observePort(task string) (taskPort, bool) {
	path := n.netnsPath(task)
	if !isNetnsMount(path) {
		return taskPort{}, false
	}
	nsh, err := netns.GetFromPath(path)
	if err != nil {
		return taskPort{}, false
	}
	defer nsh.Close()
	h, err := netlink.NewHandleAt(nsh)
	if err != nil {
		return taskPort{}, false
	}
	defer h.Close()
	eth0, err := h.LinkByName("eth0")
	if err != nil {
		return taskPort{}, false
	}
	addrs, err := h.AddrList(eth0, netlink.FAMILY_V4)
	if err != nil || len(addrs) != 1 {
		return taskPort{}, false
	}
	ip, ok := netip.AddrFromSlice(addrs[0].IP)
	if !ok || !n.block.Contains(ip.Unmap()) {
		return taskPort{}, false
	}
	return taskPort{Veth: hostVethName(task), IP: ip.Unmap(), MAC: eth0.Attrs().HardwareAddr}, true
}

// removePortSources takes the task network's rules out of the kernel:
// its chains, hooks and the bridge chain (for --cleanup); a second run
// finds nothing to do.
func (n *network) removePortSources() error {
	n.portsMu.Lock()
	n.ports = nil
	n.portsMu.Unlock()
	fw, err := n.firewall()
	if err != nil {
		return err
	}
	if err := fw.RemovePart(hostfw.OwnerTasks); err != nil {
		return fmt.Errorf("remove task network rules: %w", err)
	}
	return nil
}

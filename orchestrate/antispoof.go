package orchestrate

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"os/exec"
	"strings"

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
// depends on already, and ebtables-restore writes the chain in one
// transaction.

// ebtables finds the ebtables variant to use: the nf_tables one first
// (iptables' package ships it), then whatever `ebtables` is.
func ebtables() (cmd, restore string, err error) {
	for _, c := range []string{"ebtables-nft", "ebtables"} {
		cmdPath, err := exec.LookPath(c)
		if err != nil {
			continue
		}
		restorePath, err := exec.LookPath(c + "-restore")
		if err != nil {
			continue
		}
		return cmdPath, restorePath, nil
	}
	return "", "", errors.New("ebtables-nft (Debian's iptables package) or ebtables with ebtables-restore is needed to check task source addresses: install iptables >= 1.8")
}

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
	return n.syncPortSourcesLocked(false)
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
	return n.syncPortSourcesLocked(false)
}

// syncPortSources writes the source checks of every known port; force
// writes them even when they are what was last written.
func (n *network) syncPortSources(force bool) error {
	n.portsMu.Lock()
	defer n.portsMu.Unlock()
	if err := n.loadPortsLocked(); err != nil {
		return err
	}
	return n.syncPortSourcesLocked(force)
}

func (n *network) syncPortSourcesLocked(force bool) error {
	ports := make([]taskPort, 0, len(n.ports))
	for _, p := range n.ports {
		ports = append(ports, p)
	}
	text := portSourceRestore(portSourceRules(ports))
	if !force && bytes.Equal(text, n.appliedPorts) {
		return nil
	}
	_, restore, err := ebtables()
	if err != nil {
		return err
	}
	cmd := exec.Command(restore, "--noflush")
	cmd.Stdin = bytes.NewReader(text)
	if out, err := cmd.CombinedOutput(); err != nil {
		n.appliedPorts = nil
		return fmt.Errorf("write task source checks (%s): %w: %s", restore, err, strings.TrimSpace(string(out)))
	}
	n.appliedPorts = text
	return nil
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

// ensurePortSourceJumps makes the bridge's INPUT and FORWARD chains jump
// to the source checks first.
func (n *network) ensurePortSourceJumps() error {
	cmd, _, err := ebtables()
	if err != nil {
		return err
	}
	for _, j := range portSourceJumps() {
		check := append([]string{"-t", "filter", "--check", j.Chain}, j.Spec...)
		if exec.Command(cmd, check...).Run() == nil {
			continue
		}
		insert := append([]string{"-t", "filter", "-I", j.Chain, "1"}, j.Spec...)
		if out, err := exec.Command(cmd, insert...).CombinedOutput(); err != nil {
			return fmt.Errorf("hook %s into bridge %s: %w: %s", chainTaskSource, j.Chain, err, strings.TrimSpace(string(out)))
		}
	}
	return nil
}

// removePortSources deletes the jumps and the chain (for --cleanup); a
// second run finds nothing to do.
func (n *network) removePortSources() error {
	n.portsMu.Lock()
	n.ports, n.appliedPorts = nil, nil
	n.portsMu.Unlock()
	cmd, _, err := ebtables()
	if err != nil {
		return nil // no ebtables, no rules of ours
	}
	var errs []error
	for _, j := range portSourceJumps() {
		for exec.Command(cmd, append([]string{"-t", "filter", "--check", j.Chain}, j.Spec...)...).Run() == nil {
			if out, err := exec.Command(cmd, append([]string{"-t", "filter", "-D", j.Chain}, j.Spec...)...).CombinedOutput(); err != nil {
				errs = append(errs, fmt.Errorf("unhook %s from bridge %s: %w: %s", chainTaskSource, j.Chain, err, strings.TrimSpace(string(out))))
				break
			}
		}
	}
	if exec.Command(cmd, "-t", "filter", "-L", chainTaskSource).Run() == nil {
		// nf_tables deletes only empty chains.
		for _, args := range [][]string{{"-F", chainTaskSource}, {"-X", chainTaskSource}} {
			if out, err := exec.Command(cmd, append([]string{"-t", "filter"}, args...)...).CombinedOutput(); err != nil {
				errs = append(errs, fmt.Errorf("remove bridge chain %s: %w: %s", chainTaskSource, err, strings.TrimSpace(string(out))))
			}
		}
	}
	return errors.Join(errs...)
}

package orchestrate

import (
	"github.com/warren-appliance/warren/hostfw"

	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"reflect"
	"regexp"
	"slices"
	"strings"

	"github.com/warren-appliance/warren/cluster/clustermap"
	"github.com/warren-appliance/warren/internal/netaddr"
)

// Pure helpers: names, file contents and rules derived from the config and
// the task specs, with no side effects.

// Container labels: ours are the containers that carry labelTask.
const (
	labelTask    = "warren.task"
	labelService = "warren.service"
	labelSpec    = "warren.spec" // hash of what the container was built from
	labelIP      = "warren.ip"   // the task's IP, held until the container is gone
)

// Chains this package owns.
const (
	chainForward     = "WARREN-TASK-FORWARD"
	chainPostrouting = "WARREN-TASK-EGRESS"
	// chainInput is what tasks may reach on this node itself: DNS on the
	// bridge address, ping, and replies; nothing else.
	chainInput = "WARREN-TASK-INPUT"
	// chainTaskSource (ebtables, bridge filter table) lets each task port
	// send only from its task's own addresses.
	chainTaskSource = "WARREN-TASK-SRC"
)

// hostVethPrefix starts the host side of every task's veth pair.
const hostVethPrefix = "wv"

// hostVethName derives the host end's name from the task name: stable
// across restarts (so adoption finds it) and within IFNAMSIZ.
func hostVethName(task string) string {
	sum := sha256.Sum256([]byte(task))
	return hostVethPrefix + hex.EncodeToString(sum[:])[:11]
}

// containerd's rule for IDs; task names are container IDs.
var validTaskName = regexp.MustCompile(`^[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*$`)

// checkSpec rejects a spec that cannot run on this node.
func checkSpec(s TaskSpec, block netip.Prefix) error {
	if !validTaskName.MatchString(s.Name) || len(s.Name) > 63 {
		return fmt.Errorf("task name %q is not a valid hostname / container ID", s.Name)
	}
	if strings.TrimSpace(s.Image) == "" {
		return fmt.Errorf("task %s has no image", s.Name)
	}
	if !s.IP.IsValid() || !block.Contains(s.IP) {
		return fmt.Errorf("task %s: IP %v is not inside this node's block %v", s.Name, s.IP, block)
	}
	if s.IP == block.Masked().Addr() || s.IP == netaddr.Bridge(block) || s.IP == netaddr.Last(block) {
		return fmt.Errorf("task %s: IP %v is the block's network, bridge or broadcast address", s.Name, s.IP)
	}
	return nil
}

// specHash identifies what a container was built from: a change means
// the container must be recreated. Caps holds the capabilities the
// container gets changed from containerd's default set (capabilities),
// so containers made before NET_RAW was dropped by default are recreated
// without it.
func specHash(s TaskSpec, imageRef string) string {
	add, drop := capabilities(s)
	caps := [2][]string{add, drop}
	// The workload's container settings join the hash only when set, so
	// the containers of services without them keep their hash.
	type container struct {
		Limits  *clustermap.ResourceAmounts `json:",omitempty"`
		Mounts  []clustermap.Mount          `json:",omitempty"`
		Process *clustermap.Process         `json:",omitempty"`
	}
	var w container
	if s.Limits != (clustermap.ResourceAmounts{}) {
		w.Limits = &s.Limits
	}
	w.Mounts = s.Mounts
	if !reflect.DeepEqual(s.Process, clustermap.Process{}) {
		w.Process = &s.Process
	}
	var wp *container
	if w.Limits != nil || w.Mounts != nil || w.Process != nil {
		wp = &w
	}
	v := any(struct {
		Service, Image string
		Env, Command   []string
		IP             netip.Addr
		Caps           [2][]string
		Workload       *container `json:",omitempty"`
	}{s.Service, imageRef, s.Env, s.Command, s.IP, caps, wp})
	if len(s.SecretMounts) > 0 || s.Revision != "" {
		// Only specs with secrets or configs hash these, so containers
		// made before they existed keep their hash.
		v = struct {
			Service, Image string
			Env, Command   []string
			IP             netip.Addr
			Caps           [2][]string
			SecretMounts   []FileMount
			Revision       string
			Workload       *container `json:",omitempty"`
		}{s.Service, imageRef, s.Env, s.Command, s.IP, caps, s.SecretMounts, s.Revision, wp}
	}
	b, _ := json.Marshal(v)
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:16])
}

// defaultDroppedCaps leave containerd's default capability set: with
// CAP_NET_RAW a task can send packets with any source address (and sniff
// its interface); `--cap-add NET_RAW` gives it back.
var defaultDroppedCaps = []string{"CAP_NET_RAW"}

// capAll is Docker's "every capability" in --cap-add/--cap-drop.
const capAll = "ALL"

// capabilities are the capabilities to add to containerd's default set
// and to drop from it for s: s.CapAdd; the default drops that s.CapAdd
// does not give back (by name or ALL), and s.CapDrop. Both sorted.
func capabilities(s TaskSpec) (add, drop []string) {
	for _, c := range defaultDroppedCaps {
		if !slices.Contains(s.CapAdd, c) && !slices.Contains(s.CapAdd, capAll) {
			drop = append(drop, c)
		}
	}
	drop = append(drop, s.CapDrop...)
	add = slices.Clone(s.CapAdd)
	slices.Sort(add)
	slices.Sort(drop)
	return slices.Compact(add), slices.Compact(drop)
}

// pingGroupRange lets every group open ICMP echo ("ping") sockets, which
// need no CAP_NET_RAW, in a task's namespace, so ping works without it
// (Docker sets the same).
const pingGroupRange = "0 2147483647"

// hostsFile is a task's /etc/hosts.
func hostsFile(name string, ip netip.Addr) []byte {
	return []byte(fmt.Sprintf("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n%s\t%s\n", ip, name))
}

// ipRule is one iptables rule of a chain we own.
type ipRule struct {
	Table, Chain string
	Spec         []string
}

// jumpRules hook our chains into the built-in ones.
func jumpRules() []ipRule {
	return []ipRule{
		{"filter", "FORWARD", []string{"-m", "comment", "--comment", "warren task forwarding", "-j", chainForward}},
		{"nat", "POSTROUTING", []string{"-m", "comment", "--comment", "warren task egress", "-j", chainPostrouting}},
		{"filter", "INPUT", []string{"-m", "comment", "--comment", "warren tasks reach only DNS on the node", "-j", chainInput}},
	}
}

// chainRules are the contents of our chains: tasks may send anywhere and
// get replies; the overlay may reach tasks; task traffic leaving through
// anything but the bridge or the overlay is masqueraded, so tasks reach
// the outside world while task-to-task traffic across the mesh keeps its
// source address.
//
// Tasks reach the node itself only for DNS (udp and tcp 53 on the bridge
// address, where the node's resolver listens) and ping: not the API,
// Raft, sshd or metrics ports on any of the node's addresses, unless
// published (published ports are DNATed to a task before INPUT, so they
// pass FORWARD instead). Tasks of other nodes (sources in the container
// subnet, arriving on the overlay) reach no port of this node either;
// other nodes (their overlay addresses, nodeSubnet, which lies inside the
// container subnet) still do. Replies to the node's own connections to
// tasks pass.
func chainRules(bridge, overlay string, block, containerSubnet, nodeSubnet netip.Prefix) map[string][]ipRule {
	fwd := []ipRule{
		{"filter", chainForward, []string{"-i", bridge, "-j", "ACCEPT"}},
		{"filter", chainForward, []string{"-i", overlay, "-o", bridge, "-j", "ACCEPT"}},
		{"filter", chainForward, []string{"-o", bridge, "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT"}},
	}
	nat := []ipRule{
		{"nat", chainPostrouting, []string{"-o", bridge, "-j", "RETURN"}},
		{"nat", chainPostrouting, []string{"-o", overlay, "-j", "RETURN"}},
		{"nat", chainPostrouting, []string{"-s", block.String(), "-j", "MASQUERADE"}},
	}
	bridgeIP := netaddr.Bridge(block).String() + "/32"
	in := []ipRule{
		{"filter", chainInput, []string{"-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "RETURN"}},
		{"filter", chainInput, []string{"-i", bridge, "-d", bridgeIP, "-p", "udp", "-m", "udp", "--dport", "53", "-j", "RETURN"}},
		{"filter", chainInput, []string{"-i", bridge, "-d", bridgeIP, "-p", "tcp", "-m", "tcp", "--dport", "53", "-j", "RETURN"}},
		{"filter", chainInput, []string{"-i", bridge, "-p", "icmp", "-m", "icmp", "--icmp-type", "echo-request", "-j", "RETURN"}},
		{"filter", chainInput, []string{"-i", bridge, "-m", "comment", "--comment", "tasks reach only DNS on their node", "-j", "DROP"}},
	}
	if containerSubnet.IsValid() && containerSubnet.Addr().Is4() {
		if nodeSubnet.IsValid() && nodeSubnet.Addr().Is4() {
			in = append(in, ipRule{"filter", chainInput, []string{"-i", overlay, "-s", nodeSubnet.Masked().String(),
				"-m", "comment", "--comment", "other nodes reach this node over the overlay", "-j", "RETURN"}})
		}
		in = append(in, ipRule{"filter", chainInput, []string{"-i", overlay, "-s", containerSubnet.Masked().String(),
			"-m", "comment", "--comment", "tasks of other nodes reach no node port", "-j", "DROP"}})
	}
	return map[string][]ipRule{"filter/" + chainForward: fwd, "nat/" + chainPostrouting: nat, "filter/" + chainInput: in}
}

// taskPort is what a task's bridge port may send: frames from its eth0's
// MAC carrying its own IPv4 address, as IPv4 or ARP.
type taskPort struct {
	Veth string           // host end of the task's veth (the bridge port)
	IP   netip.Addr       // the task's address
	MAC  net.HardwareAddr // the task's eth0 MAC; nil: not checked
}

// ebRule is one ebtables rule (bridge family, filter table).
type ebRule struct {
	Chain string
	Spec  []string
}

// portSourceRules are the contents of chainTaskSource: per task port, its
// IPv4 frames from its own address and its ARP frames that claim its own
// address RETURN (the frame goes on); every other frame from a task port
// (another source address, another MAC, IPv6, anything else) is dropped.
// The chain is jumped to from the bridge's INPUT (frames for the host,
// routed by it) and FORWARD (frames bridged to another port), so it sees
// every frame a task sends, whether br_netfilter is on or off. Ports are
// sorted, so the rules are deterministic.
func portSourceRules(ports []taskPort) []ebRule {
	ports = slices.Clone(ports)
	slices.SortFunc(ports, func(a, b taskPort) int { return strings.Compare(a.Veth, b.Veth) })
	var out []ebRule
	for _, p := range ports {
		if !p.IP.Is4() || p.Veth == "" {
			continue
		}
		var mac, arpMAC []string
		if len(p.MAC) == 6 {
			mac = []string{"-s", p.MAC.String()}
			arpMAC = []string{"--arp-mac-src", p.MAC.String()}
		}
		ipv4 := append(append([]string{"-p", "IPv4", "-i", p.Veth}, mac...), "--ip-src", p.IP.String(), "-j", "RETURN")
		arp := append(append(append([]string{"-p", "ARP", "-i", p.Veth}, mac...), "--arp-ip-src", p.IP.String()), append(arpMAC, "-j", "RETURN")...)
		out = append(out, ebRule{chainTaskSource, ipv4}, ebRule{chainTaskSource, arp})
	}
	// Every task port, including one whose rules are not written yet: a
	// new port is closed until its task's addresses are known.
	out = append(out, ebRule{chainTaskSource, []string{"-i", hostVethPrefix + "+", "-j", "DROP"}})
	return out
}

// portSourceRestore is the ebtables-restore --noflush input that makes
// chainTaskSource hold exactly rules in one transaction (declaring the
// chain creates or flushes it): what package hostfw writes.
func portSourceRestore(rules []ebRule) []byte {
	return hostfw.BridgeText(ebTexts(rules))
}

func ebTexts(rules []ebRule) []string {
	out := make([]string, 0, len(rules))
	for _, r := range rules {
		out = append(out, strings.Join(r.Spec, " "))
	}
	return out
}

// specText is spec as one rule of iptables text, the comment quoted.
func specText(spec []string) string {
	out := make([]string, len(spec))
	for i, a := range spec {
		out[i] = a
		if i > 0 && spec[i-1] == "--comment" {
			out[i] = fmt.Sprintf("%q", a)
		}
	}
	return strings.Join(out, " ")
}

// taskPart is the task network's part of the node's firewall (package
// hostfw): its chains, the hooks into them, and the bridge chain that
// checks each task port's source addresses.
func taskPart(bridge, overlay string, block, containerSubnet, nodeSubnet netip.Prefix, ports []taskPort) hostfw.Part {
	p := hostfw.Part{Tables: map[string]hostfw.Chains{}}
	for key, rules := range chainRules(bridge, overlay, block, containerSubnet, nodeSubnet) {
		table, chain, _ := strings.Cut(key, "/")
		if p.Tables[table] == nil {
			p.Tables[table] = hostfw.Chains{}
		}
		texts := []string{}
		for _, r := range rules {
			texts = append(texts, specText(r.Spec))
		}
		p.Tables[table][chain] = texts
	}
	for _, j := range jumpRules() {
		p.Hooks = append(p.Hooks, hostfw.Hook{Table: j.Table, Chain: j.Chain, Rule: specText(j.Spec)})
	}
	p.Bridge = ebTexts(portSourceRules(ports))
	for _, j := range portSourceJumps() {
		p.BridgeHooks = append(p.BridgeHooks, j.Chain)
	}
	return p
}

// portSourceJumps hook chainTaskSource into the bridge's filter chains.
func portSourceJumps() []ebRule {
	return []ebRule{{"INPUT", []string{"-j", chainTaskSource}}, {"FORWARD", []string{"-j", chainTaskSource}}}
}

package orchestrate

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/netip"
	"reflect"
	"regexp"
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
// the container must be recreated.
func specHash(s TaskSpec, imageRef string) string {
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
		Workload       *container `json:",omitempty"`
	}{s.Service, imageRef, s.Env, s.Command, s.IP, wp})
	if len(s.SecretMounts) > 0 || s.Revision != "" {
		// Only specs with secrets or configs hash these, so containers
		// made before they existed keep their hash.
		v = struct {
			Service, Image string
			Env, Command   []string
			IP             netip.Addr
			SecretMounts   []FileMount
			Revision       string
			Workload       *container `json:",omitempty"`
		}{s.Service, imageRef, s.Env, s.Command, s.IP, s.SecretMounts, s.Revision, wp}
	}
	b, _ := json.Marshal(v)
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:16])
}

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
	}
}

// chainRules are the contents of our chains: tasks may send anywhere and
// get replies; the overlay may reach tasks; task traffic leaving through
// anything but the bridge or the overlay is masqueraded, so tasks reach
// the outside world while task-to-task traffic across the mesh keeps its
// source address.
func chainRules(bridge, overlay string, block netip.Prefix) map[string][]ipRule {
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
	return map[string][]ipRule{"filter/" + chainForward: fwd, "nat/" + chainPostrouting: nat}
}

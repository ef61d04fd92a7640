package configs

import (
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/warren-appliance/warren/cluster/pki"
	"github.com/warren-appliance/warren/internal/wgkey"
)

var (
	// A node or service name is one DNS label: it becomes a hostname and a DNS name.
	labelRE  = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)
	domainRE = regexp.MustCompile(`^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)
)

// Finish fills in defaults that depend on the machine (the node name from
// the host name, the key path from the state dir, the token from its file)
// and returns every validation error at once.
func (l *Loaded) Finish() error {
	e := &errSink{l: l}
	e.errs = append(e.errs, l.parseErrs...)
	roleUnknown := l.fillFromSetup(e)
	l.checkBadValues(e)
	l.checkNode(e)
	l.checkCluster(e, roleUnknown)
	l.checkWireGuard(e)
	l.checkFirewall(e)
	l.checkPeers(e)
	l.checkNetwork(e)
	l.checkLoadBalancing(e)
	l.checkRuntime(e)
	l.checkLogAndMetrics(e)
	l.checkRelay(e)
	l.checkForwards(e)
	if len(e.errs) > 0 {
		sort.SliceStable(e.errs, func(i, j int) bool { return e.errs[i].Line < e.errs[j].Line })
		return e.errs
	}
	return nil
}

// errSink collects Finish's errors, each named with its key and line.
type errSink struct {
	l    *Loaded
	errs Errors
}

// add reports key's value (at the key's line in the file) as wrong.
func (e *errSink) add(key, format string, args ...any) {
	e.errs = append(e.errs, &Error{File: e.l.File, Line: e.l.lines[key], Key: key, Msg: fmt.Sprintf(format, args...)})
}

// fillFromSetup fills what the state dir remembers, the node name from the
// host name, the key file and the token from token_file; it says whether the
// role is still unknown (no setup command ran).
func (l *Loaded) fillFromSetup(e *errSink) (roleUnknown bool) {
	c := &l.Config
	add := e.add
	// What the state dir remembers fills the keys neither the TOML nor a
	// flag set; then the name falls back to the host name.
	if filepath.IsAbs(c.Node.StateDir) {
		if err := l.applySetup(); err != nil {
			add("node.state_dir", "%v", err)
		}
	}
	if c.Node.Name == "" {
		if h, err := os.Hostname(); err == nil {
			c.Node.Name = strings.ToLower(strings.SplitN(h, ".", 2)[0])
			l.nameFromHost = true
		}
	}
	roleUnknown = !l.set("node.role") && !slices.Contains(l.remembered, "node.role") && c.Cluster.Manager == ""
	if roleUnknown {
		add("node.role", notSetUp+" and the config sets no role: on the first board run `warren cluster init`, "+
			"on every other board the command `warren cluster join-token worker` prints on a manager "+
			"(`warren worker start --manager HOST:7946 --token ...`); the service then resumes what they set up. "+
			"Or set node.role (examples: %s)", ExamplesDir)
	}
	if c.WireGuard.PrivateKeyFile == "" && c.Node.StateDir != "" {
		c.WireGuard.PrivateKeyFile = filepath.Join(c.Node.StateDir, "wireguard.key")
	}
	// A node that joined needs no token: it may be gone from the disk.
	if c.Cluster.TokenFile != "" && !l.Joined {
		if c.Cluster.Token != "" {
			add("cluster.token_file", "set either cluster.token or cluster.token_file, not both")
		} else if b, err := os.ReadFile(c.Cluster.TokenFile); err != nil {
			add("cluster.token_file", "cannot read the token: %v", err)
		} else {
			c.Cluster.Token = strings.TrimSpace(string(b))
		}
	}
	return roleUnknown
}

// checkBadValues reports the values the decoder kept as bad (see Duration,
// Subnet).
func (l *Loaded) checkBadValues(e *errSink) {
	c := &l.Config
	add := e.add
	// Values the decoder kept as bad (see Duration, Subnet).
	for key, bad := range map[string]error{
		"cluster.node_down_after":           c.Cluster.NodeDownAfter.bad,
		"cluster.cert_lifetime":             c.Cluster.CertLifetime.bad,
		"runtime.restart_backoff_max":       c.Runtime.RestartBackoffMax.bad,
		"logs.max_size":                     c.Logs.MaxSize.bad,
		"runtime.tasks_memory_max":          c.Runtime.TasksMemoryMax.bad,
		"wireguard.keepalive":               c.WireGuard.Keepalive.bad,
		"wireguard.subnet":                  c.WireGuard.Subnet.bad,
		"wireguard.address":                 c.WireGuard.Address.bad,
		"network.container_subnet":          c.Network.ContainerSubnet.bad,
		"network.vip_subnet":                c.Network.VIPSubnet.bad,
		"loadbalancing.persistence_timeout": c.LoadBalancing.PersistenceTimeout.bad,
	} {
		if bad != nil {
			add(key, "%v", bad)
		}
	}
	for i, p := range c.WireGuard.Peers {
		for _, a := range p.AllowedIPs {
			if a.bad != nil {
				key := fmt.Sprintf("wireguard.peer[%d].allowed_ips", i)
				e.errs = append(e.errs, &Error{File: l.File, Line: l.peerLine(key), Key: key, Msg: a.bad.Error()})
			}
		}
		if p.Keepalive.bad != nil {
			key := fmt.Sprintf("wireguard.peer[%d].keepalive", i)
			e.errs = append(e.errs, &Error{File: l.File, Line: l.peerLine(key), Key: key, Msg: p.Keepalive.bad.Error()})
		}
	}
}

// checkNode checks [node].
func (l *Loaded) checkNode(e *errSink) {
	c := &l.Config
	add := e.add
	switch c.Node.Role {
	case RoleManager, RoleWorker, RoleStandalone:
	default:
		add("node.role", "%q is not a role (want \"manager\", \"worker\" or \"standalone\")", c.Node.Role)
	}
	if !labelRE.MatchString(c.Node.Name) {
		add("node.name", "%q is not a valid node name (lowercase letters, digits and '-', at most 63, as a DNS label)", c.Node.Name)
	}
	if !filepath.IsAbs(c.Node.StateDir) {
		add("node.state_dir", "%q must be an absolute path", c.Node.StateDir)
	}
	if a := c.Node.AdvertiseAddress; a != "" {
		if ip, err := netip.ParseAddr(a); err != nil || !ip.Is4() {
			add("node.advertise_address", "%q is not an IPv4 address (the underlay address other nodes reach this one on)", a)
		}
	}
	for k := range c.Node.Labels {
		if k == "" || strings.ContainsAny(k, " =!\t") {
			add("node.labels", "label key %q may not be empty or contain spaces, '=' or '!'", k)
		}
	}
}

// checkCluster checks [cluster]: a node that has not joined yet needs a
// manager and a token of the right shape; a joined node needs neither.
func (l *Loaded) checkCluster(e *errSink, roleUnknown bool) {
	c := &l.Config
	add := e.add
	// [cluster]: a node that has not joined yet needs a manager and a
	// token of the right shape; a joined node needs neither.
	needToken := false
	role := c.Node.Role
	if roleUnknown {
		role = "" // said above: run a setup command
	}
	switch role {
	case RoleWorker:
		if c.Cluster.Manager == "" && !l.Joined {
			add("cluster.manager", "a worker needs the manager to join: set cluster.manager = \"host:7946\" (or --manager)")
		}
		if !l.Joined {
			needToken = true
			if c.Cluster.Token == "" {
				add("cluster.token", "a worker needs a join token to join: set cluster.token_file (a 0600 file holding it; or --token-file), or cluster.token; `warren cluster join-token worker` on a manager prints it")
			}
		}
	case RoleManager:
		if l.JoinVerb != "" && c.Cluster.Manager == "" {
			add("cluster.manager", "`%s` joins an existing cluster and needs a manager's address: give --manager HOST (port 7946 unless said) with --token, "+
				"or set cluster.manager; only `warren cluster init` creates a new cluster", l.JoinVerb)
		}
		if c.Cluster.Manager != "" && !l.Joined {
			needToken = true
			if c.Cluster.Token == "" {
				add("cluster.token", "a manager joining %s needs a manager join token: set cluster.token_file or cluster.token (or --token-file)", c.Cluster.Manager)
			}
		}
	}
	if needToken && c.Cluster.Token != "" {
		if _, err := pki.ParseToken(c.Cluster.Token); err != nil {
			key := "cluster.token"
			if c.Cluster.TokenFile != "" {
				key = "cluster.token_file"
			}
			add(key, "%v (paste the token `warren cluster join-token worker -q` prints on a manager)", err)
		}
	}
	if c.Cluster.Manager != "" {
		c.Cluster.Manager = withDefaultPort(c.Cluster.Manager)
		if err := checkHostPort(c.Cluster.Manager, false); err != nil {
			add("cluster.manager", "%v", err)
		}
	}
	if err := checkHostPort(c.Cluster.APIListen, true); err != nil {
		add("cluster.api_listen", "%v", err)
	}
	if c.Cluster.NodeDownAfter.Duration <= 0 && c.Cluster.NodeDownAfter.bad == nil {
		add("cluster.node_down_after", "must be a positive duration such as \"30s\"")
	}
	if c.Cluster.CertLifetime.Duration < time.Minute && c.Cluster.CertLifetime.bad == nil {
		add("cluster.cert_lifetime", "must be at least \"1m\" (default \"2160h\", 90 days)")
	}
}

// checkWireGuard checks [wireguard] (the peers: checkPeers).
func (l *Loaded) checkWireGuard(e *errSink) {
	c := &l.Config
	add := e.add
	if err := checkIfName(c.WireGuard.Interface); err != nil {
		add("wireguard.interface", "%v", err)
	}
	switch c.WireGuard.Mode {
	case "tun", "netstack", "auto":
	default:
		add("wireguard.mode", "%q is not a mode (want \"tun\", \"netstack\" or \"auto\")", c.WireGuard.Mode)
	}
	switch c.WireGuard.UDPGSO {
	case "auto", "on", "off":
	default:
		add("wireguard.udp_gso", "%q is not a setting (want \"auto\": work around the Linux 7.0-7.1.4 UDP GSO bug where the kernel has it, \"on\" or \"off\")", c.WireGuard.UDPGSO)
	}
	if p := c.WireGuard.ListenPort; p < 1 || p > 65535 {
		add("wireguard.listen_port", "%d is not a UDP port (1-65535)", p)
	}
	if e := c.WireGuard.PublicEndpoint; e != "" {
		if c.Node.Role == RoleStandalone {
			add("wireguard.public_endpoint", "only cluster nodes use it (peers of a standalone node take its endpoint from their own config)")
		} else if err := checkEndpoint(e); err != nil {
			add("wireguard.public_endpoint", "%v: the address and port other sites reach this node's WireGuard port on (a port forward)", err)
		}
	}
	if m := c.WireGuard.MTU; m < 576 || m > 9000 {
		add("wireguard.mtu", "%d is out of range (576-9000; 1420 fits a 1500-byte underlay)", m)
	}
	if k := c.WireGuard.Keepalive.Duration; k > 65535*1e9 {
		add("wireguard.keepalive", "%s is longer than WireGuard allows (65535s)", k)
	}
	if !c.WireGuard.Subnet.IsValid() && c.WireGuard.Subnet.bad == nil {
		add("wireguard.subnet", "must be set, e.g. \"10.0.0.0/24\"")
	}
	if c.Node.Role == RoleStandalone && !c.WireGuard.Address.IsValid() && c.WireGuard.Address.bad == nil {
		add("wireguard.address", "a standalone node needs its overlay address, e.g. address = \"10.0.0.1/24\"")
	}
	if c.Node.Role != RoleStandalone && c.WireGuard.Address.IsValid() {
		add("wireguard.address", "only standalone nodes set their address; in a cluster the manager assigns it")
	}
}

// checkFirewall checks [firewall].
func (l *Loaded) checkFirewall(e *errSink) {
	c := &l.Config
	add := e.add
	switch c.Firewall.Backend {
	case "iptables", "nftables", "auto":
	default:
		add("firewall.backend", "%q is not a backend (want \"iptables\", \"nftables\" or \"auto\")", c.Firewall.Backend)
	}
}

// checkPeers refuses what the tunnel would skip (tunnel.usablePeers), so
// --check and start agree and no peer goes silently missing.
func (l *Loaded) checkPeers(e *errSink) {
	c := &l.Config
	// What the tunnel would skip (tunnel.usablePeers) is refused here, so
	// --check and start agree and no peer goes silently missing.
	keyAt := map[string]int{}
	prefixAt := map[netip.Prefix]int{}
	for i, p := range c.WireGuard.Peers {
		key := fmt.Sprintf("wireguard.peer[%d]", i)
		line := l.peerLine(key + ".public_key")
		if b, err := base64.StdEncoding.DecodeString(p.PublicKey); err != nil || len(b) != 32 {
			e.errs = append(e.errs, &Error{File: l.File, Line: line, Key: key + ".public_key", Msg: fmt.Sprintf("%q is not a WireGuard public key (44 base64 characters, as `wg pubkey` prints)", p.PublicKey)})
		} else if err := wgkey.Check(b); err != nil {
			e.errs = append(e.errs, &Error{File: l.File, Line: line, Key: key + ".public_key", Msg: fmt.Sprintf("%q cannot be a peer's key: %v; WireGuard refuses such a peer (paste the peer's `wg pubkey` output)", p.PublicKey, err)})
		} else if j, dup := keyAt[p.PublicKey]; dup {
			e.errs = append(e.errs, &Error{File: l.File, Line: line, Key: key + ".public_key", Msg: fmt.Sprintf("%q is also the key of wireguard.peer[%d] (line %d): one [[wireguard.peer]] per key", p.PublicKey, j, l.peerLine(fmt.Sprintf("wireguard.peer[%d].public_key", j)))})
		} else {
			keyAt[p.PublicKey] = i
		}
		for _, a := range p.AllowedIPs {
			if !a.IsValid() {
				continue
			}
			if j, dup := prefixAt[a.Prefix]; dup && j != i {
				e.errs = append(e.errs, &Error{File: l.File, Line: l.peerLine(key + ".allowed_ips"), Key: key + ".allowed_ips",
					Msg: fmt.Sprintf("%s is also claimed by wireguard.peer[%d] (line %d): WireGuard routes a range to one peer only", a.Prefix, j, l.peerLine(fmt.Sprintf("wireguard.peer[%d].allowed_ips", j)))})
				continue
			}
			prefixAt[a.Prefix] = i
		}
		// The daemon's value for a peer that sets none (--check prints it).
		if p.Keepalive.Duration == 0 && p.Keepalive.bad == nil {
			c.WireGuard.Peers[i].Keepalive.Duration = c.WireGuard.Keepalive.Duration
		}
		if p.Endpoint != "" {
			if err := checkEndpoint(p.Endpoint); err != nil {
				e.errs = append(e.errs, &Error{File: l.File, Line: l.peerLine(key + ".endpoint"), Key: key + ".endpoint", Msg: err.Error()})
			}
		}
		if len(p.AllowedIPs) == 0 && !l.failed[key+".allowed_ips"] {
			e.errs = append(e.errs, &Error{File: l.File, Line: l.peerLine(key), Key: key + ".allowed_ips", Msg: "a peer needs at least one allowed IP range, e.g. [\"10.0.0.200/32\"]"})
		}
	}
}

// checkNetwork checks [network] and how its ranges sit against
// wireguard.subnet.
func (l *Loaded) checkNetwork(e *errSink) {
	c := &l.Config
	add := e.add
	n := c.Network
	if n.ContainerSubnet.IsValid() {
		if b := n.ContainerBlock; b < n.ContainerSubnet.Bits() || b > 30 {
			add("network.container_block", "%d must be between the container subnet's /%d and /30", b, n.ContainerSubnet.Bits())
		}
	} else if n.ContainerSubnet.bad == nil {
		add("network.container_subnet", "must be set, e.g. \"10.0.0.0/16\"")
	}
	if !n.VIPSubnet.IsValid() && n.VIPSubnet.bad == nil {
		add("network.vip_subnet", "must be set, e.g. \"10.1.0.0/16\"")
	}
	if err := checkIfName(n.Bridge); err != nil {
		add("network.bridge", "%v", err)
	}
	if !domainRE.MatchString(n.DNSDomain) {
		add("network.dns_domain", "%q is not a DNS domain such as \"warren.local\"", n.DNSDomain)
	}
	wg, ct, vip := c.WireGuard.Subnet.Prefix, n.ContainerSubnet.Prefix, n.VIPSubnet.Prefix
	if wg.IsValid() && ct.IsValid() && wg.Overlaps(ct) {
		switch {
		case !(ct.Bits() <= wg.Bits() && ct.Contains(wg.Addr())):
			add("wireguard.subnet", "%s overlaps network.container_subnet %s (allowed only fully inside it, whose blocks are then skipped)", wg, ct)
		case n.ContainerBlock >= ct.Bits() && n.ContainerBlock <= 30 && !freeBlock(ct, wg, n.ContainerBlock):
			add("wireguard.subnet", "%s leaves no /%d block of network.container_subnet %s for containers (blocks that overlap the WireGuard subnet are skipped): make wireguard.subnet smaller (such as the default 10.0.0.0/24 in 10.0.0.0/16) or network.container_subnet larger", wg, n.ContainerBlock, ct)
		}
	}
	if vip.IsValid() && ct.IsValid() && vip.Overlaps(ct) {
		add("network.vip_subnet", "%s overlaps network.container_subnet %s", vip, ct)
	}
	if vip.IsValid() && wg.IsValid() && vip.Overlaps(wg) {
		add("network.vip_subnet", "%s overlaps wireguard.subnet %s", vip, wg)
	}
}

// checkLoadBalancing checks [loadbalancing].
func (l *Loaded) checkLoadBalancing(e *errSink) {
	c := &l.Config
	add := e.add
	if c.LoadBalancing.Algorithm != "random" {
		add("loadbalancing.algorithm", "%q is not supported (want \"random\")", c.LoadBalancing.Algorithm)
	}
	if c.LoadBalancing.PersistenceTimeout.Duration <= 0 && c.LoadBalancing.PersistenceTimeout.bad == nil {
		add("loadbalancing.persistence_timeout", "must be a positive duration such as \"3h\"")
	}
}

// checkRuntime checks [runtime] and [logs].
func (l *Loaded) checkRuntime(e *errSink) {
	c := &l.Config
	add := e.add
	if c.Runtime.ContainerdAddress == "" {
		add("runtime.containerd_address", "must be set (containerd's socket path)")
	}
	if !labelRE.MatchString(c.Runtime.Namespace) {
		add("runtime.namespace", "%q is not a containerd namespace name", c.Runtime.Namespace)
	}
	if p := c.Runtime.CgroupParent; p != "" && !strings.HasPrefix(p, "/") {
		add("runtime.cgroup_parent", "%q must start with '/' (a cgroup path such as \"/warren\")", p)
	}
	if d := c.Runtime.RestartBackoffMax; d.bad == nil && (d.Duration < time.Second || d.Duration > 24*time.Hour) {
		add("runtime.restart_backoff_max", "%s: want 1s to 24h, e.g. \"5m\"", d.Duration)
	}
	if m := c.Runtime.TasksMemoryMax; m.bad == nil && m.Bytes != 0 && m.Bytes < 64<<20 {
		add("runtime.tasks_memory_max", "%d bytes: want at least 64M", m.Bytes)
	}
	if c.Logs.MaxFiles < 1 || c.Logs.MaxFiles > 20 {
		add("logs.max_files", "%d: want 1 to 20 files per task", c.Logs.MaxFiles)
	}
	if c.Logs.MaxSize.bad == nil && (c.Logs.MaxSize.Bytes < 4096 || c.Logs.MaxSize.Bytes > 1<<30) {
		add("logs.max_size", "%d bytes: want 4k to 1G", c.Logs.MaxSize.Bytes)
	}
	if !filepath.IsAbs(c.Runtime.ImagesDir) {
		add("runtime.images_dir", "%q must be an absolute path", c.Runtime.ImagesDir)
	}
}

// checkLogAndMetrics checks [log] and [metrics].
func (l *Loaded) checkLogAndMetrics(e *errSink) {
	c := &l.Config
	add := e.add
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		add("log.level", "%q is not a level (want \"debug\", \"info\", \"warn\" or \"error\")", c.Log.Level)
	}

	// [metrics]
	if a := c.Metrics.Listen; a != "" {
		if ap, err := netip.ParseAddrPort(a); err != nil || ap.Port() == 0 {
			add("metrics.listen", "%q must be an IP:port such as \"127.0.0.1:9586\" (or \"\" to turn /metrics off)", a)
		}
	}
}

// checkRelay checks [relay].
func (l *Loaded) checkRelay(e *errSink) {
	c := &l.Config
	add := e.add
	if p := c.Relay.Port; p < 1 || p > 65535 {
		add("relay.port", "%d is not a port (1-65535)", p)
	} else if l.RelayEnabled() && c.Node.Role != RoleManager && p == c.WireGuard.ListenPort {
		add("relay.port", "%d is wireguard.listen_port: the relay's UDP needs a port of its own", p)
	}
	if n := c.Relay.MaxSessions; n < 1 || n > 65535 {
		add("relay.max_sessions", "%d: want 1-65535 members at once", n)
	}
	if r := c.Relay.PeerRateMbps; r < 1 || r > 100000 {
		add("relay.peer_rate_mbps", "%d: want 1-100000 Mbit/s per member", r)
	}
	if c.Relay.Enable && c.Node.Role == RoleStandalone {
		add("relay.enable", "a standalone node has no cluster to relay for (role = \"manager\" or \"worker\")")
	}
}

// checkForwards checks [[forward]].
func (l *Loaded) checkForwards(e *errSink) {
	c := &l.Config
	for i, f := range c.Forward {
		key := fmt.Sprintf("forward[%d]", i)
		bad := func(field, msg string) {
			e.errs = append(e.errs, &Error{File: l.File, Line: l.peerLine(key + "." + field), Key: key + "." + field, Msg: msg})
		}
		if f.Proto != "tcp" && f.Proto != "udp" {
			bad("proto", fmt.Sprintf("%q is not \"tcp\" or \"udp\"", f.Proto))
		}
		if _, err := netip.ParseAddrPort(f.Listen); err != nil {
			bad("listen", fmt.Sprintf("%q must be a local IP:port such as \"127.0.0.1:8080\"", f.Listen))
		}
		if _, err := netip.ParseAddrPort(f.Target); err != nil {
			bad("target", fmt.Sprintf("%q must be a mesh IP:port such as \"10.1.0.1:80\"", f.Target))
		}
	}
}

// notSetUp starts the error of a node nothing set up (IsNotSetUp).
const notSetUp = "this node is not set up yet"

// IsNotSetUp reports whether err says only that nothing set this node up
// yet (no role in the config, nothing remembered): verbs that do not run
// the node, such as --show-public-key, can go on.
func IsNotSetUp(err error) bool {
	var es Errors
	if !errors.As(err, &es) || len(es) == 0 {
		return false
	}
	for _, e := range es {
		if e.Key != "node.role" || !strings.HasPrefix(e.Msg, notSetUp) {
			return false
		}
	}
	return true
}

// peerLine is the line of an indexed key of an array of tables, or of its
// entry's header, or of the first entry.
func (l *Loaded) peerLine(key string) int {
	for k := key; k != ""; {
		if n := l.lines[k]; n > 0 {
			return n
		}
		i := strings.LastIndexAny(k, ".[")
		if i < 0 {
			break
		}
		k = k[:i]
	}
	return 0
}

// CheckHostOverlap reports warren ranges that overlap networks this host is
// already on (ignoring warren's own interfaces), naming both ranges.
func (l *Loaded) CheckHostOverlap(hostNets []netip.Prefix) error {
	ranges := []Range{
		{"wireguard.subnet", l.WireGuard.Subnet.Prefix},
		{"network.container_subnet", l.Network.ContainerSubnet.Prefix},
		{"network.vip_subnet", l.Network.VIPSubnet.Prefix},
	}
	var errs Errors
	for _, o := range HostOverlaps(ranges, hostNets) {
		errs = append(errs, &Error{File: l.File, Line: l.lines[o.Key], Key: o.Key,
			Msg: fmt.Sprintf("%s overlaps %s, a network this host is already on; pick another range", o.Prefix, o.Host)})
	}
	if len(errs) > 0 {
		return errs
	}
	return nil
}

// Range is a warren range named by the config key that sets it.
type Range struct {
	Key    string
	Prefix netip.Prefix
}

// Overlap is a warren range that overlaps a host network.
type Overlap struct {
	Range
	Host netip.Prefix
}

// HostOverlaps lists the ranges that overlap one of hostNets.
func HostOverlaps(ranges []Range, hostNets []netip.Prefix) []Overlap {
	var out []Overlap
	for _, r := range ranges {
		for _, h := range hostNets {
			if r.Prefix.IsValid() && h.Masked().Overlaps(r.Prefix) {
				out = append(out, Overlap{Range: r, Host: h.Masked()})
			}
		}
	}
	return out
}

// HostNetworks lists the IPv4 networks of this host's interfaces, except
// loopback and the ones warren itself creates (overlay, bridge, task veths).
func HostNetworks(c Config) ([]netip.Prefix, error) {
	ifaces, err := net.Interfaces()
	if err != nil {
		return nil, fmt.Errorf("list interfaces: %w", err)
	}
	var out []netip.Prefix
	for _, ifc := range ifaces {
		if ifc.Flags&net.FlagLoopback != 0 || ifc.Name == c.WireGuard.Interface || ifc.Name == c.Network.Bridge || strings.HasPrefix(ifc.Name, "wv") {
			continue
		}
		addrs, err := ifc.Addrs()
		if err != nil {
			continue
		}
		for _, a := range addrs {
			if ipn, ok := a.(*net.IPNet); ok {
				if p, err := netip.ParsePrefix(ipn.String()); err == nil && p.Addr().Is4() {
					out = append(out, p)
				}
			}
		}
	}
	return out, nil
}

// checkEndpoint accepts IP:port or host:port, as wg-quick does; a name is
// resolved at start and again when the peer's handshake goes stale.
func checkEndpoint(s string) error {
	if _, err := netip.ParseAddrPort(s); err == nil {
		return nil
	}
	bad := fmt.Errorf("%q must be IP:port or host:port, such as \"192.0.2.7:51820\" or \"peer.example.org:51820\"", s)
	host, port, err := net.SplitHostPort(s)
	if err != nil || !domainRE.MatchString(strings.ToLower(strings.TrimSuffix(host, "."))) {
		return bad
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return bad
	}
	return nil
}

// freeBlock reports whether ct (holding wg) has a /block that does not
// overlap wg: the IPAM skips the ones that do.
func freeBlock(ct, wg netip.Prefix, block int) bool {
	total := uint64(1) << (block - ct.Bits())
	taken := uint64(1)
	if wg.Bits() < block {
		taken = uint64(1) << (block - wg.Bits())
	}
	return total > taken
}

// DefaultAPIPort is the cluster API's port when an address names none.
const DefaultAPIPort = "7946"

// withDefaultPort adds the API port to a manager address given without
// one (`--manager 192.0.2.10`, as the seed writes it).
func withDefaultPort(s string) string {
	if _, _, err := net.SplitHostPort(s); err == nil {
		return s
	}
	host := strings.TrimSuffix(s, ".")
	if ip, err := netip.ParseAddr(host); err == nil && ip.Is4() {
		return net.JoinHostPort(s, DefaultAPIPort)
	}
	if domainRE.MatchString(strings.ToLower(host)) {
		return net.JoinHostPort(s, DefaultAPIPort)
	}
	return s
}

func checkHostPort(s string, listen bool) error {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return fmt.Errorf("%q is not host:port (e.g. \"192.0.2.1:7946\")", s)
	}
	if !listen && host == "" {
		return fmt.Errorf("%q has no host", s)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("%q: %q is not a TCP port (1-65535)", s, port)
	}
	return nil
}

func checkIfName(s string) error {
	if s == "" || len(s) > 15 || strings.ContainsAny(s, "/ \t:") {
		return fmt.Errorf("%q is not a Linux interface name (1-15 characters, no '/', ':' or spaces)", s)
	}
	return nil
}

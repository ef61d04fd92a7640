// Package lab simulates a cluster of warren nodes on one machine, as
// DESIGN.md describes: each node is a network namespace plus a private mount
// namespace with its own /run, /var/lib/warren, /etc/warren and
// /var/lib/containerd, and its own containerd. All nodes hang off one bridge
// (the LAN) that lives in a namespace of its own, next to an "outside"
// namespace that plays the LAN router and a host that is not a node.
//
// Nothing is created in the host's own network namespace, and Close removes
// every namespace, process and directory the lab made.
package lab

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/BurntSushi/toml"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// LAN addressing: the outside namespace is the router at .1, nodes from .10.
var (
	lanPrefix = netip.MustParsePrefix("192.168.100.0/24")
	routerIP  = netip.MustParseAddr("192.168.100.1")
)

// namePrefix marks everything a lab creates; the pid that follows lets a
// later lab sweep what a killed one left behind.
const namePrefix = "wl"

// Options configure a lab.
type Options struct {
	Dir string // working directory (node roots, logs); created if missing
	// BinDir, if set, is mounted on /usr/local/sbin inside every node, so
	// `warren` and `warren-appliance` can be typed there as on a real board.
	BinDir string
	Logger *slog.Logger
}

// Lab is a running simulation.
type Lab struct {
	id      string // namePrefix + pid: unique among live labs
	dir     string
	binDir  string
	log     *slog.Logger
	lanNS   string
	Outside *Host

	mu      sync.Mutex
	nodes   []*Node
	routers []*Router
	hosts   []*Host // plain LAN hosts (AddLANHost)
	next    int
}

// RouterIP is the outside host's LAN address: the nodes' default gateway
// and the nameserver in their /etc/resolv.conf.
var RouterIP = routerIP

// Host is a network namespace on the LAN with a shell holder process.
type Host struct {
	Name   string
	NetNS  string // name under /run/netns
	LANIP  netip.Addr
	lab    *Lab
	holder *exec.Cmd
	procs  []*exec.Cmd
	dir    string
}

// Node is a simulated warren node: a Host with a private mount namespace.
type Node struct {
	Host
	// Router is the NAT router the node sits behind (nil: on the LAN);
	// then LANIP is the node's address on the router's site network.
	Router        *Router
	Root          string // host directory holding the node's /var/lib/warren, /etc/warren, ...
	containerd    *exec.Cmd
	appliance     *exec.Cmd
	applianceDone chan struct{} // closed once the appliance is reaped
	applLog       string
}

// New creates the LAN and the outside namespace.
func New(opts Options) (*Lab, error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("lab: needs root (network and mount namespaces)")
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	SweepStale(opts.Logger)
	if err := os.MkdirAll(opts.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("lab: %w", err)
	}
	l := &Lab{id: fmt.Sprintf("%s%d", namePrefix, os.Getpid()), dir: opts.Dir, binDir: opts.BinDir, log: opts.Logger}
	l.lanNS = l.id + "-lan"
	if err := run("ip", "netns", "add", l.lanNS); err != nil {
		return nil, err
	}
	if err := inNS(l.lanNS, func() error {
		br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "lan0"}}
		if err := netlink.LinkAdd(br); err != nil {
			return fmt.Errorf("add LAN bridge: %w", err)
		}
		lo, _ := netlink.LinkByName("lo")
		netlink.LinkSetUp(lo)
		return netlink.LinkSetUp(br)
	}); err != nil {
		l.Close()
		return nil, err
	}
	out, err := l.addHost("outside", routerIP)
	if err != nil {
		l.Close()
		return nil, err
	}
	l.Outside = out
	return l, nil
}

// addHost creates a namespace with a veth into the LAN bridge.
func (l *Lab) addHost(name string, ip netip.Addr) (*Host, error) {
	l.mu.Lock()
	l.next++
	idx := l.next
	l.mu.Unlock()
	h := &Host{Name: name, NetNS: fmt.Sprintf("%s-%s", l.id, name), LANIP: ip, lab: l, dir: filepath.Join(l.dir, name)}
	if err := os.MkdirAll(h.dir, 0o755); err != nil {
		return nil, err
	}
	if err := run("ip", "netns", "add", h.NetNS); err != nil {
		return nil, err
	}
	// veth names must fit 15 bytes: wl<pid>h<idx> / ...p
	in := fmt.Sprintf("%sh%d", trimID(l.id), idx)
	peer := in + "p"
	if err := run("ip", "link", "add", in, "netns", h.NetNS, "type", "veth", "peer", "name", peer, "netns", l.lanNS); err != nil {
		return nil, err
	}
	if err := runNS(l.lanNS, "ip", "link", "set", peer, "master", "lan0", "up"); err != nil {
		return nil, err
	}
	pfx := netip.PrefixFrom(ip, lanPrefix.Bits()).String()
	for _, args := range [][]string{
		{"ip", "link", "set", "lo", "up"},
		{"ip", "link", "set", in, "name", "eth0"},
		{"ip", "addr", "add", pfx, "dev", "eth0"},
		{"ip", "link", "set", "eth0", "up"},
	} {
		if err := runNS(h.NetNS, args...); err != nil {
			return nil, err
		}
	}
	if ip != routerIP {
		if err := runNS(h.NetNS, "ip", "route", "add", "default", "via", routerIP.String()); err != nil {
			return nil, err
		}
	}
	return h, nil
}

func trimID(id string) string {
	if len(id) > 9 {
		return id[:2] + id[len(id)-7:]
	}
	return id
}

// AddNode creates a node namespace with its private mounts; containerd and
// the appliance are started separately.
func (l *Lab) AddNode(name string) (*Node, error) {
	return l.AddBoard(name, name)
}

// AddBoard is AddNode with a host name other than the node's lab name (two
// boards may both be called "raspberrypi").
func (l *Lab) AddBoard(name, hostname string) (*Node, error) {
	l.mu.Lock()
	ip := lanPrefix.Addr()
	for i := 0; i < 10+len(l.nodes); i++ {
		ip = ip.Next()
	}
	l.mu.Unlock()
	h, err := l.addHost(name, ip)
	if err != nil {
		return nil, err
	}
	return l.startNode(h, name, hostname, nil)
}

// AddNodeBehind creates a node alone on the site network of router r: its
// traffic to the LAN leaves through r's NAT.
func (l *Lab) AddNodeBehind(name string, r *Router) (*Node, error) {
	h, err := l.addSiteHost(name, r)
	if err != nil {
		return nil, err
	}
	return l.startNode(h, name, name, r)
}

// startNode gives host h its private mounts and holder process.
func (l *Lab) startNode(h *Host, name, hostname string, r *Router) (*Node, error) {
	n := &Node{Host: *h, Root: filepath.Join(h.dir, "root"), Router: r}
	for _, d := range []string{"lib", "etc", "containerd", "lib/images"} {
		if err := os.MkdirAll(filepath.Join(n.Root, d), 0o700); err != nil {
			return nil, err
		}
	}
	// The node's resolver is the outside host, where a test may run a DNS
	// server: names outside the cluster never leave the lab.
	if err := os.WriteFile(filepath.Join(n.Root, "resolv.conf"), []byte("nameserver "+routerIP.String()+"\n"), 0o644); err != nil {
		return nil, err
	}
	for _, d := range []string{"/var/lib/warren", "/etc/warren", "/var/lib/containerd", "/usr/local/sbin"} {
		if err := os.MkdirAll(d, 0o755); err != nil { // mount points only; stay empty on the host
			return nil, err
		}
	}
	binMount := ""
	if l.binDir != "" {
		binMount = "mount --bind " + l.binDir + " /usr/local/sbin"
	}
	script := fmt.Sprintf(`set -e
mount -t tmpfs -o mode=0755 tmpfs /run
mkdir -p /run/netns /run/warren /run/containerd
mount --bind %[1]s/lib /var/lib/warren
mount --bind %[1]s/etc /etc/warren
mount --bind %[1]s/containerd /var/lib/containerd
mount --bind %[1]s/resolv.conf /etc/resolv.conf
%[2]s
sysctl -qw net.ipv4.ip_forward=1
echo ready
exec sleep infinity`, n.Root, binMount)
	// Its own UTS namespace too: a node's host name is its name, as on a
	// board (the default node name comes from it).
	cmd := exec.Command("unshare", "-m", "-u", "--propagation", "private", "nsenter", "--net=/run/netns/"+n.NetNS, "sh", "-c", "hostname "+hostname+"\n"+script)
	// A process group of its own: Ctrl-C in the terminal (make demo) goes
	// to the program that owns the lab, whose Close stops the nodes in
	// order, not to every node process at once.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start node %s: %w", name, err)
	}
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || strings.TrimSpace(line) != "ready" {
		cmd.Process.Kill()
		cmd.Wait()
		return nil, fmt.Errorf("node %s: mount setup failed: %v: %s", name, err, stderr.String())
	}
	n.holder = cmd
	l.mu.Lock()
	l.nodes = append(l.nodes, n)
	l.mu.Unlock()
	return n, nil
}

// Nodes returns the nodes in creation order.
func (l *Lab) Nodes() []*Node {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]*Node(nil), l.nodes...)
}

// enter returns the argv prefix that runs a command inside the host.
func (h *Host) enter() []string {
	if h.holder != nil {
		return []string{"nsenter", "-t", strconv.Itoa(h.holder.Process.Pid), "-m", "-n", "-u", "--"}
	}
	return []string{"nsenter", "--net=/run/netns/" + h.NetNS, "--"}
}

// Command builds a command that runs inside the host (its network and,
// for nodes, mount namespace), as a user would type it there.
func (h *Host) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	argv := append(h.enter(), name)
	argv = append(argv, args...)
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
	return cmd
}

// Exec runs a command inside the host and returns its combined output.
func (h *Host) Exec(ctx context.Context, name string, args ...string) (string, error) {
	out, err := h.Command(ctx, name, args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s: %s %s: %w: %s", h.Name, name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// Sh runs a shell command line inside the host.
func (h *Host) Sh(ctx context.Context, script string) (string, error) {
	return h.Exec(ctx, "sh", "-c", script)
}

// Background starts a long-running command inside the host; Close kills it.
func (h *Host) Background(logName string, name string, args ...string) (*exec.Cmd, error) {
	cmd := h.Command(context.Background(), name, args...)
	f, err := os.Create(filepath.Join(h.dir, logName))
	if err != nil {
		return nil, err
	}
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // as the node's holder
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: start %s: %w", h.Name, name, err)
	}
	go func() { cmd.Wait(); f.Close() }()
	h.procs = append(h.procs, cmd)
	return cmd, nil
}

// WriteConfig writes the node's /etc/warren/warren.toml.
//
// With WARREN_LAB_FIREWALL_BACKEND set (iptables, nftables or auto), a
// config without a [firewall] section gets one with that backend: the
// lab suite runs against either firewall backend.
func (n *Node) WriteConfig(toml string) error {
	if b := os.Getenv(FirewallBackendEnv); b != "" && !strings.Contains(toml, "[firewall]") {
		toml += fmt.Sprintf("\n[firewall]\nbackend = %q\n", b)
	}
	return os.WriteFile(filepath.Join(n.Root, "etc", "warren.toml"), []byte(toml), 0o600)
}

// FirewallBackendEnv names the variable WriteConfig reads.
const FirewallBackendEnv = "WARREN_LAB_FIREWALL_BACKEND"

// FirewallBackend is the firewall backend this lab's nodes run unless a
// test's config names one: WARREN_LAB_FIREWALL_BACKEND, or "iptables"
// (the daemon's default) when it is unset.
func FirewallBackend() string {
	if b := os.Getenv(FirewallBackendEnv); b != "" {
		return b
	}
	return "iptables"
}

// FirewallBackend is the backend the node's config names (its
// [firewall] backend, as WriteConfig wrote it), "iptables" when none.
func (n *Node) FirewallBackend() (string, error) {
	var cfg struct {
		Firewall struct{ Backend string }
	}
	if _, err := toml.DecodeFile(filepath.Join(n.Root, "etc", "warren.toml"), &cfg); err != nil {
		return "", fmt.Errorf("%s: read its config: %w", n.Name, err)
	}
	if cfg.Firewall.Backend == "" {
		return "iptables", nil
	}
	return cfg.Firewall.Backend, nil
}

// InstallPackage puts the files of an extracted package (`dpkg-deb -x`)
// where the package puts them, as far as a simulated node has its own
// directories: the binaries on the node's PATH (/usr/local/sbin, over the
// lab's) and /etc/warren/* with their modes. A test starts the unit's
// command itself (the lab has no systemd).
func (n *Node) InstallPackage(ctx context.Context, pkgRoot string) error {
	if _, err := n.Exec(ctx, "mount", "--bind", filepath.Join(pkgRoot, "usr/bin"), "/usr/local/sbin"); err != nil {
		return err
	}
	files, err := filepath.Glob(filepath.Join(pkgRoot, "etc/warren/*"))
	if err != nil {
		return err
	}
	for _, f := range files {
		st, err := os.Stat(f)
		if err != nil {
			return err
		}
		data, err := os.ReadFile(f)
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(n.Root, "etc", filepath.Base(f)), data, st.Mode().Perm()); err != nil {
			return err
		}
	}
	return nil
}

// AppendConfig appends TOML to the node's /etc/warren/warren.toml.
func (n *Node) AppendConfig(toml string) error {
	f, err := os.OpenFile(filepath.Join(n.Root, "etc", "warren.toml"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = f.WriteString(toml)
	return err
}

// AddImage copies an image tarball into the node's images_dir
// (/var/lib/warren/images), as an operator of an airgapped board would.
func (n *Node) AddImage(tarball string) error {
	data, err := os.ReadFile(tarball)
	if err != nil {
		return err
	}
	dst := filepath.Join(n.Root, "lib", "images", filepath.Base(tarball))
	if err := os.WriteFile(dst+".part", data, 0o644); err != nil {
		return err
	}
	return os.Rename(dst+".part", dst)
}

// StartContainerd starts the node's own containerd on the default socket
// inside the node, and waits until it answers.
func (n *Node) StartContainerd(ctx context.Context) error {
	cfg := filepath.Join(n.dir, "containerd.toml")
	// CRI is not used and slows start-up; everything else stays default.
	if err := os.WriteFile(cfg, []byte("version = 2\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n"), 0o644); err != nil {
		return err
	}
	cmd, err := n.Background("containerd.log", "containerd", "--config", cfg)
	if err != nil {
		return err
	}
	n.containerd = cmd
	return Poll(ctx, 100*time.Millisecond, func() error {
		_, err := n.Exec(ctx, "ctr", "version")
		return err
	})
}

// StartAppliance starts warren-appliance (or the given binary and args,
// e.g. `warren worker start ...`) inside the node. Logs go to appliance.log.
func (n *Node) StartAppliance(binary string, args ...string) error {
	if len(args) == 0 {
		args = []string{"--config", "/etc/warren/warren.toml"}
	}
	n.applLog = filepath.Join(n.dir, "appliance.log")
	f, err := os.OpenFile(n.applLog, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	cmd := n.Command(context.Background(), binary, args...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // as the node's holder
	if err := cmd.Start(); err != nil {
		f.Close()
		return fmt.Errorf("%s: start appliance: %w", n.Name, err)
	}
	n.appliance = cmd
	done := make(chan struct{})
	n.applianceDone = done
	go func() { cmd.Wait(); f.Close(); close(done) }()
	return nil
}

// StopAppliance sends sig (SIGTERM for a clean stop, SIGKILL for a crash)
// and waits for the process to exit.
func (n *Node) StopAppliance(sig syscall.Signal) error {
	cmd := n.appliance
	if cmd == nil || cmd.Process == nil {
		return nil
	}
	n.appliance = nil
	// nsenter execs the target, so the pid is the appliance's own. Wait
	// until it is reaped: a zombie's main thread can go before its other
	// threads release the sockets a restart needs.
	cmd.Process.Signal(sig)
	select {
	case <-n.applianceDone:
		return nil
	case <-time.After(20 * time.Second):
		cmd.Process.Kill()
		return fmt.Errorf("%s: appliance did not exit within 20s of %v", n.Name, sig)
	}
}

// ApplianceLog returns what the appliance printed so far.
func (n *Node) ApplianceLog() string {
	if n.applLog == "" {
		return ""
	}
	b, _ := os.ReadFile(n.applLog)
	return string(b)
}

// Logs returns every log of the node, for test failure output.
func (n *Node) Logs() string {
	var sb strings.Builder
	files, _ := filepath.Glob(filepath.Join(n.dir, "*.log"))
	for _, f := range files {
		b, _ := os.ReadFile(f)
		fmt.Fprintf(&sb, "===== %s %s\n%s\n", n.Name, filepath.Base(f), logExcerpt(b))
	}
	return sb.String()
}

// logExcerpt keeps a long log's start (how the process came up), its
// warnings, errors and panics, and its last 48 KiB: a daemon restarted
// many times by a test said why one start failed in the part a plain tail
// cut off.
func logExcerpt(b []byte) []byte {
	const head, tail, maxKept = 8 << 10, 48 << 10, 300
	if len(b) <= head+tail+(8<<10) {
		return b
	}
	h := bytes.LastIndexByte(b[:head], '\n') + 1
	t := len(b) - tail
	if i := bytes.IndexByte(b[t:], '\n'); i >= 0 {
		t += i + 1
	}
	var out bytes.Buffer
	out.Write(b[:h])
	kept := 0
	for _, line := range bytes.SplitAfter(b[h:t], []byte("\n")) {
		if kept < maxKept && (bytes.Contains(line, []byte("level=ERROR")) || bytes.Contains(line, []byte("level=WARN")) ||
			bytes.Contains(line, []byte("panic")) || bytes.Contains(line, []byte("fatal error"))) {
			out.Write(line)
			kept++
		}
	}
	fmt.Fprintf(&out, "... (%d bytes cut: %d warning, error and panic lines of them kept above) ...\n", t-h, kept)
	out.Write(b[t:])
	return out.Bytes()
}

// Close tears everything down: the processes of every namespace (and their
// descendants, such as containers under containerd's shims), then the
// namespaces and the lab directory.
func (l *Lab) Close() error {
	nodes := l.Nodes()
	for _, n := range nodes {
		n.StopAppliance(syscall.SIGTERM)
	}
	var names []string
	for _, n := range nodes {
		names = append(names, n.NetNS)
	}
	l.mu.Lock()
	for _, r := range l.routers {
		names = append(names, r.NetNS)
	}
	for _, h := range l.hosts {
		names = append(names, h.NetNS)
	}
	l.mu.Unlock()
	if l.Outside != nil {
		names = append(names, l.Outside.NetNS)
	}
	names = append(names, l.lanNS)
	for _, ns := range names {
		killNetNS(ns)
	}
	for _, n := range nodes {
		if n.holder != nil {
			n.holder.Wait()
		}
	}
	removeCgroups(l.id)
	var errs []error
	for _, ns := range names {
		if err := run("ip", "netns", "delete", ns); err != nil && !strings.Contains(err.Error(), "No such file") {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// SweepStale removes what labs of dead processes left (a test killed by a
// timeout cannot run its cleanup).
func SweepStale(log *slog.Logger) {
	deadLab := func(name string) (string, bool) {
		if !strings.HasPrefix(name, namePrefix) {
			return "", false
		}
		pidStr := strings.SplitN(strings.TrimPrefix(name, namePrefix), "-", 2)[0]
		pid, err := strconv.Atoi(pidStr)
		return namePrefix + pidStr, err == nil && !alive(pid)
	}
	entries, _ := os.ReadDir("/run/netns")
	for _, e := range entries {
		if _, dead := deadLab(e.Name()); dead {
			log.Info("removing a namespace left by a dead lab", "netns", e.Name())
			killNetNS(e.Name())
			run("ip", "netns", "delete", e.Name())
		}
	}
	// Once per dead lab, not once per cgroup directory: each call may wait
	// up to its deadline, and a lab leaves a directory per node under
	// every controller.
	cgroups, _ := filepath.Glob("/sys/fs/cgroup/*/" + namePrefix + "*")
	swept := map[string]bool{}
	for _, dir := range cgroups {
		if id, dead := deadLab(filepath.Base(dir)); dead && !swept[id] {
			swept[id] = true
			log.Info("removing the cgroups of a dead lab", "lab", id)
			removeCgroups(id)
		}
	}
}

// killNetNS kills every process in the namespace and all their descendants.
func killNetNS(ns string) {
	h, err := netns.GetFromName(ns)
	if err != nil {
		return
	}
	var st syscall.Stat_t
	err = syscall.Fstat(int(h), &st)
	h.Close()
	if err != nil {
		return
	}
	for round := 0; round < 50; round++ {
		victims := processesIn(st.Ino)
		if len(victims) == 0 {
			return
		}
		for _, pid := range victims {
			syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// processesIn lists the pids whose network namespace has inode ino, plus
// all their descendants (containers live in namespaces of their own).
func processesIn(ino uint64) []int {
	procs, _ := os.ReadDir("/proc")
	children := map[int][]int{}
	var roots []int
	self := os.Getpid()
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil || pid == self {
			continue
		}
		if stat, err := os.ReadFile("/proc/" + p.Name() + "/stat"); err == nil {
			// ppid is the 2nd field after the ")" that closes the command name.
			if i := bytes.LastIndexByte(stat, ')'); i > 0 {
				f := strings.Fields(string(stat[i+1:]))
				if len(f) > 2 && f[0] != "Z" {
					ppid, _ := strconv.Atoi(f[1])
					children[ppid] = append(children[ppid], pid)
				}
			}
		}
		if inNetNS(p.Name(), ino) {
			roots = append(roots, pid)
		}
	}
	seen := map[int]bool{}
	var out []int
	var walk func(int)
	walk = func(pid int) {
		if seen[pid] || pid == self {
			return
		}
		seen[pid] = true
		out = append(out, pid)
		for _, c := range children[pid] {
			walk(c)
		}
	}
	for _, r := range roots {
		walk(r)
	}
	return out
}

// inNetNS reports whether any thread of the process is in the network
// namespace ino: the appliance enters task namespaces on locked threads,
// and the thread group leader itself may be one of them at that moment.
func inNetNS(pid string, ino uint64) bool {
	var st syscall.Stat_t
	if syscall.Stat("/proc/"+pid+"/ns/net", &st) == nil && st.Ino == ino {
		return true
	}
	tasks, _ := os.ReadDir("/proc/" + pid + "/task")
	for _, t := range tasks {
		if syscall.Stat("/proc/"+pid+"/task/"+t.Name()+"/ns/net", &st) == nil && st.Ino == ino {
			return true
		}
	}
	return false
}

func alive(pid int) bool {
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	i := bytes.LastIndexByte(stat, ')')
	return i > 0 && !strings.HasPrefix(strings.TrimSpace(string(stat[i+1:])), "Z")
}

func run(name string, args ...string) error {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

func runNS(ns string, args ...string) error {
	return run("nsenter", append([]string{"--net=/run/netns/" + ns, "--"}, args...)...)
}

// inNS runs fn on a locked OS thread switched into the named namespace.
func inNS(name string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		// The thread is left locked on purpose: it ends with this goroutine
		// instead of going back to the pool inside another namespace.
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- err
			return
		}
		defer orig.Close()
		target, err := netns.GetFromName(name)
		if err != nil {
			errc <- fmt.Errorf("netns %s: %w", name, err)
			return
		}
		defer target.Close()
		if err := netns.Set(target); err != nil {
			errc <- err
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// Poll calls fn every interval until it succeeds or ctx ends, and returns
// fn's last error on timeout.
func Poll(ctx context.Context, interval time.Duration, fn func() error) error {
	var last error
	for {
		if last = fn(); last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (last error: %v)", ctx.Err(), last)
		case <-time.After(interval):
		}
	}
}

// CgroupParent is the node's own cgroup parent for its tasks: simulated
// nodes share one kernel, and a task rescheduled from one node to another
// keeps its name, so the default "/warren" would collide.
func (n *Node) CgroupParent() string { return "/" + n.NetNS }

// removeCgroups removes the (empty, once their processes are dead) cgroup
// directories of a lab's nodes under every cgroup v1 controller, or the
// v2 hierarchy.
func removeCgroups(labID string) {
	// A killed task can take a moment to leave its cgroup (EBUSY until
	// then): retry for a while rather than leave the cgroup behind.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		roots, _ := filepath.Glob("/sys/fs/cgroup/*/" + labID + "-*")
		v2, _ := filepath.Glob("/sys/fs/cgroup/" + labID + "-*")
		roots = append(roots, v2...)
		if len(roots) == 0 || time.Now().After(deadline) {
			return
		}
		for _, root := range roots {
			var dirs []string
			filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
				if err == nil && d.IsDir() {
					dirs = append(dirs, p)
				}
				return nil
			})
			for i := len(dirs) - 1; i >= 0; i-- { // children first
				// Processes still in a dead lab's cgroup (task processes
				// whose shim was killed with the lab) keep it busy for good.
				killCgroupProcs(dirs[i])
				os.Remove(dirs[i])
			}
		}
	}
}

// EnterCommand is what a person types to get a shell inside the node.
func (h *Host) EnterCommand() string {
	return strings.Join(h.enter()[:len(h.enter())-1], " ") + " bash"
}

// Do runs fn on a thread inside the host's network namespace: sockets fn
// opens stay in that namespace, so a test can serve from its own process.
func (h *Host) Do(fn func() error) error { return inNS(h.NetNS, fn) }

// AppliancePID is the running appliance's process ID (0 if none): the
// same process as the command started inside the node (nsenter execs it).
func (n *Node) AppliancePID() int {
	if n.appliance == nil || n.appliance.Process == nil {
		return 0
	}
	return n.appliance.Process.Pid
}

// SignalAppliance sends sig (e.g. SIGHUP) to the running appliance.
func (n *Node) SignalAppliance(sig syscall.Signal) error {
	if n.appliance == nil || n.appliance.Process == nil {
		return fmt.Errorf("%s: appliance not running", n.Name)
	}
	return n.appliance.Process.Signal(sig)
}

// Leftovers lists what labs of this process left behind: network
// namespaces and task cgroups (Close kills the processes of a namespace
// before deleting it). Empty after every Close.
func Leftovers() []string {
	var out []string
	prefix := fmt.Sprintf("%s%d-", namePrefix, os.Getpid())
	entries, _ := os.ReadDir("/run/netns")
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), prefix) {
			out = append(out, "netns "+e.Name())
		}
	}
	cgroups, _ := filepath.Glob("/sys/fs/cgroup/*/" + prefix + "*")
	for _, c := range cgroups {
		out = append(out, "cgroup "+c)
	}
	return out
}

// killCgroupProcs kills the processes left in a cgroup directory of a
// dead lab.
func killCgroupProcs(dir string) {
	b, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
	if err != nil {
		return
	}
	for _, f := range strings.Fields(string(b)) {
		if pid, err := strconv.Atoi(f); err == nil && pid > 1 {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

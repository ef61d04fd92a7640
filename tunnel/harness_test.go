package tunnel

// Test harness: network namespaces joined by veth, and device processes
// re-executed from this test binary inside them (nsenter --net), so every
// side is a real separate process with its own TUN, UDP socket and UAPI.

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"github.com/warren-appliance/warren/internal/helperproc"
	"github.com/warren-appliance/warren/internal/netnstest"
)

func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: network namespaces, TUN, veth")
	}
}

var nameSeq struct {
	sync.Mutex
	n int
}

// uniqueTag returns a short tag unique to this process and call, for
// namespace and interface names (interface names are at most 15 bytes).
func uniqueTag() string {
	nameSeq.Lock()
	defer nameSeq.Unlock()
	nameSeq.n++
	return fmt.Sprintf("%d%c", os.Getpid(), 'a'+nameSeq.n-1)
}

// run runs a command and returns its output, failing the test on error.
func run(t testing.TB, name string, args ...string) string {
	t.Helper()
	return netnstest.MustRun(t, name, args...)
}

// inNS runs argv inside namespace ns.
// emulated prefixes argv with $WARREN_TEST_EMULATOR (e.g. qemu-arm-static)
// when the tests run under `go test -exec` for another architecture, so
// the processes they start (this test binary, wireguard-go built for the
// same GOARCH) run under the same emulator.
func emulated(argv ...string) []string {
	if e := os.Getenv("WARREN_TEST_EMULATOR"); e != "" {
		return append([]string{e}, argv...)
	}
	return argv
}

func inNSCmd(ns string, argv ...string) *exec.Cmd {
	return exec.Command("nsenter", append([]string{"--net=/run/netns/" + ns}, argv...)...)
}

func runIn(t testing.TB, ns string, argv ...string) string {
	t.Helper()
	out, err := inNSCmd(ns, argv...).CombinedOutput()
	if err != nil {
		t.Fatalf("in %s: %s: %v\n%s", ns, strings.Join(argv, " "), err, out)
	}
	return string(out)
}

// topo is two namespaces, a and b, joined by a veth pair with underlay
// addresses 192.168.77.1 and .2.
type topo struct {
	tag      string
	a, b     string
	underA   netip.Addr
	underB   netip.Addr
	ifA, ifB string // WireGuard interface names (also UAPI socket names)
}

func newTopo(t testing.TB) *topo {
	t.Helper()
	requireRoot(t)
	tag := uniqueTag()
	tp := &topo{
		tag: tag, a: "tun" + tag + "A", b: "tun" + tag + "B",
		underA: netip.MustParseAddr("192.168.77.1"), underB: netip.MustParseAddr("192.168.77.2"),
		ifA: "wt" + tag + "a", ifB: "wt" + tag + "b",
	}
	t.Cleanup(func() {
		exec.Command("ip", "netns", "del", tp.a).Run()
		exec.Command("ip", "netns", "del", tp.b).Run()
		os.Remove(uapiSocketPath(tp.ifA))
		os.Remove(uapiSocketPath(tp.ifB))
	})
	run(t, "ip", "netns", "add", tp.a)
	run(t, "ip", "netns", "add", tp.b)
	vethA, vethB := "tv"+tag+"a", "tv"+tag+"b"
	run(t, "ip", "link", "add", vethA, "netns", tp.a, "type", "veth", "peer", "name", vethB, "netns", tp.b)
	for _, side := range []struct{ ns, dev, addr string }{{tp.a, vethA, "192.168.77.1/24"}, {tp.b, vethB, "192.168.77.2/24"}} {
		runIn(t, side.ns, "ip", "addr", "add", side.addr, "dev", side.dev)
		runIn(t, side.ns, "ip", "link", "set", side.dev, "up")
		runIn(t, side.ns, "ip", "link", "set", "lo", "up")
	}
	return tp
}

// withNetns runs fn on an OS thread switched into namespace ns; sockets fn
// creates belong to ns and keep working after the thread switches back.
func withNetns(t testing.TB, ns string, fn func() error) error {
	t.Helper()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- err
			return
		}
		defer orig.Close()
		target, err := netns.GetFromName(ns)
		if err != nil {
			errc <- err
			return
		}
		defer target.Close()
		if err := netns.Set(target); err != nil {
			errc <- err
			return
		}
		ferr := fn()
		if err := netns.Set(orig); err != nil {
			// Leave the thread locked: Go discards it with the goroutine.
			errc <- fmt.Errorf("restore netns: %w", err)
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// helperConfig is what a device process is started with.
type helperConfig struct {
	Interface string
	Mode      string
	Port      int
	Address   netip.Prefix
	Private   Key
	Forwards  []Forward
	Peers     []Peer
	Unbounded bool // benchmark: run without the memory bound
	// MemoryLimitMiB sets the Go runtime's soft memory limit in the device
	// process, as GOMEMLIMIT in the daemon's environment would.
	MemoryLimitMiB int64
	Debug          bool
	UDPGSO         string // Config.UDPGSO
	KernelRelease  string // Config.KernelRelease
	QueuedPackets  int    // Config.QueuedPackets (0: its default)
	CPUProfile     string // write a CPU profile of the process here until it closes
	StdBind        bool   // Config.stdBind: wireguard-go's StdNetBind instead of ours
	// DaemonThreads applies the daemon's thread plan (SetGoThreadsUnlessSet)
	// in the device process.
	DaemonThreads bool
	// Config.NetstackQueuedPackets, Config.NetstackTCPBuffer
	NetstackQueuedPackets, NetstackTCPBuffer int
}

type helperRequest struct {
	Op       string
	Peers    []Peer
	Routes   []netip.Prefix
	Peer     Key
	Endpoint netip.AddrPort
}

type helperReply struct {
	Err       string
	Mode      string
	PublicKey Key
	Health    []PeerHealth
}

const helperEnv = "TUNNEL_TEST_HELPER_NODE"

// TestHelperNode is not a test: it is the device process the other tests
// start inside a namespace. It reads JSON requests on stdin and answers
// one "HELPER {json}" line each on stdout; EOF on stdin closes the device.
func TestHelperNode(t *testing.T) {
	raw := os.Getenv(helperEnv)
	if raw == "" {
		t.Skip("runs only as a re-executed device process")
	}
	os.Exit(helperMain(raw))
}

func helperMain(raw string) int {
	reply := helperproc.NewReplier(os.Stdout).Reply
	var hc helperConfig
	if err := json.Unmarshal([]byte(raw), &hc); err != nil {
		reply(helperReply{Err: err.Error()})
		return 2
	}
	level := slog.LevelInfo
	if hc.Debug {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	cfg := Config{Interface: hc.Interface, Mode: hc.Mode, ListenPort: hc.Port, Address: hc.Address,
		PrivateKey: hc.Private, Forwards: hc.Forwards, Logger: log, UDPGSO: hc.UDPGSO, KernelRelease: hc.KernelRelease,
		stdBind: hc.StdBind}
	if hc.Unbounded {
		cfg.QueuedPackets = -1
	}
	if n, err := strconv.Atoi(os.Getenv("TUNNEL_TEST_QUEUED_PACKETS")); err == nil && !hc.Unbounded {
		cfg.QueuedPackets = n
	}
	if hc.QueuedPackets != 0 {
		cfg.QueuedPackets = hc.QueuedPackets
	}
	cfg.NetstackQueuedPackets, cfg.NetstackTCPBuffer = hc.NetstackQueuedPackets, hc.NetstackTCPBuffer
	if hc.MemoryLimitMiB > 0 {
		debug.SetMemoryLimit(hc.MemoryLimitMiB << 20)
	}
	if hc.DaemonThreads {
		SetGoThreadsUnlessSet()
	}
	if hc.CPUProfile != "" {
		if f, err := os.Create(hc.CPUProfile); err == nil {
			if pprof.StartCPUProfile(f) == nil {
				defer func() { pprof.StopCPUProfile(); f.Close() }()
			}
		}
	}
	if dir := os.Getenv("TUNNEL_TEST_HEAP_PROFILE_DIR"); dir != "" {
		// a heap profile 8 s after start (inside the first iperf3 run)
		go func() {
			time.Sleep(8 * time.Second)
			if f, err := os.Create(filepath.Join(dir, hc.Interface+".heap")); err == nil {
				pprof.WriteHeapProfile(f)
				f.Close()
			}
		}()
	}
	dev, err := Open(cfg)
	if err != nil {
		reply(helperReply{Err: err.Error()})
		return 1
	}
	if err := dev.SetPeers(hc.Peers); err != nil {
		reply(helperReply{Err: err.Error()})
		dev.Close()
		return 1
	}
	reply(helperReply{Mode: dev.Mode(), PublicKey: dev.PublicKey()})
	dec := json.NewDecoder(os.Stdin)
	for {
		var req helperRequest
		if err := dec.Decode(&req); err != nil {
			break
		}
		var r helperReply
		switch req.Op {
		case "setpeers":
			if err := dev.SetPeers(req.Peers); err != nil {
				r.Err = err.Error()
			}
		case "setroutes":
			if err := dev.SetRoutes(req.Routes); err != nil {
				r.Err = err.Error()
			}
		case "setendpoint":
			if err := dev.SetEndpoint(req.Peer, req.Endpoint); err != nil {
				r.Err = err.Error()
			}
		case "health":
			r.Health = dev.Health()
		case "close":
			if err := dev.Close(); err != nil {
				r.Err = err.Error()
			}
			reply(r)
			return 0
		default:
			r.Err = "unknown op " + req.Op
		}
		reply(r)
	}
	if err := dev.Close(); err != nil {
		log.Error("close", "error", err)
		return 1
	}
	return 0
}

// node is a running device process.
type node struct {
	t    testing.TB
	proc *helperproc.Proc // its Exited is closed once log is complete
	Pub  Key
	Mode string
	log  *testLogWriter
}

// startNode starts a device process in namespace ns and waits until its
// device is open (or fails the test with the device's error).
func startNode(t testing.TB, ns string, hc helperConfig) *node {
	t.Helper()
	n, err := tryStartNode(t, ns, hc)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func tryStartNode(t testing.TB, ns string, hc helperConfig) (*node, error) {
	t.Helper()
	raw, err := jsonMarshal(hc)
	if err != nil {
		t.Fatal(err)
	}
	cmd := inNSCmd(ns, emulated(os.Args[0], "-test.run=^TestHelperNode$")...)
	cmd.Env = append(os.Environ(), helperEnv+"="+raw)
	return tryStartNodeCmd(t, cmd, hc.Interface)
}

func jsonMarshal(v any) (string, error) {
	b, err := json.Marshal(v)
	return string(b), err
}

// startNodeCmd starts a device process from a prepared command (which must
// run this test binary with the helper env set).
func startNodeCmd(t testing.TB, cmd *exec.Cmd, name string) *node {
	t.Helper()
	n, err := tryStartNodeCmd(t, cmd, name)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func tryStartNodeCmd(t testing.TB, cmd *exec.Cmd, name string) (*node, error) {
	t.Helper()
	logw := &testLogWriter{t: t, prefix: name + ": "}
	cmd.Stderr = logw
	n := &node{t: t, proc: helperproc.Start(t, cmd), log: logw}
	r, err := n.read()
	if err != nil {
		return nil, err
	}
	if r.Err != "" {
		return nil, fmt.Errorf("device process %s: %s", name, r.Err)
	}
	n.Pub, n.Mode = r.PublicKey, r.Mode
	return n, nil
}

func (n *node) read() (helperReply, error) {
	var r helperReply
	err := n.proc.Read(&r)
	return r, err
}

func (n *node) call(req helperRequest) helperReply {
	n.t.Helper()
	b, _ := json.Marshal(req)
	if _, err := n.proc.Stdin().Write(append(b, '\n')); err != nil {
		n.t.Fatalf("send %s: %v", req.Op, err)
	}
	r, err := n.read()
	if err != nil {
		n.t.Fatalf("%s: %v", req.Op, err)
	}
	if r.Err != "" {
		n.t.Fatalf("%s: %s", req.Op, r.Err)
	}
	return r
}

func (n *node) setPeers(peers ...Peer) { n.call(helperRequest{Op: "setpeers", Peers: peers}) }
func (n *node) health() []PeerHealth   { return n.call(helperRequest{Op: "health"}).Health }
func (n *node) setEndpoint(peer Key, ep netip.AddrPort) {
	n.call(helperRequest{Op: "setendpoint", Peer: peer, Endpoint: ep})
}
func (n *node) setRoutes(routes ...netip.Prefix) {
	n.call(helperRequest{Op: "setroutes", Routes: routes})
}

// close asks the device to close and waits for the process to exit.
func (n *node) close() {
	n.t.Helper()
	n.call(helperRequest{Op: "close"})
	select {
	case <-n.proc.Exited():
	case <-time.After(30 * time.Second):
		n.t.Fatal("device process did not exit after close")
	}
}

func (n *node) pid() int { return n.proc.Cmd.Process.Pid }

// stop ends the device process (closing its stdin) and waits for it.
func (n *node) stop() { n.proc.Stop() }

type testLogWriter struct {
	t      testing.TB
	prefix string
	mu     sync.Mutex
	buf    []byte
	all    strings.Builder
}

// String returns everything the process logged so far (all of it once
// the node's proc.Exited() is closed).
func (w *testLogWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.all.String()
}

// atomicCounter counts bytes moved by concurrent goroutines.
type atomicCounter struct{ n atomic.Int64 }

func (c *atomicCounter) add(n int)  { c.n.Add(int64(n)) }
func (c *atomicCounter) get() int64 { return c.n.Load() }

func (w *testLogWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf = append(w.buf, p...)
	w.all.Write(p)
	for {
		i := strings.IndexByte(string(w.buf), '\n')
		if i < 0 {
			break
		}
		line := string(w.buf[:i])
		w.buf = w.buf[i+1:]
		func() {
			defer func() { recover() }() // the test may have finished
			w.t.Log(w.prefix + line)
		}()
	}
	return len(p), nil
}

// waitFor polls cond until it holds or the timeout passes.
func waitFor(t testing.TB, what string, timeout time.Duration, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s: %v", what, timeout, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// pairConfigs returns configs for two devices, each the other's static peer.
func (tp *topo) pairConfigs(t testing.TB, modeA, modeB string) (helperConfig, helperConfig) {
	t.Helper()
	ka, _ := GenerateKey()
	kb, _ := GenerateKey()
	a := helperConfig{Interface: tp.ifA, Mode: modeA, Port: 51820, Address: netip.MustParsePrefix("10.0.0.1/24"), Private: ka,
		Peers: []Peer{{PublicKey: kb.PublicKey(), Endpoint: netip.AddrPortFrom(tp.underB, 51820), AllowedIPs: pfx("10.0.0.2/32", "10.0.2.0/24")}}}
	b := helperConfig{Interface: tp.ifB, Mode: modeB, Port: 51820, Address: netip.MustParsePrefix("10.0.0.2/24"), Private: kb,
		Peers: []Peer{{PublicKey: ka.PublicKey(), Endpoint: netip.AddrPortFrom(tp.underA, 51820), AllowedIPs: pfx("10.0.0.1/32", "10.0.1.0/24")}}}
	return a, b
}

// tcpEcho serves an echo server on addr inside namespace ns until the test ends.
func tcpEcho(t testing.TB, ns string, addr string) net.Listener {
	t.Helper()
	return netnstest.TCPEcho(t, ns, addr)
}

// dialIn dials addr from inside namespace ns.
func dialIn(t testing.TB, ns, addr string) (net.Conn, error) {
	return netnstest.DialTCP(ns, addr, 5*time.Second)
}

// echoRoundTrip sends msg over a fresh connection to addr from ns and
// checks it comes back.
func echoRoundTrip(t testing.TB, ns, addr, msg string) error {
	return netnstest.EchoRoundTrip(ns, addr, msg)
}

// udpEcho serves a UDP echo server on addr inside namespace ns until the test ends.
func udpEcho(t testing.TB, ns, addr string) {
	t.Helper()
	var pc net.PacketConn
	if err := withNetns(t, ns, func() (err error) { pc, err = net.ListenPacket("udp", addr); return err }); err != nil {
		t.Fatalf("listen udp %s in %s: %v", addr, ns, err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 65535)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(buf[:n], from)
		}
	}()
}

package nat

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"syscall"
	"testing"

	"github.com/warren-appliance/warren/hostfw"
	"github.com/warren-appliance/warren/internal/netnstest"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// trafficLab is a node namespace holding the rules, with three backend
// namespaces on a bridge inside it (the "containers"), a client namespace
// on a second link (the LAN), and a remote task behind a third link that
// stands in for the overlay (it routes only the container subnet back,
// as WireGuard's AllowedIPs would). The node's FORWARD policy is DROP, as
// on a host running Docker.
//
//	client 192.168.77.2 ── lan0 192.168.77.1 [node] br0 10.77.1.1 ── b1 .11, b2 .12, b3 .13
//	                                          [node] ovl0 10.77.0.1 ── remote 10.77.2.21
type trafficLab struct {
	node, client, remote string
	backends             map[string]string // name -> namespace
	backendIPs           map[string]netip.Addr
}

var (
	labContainerSubnet = netip.MustParsePrefix("10.77.0.0/16")
	labNodeLAN         = netip.MustParseAddr("192.168.77.1")
	labVIP             = netip.MustParseAddr("10.78.0.10")
	labEmptyVIP        = netip.MustParseAddr("10.78.0.11")
	labUDPVIP          = netip.MustParseAddr("10.78.0.12")
	labStickyVIP       = netip.MustParseAddr("10.78.0.13")
	labDNSVIP          = netip.MustParseAddr("10.78.0.14")
	labFarVIP          = netip.MustParseAddr("10.78.0.15")
	labRemoteIP        = netip.MustParseAddr("10.77.2.21")
	labAnyVIP          = netip.MustParseAddr("10.78.0.16")
	labAnyEmptyVIP     = netip.MustParseAddr("10.78.0.17")
)

func newTrafficLab(t *testing.T, backend string) *trafficLab {
	lab := &trafficLab{
		node:       newNetns(t, "node"),
		client:     newNetns(t, "client"),
		backends:   map[string]string{},
		backendIPs: map[string]netip.Addr{},
	}
	n := lab.node
	mustRun(t, "ip", "-n", n, "link", "add", "br0", "type", "bridge")
	mustRun(t, "ip", "-n", n, "addr", "add", "10.77.1.1/24", "dev", "br0")
	mustRun(t, "ip", "-n", n, "link", "set", "br0", "up")
	// VIPs are routed towards the containers, as the overlay route would.
	mustRun(t, "ip", "-n", n, "route", "add", "10.78.0.0/16", "dev", "br0")
	nsRun(t, n, "sysctl", "-qw", "net.ipv4.ip_forward=1")

	for i, name := range []string{"b1", "b2", "b3"} {
		ns := newNetns(t, name)
		ip := netip.MustParseAddr(fmt.Sprintf("10.77.1.%d", 11+i))
		veth := "v" + name
		mustRun(t, "ip", "-n", n, "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
		mustRun(t, "ip", "-n", n, "link", "set", veth, "master", "br0", "up")
		// With br_netfilter loaded (Docker loads it) the DNAT of a task to
		// itself happens on the bridge path and the frame must leave by the
		// port it came in: hairpin mode, as container runtimes set it.
		mustRun(t, "ip", "-n", n, "link", "set", veth, "type", "bridge_slave", "hairpin", "on")
		mustRun(t, "ip", "-n", ns, "addr", "add", ip.String()+"/24", "dev", "eth0")
		mustRun(t, "ip", "-n", ns, "link", "set", "eth0", "up")
		mustRun(t, "ip", "-n", ns, "route", "add", "default", "via", "10.77.1.1")
		lab.backends[name] = ns
		lab.backendIPs[name] = ip
		lab.serveHTTP(t, name)
		lab.serveUDP(t, name)
	}

	mustRun(t, "ip", "-n", n, "link", "add", "lan0", "type", "veth", "peer", "name", "eth0", "netns", lab.client)
	mustRun(t, "ip", "-n", n, "addr", "add", labNodeLAN.String()+"/24", "dev", "lan0")
	mustRun(t, "ip", "-n", n, "link", "set", "lan0", "up")
	mustRun(t, "ip", "-n", lab.client, "addr", "add", "192.168.77.2/24", "dev", "eth0")
	mustRun(t, "ip", "-n", lab.client, "link", "set", "eth0", "up")
	// The client reaches VIPs through the node, like a host on the LAN
	// with a route to the cluster would.
	mustRun(t, "ip", "-n", lab.client, "route", "add", "10.78.0.0/16", "via", labNodeLAN.String())

	// The remote task: only the container subnet is routed back to the node.
	lab.remote = newNetns(t, "remote")
	mustRun(t, "ip", "-n", n, "link", "add", "ovl0", "type", "veth", "peer", "name", "eth0", "netns", lab.remote)
	mustRun(t, "ip", "-n", n, "addr", "add", "10.77.0.1/32", "dev", "ovl0")
	mustRun(t, "ip", "-n", n, "link", "set", "ovl0", "up")
	mustRun(t, "ip", "-n", n, "route", "add", "10.77.2.0/24", "dev", "ovl0")
	mustRun(t, "ip", "-n", lab.remote, "addr", "add", labRemoteIP.String()+"/24", "dev", "eth0")
	mustRun(t, "ip", "-n", lab.remote, "link", "set", "eth0", "up")
	mustRun(t, "ip", "-n", lab.remote, "route", "add", "10.77.0.1", "dev", "eth0")
	mustRun(t, "ip", "-n", lab.remote, "route", "add", labContainerSubnet.String(), "via", "10.77.0.1")
	lab.backends["remote"] = lab.remote
	lab.serveHTTP(t, "remote")
	delete(lab.backends, "remote")

	if backend == hostfw.BackendIptables {
		// With nftables the host's iptables FORWARD policy still applies
		// to what table inet warren accepts (an accept ends one base chain
		// only): a DROP policy there is the host's to open (README).
		nsRun(t, n, "iptables", "-P", "FORWARD", "DROP")
	}

	waitFor(t, "remote backend", func() error {
		_, err := httpGet(lab.node, netip.AddrPortFrom(labRemoteIP, 8080))
		return err
	})
	for name, ip := range lab.backendIPs {
		waitFor(t, fmt.Sprintf("backend %s", name), func() error {
			_, err := httpGet(lab.node, netip.AddrPortFrom(ip, 8080))
			return err
		})
	}
	return lab
}

// serveHTTP runs a Go HTTP server inside the backend namespace whose page
// is the backend's name. The listening socket is created in the namespace;
// the serving goroutine may run anywhere.
func (lab *trafficLab) serveHTTP(t *testing.T, name string) {
	var l net.Listener
	mustInNetns(t, lab.backends[name], func() (err error) {
		l, err = net.Listen("tcp4", ":8080")
		return err
	})
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, name)
	}), ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
}

// serveUDP answers every datagram on port 5353 with the backend's name.
func (lab *trafficLab) serveUDP(t *testing.T, name string) {
	var pc net.PacketConn
	mustInNetns(t, lab.backends[name], func() (err error) {
		pc, err = net.ListenPacket("udp4", ":5353")
		return err
	})
	go func() {
		buf := make([]byte, 1500)
		for {
			_, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo([]byte(name), from)
		}
	}()
	t.Cleanup(func() { pc.Close() })
}

func (lab *trafficLab) services() []Service {
	var eps []Endpoint
	for _, name := range []string{"b1", "b2", "b3"} {
		eps = append(eps, Endpoint{Name: name, IP: lab.backendIPs[name], Local: true})
	}
	return []Service{
		{Name: "web", VIP: labVIP, Endpoints: eps,
			Ports: []Port{{Protocol: "tcp", Port: 80, TargetPort: 8080, Published: 8081}}},
		{Name: "empty", VIP: labEmptyVIP,
			Ports: []Port{{Protocol: "tcp", Port: 80, TargetPort: 8080, Published: 8082}}},
		{Name: "sticky", VIP: labStickyVIP, Endpoints: eps, Affinity: true,
			Ports: []Port{{Protocol: "tcp", Port: 80, TargetPort: 8080}}},
		{Name: "dns", VIP: labDNSVIP, Endpoints: eps,
			Ports: []Port{{Protocol: "udp", Port: 53, TargetPort: 5353, Published: 5354}}},
		{Name: "any", VIP: labAnyVIP, Endpoints: eps},
		{Name: "any-empty", VIP: labAnyEmptyVIP},
		{Name: "far", VIP: labFarVIP, Endpoints: []Endpoint{{Name: "remote", IP: labRemoteIP}},
			Ports: []Port{{Protocol: "tcp", Port: 80, TargetPort: 8080, Published: 8083}}},
	}
}

func (lab *trafficLab) options() Options {
	return Options{ContainerSubnet: labContainerSubnet, Bridge: "br0", Overlay: "ovl0"}
}

// dialIn opens a connection from inside namespace ns.
func dialIn(ns, network string, addr netip.AddrPort) (net.Conn, error) {
	var c net.Conn
	err := inNetns(ns, func() (err error) {
		c, err = net.DialTimeout(network, addr.String(), 10*time.Second)
		return err
	})
	return c, err
}

// httpGet fetches / from addr, from inside ns, and returns the body.
func httpGet(ns string, addr netip.AddrPort) (string, error) {
	c, err := dialIn(ns, "tcp4", addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := fmt.Fprintf(c, "GET / HTTP/1.0\r\nHost: %s\r\n\r\n", addr); err != nil {
		return "", err
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return string(body), err
}

func waitFor(t *testing.T, what string, try func() error) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := try()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not ready: %v", what, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestTraffic runs against each firewall backend.
func TestTraffic(t *testing.T) {
	requireRoot(t)
	for _, b := range hostfw.Backends {
		t.Run(b, func(t *testing.T) {
			if err := hostfw.UseBackend(t, b); err != nil {
				t.Fatal(err)
			}
			testTraffic(t, b)
		})
	}
}

func testTraffic(t *testing.T, backend string) {
	lab := newTrafficLab(t, backend)
	a := applierIn(t, lab.node)
	t.Cleanup(func() { _ = inNetns(lab.node, a.Cleanup) })
	syncIn(t, lab.node, a, lab.services(), lab.options())
	vip := netip.AddrPortFrom(labVIP, 80)
	if backend == hostfw.BackendNftables {
		if save := netnstest.Run(t, lab.node, "iptables-save"); strings.Contains(save, "WARREN") {
			t.Fatalf("nftables backend, yet iptables-save shows warren's chains:\n%s", save)
		}
		if out := netnstest.Run(t, lab.node, "nft", "list", "table", "inet", "warren"); !strings.Contains(out, "nat-WARREN-SERVICES") {
			t.Fatalf("table inet warren has no nat-WARREN-SERVICES:\n%s", out)
		}
	}

	t.Run("host-originated VIP traffic is balanced over all endpoints", func(t *testing.T) {
		counts := map[string]int{}
		const requests = 300
		for range requests {
			body, err := httpGet(lab.node, vip)
			if err != nil {
				t.Fatalf("request to VIP %s from the node: %v", vip, err)
			}
			counts[body]++
		}
		t.Logf("split over %d requests: %v", requests, counts)
		for _, name := range []string{"b1", "b2", "b3"} {
			share := float64(counts[name]) / requests
			if share < 0.20 || share > 0.47 {
				t.Errorf("%s got %.0f%% of requests, want 20%%..47%%: %v", name, share*100, counts)
			}
		}
	})

	t.Run("client on the LAN reaches the VIP through PREROUTING", func(t *testing.T) {
		seen := map[string]bool{}
		for range 30 {
			body, err := httpGet(lab.client, vip)
			if err != nil {
				t.Fatalf("request to VIP from the client: %v", err)
			}
			seen[body] = true
		}
		if len(seen) < 2 {
			t.Errorf("30 client requests all hit %v", seen)
		}
	})

	t.Run("remote endpoint over the overlay, with FORWARD policy DROP (iptables)", func(t *testing.T) {
		far := netip.AddrPortFrom(labFarVIP, 80)
		// From the LAN: forwarded, and masqueraded to the node's overlay
		// address, since the remote side routes only the container subnet.
		for _, c := range []struct {
			from string
			to   netip.AddrPort
		}{
			{lab.client, far},
			{lab.client, netip.AddrPortFrom(labNodeLAN, 8083)},
			{lab.node, far},
			{lab.backends["b3"], far},
		} {
			body, err := httpGet(c.from, c.to)
			if err != nil || body != "remote" {
				t.Errorf("%s from %s: %q, %v", c.to, c.from, body, err)
			}
		}
	})

	t.Run("a backend reaching its own VIP and drawing itself gets answers (hairpin)", func(t *testing.T) {
		self := 0
		for i := 0; i < 200 && self < 3; i++ {
			body, err := httpGet(lab.backends["b1"], vip)
			if err != nil {
				t.Fatalf("request %d from b1 to its VIP: %v", i, err)
			}
			if body == "b1" {
				self++
			}
		}
		if self < 3 {
			t.Errorf("b1 drew itself %d times in 200 requests", self)
		}
	})

	t.Run("published port answers on the node address from another namespace", func(t *testing.T) {
		seen := map[string]bool{}
		for range 30 {
			body, err := httpGet(lab.client, netip.AddrPortFrom(labNodeLAN, 8081))
			if err != nil {
				t.Fatalf("published port: %v", err)
			}
			seen[body] = true
		}
		if len(seen) < 2 {
			t.Errorf("published port requests all hit %v", seen)
		}
	})

	t.Run("published port from the node itself, but not on loopback", func(t *testing.T) {
		if _, err := httpGet(lab.node, netip.AddrPortFrom(labNodeLAN, 8081)); err != nil {
			t.Errorf("node to its own published port: %v", err)
		}
		_, err := dialIn(lab.node, "tcp4", netip.MustParseAddrPort("127.0.0.1:8081"))
		if !errors.Is(err, syscall.ECONNREFUSED) {
			t.Errorf("127.0.0.1:8081 got %v, want connection refused (loopback is not published)", err)
		}
	})

	t.Run("NodeAddresses limits published ports to those addresses", func(t *testing.T) {
		opts := lab.options()
		opts.NodeAddresses = []netip.Addr{labNodeLAN}
		syncIn(t, lab.node, a, lab.services(), opts)
		defer syncIn(t, lab.node, a, lab.services(), lab.options())
		if _, err := httpGet(lab.client, netip.AddrPortFrom(labNodeLAN, 8081)); err != nil {
			t.Errorf("published port on a listed address: %v", err)
		}
		// The bridge address is local too, but not listed.
		_, err := dialIn(lab.backends["b2"], "tcp4", netip.MustParseAddrPort("10.77.1.1:8081"))
		if !errors.Is(err, syscall.ECONNREFUSED) {
			t.Errorf("unlisted node address 10.77.1.1:8081 got %v, want connection refused", err)
		}
	})

	t.Run("published UDP port answers on the node address", func(t *testing.T) {
		seen := map[string]bool{}
		for range 20 {
			// A new socket each time: a new flow, a new draw.
			c, err := dialIn(lab.client, "udp4", netip.AddrPortFrom(labNodeLAN, 5354))
			if err != nil {
				t.Fatal(err)
			}
			seen[udpAsk(t, c)] = true
			c.Close()
		}
		if len(seen) < 2 {
			t.Errorf("published UDP answers all from %v", seen)
		}
	})

	t.Run("affinity keeps a client on one endpoint", func(t *testing.T) {
		seen := map[string]int{}
		for range 30 {
			body, err := httpGet(lab.node, netip.AddrPortFrom(labStickyVIP, 80))
			if err != nil {
				t.Fatal(err)
			}
			seen[body]++
		}
		if len(seen) != 1 {
			t.Errorf("affinity service spread one client over %v", seen)
		}
	})

	t.Run("service without ports answers on every port of its VIP", func(t *testing.T) {
		for _, from := range []string{lab.node, lab.client} {
			if _, err := httpGet(from, netip.AddrPortFrom(labAnyVIP, 8080)); err != nil {
				t.Errorf("TCP 8080 on an all-ports VIP from %s: %v", from, err)
			}
		}
		c, err := dialIn(lab.node, "udp4", netip.AddrPortFrom(labAnyVIP, 5353))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if got := udpAsk(t, c); got != "b1" && got != "b2" && got != "b3" {
			t.Errorf("UDP 5353 on an all-ports VIP answered %q", got)
		}
		_, err = dialIn(lab.node, "tcp4", netip.AddrPortFrom(labAnyEmptyVIP, 8080))
		if !errors.Is(err, syscall.ECONNREFUSED) {
			t.Errorf("all-ports service without endpoints: got %v, want connection refused", err)
		}
	})

	t.Run("service without endpoints is refused, not timed out", func(t *testing.T) {
		for _, c := range []struct {
			from string
			to   netip.AddrPort
		}{
			{lab.node, netip.AddrPortFrom(labEmptyVIP, 80)},    // filter OUTPUT
			{lab.client, netip.AddrPortFrom(labEmptyVIP, 80)},  // filter FORWARD
			{lab.client, netip.AddrPortFrom(labNodeLAN, 8082)}, // filter INPUT, published
			{lab.node, netip.AddrPortFrom(labVIP, 81)},         // a port the service does not have
			{lab.client, netip.AddrPortFrom(labVIP, 81)},
		} {
			_, err := dialIn(c.from, "tcp4", c.to)
			if !errors.Is(err, syscall.ECONNREFUSED) {
				t.Errorf("dial %s: got %v, want connection refused", c.to, err)
			}
		}
	})

	t.Run("UDP conntrack entries of a removed endpoint are deleted", func(t *testing.T) {
		udpService := func(backend string) []Service {
			return append(lab.services(), Service{Name: "echo", VIP: labUDPVIP,
				Ports:     []Port{{Protocol: "udp", Port: 53, TargetPort: 5353}},
				Endpoints: []Endpoint{{Name: backend, IP: lab.backendIPs[backend], Local: true}}})
		}
		syncIn(t, lab.node, a, udpService("b1"), lab.options())

		// One UDP socket, so every datagram is the same conntrack flow.
		c, err := dialIn(lab.node, "udp4", netip.AddrPortFrom(labUDPVIP, 53))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		ask := func() string { return udpAsk(t, c) }
		if got := ask(); got != "b1" {
			t.Fatalf("UDP answer from %q, want b1", got)
		}
		if n := udpFlowsTo(t, lab.node, labUDPVIP, lab.backendIPs["b1"]); n == 0 {
			t.Fatal("no conntrack entry towards b1 after the first exchange")
		}

		// b1 leaves the service but keeps running: without the cleanup the
		// flow would stay pinned to it.
		syncIn(t, lab.node, a, udpService("b2"), lab.options())
		if n := udpFlowsTo(t, lab.node, labUDPVIP, lab.backendIPs["b1"]); n != 0 {
			t.Errorf("%d UDP conntrack entries towards removed endpoint b1 remain", n)
		}
		if got := ask(); got != "b2" {
			t.Errorf("after b1 was removed the same flow is answered by %q, want b2", got)
		}
	})
}

// udpAsk sends datagrams on c until one is answered (UDP may drop the
// first while ARP resolves) and returns the answer.
func udpAsk(t *testing.T, c net.Conn) string {
	t.Helper()
	buf := make([]byte, 64)
	for range 20 {
		c.Write([]byte("who"))
		c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		if n, err := c.Read(buf); err == nil {
			return string(buf[:n])
		}
	}
	t.Fatalf("no UDP answer from %s", c.RemoteAddr())
	return ""
}

// udpFlowsTo counts UDP conntrack entries in ns towards vip whose reply
// comes from ip.
func udpFlowsTo(t *testing.T, ns string, vip, ip netip.Addr) int {
	t.Helper()
	var n int
	mustInNetns(t, ns, func() error {
		flows, err := netlink.ConntrackTableList(netlink.ConntrackTable, unix.AF_INET)
		if err != nil {
			return err
		}
		for _, f := range flows {
			if f.Forward.Protocol == unix.IPPROTO_UDP && f.Forward.DstIP.Equal(vip.AsSlice()) && f.Reverse.SrcIP.Equal(ip.AsSlice()) {
				n++
			}
		}
		return nil
	})
	return n
}

package tunnel

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/conn"
)

func TestKernelHasUDPGSOBug(t *testing.T) {
	for _, c := range []struct {
		release  string
		affected bool
	}{
		// Before the bug (v7.0-rc1).
		{"6.1.0-18-amd64", false},
		{"6.6.44", false},
		{"6.12.73+deb13-amd64", false},
		{"6.17.0-41-generic", false}, // Ubuntu's backport: not recognised, udp_gso overrides
		{"6.18.44", false},
		{"6.19.9-arch1-1", false},
		{"5.15.0-122-generic", false},
		{"4.19.0", false},
		{"3.10.0-1160.el7.x86_64", false},
		// 7.0, release candidates included.
		{"7.0-rc1", true},
		{"7.0.0-rc7", true},
		{"7.0", true},
		{"7.0.0", true},
		{"7.0.0-15-generic", true},
		{"7.0.2-6-pve", true},
		{"7.0.14-pve", true},
		{"7.0.99", true},
		{"7.0.3-200.fc44.x86_64", true},
		{"7.0.0+rpt-rpi-v8", true},
		{"7.0.1-v7l+", true},
		// 7.1 up to 7.1.4.
		{"7.1-rc1", true},
		{"7.1.0-rc5", true},
		{"7.1.0", true},
		{"7.1.2-1-amd64", true},
		{"7.1.4", true},
		{"7.1.4-arch1-1", true},
		{"  7.1.3-1-amd64\n", true},
		// Fixed.
		{"7.1.5", false},
		{"7.1.5-1-amd64", false},
		{"7.1.12-generic", false},
		{"7.1.40", false},
		{"7.2-rc1", false},
		{"7.2.0", false},
		{"7.10.1", false},
		{"8.0.0", false},
		{"17.0.0", false},
	} {
		got, err := KernelHasUDPGSOBug(c.release)
		if err != nil {
			t.Errorf("%q: %v", c.release, err)
			continue
		}
		if got != c.affected {
			t.Errorf("KernelHasUDPGSOBug(%q) = %v, want %v", c.release, got, c.affected)
		}
	}
	for _, bad := range []string{"", "linux", "7", "7-rc1", "v7.0.0", ".7.0", "x7.1.2"} {
		if got, err := KernelHasUDPGSOBug(bad); err == nil || got {
			t.Errorf("KernelHasUDPGSOBug(%q) = %v, %v: want false and an error", bad, got, err)
		}
	}
}

func TestParseKernelRelease(t *testing.T) {
	for s, want := range map[string]KernelRelease{
		"7.1.2-1-amd64":       {7, 1, 2, 0},
		"7.0.0-15-generic":    {7, 0, 0, 0},
		"6.12.73+deb13-amd64": {6, 12, 73, 0},
		"7.1-rc5":             {7, 1, 0, 5},
		"7.0.0-rc3-next":      {7, 0, 0, 3},
		"6.8":                 {6, 8, 0, 0},
		"7.1.4-rcX":           {7, 1, 4, 0},
	} {
		got, err := ParseKernelRelease(s)
		if err != nil || got != want {
			t.Errorf("ParseKernelRelease(%q) = %v, %v; want %v", s, got, err, want)
		}
	}
}

func TestChooseGSOPolicy(t *testing.T) {
	for _, c := range []struct {
		setting, release string
		want             gsoPolicy
		logs             bool
	}{
		{"auto", "7.1.2-1-amd64", gsoWorkaround, true},
		{"", "7.0.0-15-generic", gsoWorkaround, true},
		{"auto", "6.18.44", gsoPlain, false},
		{"auto", "7.1.5", gsoPlain, false},
		{"auto", "garbage", gsoPlain, true},
		{"on", "7.1.2-1-amd64", gsoPlain, false},
		{"off", "6.18.44", gsoNone, true},
		{"off", "7.1.2-1-amd64", gsoNone, true},
	} {
		got, why, err := chooseGSOPolicy(c.setting, c.release)
		if err != nil || got != c.want || (why != "") != c.logs {
			t.Errorf("chooseGSOPolicy(%q, %q) = %v, %q, %v; want %v (log: %v)", c.setting, c.release, got, why, err, c.want, c.logs)
		}
		if c.want == gsoWorkaround && !bytes.Contains([]byte(why), []byte(c.release)) {
			t.Errorf("log line %q does not name the kernel %s", why, c.release)
		}
	}
	if _, _, err := chooseGSOPolicy("yes", "7.1.2"); err == nil {
		t.Error("udp_gso \"yes\" accepted")
	}
}

// coalesce replays wireguard-go's coalescer (conn/bind_std.go,
// coalesceMessages, at the pinned version) on a batch and returns each
// message's segment lengths: the GSO messages the kernel would get.
func coalesce(bufs [][]byte) [][]int {
	var msgs [][]int
	var baseLen, baseCap, gsoSize int
	endBatch := false
	for i, b := range bufs {
		l := len(b)
		if i > 0 {
			m := msgs[len(msgs)-1]
			if l+baseLen <= gsoMaxPayload && l <= gsoSize && l <= baseCap-baseLen && len(m) < gsoMaxSegments && !endBatch {
				msgs[len(msgs)-1] = append(m, l)
				baseLen += l
				if l < gsoSize {
					endBatch = true
				}
				continue
			}
		}
		endBatch = false
		msgs = append(msgs, []int{l})
		baseLen, baseCap, gsoSize = l, cap(b), l
	}
	return msgs
}

// packets makes n packets of the given sizes (cycled), each in its own
// buffer of capacity c, numbered in their first two bytes.
func packets(n, c int, sizes ...int) [][]byte {
	var out [][]byte
	for i := 0; i < n; i++ {
		b := make([]byte, sizes[i%len(sizes)], c)
		if len(b) >= 2 {
			b[0], b[1] = byte(i>>8), byte(i)
		}
		out = append(out, b)
	}
	return out
}

func runs(n int, size int, rest ...[][]byte) [][]byte {
	out := packets(n, 65535, size)
	for _, r := range rest {
		out = append(out, r...)
	}
	return out
}

// Under the workaround no GSO message the coalescer builds has all its
// segments of one length, every packet goes out once and in order, and
// large batches still coalesce.
func TestPlanGSOWorkaround(t *testing.T) {
	batches := map[string][][]byte{
		"128 full-size":           packets(128, 65535, 1452),
		"128 small":               packets(128, 65535, 60),
		"64 of 100 (segment cap)": packets(64, 65535, 100),
		"mixed sizes":             packets(128, 65535, 1452, 1452, 1452, 600, 1452, 1452, 80),
		"growing":                 packets(40, 65535, 100, 200, 300, 400),
		"tight capacity":          packets(100, 3000, 1000),
		"exact capacity":          packets(100, 2905, 1452),
		"equal runs":              runs(20, 1452, packets(20, 65535, 500), packets(30, 65535, 1452)),
		"8 equal":                 packets(8, 65535, 1452),
		"1-byte packets":          packets(16, 65535, 1),
		"2-byte packets":          packets(16, 65535, 2),
	}
	mustCoalesce := map[string]bool{"128 full-size": true, "128 small": true, "64 of 100 (segment cap)": true, "mixed sizes": true, "equal runs": true, "8 equal": true}
	for name, bufs := range batches {
		t.Run(name, func(t *testing.T) {
			var sent [][]byte
			var msgs [][]int
			rest := bufs
			for len(rest) > 0 {
				out, n := planGSO(nil, rest, gsoWorkaround, len(bufs) < gsoMinBatch, conn.IdealBatchSize)
				if n == 0 || len(out) > conn.IdealBatchSize {
					t.Fatalf("plan took %d packets, gave %d datagrams", n, len(out))
				}
				msgs = append(msgs, coalesce(out)...)
				for _, b := range out {
					if !isGSOSentinel(b) {
						sent = append(sent, b)
					}
				}
				rest = rest[n:]
			}
			if len(sent) != len(bufs) {
				t.Fatalf("%d packets sent, want %d", len(sent), len(bufs))
			}
			for i := range sent {
				if &sent[i][0] != &bufs[i][0] || len(sent[i]) != len(bufs[i]) {
					t.Fatalf("packet %d out of order, copied or cut", i)
				}
			}
			coalesced := 0
			for _, m := range msgs {
				if len(m) < 2 {
					continue
				}
				coalesced++
				if m[len(m)-1] >= m[0] {
					t.Errorf("GSO message of %d segments ends with a segment of %d bytes, not shorter than %d: %v", len(m), m[len(m)-1], m[0], m)
				}
				if len(m) > gsoMaxSegments {
					t.Errorf("GSO message of %d segments", len(m))
				}
			}
			if mustCoalesce[name] && coalesced == 0 {
				t.Errorf("no GSO message at all for a batch of %d", len(bufs))
			}
		})
	}
}

// Small batches under the workaround, and every batch with GSO off, go out
// one datagram per packet; plain GSO leaves the batch as it is.
func TestPlanGSOSmallAndOff(t *testing.T) {
	small := packets(gsoMinBatch-1, 65535, 1452)
	out, n := planGSO(nil, small, gsoWorkaround, true, conn.IdealBatchSize)
	if n != len(small) || len(coalesce(out)) != len(small) {
		t.Errorf("small batch under the workaround: took %d, %d messages, want %d unsegmented", n, len(coalesce(out)), len(small))
	}
	big := packets(128, 65535, 1452)
	out, n = planGSO(nil, big, gsoNone, false, conn.IdealBatchSize)
	if n != len(big) || len(coalesce(out)) != len(big) {
		t.Errorf("GSO off: took %d, %d messages, want %d unsegmented", n, len(coalesce(out)), len(big))
	}
	if m := coalesce(big); len(m) >= len(big) {
		t.Errorf("the model does not coalesce a plain batch (%d messages): the test proves nothing", len(m))
	}
}

// A real StdNetBind on loopback, behind our bind with the workaround
// forced: every packet of a large equal-length batch arrives intact and in
// order at a plain UDP socket, with sentinels beside them (also when the
// rewritten batch takes two calls of StdNetBind); and a sentinel
// arriving at our bind is dropped, not handed to the packet handler.
func TestMuxBindGSOWorkaroundOnLoopback(t *testing.T) {
	for _, policy := range []gsoPolicy{gsoWorkaround, gsoNone, gsoPlain} {
		t.Run(fmt.Sprint(policy), func(t *testing.T) {
			b := newMuxBind(conn.NewDefaultBind())
			b.gso.Store(int32(policy))
			var handled int
			h := PacketHandler(func([]byte, netip.AddrPort) { handled++ })
			b.handler.Store(&h)
			fns, port, err := b.Open(0)
			if err != nil {
				t.Fatal(err)
			}
			defer b.Close()
			rx, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
			if err != nil {
				t.Fatal(err)
			}
			defer rx.Close()
			rx.SetReadBuffer(4 << 20)
			ep, err := b.ParseEndpoint(rx.LocalAddr().String())
			if err != nil {
				t.Fatal(err)
			}
			// 128 equal packets of 60 bytes: groups of 63 plus a
			// sentinel each, more datagrams than one StdNetBind call takes.
			const n = 128
			bufs := packets(n, 65535, 60)
			for i, p := range bufs {
				for j := 2; j < len(p); j++ {
					p[j] = byte(i + j)
				}
			}
			want := make([][]byte, n)
			for i, p := range bufs {
				want[i] = append([]byte(nil), p...)
			}
			if err := b.Send(bufs, ep); err != nil {
				t.Fatal(err)
			}
			rx.SetReadDeadline(time.Now().Add(5 * time.Second))
			buf := make([]byte, 70000)
			got, sentinels := 0, 0
			for got < n {
				m, _, err := rx.ReadFromUDP(buf)
				if err != nil {
					t.Fatalf("after %d packets: %v", got, err)
				}
				if isGSOSentinel(buf[:m]) {
					sentinels++
					continue
				}
				if !bytes.Equal(buf[:m], want[got]) {
					t.Fatalf("datagram %d: %d bytes, not packet %d as sent", got, m, got)
				}
				got++
			}
			if policy == gsoWorkaround && sentinels == 0 {
				t.Error("no sentinel datagram sent for an equal-length batch of 100")
			}
			if policy != gsoWorkaround && sentinels != 0 {
				t.Errorf("%d sentinels sent without the workaround", sentinels)
			}

			// Receive side: a sentinel, then a WireGuard-looking datagram.
			if _, err := rx.WriteToUDP(gsoSentinel, &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: int(port)}); err != nil {
				t.Fatal(err)
			}
			wg := append([]byte{4, 0, 0, 0}, make([]byte, 60)...)
			if _, err := rx.WriteToUDP(wg, &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: int(port)}); err != nil {
				t.Fatal(err)
			}
			rbufs := make([][]byte, b.BatchSize())
			for i := range rbufs {
				rbufs[i] = make([]byte, 1500)
			}
			sizes := make([]int, len(rbufs))
			eps := make([]conn.Endpoint, len(rbufs))
			k, err := fns[0](rbufs, sizes, eps)
			if err != nil {
				t.Fatal(err)
			}
			if k != 1 || sizes[0] != len(wg) || handled != 0 {
				t.Errorf("received %d datagrams (first %d bytes), handler got %d: want only the WireGuard one", k, sizes[0], handled)
			}
		})
	}
}

func (p gsoPolicy) String() string {
	return [...]string{"plain", "workaround", "none"}[p]
}

// Two real devices that take this kernel for an affected one (7.1.2) carry
// a TCP stream with the workaround on, name the kernel in their log, and
// so do two with udp_gso = "off"; the figures are logged for
// BENCHMARKS.md.
func TestTunnelCarriesTCPWithGSOWorkaround(t *testing.T) {
	requireRoot(t)
	if _, err := exec.LookPath("iperf3"); err != nil {
		t.Skip("iperf3 not installed")
	}
	for _, c := range []struct{ setting, release, logs string }{
		{"auto", "7.1.2-1-amd64", "kernel 7.1.2-1-amd64 corrupts equal-length UDP GSO batches"},
		{"off", "", "UDP GSO off"},
		{"on", "7.1.2-1-amd64", ""},
	} {
		t.Run(c.setting+"-"+c.release, func(t *testing.T) {
			tp := newTopo(t)
			ca, cb := tp.pairConfigs(t, ModeTUN, ModeTUN)
			for _, hc := range []*helperConfig{&ca, &cb} {
				hc.UDPGSO, hc.KernelRelease, hc.MemoryLimitMiB = c.setting, c.release, 64
			}
			a := startNode(t, tp.a, ca)
			b := startNode(t, tp.b, cb)
			mbps, retr := iperfRun(t, tp, 3)
			t.Logf("udp_gso=%s kernel=%q: %.0f Mbit/s, %d retransmits", c.setting, c.release, mbps, retr)
			for _, n := range []*node{a, b} {
				logged := strings.Contains(n.log.String(), c.logs)
				if c.logs != "" && !logged {
					t.Errorf("%sno log line %q:\n%s", n.log.prefix, c.logs, n.log.String())
				}
				if c.logs == "" && strings.Contains(n.log.String(), "UDP GSO") {
					t.Errorf("%slogged a GSO change with udp_gso = %q:\n%s", n.log.prefix, c.setting, n.log.String())
				}
			}
		})
	}
}

package tunnel

import (
	"net"
	"net/netip"
	"sync"
	"testing"

	"golang.zx2c4.com/wireguard/conn"
)

// The bind hands WireGuard datagrams to wireguard-go and everything else
// (STUN, path probes) to the packet handler, on a real socket, and sends
// from the same socket.
func TestMuxBindSplitsWireGuardFromOtherDatagrams(t *testing.T) {
	b := newMuxBind(newUDPBind(gsoPlain))
	var mu sync.Mutex
	var other [][]byte
	var froms []netip.AddrPort
	h := PacketHandler(func(p []byte, from netip.AddrPort) {
		mu.Lock()
		other = append(other, append([]byte(nil), p...))
		froms = append(froms, from)
		mu.Unlock()
	})
	b.handler.Store(&h)
	fns, port, err := b.Open(0)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	peer, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	to := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: int(port)}
	stunLike := []byte{0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}
	wgData := append([]byte{4, 0, 0, 0}, make([]byte, 60)...)
	wgData[10] = 0xaa
	for _, p := range [][]byte{stunLike, stunLike, wgData} {
		if _, err := peer.WriteToUDP(p, to); err != nil {
			t.Fatal(err)
		}
	}
	bs := b.BatchSize()
	bufs := make([][]byte, bs)
	for i := range bufs {
		bufs[i] = make([]byte, 1500)
	}
	sizes := make([]int, bs)
	eps := make([]conn.Endpoint, bs)
	var got [][]byte
	for len(got) < 1 {
		// fns[0] is the IPv4 receive function.
		n, err := fns[0](bufs, sizes, eps)
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i < n; i++ {
			if sizes[i] > 0 { // 0: taken out for the handler
				got = append(got, append([]byte(nil), bufs[i][:sizes[i]]...))
			}
		}
	}
	if len(got) != 1 || string(got[0]) != string(wgData) {
		t.Fatalf("wireguard-go got %d datagrams (%x), want only the WireGuard one", len(got), got)
	}
	mu.Lock()
	if len(other) != 2 || string(other[0]) != string(stunLike) || froms[0] != peer.LocalAddr().(*net.UDPAddr).AddrPort() {
		t.Fatalf("handler got %x from %v", other, froms)
	}
	mu.Unlock()

	// Sending goes out of the WireGuard socket.
	if err := b.sendTo([]byte("probe"), peer.LocalAddr().(*net.UDPAddr).AddrPort()); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 100)
	n, from, err := peer.ReadFromUDPAddrPort(buf)
	if err != nil || string(buf[:n]) != "probe" || from.Port() != port {
		t.Fatalf("got %q from %v (%v), want \"probe\" from port %d", buf[:n], from, err, port)
	}
}

func TestIsWireGuard(t *testing.T) {
	for _, c := range []struct {
		b    []byte
		want bool
	}{
		{[]byte{1, 0, 0, 0}, true}, {[]byte{4, 0, 0, 0, 9}, true}, {[]byte{5, 0, 0, 0}, false},
		{[]byte{0, 1, 0, 8}, false}, {[]byte{1, 1, 0, 8}, false}, {[]byte("WRNpath\x01"), false}, {[]byte{1}, false},
	} {
		if got := isWireGuard(c.b); got != c.want {
			t.Errorf("isWireGuard(%x) = %v, want %v", c.b, got, c.want)
		}
	}
}

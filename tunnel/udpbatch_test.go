package tunnel

import (
	"bytes"
	"fmt"
	"math/rand"
	"net/netip"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/conn"
)

func TestGROSegmentsAndScatterSizes(t *testing.T) {
	for _, c := range []struct {
		n, seg int
		want   []int
	}{
		{1452, 0, []int{1452}},
		{1452, 1452, []int{1452}},
		{1000, 1452, []int{1000}},
		{3 * 1452, 1452, []int{1452, 1452, 1452}},
		{2*1452 + 1, 1452, []int{1452, 1452, 1}},
		{45 * 1452, 1452, nil}, // 45 full segments
	} {
		want := c.want
		if want == nil {
			for i := 0; i < 45; i++ {
				want = append(want, 1452)
			}
		}
		if k := groSegments(c.n, c.seg); k != len(want) {
			t.Errorf("groSegments(%d, %d) = %d, want %d", c.n, c.seg, k, len(want))
		}
		if c.seg == 0 {
			continue
		}
		sizes := make([]int, 64)
		k := scatterSizes(sizes, c.n, c.seg)
		if fmt.Sprint(sizes[:k]) != fmt.Sprint(want) {
			t.Errorf("scatterSizes(%d, %d) = %v, want %v", c.n, c.seg, sizes[:k], want)
		}
	}
}

func TestLanded(t *testing.T) {
	for _, c := range []struct {
		n, gro, seg, bufLen int
		want                bool
	}{
		{1452, 0, 1452, 65535, true},  // one datagram, fits its iovec
		{1000, 0, 1452, 65535, true},  // shorter
		{1500, 0, 1452, 65535, false}, // longer: spilled into the next
		{10 * 1452, 1452, 1452, 65535, true},
		{10 * 1000, 1000, 1452, 65535, false}, // other segment size
		{1000, 1000, 1452, 65535, true},       // one segment of another size
		{10 * 1452, 1452, 1452, 1000, false},
	} {
		if got := landed(c.n, c.gro, c.seg, c.bufLen); got != c.want {
			t.Errorf("landed(n %d, gro %d, seg %d, buf %d) = %v, want %v", c.n, c.gro, c.seg, c.bufLen, got, c.want)
		}
	}
}

// A receive scattered over iovecs laid out for one segment size is
// gathered back byte for byte and split at another.
func TestGatherAndSplit(t *testing.T) {
	const seg = 1452
	data := make([]byte, 20*1000+333)
	rand.New(rand.NewSource(1)).Read(data)
	bufs := make([][]byte, recvSpan)
	for i := range bufs {
		bufs[i] = make([]byte, 65535)
	}
	// Scatter as the kernel would over iovecs of scatterLen bytes.
	rest := data
	for j := 0; len(rest) > 0; j++ {
		rest = rest[copy(bufs[j][:scatterLen(len(bufs[j]), seg, j == len(bufs)-1)], rest):]
	}
	got := gather(nil, bufs, len(data), seg)
	if !bytes.Equal(got, data) {
		t.Fatal("gather did not restore the datagram bytes")
	}
	sizes := make([]int, len(bufs))
	k := splitInto(bufs, sizes, got, 1000)
	if k != 21 || sizes[20] != 333 {
		t.Fatalf("split into %d datagrams, last %d bytes; want 21, last 333", k, sizes[20])
	}
	for i := 0; i < k; i++ {
		if !bytes.Equal(bufs[i][:sizes[i]], data[i*1000:i*1000+sizes[i]]) {
			t.Fatalf("datagram %d differs", i)
		}
	}
	// Split out of the first buffer itself (a read without scatter).
	copy(bufs[0], data)
	k = splitInto(bufs, sizes, bufs[0][:len(data)], 1000)
	for i := 0; i < k; i++ {
		if !bytes.Equal(bufs[i][:sizes[i]], data[i*1000:i*1000+sizes[i]]) {
			t.Fatalf("in place: datagram %d differs", i)
		}
	}
	// More datagrams than buffers: the rest is dropped, not overflowed.
	if k := splitInto(bufs[:3], sizes, data, 1000); k != 3 {
		t.Fatalf("split into 3 buffers gave %d", k)
	}
}

// Two of our binds on loopback carry GSO batches of changing segment size
// and single datagrams, every datagram intact and in order; the receiver
// lays its iovecs out for the segment size it saw, so that later
// messages land without a copy, and copies when the size changes.
// Replies through the endpoint a datagram arrived from (with its sticky
// source) reach the sender, over IPv4 and IPv6.
func TestUDPBindGSOAndGROOnLoopback(t *testing.T) {
	for _, fam := range []struct {
		name string
		is6  bool
		addr string
	}{{"ipv4", false, "127.0.0.1"}, {"ipv6", true, "::1"}} {
		t.Run(fam.name, func(t *testing.T) { testUDPBindLoopback(t, fam.is6, fam.addr) })
	}
}

func testUDPBindLoopback(t *testing.T, is6 bool, addr string) {
	tx, rx := newUDPBind(gsoPlain), newUDPBind(gsoPlain)
	if _, _, err := tx.Open(0); err != nil {
		t.Fatal(err)
	}
	defer tx.Close()
	if _, _, err := rx.Open(0); err != nil {
		t.Fatal(err)
	}
	defer rx.Close()
	sock, txSock := rx.socket(is6), tx.socket(is6)
	if sock == nil || txSock == nil {
		t.Skip("no socket of this family")
	}
	if !sock.rxGRO || !txSock.txGSO.Load() {
		t.Skip("no UDP GSO/GRO on this kernel")
	}
	ep, err := tx.ParseEndpoint(netip.AddrPortFrom(netip.MustParseAddr(addr), uint16(sock.port())).String())
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewSource(2))
	mk := func(n int, sizes ...int) [][]byte {
		var out [][]byte
		for i := 0; i < n; i++ {
			b := make([]byte, sizes[i%len(sizes)])
			rng.Read(b)
			out = append(out, b)
		}
		return out
	}
	batches := [][][]byte{
		mk(45, 1452),                        // learns 1452
		mk(45, 1452),                        // lands
		append(mk(30, 1452), mk(1, 700)...), // lands, short tail
		append(mk(40, 1200), mk(1, 100)...), // another size: split
		mk(45, 1452),                        // back: split, then lands again
		mk(45, 1452),                        //
		mk(5, 1452, 80, 1452, 300),          // mixed: singles
	}
	st := &recvState{}
	bufs := make([][]byte, conn.IdealBatchSize)
	for i := range bufs {
		bufs[i] = make([]byte, 65535)
	}
	sizes := make([]int, len(bufs))
	eps := make([]conn.Endpoint, len(bufs))
	for bi, batch := range batches {
		if err := tx.Send(batch, ep); err != nil {
			t.Fatal(err)
		}
		var got [][]byte
		deadline := time.Now().Add(5 * time.Second)
		for len(got) < len(batch) && time.Now().Before(deadline) {
			n, err := sock.receive(st, bufs, sizes, eps)
			if err != nil {
				t.Fatal(err)
			}
			for i := 0; i < n; i++ {
				if sizes[i] == 0 {
					continue
				}
				got = append(got, append([]byte(nil), bufs[i][:sizes[i]]...))
				if e := eps[i].(*bindEndpoint); e.dst.Port() != uint16(txSock.port()) || e.SrcIP() != netip.MustParseAddr(addr) {
					t.Fatalf("endpoint %v (source %v), want the sender's port %d and %s", e.dst, e.SrcIP(), txSock.port(), addr)
				}
			}
		}
		if len(got) != len(batch) {
			t.Fatalf("batch %d: %d of %d datagrams", bi, len(got), len(batch))
		}
		for i := range batch {
			if !bytes.Equal(got[i], batch[i]) {
				t.Fatalf("batch %d datagram %d: %d bytes, not as sent (%d)", bi, i, len(got[i]), len(batch[i]))
			}
		}
	}
	// A reply through the received endpoint (packet info set) arrives.
	reply := [][]byte{[]byte("reply")}
	if err := rx.Send(reply, eps[0]); err != nil {
		t.Fatal(err)
	}
	back := &recvState{}
	for {
		n, err := txSock.receive(back, bufs, sizes, eps)
		if err != nil {
			t.Fatal(err)
		}
		if n > 0 && sizes[0] > 0 {
			if string(bufs[0][:sizes[0]]) != "reply" {
				t.Fatalf("reply %q", bufs[0][:sizes[0]])
			}
			break
		}
	}
	if st.landed == 0 || st.split == 0 {
		t.Errorf("%d messages landed in place, %d split by copying: want both", st.landed, st.split)
	}
	t.Logf("%d messages landed in place, %d split by copying", st.landed, st.split)
}

// SetMark marks both sockets, and the sockets of a later Open.
func TestUDPBindSetMark(t *testing.T) {
	requireRoot(t) // SO_MARK needs CAP_NET_ADMIN
	if os.Getenv("WARREN_TEST_EMULATOR") != "" {
		t.Skip("qemu-user does not pass SO_MARK to the kernel (ENOPROTOOPT)")
	}
	b := newUDPBind(gsoPlain)
	if err := b.SetMark(51820); err != nil {
		t.Fatal(err)
	}
	if _, _, err := b.Open(0); err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	check := func(want int) {
		t.Helper()
		for _, s := range []*udpSocket{b.socket(false), b.socket(true)} {
			if s == nil {
				continue
			}
			var mark int
			var err error
			s.rc.Control(func(fd uintptr) { mark, err = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK) })
			if err != nil || mark != want {
				t.Errorf("socket (v6 %v) mark %d (%v), want %d", s.is6, mark, err, want)
			}
		}
	}
	check(51820)
	if err := b.SetMark(7); err != nil {
		t.Fatal(err)
	}
	check(7)
}

// A batch smaller than a receive message's span still gets a coalesced
// datagram split into its datagrams, as many as the batch holds.
func TestUDPBindSmallBatchSplitsGRO(t *testing.T) {
	tx, rx := newUDPBind(gsoPlain), newUDPBind(gsoPlain)
	for _, b := range []*udpBind{tx, rx} {
		if _, _, err := b.Open(0); err != nil {
			t.Fatal(err)
		}
		defer b.Close()
	}
	sock := rx.socket(false)
	if !sock.rxGRO || !tx.socket(false).txGSO.Load() {
		t.Skip("no UDP GSO/GRO on this kernel")
	}
	ep, err := tx.ParseEndpoint(fmt.Sprintf("127.0.0.1:%d", sock.port()))
	if err != nil {
		t.Fatal(err)
	}
	var sent [][]byte
	for i := 0; i < 5; i++ {
		sent = append(sent, bytes.Repeat([]byte{byte(i + 1)}, 1452))
	}
	if err := tx.Send(sent, ep); err != nil {
		t.Fatal(err)
	}
	bufs := make([][]byte, 8)
	for i := range bufs {
		bufs[i] = make([]byte, 65535)
	}
	sizes := make([]int, len(bufs))
	eps := make([]conn.Endpoint, len(bufs))
	n, err := sock.receive(&recvState{}, bufs, sizes, eps)
	if err != nil {
		t.Fatal(err)
	}
	if n != len(sent) {
		t.Fatalf("%d datagrams (sizes %v), want %d", n, sizes[:n], len(sent))
	}
	for i := range sent {
		if !bytes.Equal(bufs[i][:sizes[i]], sent[i]) {
			t.Fatalf("datagram %d: %d bytes, not as sent", i, sizes[i])
		}
	}
}

package tunnel

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"math/rand/v2"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
)

// newNetstack sets gVisor's TCP buffer ranges from its argument (the memory
// plan's NetstackTCPBuffer), 4 MiB when it is 0, the default never above
// the max.
func TestNetstackTCPBufferFromPlan(t *testing.T) {
	for _, c := range []struct{ in, max, dflt int }{{0, 4 << 20, 1 << 20}, {1 << 20, 1 << 20, 1 << 20}, {512 << 10, 512 << 10, 512 << 10}} {
		dev, _, err := newNetstack([]netip.Addr{netip.MustParseAddr("10.0.0.1")}, 1420, c.in)
		if err != nil {
			t.Fatal(err)
		}
		var rcv tcpip.TCPReceiveBufferSizeRangeOption
		var snd tcpip.TCPSendBufferSizeRangeOption
		if terr := dev.stack.TransportProtocolOption(tcp.ProtocolNumber, &rcv); terr != nil {
			t.Fatal(terr)
		}
		if terr := dev.stack.TransportProtocolOption(tcp.ProtocolNumber, &snd); terr != nil {
			t.Fatal(terr)
		}
		dev.Close()
		if rcv.Max != c.max || snd.Max != c.max || rcv.Default != c.dflt || snd.Default != c.dflt {
			t.Errorf("buffer %d: receive %+v, send %+v; want max %d, default %d", c.in, rcv, snd, c.max, c.dflt)
		}
	}
}

// wire joins two netstack devices as wireguard-go would between two peers
// (Read a batch from one, Write it to the other), checking every packet on
// the way: no larger than the MTU, and TCP ones with valid checksums.
type wire struct {
	maxBatch  atomic.Int64
	packets   atomic.Int64 // written into the receiving device
	tcpBytes  atomic.Int64
	mu        sync.Mutex
	problem   error
	wg        sync.WaitGroup
	mtu       int
	offsetLen int
}

func (w *wire) fail(err error) {
	w.mu.Lock()
	if w.problem == nil {
		w.problem = err
	}
	w.mu.Unlock()
}

func (w *wire) err() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.problem
}

func (w *wire) pump(from, to *netstackTUN) {
	defer w.wg.Done()
	bufs, sizes := batchBuffers(from.BatchSize(), 65535)
	out := make([][]byte, len(bufs))
	for {
		n, err := from.Read(bufs, sizes, w.offsetLen)
		if err != nil {
			return
		}
		if int64(n) > w.maxBatch.Load() {
			w.maxBatch.Store(int64(n))
		}
		for i := 0; i < n; i++ {
			p := bufs[i][w.offsetLen : w.offsetLen+sizes[i]]
			if len(p) > w.mtu {
				w.fail(fmt.Errorf("packet of %d bytes above the mtu %d", len(p), w.mtu))
			}
			if p[0]>>4 == 4 && header.IPv4(p).Protocol() == uint8(header.TCPProtocolNumber) {
				_, payload, err := validTCPPacket(p)
				if err != nil {
					w.fail(err)
				}
				w.tcpBytes.Add(int64(len(payload)))
			}
			out[i] = bufs[i][:w.offsetLen+sizes[i]]
		}
		if _, err := to.Write(out[:n], w.offsetLen); err != nil {
			return
		}
		w.packets.Add(int64(n))
	}
}

// TestNetstackEndpointsCarryTCPInBatches: two of our netstack devices,
// joined in-process, carry an 8 MiB TCP echo byte for byte; the outbound
// side hands over batches of packets split from GSO segments, each within
// the MTU with valid checksums, and the inbound side's GRO delivers fewer
// segments to gVisor's TCP than packets arrived.
func TestNetstackEndpointsCarryTCPInBatches(t *testing.T) {
	const mtu = 1420
	a, na, err := newNetstack([]netip.Addr{netip.MustParseAddr("10.0.0.1")}, mtu, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, nb, err := newNetstack([]netip.Addr{netip.MustParseAddr("10.0.0.2")}, mtu, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	ab, ba := &wire{mtu: mtu, offsetLen: 16}, &wire{mtu: mtu, offsetLen: 16}
	ab.wg.Add(1)
	ba.wg.Add(1)
	go ab.pump(a, b)
	go ba.pump(b, a)

	l, err := nb.ListenTCP(netip.MustParseAddrPort("10.0.0.2:9000"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		io.Copy(c, c)
	}()

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := na.DialTCP(ctx, netip.MustParseAddrPort("10.0.0.2:9000"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(60 * time.Second))
	data := make([]byte, 8<<20)
	for i := range data {
		data[i] = byte(rand.Uint32())
	}
	werr := make(chan error, 1)
	go func() {
		_, err := c.Write(data)
		c.CloseWrite()
		werr <- err
	}()
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("read the echo: %v", err)
	}
	if err := <-werr; err != nil {
		t.Fatalf("write: %v", err)
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("echo differs: got %d bytes (sha256 %x), sent %d (sha256 %x)", len(got), sha256.Sum256(got), len(data), sha256.Sum256(data))
	}
	for name, w := range map[string]*wire{"a->b": ab, "b->a": ba} {
		if err := w.err(); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if w.maxBatch.Load() < 2 {
			t.Errorf("%s: every Read returned one packet; want batches", name)
		}
		if w.tcpBytes.Load() < int64(len(data)) {
			t.Errorf("%s: %d TCP payload bytes crossed, want at least %d", name, w.tcpBytes.Load(), len(data))
		}
	}
	if a.segmented.Load() == 0 || b.segmented.Load() == 0 {
		t.Errorf("no GSO segment was split (a %d, b %d): gVisor did not use GSO", a.segmented.Load(), b.segmented.Load())
	}
	// GRO: b's TCP saw fewer segments than packets arrived at b.
	segs := nb.stack.Stats().TCP.ValidSegmentsReceived.Value()
	if pk := uint64(ab.packets.Load()); segs >= pk {
		t.Errorf("b's TCP received %d segments from %d packets: GRO coalesced nothing", segs, pk)
	}
	t.Logf("max batch a->b %d, b->a %d; GSO segments split a %d b %d; b: %d packets -> %d TCP segments",
		ab.maxBatch.Load(), ba.maxBatch.Load(), a.segmented.Load(), b.segmented.Load(), ab.packets.Load(), segs)
	c.Close()
	a.Close()
	b.Close()
	ab.wg.Wait()
	ba.wg.Wait()
}

package tunnel

import (
	"encoding/binary"
	"os"
	"runtime/debug"
	"sync"
	"time"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/tun"
)

// Why this file exists: wireguard-go on Linux has no cap on its buffer pools
// (device.PreallocatedBuffersPerPool is a compile-time 0) and its queues
// hold up to 1024 batches of 128 packets, each packet in its own 64 KiB
// buffer. A single TCP stream fills them until the receive window stops it:
// we measured 250-330 MiB RSS per process for one iperf3 run, far beyond a
// 512 MB board. Rather than fork wireguard-go to change the constant, the
// device's two intakes (TUN reads, UDP receives) wait while too many packets
// are inside the pipeline. Waiting at the TUN pushes back on the host's TCP
// through the interface queue; waiting at the UDP socket lets the kernel
// socket buffer absorb bursts and drop the excess like any congested link.
// (The bind is not a *conn.StdNetBind, so wireguard-go skips its
// sticky-socket route listener; a stale source address after a host address
// change is then cleared only by the next handshake timeout. See muxBind.)

// DefaultQueuedPackets is the per-direction packet budget when
// Config.QueuedPackets is 0: 256 packets, 16 MiB of wireguard-go buffers.
const DefaultQueuedPackets = 256

// budgetStall is how long an intake waits without any packet leaving before
// it assumes the packets it counted were dropped inside wireguard-go (no
// route, no endpoint, failed decryption) and forgets them.
const budgetStall = 100 * time.Millisecond

// packetBudget counts the data packets one direction of wireguard-go holds
// and makes its intake wait while the count is at the limit.
type packetBudget struct {
	limit    int
	mu       sync.Mutex
	inflight int
	lastOut  time.Time
	room     chan struct{} // poked when packets leave
}

func newPacketBudget(limit int) *packetBudget {
	return &packetBudget{limit: limit, room: make(chan struct{}, 1)}
}

// wait blocks until there is room for another batch. It may overshoot the
// limit by one batch: the intake does not know the batch size in advance.
func (b *packetBudget) wait() {
	var timer *time.Timer
	for {
		b.mu.Lock()
		if b.inflight < b.limit {
			b.mu.Unlock()
			if timer != nil {
				timer.Stop()
			}
			return
		}
		if time.Since(b.lastOut) >= budgetStall {
			b.inflight = 0 // nothing left for a while: the counted ones were dropped
			b.mu.Unlock()
			continue
		}
		b.mu.Unlock()
		if timer == nil {
			timer = time.NewTimer(budgetStall)
		} else {
			timer.Reset(budgetStall)
		}
		select {
		case <-b.room:
		case <-timer.C:
		}
	}
}

func (b *packetBudget) in(n int) {
	if n == 0 {
		return
	}
	b.mu.Lock()
	b.inflight += n
	b.mu.Unlock()
}

func (b *packetBudget) out(n int) {
	if n == 0 {
		return
	}
	b.mu.Lock()
	b.inflight = max(0, b.inflight-n)
	b.lastOut = time.Now()
	b.mu.Unlock()
	select {
	case b.room <- struct{}{}:
	default:
	}
}

// isDataMessage reports whether a WireGuard datagram carries a packet: a
// transport message longer than a bare keepalive (header plus tag, 32 bytes).
// Handshakes and keepalives are not counted: they never reach the TUN.
func isDataMessage(b []byte) bool {
	const messageTransportType = 4
	return len(b) > 32 && binary.LittleEndian.Uint32(b[:4]) == messageTransportType
}

// budgetedTUN counts packets read from the TUN as outbound intake and
// packets written to it as inbound delivery.
type budgetedTUN struct {
	tun.Device
	outbound, inbound *packetBudget
}

func (t *budgetedTUN) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	t.outbound.wait()
	n, err := t.Device.Read(bufs, sizes, offset)
	t.outbound.in(n)
	return n, err
}

func (t *budgetedTUN) Write(bufs [][]byte, offset int) (int, error) {
	n, err := t.Device.Write(bufs, offset)
	t.inbound.out(len(bufs))
	return n, err
}

// budgetedBind counts datagrams received as inbound intake and data
// datagrams sent as outbound delivery.
type budgetedBind struct {
	conn.Bind
	outbound, inbound *packetBudget
}

func (b *budgetedBind) Open(port uint16) ([]conn.ReceiveFunc, uint16, error) {
	fns, actual, err := b.Bind.Open(port)
	if err != nil {
		return nil, 0, err
	}
	wrapped := make([]conn.ReceiveFunc, len(fns))
	for i, fn := range fns {
		wrapped[i] = b.receive(fn)
	}
	return wrapped, actual, nil
}

func (b *budgetedBind) receive(fn conn.ReceiveFunc) conn.ReceiveFunc {
	return func(packets [][]byte, sizes []int, eps []conn.Endpoint) (int, error) {
		b.inbound.wait()
		n, err := fn(packets, sizes, eps)
		data := 0
		for i := 0; i < n; i++ {
			if isDataMessage(packets[i][:sizes[i]]) {
				data++
			}
		}
		b.inbound.in(data)
		return n, err
	}
}

func (b *budgetedBind) Send(bufs [][]byte, ep conn.Endpoint) error {
	err := b.Bind.Send(bufs, ep)
	data := 0
	for _, m := range bufs {
		if isDataMessage(m) {
			data++
		}
	}
	b.outbound.out(data)
	return err
}

// budgetedBindAndTUN wraps the bind and TUN with shared budgets of limit
// packets per direction.
func budgetedBindAndTUN(bind conn.Bind, dev tun.Device, limit int) (conn.Bind, tun.Device) {
	out, in := newPacketBudget(limit), newPacketBudget(limit)
	return &budgetedBind{Bind: bind, outbound: out, inbound: in}, &budgetedTUN{Device: dev, outbound: out, inbound: in}
}

// SetMemoryLimitUnlessSet gives the Go runtime a soft memory limit of
// limit bytes unless the operator chose one with GOMEMLIMIT, and reports
// whether it did. The packet budget bounds what wireguard-go holds, but
// with the default GOGC the heap still grows to twice that before a
// collection; a 64 MiB limit kept a device under a sustained TCP run at
// 46 MiB RSS without losing throughput (tunnel/BENCHMARKS.md). The limit is
// process-wide, so this is for the daemon's main to call, not for Open.
func SetMemoryLimitUnlessSet(limit int64) bool {
	if os.Getenv("GOMEMLIMIT") != "" {
		return false
	}
	debug.SetMemoryLimit(limit)
	return true
}

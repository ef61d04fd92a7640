package tunnel

// Netstack mode: wireguard-go on a gVisor TCP/IP stack inside the process.
//
// Upstream's golang.zx2c4.com/wireguard/tun/netstack moves one packet per
// call (BatchSize 1) over a gVisor channel endpoint without segmentation
// offload, so every 1380-byte TCP segment crosses gVisor's whole send path
// and a channel hand-off on its own: 0.09x of TUN mode's throughput. This
// file replaces it with our own link endpoint:
//
//   - outbound (gVisor -> wireguard-go): the endpoint announces host GSO, so
//     gVisor's TCP hands it segments of up to 64 KiB; Read splits them into
//     MTU-sized packets (segmentTCP) straight into wireguard-go's batch of
//     buffers, and drains as many queued packets as the batch holds;
//   - inbound (wireguard-go -> gVisor): Write feeds each batch through
//     gVisor's GRO, which coalesces consecutive segments of a flow before
//     the stack sees them;
//   - gVisor's TCP buffers are raised so one flow can fill a long link.

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"

	"golang.zx2c4.com/wireguard/tun"
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/stack/gro"
	"gvisor.dev/gvisor/pkg/tcpip/transport/icmp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
)

const (
	netstackNIC tcpip.NICID = 1

	// netstackBatch is how many packets one Read or Write moves at most:
	// wireguard-go's conn.IdealBatchSize. A 64 KiB GSO segment at MTU 1420
	// is 48 packets, so a batch always holds at least two.
	netstackBatch = 128

	// netstackQueue bounds the GSO segments gVisor may queue towards
	// wireguard-go (each up to 64 KiB: 1 MiB at most). A full queue blocks
	// gVisor's sender, which is TCP's backpressure.
	netstackQueue = 16

	// netstackGSOMax is the largest segment gVisor may hand the endpoint:
	// the IPv4 total length field's limit.
	netstackGSOMax = 1<<16 - 1

	// TCP buffer ranges (gVisor's tcp_rmem/tcp_wmem): gVisor grows a
	// connection's buffers from the default up to the max as the flow
	// needs (receive buffer moderation, send buffer from the congestion
	// window). 4 MiB holds a window of 1 Gbit/s at 32 ms RTT or 100 Mbit/s
	// at 320 ms; gVisor's own receive maximum (1 MiB) caps a flow at
	// ~80 Mbit/s over 100 ms. Not more: the backpressure above means
	// gVisor's TCP sees no loss on a local bottleneck, so a bulk sender's
	// buffer does reach the max, and it is heap. Measured with the daemon's
	// 64 MiB Go memory limit: 4 MiB left the device at ~55 MiB of heap;
	// 16 MiB drove it to the limit and the GC cut throughput to ~50 Mbit/s.
	// The daemon's memory plan lowers the max to 1 MiB
	// (Config.NetstackTCPBuffer, PlanMemory).
	netstackTCPBufDefault = 1 << 20
	netstackTCPBufMax     = 4 << 20
)

// netstackOptions switches the parts of the netstack data path on or off.
// All are on in the daemon; BenchmarkNetstackForwardVsTUN turns them off
// one at a time (TUNNEL_TEST_NETSTACK_OFF) to measure what each buys.
type netstackOptions struct {
	gso       bool // announce host GSO, split segments in Read
	gro       bool // coalesce inbound TCP in Write
	batch     bool // Read drains up to a batch; off: one packet per Read, as upstream
	tcpTuning bool // SACK, no RACK, buffer ranges up to Config.NetstackTCPBuffer
	tcpBufMax int  // upper end of the TCP buffer ranges, overriding Config's (0: Config's)
}

var netstackOpts = netstackOptions{gso: true, gro: true, batch: true, tcpTuning: true}

// Netstack is the userspace stack of a netstack-mode device: it dials and
// listens inside the mesh on the device's overlay address.
type Netstack struct {
	stack *stack.Stack
}

// DialTCP opens a TCP connection to target through the tunnel.
func (n *Netstack) DialTCP(ctx context.Context, target netip.AddrPort) (*gonet.TCPConn, error) {
	fa, proto := fullAddr(target)
	return gonet.DialContextTCP(ctx, n.stack, fa, proto)
}

// DialUDP opens a UDP "connection" to target through the tunnel.
func (n *Netstack) DialUDP(target netip.AddrPort) (*gonet.UDPConn, error) {
	fa, proto := fullAddr(target)
	return gonet.DialUDP(n.stack, nil, &fa, proto)
}

// ListenTCP listens on addr (the overlay address or unspecified) in the stack.
func (n *Netstack) ListenTCP(addr netip.AddrPort) (*gonet.TCPListener, error) {
	fa, proto := fullAddr(addr)
	return gonet.ListenTCP(n.stack, fa, proto)
}

func fullAddr(ap netip.AddrPort) (tcpip.FullAddress, tcpip.NetworkProtocolNumber) {
	proto := ipv4.ProtocolNumber
	if ap.Addr().Is6() && !ap.Addr().Is4In6() {
		proto = ipv6.ProtocolNumber
	}
	fa := tcpip.FullAddress{NIC: netstackNIC, Port: ap.Port()}
	if ap.Addr().IsValid() && !ap.Addr().IsUnspecified() {
		fa.Addr = tcpip.AddrFromSlice(ap.Addr().Unmap().AsSlice())
	}
	return fa, proto
}

// newNetstack builds the gVisor stack with our link endpoint and returns
// the tun.Device wireguard-go runs on. tcpBufMax is the upper end of
// gVisor's TCP buffer ranges (0: netstackTCPBufMax).
func newNetstack(addrs []netip.Addr, mtu, tcpBufMax int) (*netstackTUN, *Netstack, error) {
	s := stack.New(stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol, ipv6.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol, udp.NewProtocol, icmp.NewProtocol4, icmp.NewProtocol6},
		HandleLocal:        true,
	})
	ok := false
	defer func() {
		if !ok {
			s.Close()
		}
	}()
	if tcpBufMax <= 0 {
		tcpBufMax = netstackTCPBufMax
	}
	if netstackOpts.tcpBufMax > 0 {
		tcpBufMax = netstackOpts.tcpBufMax
	}
	if err := tuneTCP(s, netstackOpts.tcpTuning, tcpBufMax); err != nil {
		return nil, nil, err
	}
	ep := newLinkEndpoint(uint32(mtu))
	if terr := s.CreateNIC(netstackNIC, ep); terr != nil {
		return nil, nil, fmt.Errorf("create netstack NIC: %v", terr)
	}
	var has4, has6 bool
	for _, a := range addrs {
		proto := ipv4.ProtocolNumber
		if a.Is6() {
			proto, has6 = ipv6.ProtocolNumber, true
		} else {
			has4 = true
		}
		pa := tcpip.ProtocolAddress{Protocol: proto, AddressWithPrefix: tcpip.AddrFromSlice(a.AsSlice()).WithPrefix()}
		if terr := s.AddProtocolAddress(netstackNIC, pa, stack.AddressProperties{}); terr != nil {
			return nil, nil, fmt.Errorf("add netstack address %s: %v", a, terr)
		}
	}
	if has4 {
		s.AddRoute(tcpip.Route{Destination: header.IPv4EmptySubnet, NIC: netstackNIC})
	}
	if has6 {
		s.AddRoute(tcpip.Route{Destination: header.IPv6EmptySubnet, NIC: netstackNIC})
	}
	dev := &netstackTUN{stack: s, ep: ep, mtu: mtu, events: make(chan tun.Event, 1)}
	dev.events <- tun.EventUp
	ok = true
	return dev, &Netstack{stack: s}, nil
}

// tuneTCP sets gVisor's TCP options for throughput: SACK on (gVisor's
// default is off), larger buffer ranges with receive buffer moderation,
// and RACK loss detection off: with it gVisor's sender reacts late to ACKs
// and retransmits spuriously (Tailscale measured the same, their #9707).
func tuneTCP(s *stack.Stack, all bool, bufMax int) error {
	sack := tcpip.TCPSACKEnabled(true)
	if !all { // upstream wireguard-go's netstack sets SACK only
		if terr := s.SetTransportProtocolOption(tcp.ProtocolNumber, &sack); terr != nil {
			return fmt.Errorf("set netstack TCP SACK: %v", terr)
		}
		return nil
	}
	recovery := tcpip.TCPRecovery(0)
	moderate := tcpip.TCPModerateReceiveBufferOption(true)
	bufMax = max(bufMax, tcp.MinBufferSize)
	dflt := min(netstackTCPBufDefault, bufMax)
	rcv := tcpip.TCPReceiveBufferSizeRangeOption{Min: tcp.MinBufferSize, Default: dflt, Max: bufMax}
	snd := tcpip.TCPSendBufferSizeRangeOption{Min: tcp.MinBufferSize, Default: dflt, Max: bufMax}
	for _, o := range []struct {
		name string
		opt  tcpip.SettableTransportProtocolOption
	}{{"SACK", &sack}, {"recovery", &recovery}, {"receive buffer moderation", &moderate},
		{"receive buffer sizes", &rcv}, {"send buffer sizes", &snd}} {
		if terr := s.SetTransportProtocolOption(tcp.ProtocolNumber, o.opt); terr != nil {
			return fmt.Errorf("set netstack TCP %s: %v", o.name, terr)
		}
	}
	return nil
}

// linkEndpoint is the gVisor side of the device: gVisor writes outbound
// packets (TCP ones up to 64 KiB with GSO options) into a queue that
// netstackTUN.Read drains; netstackTUN.Write delivers inbound packets to
// the dispatcher gVisor attached.
type linkEndpoint struct {
	out    chan *stack.PacketBuffer
	closed chan struct{}
	once   sync.Once

	mu         sync.RWMutex
	dispatcher stack.NetworkDispatcher
	mtu        uint32
}

var (
	_ stack.LinkEndpoint = (*linkEndpoint)(nil)
	_ stack.GSOEndpoint  = (*linkEndpoint)(nil)
)

func newLinkEndpoint(mtu uint32) *linkEndpoint {
	return &linkEndpoint{out: make(chan *stack.PacketBuffer, netstackQueue), closed: make(chan struct{}), mtu: mtu}
}

// WritePackets queues gVisor's outbound packets, blocking while the queue
// is full (backpressure on gVisor's TCP) until the endpoint closes.
func (e *linkEndpoint) WritePackets(pkts stack.PacketBufferList) (int, tcpip.Error) {
	n := 0
	for _, pkt := range pkts.AsSlice() {
		select {
		case <-e.closed:
			if n == 0 {
				return 0, &tcpip.ErrClosedForSend{}
			}
			return n, nil
		default:
		}
		select {
		case e.out <- pkt.IncRef():
			n++
		case <-e.closed:
			pkt.DecRef()
			if n == 0 {
				return 0, &tcpip.ErrClosedForSend{}
			}
			return n, nil
		}
	}
	return n, nil
}

func (e *linkEndpoint) Attach(d stack.NetworkDispatcher) {
	e.mu.Lock()
	e.dispatcher = d
	e.mu.Unlock()
}

func (e *linkEndpoint) IsAttached() bool {
	e.mu.RLock()
	defer e.mu.RUnlock()
	return e.dispatcher != nil
}

func (e *linkEndpoint) getDispatcher() stack.NetworkDispatcher {
	e.mu.RLock()
	defer e.mu.RUnlock()
	return e.dispatcher
}

func (e *linkEndpoint) MTU() uint32 {
	e.mu.RLock()
	defer e.mu.RUnlock()
	return e.mtu
}

func (e *linkEndpoint) SetMTU(mtu uint32) {
	e.mu.Lock()
	e.mtu = mtu
	e.mu.Unlock()
}

// Capabilities: RX checksum offload, so the stack trusts packets' checksum
// state as delivered. TCP packets go through gVisor's GRO, which verifies
// IP and TCP checksums before it coalesces; other packets arrive inside
// WireGuard's authenticated encryption, which already rules out
// corruption on the way, so the stack does not check their checksums again.
func (e *linkEndpoint) Capabilities() stack.LinkEndpointCapabilities {
	return stack.CapabilityRXChecksumOffload
}

func (e *linkEndpoint) GSOMaxSize() uint32                      { return netstackGSOMax }
func (e *linkEndpoint) SupportedGSO() stack.SupportedGSO        { return stack.HostGSOSupported }
func (e *linkEndpoint) MaxHeaderLength() uint16                 { return 0 }
func (e *linkEndpoint) LinkAddress() tcpip.LinkAddress          { return "" }
func (e *linkEndpoint) SetLinkAddress(tcpip.LinkAddress)        {}
func (e *linkEndpoint) Wait()                                   {}
func (e *linkEndpoint) ARPHardwareType() header.ARPHardwareType { return header.ARPHardwareNone }
func (e *linkEndpoint) AddHeader(*stack.PacketBuffer)           {}
func (e *linkEndpoint) ParseHeader(*stack.PacketBuffer) bool    { return true }
func (e *linkEndpoint) SetOnCloseAction(func())                 {}

// Close stops queueing and releases the packets still queued.
func (e *linkEndpoint) Close() {
	e.once.Do(func() {
		close(e.closed)
		e.mu.Lock()
		e.dispatcher = nil
		e.mu.Unlock()
		for {
			select {
			case pkt := <-e.out:
				pkt.DecRef()
			default:
				return
			}
		}
	})
}

// netstackTUN is the tun.Device wireguard-go reads from and writes to.
type netstackTUN struct {
	stack  *stack.Stack
	ep     *linkEndpoint
	mtu    int
	events chan tun.Event

	// Read-side state: wireguard-go calls Read from one goroutine.
	pending *stack.PacketBuffer // did not fit the last batch

	gros sync.Pool // *gro.GRO; Write is called by one goroutine per peer

	segmented atomic.Uint64 // GSO segments split into more than one packet

	closeOnce sync.Once
}

var _ tun.Device = (*netstackTUN)(nil)

func (t *netstackTUN) File() *os.File           { return nil }
func (t *netstackTUN) Name() (string, error)    { return "netstack", nil }
func (t *netstackTUN) MTU() (int, error)        { return t.mtu, nil }
func (t *netstackTUN) Events() <-chan tun.Event { return t.events }
func (t *netstackTUN) BatchSize() int           { return netstackBatch }

// Read fills bufs with outbound packets: it waits for the first, splits
// GSO segments into MTU-sized packets, and takes further queued packets
// without waiting while the batch has room.
func (t *netstackTUN) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	pkt := t.pending
	t.pending = nil
	if pkt == nil {
		select {
		case pkt = <-t.ep.out:
		case <-t.ep.closed:
			return 0, os.ErrClosed
		}
	}
	n := 0
	for {
		k, err := t.unpack(pkt, bufs[n:], sizes[n:], offset)
		if errors.Is(err, errBatchFull) && n > 0 {
			t.pending = pkt // next call starts with it
			return n, nil
		}
		pkt.DecRef()
		// Any other error is a packet we cannot send (malformed or larger
		// than a whole batch): it is dropped, as a NIC would, and TCP
		// retransmits.
		n += k
		if n == len(bufs) || !netstackOpts.batch {
			return n, nil
		}
		select {
		case pkt = <-t.ep.out:
		default:
			return n, nil
		}
	}
}

// unpack writes pkt into bufs as one packet, or as MTU-sized ones for a
// TCP GSO segment.
func (t *netstackTUN) unpack(pkt *stack.PacketBuffer, bufs [][]byte, sizes []int, offset int) (int, error) {
	if len(bufs) == 0 {
		return 0, errBatchFull
	}
	gso := pkt.GSOOptions
	if gso.Type == stack.GSONone && !gso.NeedsCsum {
		// Headers and payload go straight into the buffer.
		buf := bufs[0][offset:]
		size := 0
		for _, s := range pkt.AsSlices() {
			if size+len(s) > len(buf) {
				return 0, fmt.Errorf("packet of %d bytes exceeds the buffer", pkt.Size())
			}
			size += copy(buf[size:], s)
		}
		sizes[0] = size
		return 1, nil
	}
	mss := int(gso.MSS)
	if gso.Type == stack.GSONone || mss == 0 {
		mss = pkt.Size() // one packet; only its checksum is missing
	}
	n, err := segmentTCP(pkt.AsSlices(), mss, bufs, sizes, offset)
	if n > 1 {
		t.segmented.Add(1)
	}
	return n, err
}

// Write hands wireguard-go's decrypted packets to gVisor through GRO.
func (t *netstackTUN) Write(bufs [][]byte, offset int) (int, error) {
	d := t.ep.getDispatcher()
	if d == nil {
		return 0, os.ErrClosed
	}
	g, _ := t.gros.Get().(*gro.GRO)
	if g == nil {
		g = new(gro.GRO)
		g.Init(netstackOpts.gro)
	}
	g.Dispatcher = d
	for i, b := range bufs {
		p := b[offset:]
		if len(p) == 0 {
			continue
		}
		var proto tcpip.NetworkProtocolNumber
		switch p[0] >> 4 {
		case 4:
			proto = header.IPv4ProtocolNumber
		case 6:
			proto = header.IPv6ProtocolNumber
		default:
			g.Flush()
			t.gros.Put(g)
			return i, fmt.Errorf("netstack: packet %d is not IPv4 or IPv6 (version %d)", i, p[0]>>4)
		}
		pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(p)})
		pkt.NetworkProtocolNumber = proto
		g.Enqueue(pkt)
		pkt.DecRef()
	}
	g.Flush()
	g.Dispatcher = nil
	t.gros.Put(g)
	return len(bufs), nil
}

func (t *netstackTUN) Close() error {
	t.closeOnce.Do(func() {
		t.ep.Close()
		t.stack.RemoveNIC(netstackNIC)
		t.stack.Close()
		close(t.events)
	})
	return nil
}

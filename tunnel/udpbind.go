package tunnel

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/conn"
)

// udpBind is the device's UDP socket pair (IPv4 and IPv6 on one port): our
// conn.Bind for Linux in place of wireguard-go's StdNetBind, for what that
// one copies. Sending, StdNetBind copies every datagram of a UDP GSO
// message into the first one's buffer; udpBind hands sendmmsg one iovec
// per datagram instead (planSend groups them, UDP_SEGMENT segments them),
// and applies the kernel-bug workaround (gso.go) in that plan rather than
// by rewriting the batch. Receiving, StdNetBind reads up to two coalesced
// (UDP GRO) datagrams into 64 KiB buffers and copies every segment out
// into wireguard-go's buffers, then allocates an endpoint per datagram;
// udpBind lays each message's iovecs over 64 of wireguard-go's buffers at
// the segment size it last saw, so that segments land in their own
// buffers, copies only when the size changed, and reuses the endpoint of
// the previous datagram from the same address. Buffers it leaves empty are
// returned with size 0, which wireguard-go skips.
//
// Sticky sources are kept as StdNetBind keeps them: the IP_PKTINFO of a
// received datagram goes back with replies to that endpoint.
type udpBind struct {
	policy atomic.Int32 // a gsoPolicy

	mu   sync.Mutex
	v4   *udpSocket
	v6   *udpSocket
	mark uint32
}

// udpSocket is one address family's socket.
type udpSocket struct {
	conn  *net.UDPConn
	rc    syscall.RawConn
	is6   bool
	txGSO atomic.Bool // UDP_SEGMENT works (turned off after EIO)
	rxGRO bool
	sends sync.Pool // *sendState
}

// socketBufferSize is StdNetBind's socket buffer size.
const socketBufferSize = 7 << 20

// The iovecs of one receive message span recvSpan of wireguard-go's
// buffers; a read takes len(bufs)/recvSpan messages (2 for 128).
const recvSpan = 64

func newUDPBind(p gsoPolicy) *udpBind {
	b := &udpBind{}
	b.policy.Store(int32(p))
	return b
}

var _ conn.Bind = (*udpBind)(nil)

// bindEndpoint is a peer's address and, once it sent us something, the
// local address and interface it reached us on (sticky source). Endpoints
// handed to wireguard-go are shared between datagrams, so the source is
// only ever cleared (atomically), never rewritten.
type bindEndpoint struct {
	dst     netip.AddrPort
	src     netip.Addr // zero: let the kernel choose
	ifindex int32
	cleared atomic.Bool
}

func (e *bindEndpoint) ClearSrc()           { e.cleared.Store(true) }
func (e *bindEndpoint) DstToString() string { return e.dst.String() }
func (e *bindEndpoint) DstIP() netip.Addr   { return e.dst.Addr() }
func (e *bindEndpoint) DstToBytes() []byte {
	b, _ := e.dst.MarshalBinary()
	return b
}

func (e *bindEndpoint) SrcIP() netip.Addr {
	if e.cleared.Load() {
		return netip.Addr{}
	}
	return e.src
}

func (e *bindEndpoint) SrcToString() string {
	if s := e.SrcIP(); s.IsValid() {
		return s.String()
	}
	return ""
}

func (*udpBind) ParseEndpoint(s string) (conn.Endpoint, error) {
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return nil, err
	}
	return &bindEndpoint{dst: ap}, nil
}

func (*udpBind) BatchSize() int { return conn.IdealBatchSize }

// listenUDP opens one family's socket with StdNetBind's options: large
// buffers, packet info for sticky sources, v6only, UDP GRO.
func listenUDP(network string, port int) (*net.UDPConn, error) {
	lc := net.ListenConfig{Control: func(network, _ string, c syscall.RawConn) error {
		var err error
		cerr := c.Control(func(fd uintptr) {
			s := int(fd)
			_ = unix.SetsockoptInt(s, unix.SOL_SOCKET, unix.SO_RCVBUF, socketBufferSize)
			_ = unix.SetsockoptInt(s, unix.SOL_SOCKET, unix.SO_SNDBUF, socketBufferSize)
			_ = unix.SetsockoptInt(s, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, socketBufferSize)
			_ = unix.SetsockoptInt(s, unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, socketBufferSize)
			if network == "udp4" {
				err = unix.SetsockoptInt(s, unix.IPPROTO_IP, unix.IP_PKTINFO, 1)
			} else {
				err = unix.SetsockoptInt(s, unix.IPPROTO_IPV6, unix.IPV6_RECVPKTINFO, 1)
				if err == nil {
					err = unix.SetsockoptInt(s, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 1)
				}
			}
			// Older kernels refuse UDP_GRO; the read-back in
			// newUDPSocket tells.
			_ = unix.SetsockoptInt(s, unix.IPPROTO_UDP, unix.UDP_GRO, 1)
		})
		return errors.Join(cerr, err)
	}}
	pc, err := lc.ListenPacket(context.Background(), network, fmt.Sprintf(":%d", port))
	if err != nil {
		return nil, err
	}
	return pc.(*net.UDPConn), nil
}

func newUDPSocket(c *net.UDPConn, is6 bool) (*udpSocket, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	s := &udpSocket{conn: c, rc: rc, is6: is6}
	rc.Control(func(fd uintptr) {
		_, err := unix.GetsockoptInt(int(fd), unix.IPPROTO_UDP, unix.UDP_SEGMENT)
		s.txGSO.Store(err == nil)
		v, err := unix.GetsockoptInt(int(fd), unix.IPPROTO_UDP, unix.UDP_GRO)
		s.rxGRO = err == nil && v == 1
	})
	return s, nil
}

func (s *udpSocket) port() int { return s.conn.LocalAddr().(*net.UDPAddr).Port }

func (b *udpBind) Open(port uint16) ([]conn.ReceiveFunc, uint16, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.v4 != nil || b.v6 != nil {
		return nil, 0, conn.ErrBindAlreadyOpen
	}
	var v4, v6 *net.UDPConn
	for tries := 0; ; tries++ {
		p := int(port)
		var err error
		v4, err = listenUDP("udp4", p)
		if err != nil && !errors.Is(err, syscall.EAFNOSUPPORT) {
			return nil, 0, err
		}
		if v4 != nil {
			p = v4.LocalAddr().(*net.UDPAddr).Port
		}
		v6, err = listenUDP("udp6", p)
		if port == 0 && errors.Is(err, syscall.EADDRINUSE) && tries < 100 {
			if v4 != nil {
				v4.Close()
			}
			continue
		}
		if err != nil && !errors.Is(err, syscall.EAFNOSUPPORT) {
			if v4 != nil {
				v4.Close()
			}
			return nil, 0, err
		}
		break
	}
	fail := func(err error) ([]conn.ReceiveFunc, uint16, error) {
		for _, c := range []*net.UDPConn{v4, v6} {
			if c != nil {
				c.Close()
			}
		}
		b.v4, b.v6 = nil, nil
		return nil, 0, err
	}
	var fns []conn.ReceiveFunc
	actual := 0
	for _, c := range []struct {
		c   *net.UDPConn
		is6 bool
		dst **udpSocket
	}{{v4, false, &b.v4}, {v6, true, &b.v6}} {
		if c.c == nil {
			continue
		}
		s, err := newUDPSocket(c.c, c.is6)
		if err != nil {
			return fail(err)
		}
		if b.mark != 0 {
			if err := s.setMark(b.mark); err != nil {
				return fail(err)
			}
		}
		*c.dst = s
		actual = s.port()
		fns = append(fns, s.receiveFunc())
	}
	if len(fns) == 0 {
		return nil, 0, syscall.EAFNOSUPPORT
	}
	return fns, uint16(actual), nil
}

func (b *udpBind) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.closeLocked()
}

func (b *udpBind) closeLocked() error {
	var errs []error
	for _, s := range []**udpSocket{&b.v4, &b.v6} {
		if *s != nil {
			errs = append(errs, (*s).conn.Close())
			*s = nil
		}
	}
	return errors.Join(errs...)
}

func (b *udpBind) SetMark(mark uint32) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.mark = mark
	for _, s := range []*udpSocket{b.v4, b.v6} {
		if s == nil {
			continue
		}
		if err := s.setMark(mark); err != nil {
			return err
		}
	}
	return nil
}

func (s *udpSocket) setMark(mark uint32) error {
	var err error
	if cerr := s.rc.Control(func(fd uintptr) {
		err = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, int(mark))
	}); cerr != nil {
		return cerr
	}
	if err != nil {
		return fmt.Errorf("set fwmark %d: %w", mark, err)
	}
	return nil
}

func (b *udpBind) socket(is6 bool) *udpSocket {
	b.mu.Lock()
	defer b.mu.Unlock()
	if is6 {
		return b.v6
	}
	return b.v4
}

// sendState is one Send's reusable syscall memory.
type sendState struct {
	groups []sendGroup
	msgs   []unix.Mmsghdr
	iovs   []unix.Iovec
	ctrl   []byte // sendCtrlSpace per message
	name   unix.RawSockaddrInet6
	call   *mmsgCall
}

// sendCtrlSpace holds an IPv6 packet info and a UDP_SEGMENT message.
var sendCtrlSpace = unix.CmsgSpace(unix.SizeofInet6Pktinfo) + unix.CmsgSpace(2)

func newSendState(n int) *sendState {
	return &sendState{
		msgs: make([]unix.Mmsghdr, n),
		iovs: make([]unix.Iovec, 2*n),
		ctrl: make([]byte, n*sendCtrlSpace),
		call: newMmsgCall(unix.SYS_SENDMMSG),
	}
}

func (b *udpBind) Send(bufs [][]byte, ep conn.Endpoint) error {
	e, ok := ep.(*bindEndpoint)
	if !ok {
		return conn.ErrWrongEndpointType
	}
	s := b.socket(e.dst.Addr().Is6())
	if s == nil {
		return syscall.EAFNOSUPPORT
	}
	if len(bufs) == 0 {
		return nil
	}
	st, _ := s.sends.Get().(*sendState)
	if st == nil || len(st.msgs) < len(bufs) {
		st = newSendState(max(len(bufs), conn.IdealBatchSize))
	}
	defer s.sends.Put(st)
	policy := gsoPolicy(b.policy.Load())
	gso := s.txGSO.Load()
	err := s.sendBatch(st, bufs, e, policy, gso)
	if gso && errors.Is(err, unix.EIO) {
		// As StdNetBind: EIO on a GSO send means the device cannot
		// checksum-offload; send without GSO from now on.
		s.txGSO.Store(false)
		retryErr := s.sendBatch(st, bufs, e, policy, false)
		return conn.ErrUDPGSODisabled{RetryErr: retryErr}
	}
	return err
}

// sendBatch sends bufs to e in as few sendmmsg calls as it takes.
func (s *udpSocket) sendBatch(st *sendState, bufs [][]byte, e *bindEndpoint, p gsoPolicy, gso bool) error {
	st.groups = planSend(st.groups[:0], bufs, p, gso)
	nameLen := s.fillName(&st.name, e.dst)
	src := e.SrcIP()
	iov := 0
	for i, g := range st.groups {
		m := &st.msgs[i]
		*m = unix.Mmsghdr{}
		m.Hdr.Name = (*byte)(unsafe.Pointer(&st.name))
		m.Hdr.Namelen = nameLen
		first := iov
		for _, p := range bufs[g.first : g.first+g.n] {
			st.iovs[iov] = unix.Iovec{Base: unsafe.SliceData(p)}
			st.iovs[iov].SetLen(len(p))
			iov++
		}
		if g.sentinel {
			st.iovs[iov] = unix.Iovec{Base: &gsoSentinel[0]}
			st.iovs[iov].SetLen(1)
			iov++
		}
		m.Hdr.Iov = &st.iovs[first]
		m.Hdr.SetIovlen(iov - first)
		ctrl := st.ctrl[i*sendCtrlSpace : (i+1)*sendCtrlSpace]
		n := putPktinfo(ctrl, src, e.ifindex, s.is6)
		if g.seg > 0 {
			n += putSegment(ctrl[n:], g.seg)
		}
		if n > 0 {
			m.Hdr.Control = &ctrl[0]
			m.Hdr.SetControllen(n)
		}
	}
	msgs := st.msgs[:len(st.groups)]
	for len(msgs) > 0 {
		n, err := st.call.do(msgs, s.rc.Write, "sendmmsg")
		if err != nil {
			return err
		}
		msgs = msgs[n:]
	}
	return nil
}

// mmsgCall is one sendmmsg or recvmmsg call through the runtime's poller
// (which waits for the socket when the call says EAGAIN), built once per
// state so that a call allocates nothing.
type mmsgCall struct {
	trap  uintptr
	msgs  []unix.Mmsghdr
	n     int
	errno syscall.Errno
	fn    func(fd uintptr) bool
}

func newMmsgCall(trap uintptr) *mmsgCall {
	c := &mmsgCall{trap: trap}
	c.fn = func(fd uintptr) bool {
		r, _, e := unix.Syscall6(c.trap, fd, uintptr(unsafe.Pointer(&c.msgs[0])), uintptr(len(c.msgs)), 0, 0, 0)
		if e == unix.EAGAIN || e == unix.EINTR {
			return false
		}
		c.n, c.errno = int(r), e
		return true
	}
	return c
}

// do runs the call on msgs through rc and returns how many messages went.
func (c *mmsgCall) do(msgs []unix.Mmsghdr, poll func(func(uintptr) bool) error, name string) (int, error) {
	c.msgs, c.n, c.errno = msgs, 0, 0
	err := poll(c.fn)
	c.msgs = nil
	if err != nil {
		return 0, err
	}
	if c.errno != 0 {
		return 0, os.NewSyscallError(name, c.errno)
	}
	return c.n, nil
}

// fillName writes dst as a socket address of the socket's family.
func (s *udpSocket) fillName(name *unix.RawSockaddrInet6, dst netip.AddrPort) uint32 {
	port := dst.Port()
	pb := (*[2]byte)(unsafe.Pointer(&name.Port))
	pb[0], pb[1] = byte(port>>8), byte(port)
	if !s.is6 {
		sa := (*unix.RawSockaddrInet4)(unsafe.Pointer(name))
		sa.Family = unix.AF_INET
		sa.Addr = dst.Addr().Unmap().As4()
		sa.Zero = [8]byte{}
		return unix.SizeofSockaddrInet4
	}
	name.Family = unix.AF_INET6
	name.Flowinfo = 0
	name.Addr = dst.Addr().As16()
	name.Scope_id = 0
	return unix.SizeofSockaddrInet6
}

// putPktinfo writes the sticky source as an IP(V6)_PKTINFO control
// message into b and returns its length (0 without a source).
func putPktinfo(b []byte, src netip.Addr, ifindex int32, is6 bool) int {
	if !src.IsValid() {
		return 0
	}
	h := (*unix.Cmsghdr)(unsafe.Pointer(&b[0]))
	data := b[unix.CmsgLen(0):]
	if !is6 {
		if !src.Unmap().Is4() {
			return 0
		}
		h.Level, h.Type = unix.IPPROTO_IP, unix.IP_PKTINFO
		h.SetLen(unix.CmsgLen(unix.SizeofInet4Pktinfo))
		info := (*unix.Inet4Pktinfo)(unsafe.Pointer(&data[0]))
		*info = unix.Inet4Pktinfo{Ifindex: ifindex, Spec_dst: src.Unmap().As4()}
		return unix.CmsgSpace(unix.SizeofInet4Pktinfo)
	}
	h.Level, h.Type = unix.IPPROTO_IPV6, unix.IPV6_PKTINFO
	h.SetLen(unix.CmsgLen(unix.SizeofInet6Pktinfo))
	info := (*unix.Inet6Pktinfo)(unsafe.Pointer(&data[0]))
	*info = unix.Inet6Pktinfo{Addr: src.As16(), Ifindex: uint32(ifindex)}
	return unix.CmsgSpace(unix.SizeofInet6Pktinfo)
}

// putSegment writes a UDP_SEGMENT control message of seg bytes into b.
func putSegment(b []byte, seg int) int {
	h := (*unix.Cmsghdr)(unsafe.Pointer(&b[0]))
	h.Level, h.Type = unix.SOL_UDP, unix.UDP_SEGMENT
	h.SetLen(unix.CmsgLen(2))
	*(*uint16)(unsafe.Pointer(&b[unix.CmsgLen(0)])) = uint16(seg)
	return unix.CmsgSpace(2)
}

// recvState is one receive function's reusable syscall memory and what it
// learned: the segment size its iovecs are laid out for, the last
// endpoint.
type recvState struct {
	msgs  []unix.Mmsghdr
	iovs  []unix.Iovec
	names []unix.RawSockaddrInet6
	ctrl  []byte
	buf   []byte // gather space
	call  *mmsgCall
	seg   int
	last  *bindEndpoint
	// Messages that landed one datagram per buffer, and that were split
	// by copying (for tests and BENCHMARKS.md).
	landed, split int
}

// recvCtrlSpace holds an IPv6 packet info and a UDP_GRO message.
var recvCtrlSpace = unix.CmsgSpace(unix.SizeofInet6Pktinfo) + unix.CmsgSpace(4)

// receiveFunc returns the socket's receive function for wireguard-go,
// which runs one goroutine per function: the state is its own.
func (s *udpSocket) receiveFunc() conn.ReceiveFunc {
	st := &recvState{}
	return func(bufs [][]byte, sizes []int, eps []conn.Endpoint) (int, error) {
		return s.receive(st, bufs, sizes, eps)
	}
}

// receive reads one batch. With UDP GRO it reads len(bufs)/recvSpan
// messages, each laid over recvSpan buffers (one over all of them in a
// smaller batch, split by copying); without, one datagram per buffer.
func (s *udpSocket) receive(st *recvState, bufs [][]byte, sizes []int, eps []conn.Endpoint) (int, error) {
	span := 1
	if s.rxGRO {
		span = min(recvSpan, len(bufs))
	}
	nmsgs := len(bufs) / span
	if len(st.msgs) < nmsgs {
		st.msgs = make([]unix.Mmsghdr, nmsgs)
		st.names = make([]unix.RawSockaddrInet6, nmsgs)
		st.ctrl = make([]byte, nmsgs*recvCtrlSpace)
	}
	if len(st.iovs) < len(bufs) {
		st.iovs = make([]unix.Iovec, len(bufs))
	}
	// Scatter: each of a message's iovecs takes one segment of seg bytes,
	// the last one the rest of its buffer; without a segment size yet,
	// one iovec of the whole first buffer.
	seg := st.seg
	scatter := span == recvSpan && seg >= minScatterSegment
	for i := 0; i < nmsgs; i++ {
		m := &st.msgs[i]
		*m = unix.Mmsghdr{}
		m.Hdr.Name = (*byte)(unsafe.Pointer(&st.names[i]))
		m.Hdr.Namelen = unix.SizeofSockaddrInet6
		m.Hdr.Control = &st.ctrl[i*recvCtrlSpace]
		m.Hdr.SetControllen(recvCtrlSpace)
		base := i * span
		niov := 1
		if scatter {
			niov = span
		}
		for j := 0; j < niov; j++ {
			buf := bufs[base+j]
			st.iovs[base+j] = unix.Iovec{Base: unsafe.SliceData(buf)}
			st.iovs[base+j].SetLen(scatterLen(len(buf), seg, j == niov-1))
		}
		m.Hdr.Iov = &st.iovs[base]
		m.Hdr.SetIovlen(niov)
	}
	if st.call == nil {
		st.call = newMmsgCall(unix.SYS_RECVMMSG)
	}
	got, err := st.call.do(st.msgs[:nmsgs], s.rc.Read, "recvmmsg")
	if err != nil {
		return 0, err
	}
	count := 0
	for i := 0; i < got; i++ {
		m := &st.msgs[i]
		base := i * span
		n := int(m.Len)
		ctrl := st.ctrl[i*recvCtrlSpace : i*recvCtrlSpace+int(m.Hdr.Controllen)]
		src, ifindex, gro := parseRecvControl(ctrl, s.is6)
		k := 0
		switch {
		case m.Hdr.Flags&unix.MSG_TRUNC != 0 || n == 0:
		case !s.rxGRO:
			sizes[base], k = n, 1
		case scatter && landed(n, gro, seg, len(bufs[base])):
			k = scatterSizes(sizes[base:base+span], n, seg)
			st.landed++
		case scatter:
			st.split++
			// The segment size changed: gather and split again.
			k = splitInto(bufs[base:base+span], sizes[base:base+span], gather(st.scratch(), bufs[base:base+span], n, seg), gro)
		default:
			st.split++
			// Read into the first buffer: split from there (datagram 0
			// stays where it is, the others go to their own buffers).
			k = splitInto(bufs[base:base+span], sizes[base:base+span], bufs[base][:n], gro)
		}
		if gro >= minScatterSegment {
			st.seg = gro
		}
		for j := k; j < span; j++ {
			sizes[base+j] = 0
		}
		if k == 0 {
			continue
		}
		ep := st.endpoint(&st.names[i], src, ifindex)
		for j := 0; j < k; j++ {
			eps[base+j] = ep
		}
		count = base + k
	}
	return count, nil
}

// scratch returns the receive's 64 KiB gather buffer.
func (st *recvState) scratch() []byte {
	if st.buf == nil {
		st.buf = make([]byte, 0, 1<<16)
	}
	return st.buf[:0]
}

// endpoint returns the endpoint of a received datagram, the previous one
// if it is the same.
func (st *recvState) endpoint(name *unix.RawSockaddrInet6, src netip.Addr, ifindex int32) *bindEndpoint {
	var dst netip.AddrPort
	pb := (*[2]byte)(unsafe.Pointer(&name.Port)) // network byte order
	port := uint16(pb[0])<<8 | uint16(pb[1])
	if name.Family == unix.AF_INET {
		sa := (*unix.RawSockaddrInet4)(unsafe.Pointer(name))
		dst = netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), port)
	} else {
		dst = netip.AddrPortFrom(netip.AddrFrom16(name.Addr), port)
	}
	if l := st.last; l != nil && l.dst == dst && l.src == src && l.ifindex == ifindex && !l.cleared.Load() {
		return l
	}
	st.last = &bindEndpoint{dst: dst, src: src, ifindex: ifindex}
	return st.last
}

// parseRecvControl reads a received datagram's packet info (the local
// address and interface it came in on) and UDP GRO segment size.
func parseRecvControl(b []byte, is6 bool) (src netip.Addr, ifindex int32, gro int) {
	for len(b) >= unix.SizeofCmsghdr {
		h, data, rest, err := unix.ParseOneSocketControlMessage(b)
		if err != nil {
			return
		}
		b = rest
		switch {
		case h.Level == unix.SOL_UDP && h.Type == unix.UDP_GRO && len(data) >= 2:
			// The kernel writes an int; its low 16 bits are the size.
			if len(data) >= 4 {
				gro = int(*(*int32)(unsafe.Pointer(&data[0])))
			} else {
				gro = int(*(*uint16)(unsafe.Pointer(&data[0])))
			}
		case !is6 && h.Level == unix.IPPROTO_IP && h.Type == unix.IP_PKTINFO && len(data) >= unix.SizeofInet4Pktinfo:
			info := (*unix.Inet4Pktinfo)(unsafe.Pointer(&data[0]))
			src, ifindex = netip.AddrFrom4(info.Spec_dst), info.Ifindex
		case is6 && h.Level == unix.IPPROTO_IPV6 && h.Type == unix.IPV6_PKTINFO && len(data) >= unix.SizeofInet6Pktinfo:
			info := (*unix.Inet6Pktinfo)(unsafe.Pointer(&data[0]))
			src, ifindex = netip.AddrFrom16(info.Addr), int32(info.Ifindex)
		}
	}
	return
}

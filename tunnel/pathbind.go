package tunnel

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"sync/atomic"
	"time"

	"golang.zx2c4.com/wireguard/conn"
)

// PacketHandler receives the datagrams on the WireGuard socket that are not
// WireGuard messages (STUN, path probes). b is only valid during the call;
// the handler must not block: it runs on the socket's receive path.
type PacketHandler func(b []byte, from netip.AddrPort)

// muxBind is the device's conn.Bind: our UDP bind (udpbind.go: batched
// receives and sends, the UDP GSO policy of gso.go) with the datagrams that
// are not WireGuard taken out of each received batch and handed to the
// packet handler, so path probes and STUN share the socket, and with it
// the NAT mapping, that WireGuard uses. Not being a *conn.StdNetBind, it
// makes wireguard-go skip its sticky-socket route listener, as the packet
// budget's wrapper (memory.go) does.
//
// It wraps a conn.Bind rather than our bind alone so that the CPU
// benchmark can measure wireguard-go's StdNetBind in the same place
// (Config.stdBind, tests only).
type muxBind struct {
	conn.Bind
	handler atomic.Pointer[PacketHandler]
}

func newMuxBind(b conn.Bind) *muxBind { return &muxBind{Bind: b} }

// isWireGuard reports whether a datagram looks like a WireGuard message:
// type 1-4 in the first byte, then three zero bytes.
func isWireGuard(b []byte) bool {
	if len(b) < 4 {
		return false
	}
	t := binary.LittleEndian.Uint32(b[:4])
	return t >= 1 && t <= 4
}

func (b *muxBind) Open(port uint16) ([]conn.ReceiveFunc, uint16, error) {
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

// receive filters a receive function: a datagram taken out is left in the
// batch with size 0, which wireguard-go skips (the bind leaves such holes
// itself, see udpBind).
func (b *muxBind) receive(fn conn.ReceiveFunc) conn.ReceiveFunc {
	return func(packets [][]byte, sizes []int, eps []conn.Endpoint) (int, error) {
		for {
			n, err := fn(packets, sizes, eps)
			kept := 0
			for i := 0; i < n; i++ {
				if sizes[i] == 0 {
					continue
				}
				p := packets[i][:sizes[i]]
				if isGSOSentinel(p) {
					sizes[i] = 0 // a peer's padding for the kernel UDP GSO bug (gso.go)
					continue
				}
				if !isWireGuard(p) {
					b.deliver(p, eps[i])
					sizes[i] = 0
					continue
				}
				kept++
			}
			// A batch of nothing but probes is not handed up as an empty
			// read: wireguard-go would spin on it.
			if kept > 0 || n == 0 || err != nil {
				return n, err
			}
		}
	}
}

func (b *muxBind) deliver(p []byte, ep conn.Endpoint) {
	h := b.handler.Load()
	if h == nil || ep == nil {
		return
	}
	var from netip.AddrPort
	switch e := ep.(type) {
	case *bindEndpoint:
		from = e.dst
	default:
		var err error
		if from, err = netip.ParseAddrPort(ep.DstToString()); err != nil {
			return
		}
	}
	(*h)(p, netip.AddrPortFrom(from.Addr().Unmap(), from.Port()))
}

// sendTo sends one datagram from the WireGuard socket.
func (b *muxBind) sendTo(p []byte, to netip.AddrPort) error {
	ep, err := b.ParseEndpoint(to.String())
	if err != nil {
		return fmt.Errorf("endpoint %s: %w", to, err)
	}
	return b.Send([][]byte{p}, ep)
}

// SetPacketHandler sets who gets the datagrams on the WireGuard socket that
// are not WireGuard (nil: they are dropped).
func (d *Device) SetPacketHandler(h PacketHandler) {
	if h == nil {
		d.mux.handler.Store(nil)
		return
	}
	d.mux.handler.Store(&h)
}

// SendPacket sends a datagram (a STUN message, a path probe) from the
// WireGuard socket to an underlay address.
func (d *Device) SendPacket(p []byte, to netip.AddrPort) error {
	return d.mux.sendTo(p, to)
}

// SetEndpoint makes ep the peer's endpoint now and keeps it over the map's
// endpoint for that peer (the path machine chose it); a zero ep drops the
// choice, so the map's endpoint applies again at the next sync.
func (d *Device) SetEndpoint(peer Key, ep netip.AddrPort) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !ep.IsValid() {
		delete(d.chosen, peer)
		return nil
	}
	if d.chosen == nil {
		d.chosen = map[Key]netip.AddrPort{}
	}
	ep = unmapAddrPort(ep)
	d.chosen[peer] = ep
	var want *Peer
	for i := range d.desired {
		if d.desired[i].PublicKey == peer {
			want = &d.desired[i]
		}
	}
	if want == nil {
		return nil
	}
	set := fmt.Sprintf("public_key=%s\nupdate_only=true\nendpoint=%s\n", peer.hex(), ep)
	if fresh, err := d.neverHandshaked(peer); err == nil && fresh {
		// wireguard-go sends a handshake initiation at most every 5 s, and
		// the last one went to the old endpoint: a peer that never
		// completed one (nothing to lose) is created anew, whose first
		// keepalive starts a handshake on the new endpoint at once.
		p := *want
		p.Endpoint = ep
		set = fmt.Sprintf("public_key=%s\nremove=true\n", peer.hex()) + planPeers(nil, []Peer{p}, time.Now())
	}
	if err := d.wg.IpcSet(set); err != nil {
		return fmt.Errorf("set endpoint of peer %s to %s: %w", peer, ep, err)
	}
	return nil
}

// neverHandshaked reports whether the device holds peer and has never
// completed a handshake with it.
func (d *Device) neverHandshaked(peer Key) (bool, error) {
	states, err := d.peerStates()
	if err != nil {
		return false, err
	}
	for _, s := range states {
		if s.PublicKey == peer {
			return s.LastHandshake.IsZero(), nil
		}
	}
	return false, nil
}

// withChosen returns peers with the path machine's endpoints in place of
// the given ones.
func withChosen(peers []Peer, chosen map[Key]netip.AddrPort) []Peer {
	if len(chosen) == 0 {
		return peers
	}
	out := clonePeers(peers)
	for i, p := range out {
		if ep, ok := chosen[p.PublicKey]; ok {
			out[i].Endpoint = ep
		}
	}
	return out
}

package tunnel

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// gsoPacket builds one IPv4 or IPv6 TCP packet carrying payload, with the
// TCP checksum left as gVisor's GSO leaves it (partial: pseudo-header only).
func gsoPacket(t *testing.T, v6 bool, flags header.TCPFlags, seq uint32, payload []byte) []byte {
	t.Helper()
	const tcpLen = header.TCPMinimumSize + 12 // with options (timestamps), as gVisor sends
	ipLen := header.IPv4MinimumSize
	if v6 {
		ipLen = header.IPv6MinimumSize
	}
	pkt := make([]byte, ipLen+tcpLen+len(payload))
	var src, dst tcpip.Address
	if v6 {
		src, dst = tcpip.AddrFrom16([16]byte{0xfd, 15: 1}), tcpip.AddrFrom16([16]byte{0xfd, 15: 2})
		header.IPv6(pkt).Encode(&header.IPv6Fields{PayloadLength: uint16(tcpLen + len(payload)), TransportProtocol: header.TCPProtocolNumber,
			HopLimit: 64, SrcAddr: src, DstAddr: dst})
	} else {
		src, dst = tcpip.AddrFrom4([4]byte{10, 0, 0, 1}), tcpip.AddrFrom4([4]byte{10, 0, 0, 2})
		ip := header.IPv4(pkt)
		ip.Encode(&header.IPv4Fields{TotalLength: uint16(len(pkt)), ID: 0xfff0, Flags: header.IPv4FlagDontFragment, TTL: 64,
			Protocol: uint8(header.TCPProtocolNumber), SrcAddr: src, DstAddr: dst})
		ip.SetChecksum(^ip.CalculateChecksum())
	}
	tcp := header.TCP(pkt[ipLen:])
	tcp.Encode(&header.TCPFields{SrcPort: 40000, DstPort: 5201, SeqNum: seq, AckNum: 77, DataOffset: tcpLen, Flags: flags, WindowSize: 1000})
	for i := header.TCPMinimumSize; i < tcpLen; i++ {
		tcp[i] = 1 // NOP options
	}
	copy(pkt[ipLen+tcpLen:], payload)
	tcp.SetChecksum(header.PseudoHeaderChecksum(header.TCPProtocolNumber, src, dst, uint16(tcpLen+len(payload))))
	return pkt
}

// split cuts pkt into slices of at most n bytes (headers and payload split
// across slices, as a gVisor packet buffer holds them).
func split(pkt []byte, n int) [][]byte {
	var out [][]byte
	for len(pkt) > n {
		out = append(out, pkt[:n])
		pkt = pkt[n:]
	}
	return append(out, pkt)
}

func batchBuffers(n, size int) ([][]byte, []int) {
	bufs := make([][]byte, n)
	for i := range bufs {
		bufs[i] = make([]byte, size)
	}
	return bufs, make([]int, n)
}

// checkTCPPacket fails unless p is a well-formed TCP packet with valid IP
// and TCP checksums; it returns the TCP header and payload.
func checkTCPPacket(t *testing.T, p []byte) (header.TCP, []byte) {
	t.Helper()
	tcp, payload, err := validTCPPacket(p)
	if err != nil {
		t.Fatal(err)
	}
	return tcp, payload
}

// validTCPPacket checks that p is a well-formed TCP packet with valid IP
// and TCP checksums and returns its TCP header and payload.
func validTCPPacket(p []byte) (header.TCP, []byte, error) {
	var src, dst tcpip.Address
	var ipLen int
	if len(p) == 0 {
		return nil, nil, errors.New("empty packet")
	}
	switch p[0] >> 4 {
	case 4:
		ip := header.IPv4(p)
		if !ip.IsValid(len(p)) || int(ip.TotalLength()) != len(p) {
			return nil, nil, fmt.Errorf("invalid ipv4 packet (total length %d, have %d)", ip.TotalLength(), len(p))
		}
		if !ip.IsChecksumValid() {
			return nil, nil, errors.New("bad ipv4 header checksum")
		}
		if ip.Protocol() != uint8(header.TCPProtocolNumber) {
			return nil, nil, fmt.Errorf("ipv4 protocol %d", ip.Protocol())
		}
		ipLen, src, dst = int(ip.HeaderLength()), ip.SourceAddress(), ip.DestinationAddress()
	case 6:
		ip := header.IPv6(p)
		if len(p) < header.IPv6MinimumSize || int(ip.PayloadLength())+header.IPv6MinimumSize != len(p) {
			return nil, nil, fmt.Errorf("ipv6 payload length in a %d-byte packet", len(p))
		}
		ipLen, src, dst = header.IPv6MinimumSize, ip.SourceAddress(), ip.DestinationAddress()
	default:
		return nil, nil, fmt.Errorf("ip version %d", p[0]>>4)
	}
	tcp := header.TCP(p[ipLen:])
	payload := p[ipLen+int(tcp.DataOffset()):]
	if !tcp.IsChecksumValid(src, dst, checksum.Checksum(payload, 0), uint16(len(payload))) {
		return nil, nil, errors.New("bad tcp checksum")
	}
	return tcp, payload, nil
}

func TestSegmentTCPReassemblesWithValidChecksums(t *testing.T) {
	const mss, offset = 1380, 16
	for _, v6 := range []bool{false, true} {
		for _, size := range []int{0, 1, mss - 1, mss, mss + 1, 10 * mss, 65535 - 40 - 32 - 20} {
			payload := make([]byte, size)
			for i := range payload {
				payload[i] = byte(rand.Uint32())
			}
			flags := header.TCPFlagAck | header.TCPFlagPsh | header.TCPFlagFin | header.TCPFlagCwr
			const seq = 0xffffff00 // wraps around inside the segment
			pkt := gsoPacket(t, v6, flags, seq, payload)
			bufs, sizes := batchBuffers(128, 65535)
			n, err := segmentTCP(split(pkt, 3), mss, bufs, sizes, offset)
			if err != nil {
				t.Fatalf("v6=%v size %d: %v", v6, size, err)
			}
			want := max(1, (size+mss-1)/mss)
			if n != want {
				t.Fatalf("v6=%v size %d: %d packets, want %d", v6, size, n, want)
			}
			var got []byte
			for i := 0; i < n; i++ {
				p := bufs[i][offset : offset+sizes[i]]
				tcp, pl := checkTCPPacket(t, p)
				if len(pl) > mss {
					t.Fatalf("packet %d carries %d bytes, mss %d", i, len(pl), mss)
				}
				if wantSeq := uint32(seq) + uint32(len(got)); tcp.SequenceNumber() != wantSeq {
					t.Fatalf("packet %d: seq %#x, want %#x", i, tcp.SequenceNumber(), wantSeq)
				}
				f := tcp.Flags()
				last, first := i == n-1, i == 0
				if f&(header.TCPFlagPsh|header.TCPFlagFin) != 0 != last {
					t.Fatalf("packet %d of %d: flags %v (PSH/FIN belong on the last only)", i, n, f)
				}
				if f&header.TCPFlagCwr != 0 != first {
					t.Fatalf("packet %d of %d: flags %v (CWR belongs on the first only)", i, n, f)
				}
				if f&header.TCPFlagAck == 0 || tcp.AckNumber() != 77 {
					t.Fatalf("packet %d lost the ACK: %v ack %d", i, f, tcp.AckNumber())
				}
				if !v6 {
					if id := header.IPv4(p).ID(); id != uint16(0xfff0+i) {
						t.Fatalf("packet %d: ipv4 id %#x, want %#x", i, id, uint16(0xfff0+i))
					}
				}
				got = append(got, pl...)
			}
			if !bytes.Equal(got, payload) {
				t.Fatalf("v6=%v size %d: reassembled payload differs", v6, size)
			}
		}
	}
}

func TestSegmentTCPBatchFullAndMalformed(t *testing.T) {
	pkt := gsoPacket(t, false, header.TCPFlagAck, 1, make([]byte, 10*1000))
	bufs, sizes := batchBuffers(9, 2000)
	if n, err := segmentTCP([][]byte{pkt}, 1000, bufs, sizes, 0); !errors.Is(err, errBatchFull) || n != 0 {
		t.Fatalf("10 segments into 9 buffers: n=%d err=%v, want errBatchFull", n, err)
	}
	bufs, sizes = batchBuffers(10, 500)
	if _, err := segmentTCP([][]byte{pkt}, 1000, bufs, sizes, 0); err == nil {
		t.Fatal("segments larger than the buffers: no error")
	}
	udp := gsoPacket(t, false, header.TCPFlagAck, 1, nil)
	udp[9] = uint8(header.UDPProtocolNumber) // the protocol byte
	bufs, sizes = batchBuffers(4, 2000)
	for name, p := range map[string][]byte{"udp": udp, "truncated": pkt[:30], "empty": nil, "version 5": {0x50, 0}} {
		if _, err := segmentTCP([][]byte{p}, 1000, bufs, sizes, 0); err == nil || errors.Is(err, errBatchFull) {
			t.Fatalf("%s: err %v, want a malformed-packet error", name, err)
		}
	}
}

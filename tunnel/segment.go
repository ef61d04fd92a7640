package tunnel

import (
	"errors"
	"fmt"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// errBatchFull: the packet's segments do not fit the buffers left in the
// batch; the caller sends it with the next batch.
var errBatchFull = errors.New("segments do not fit the batch")

// segmentTCP splits pkt, one IPv4 or IPv6 packet carrying a TCP segment of
// any payload size whose TCP checksum may be missing or partial (gVisor's
// GSO output), into packets of at most mss payload bytes, written at
// bufs[i][offset:] with their lengths in sizes[i]. The packet comes as the
// slices it is held in (stack.PacketBuffer.AsSlices: headers and payload
// chunks), so the payload is copied once, into the output. Each packet
// gets its IP length (and, for IPv4, ID+i and header checksum), its TCP
// sequence number and a full TCP checksum; PSH and FIN stay on the last
// packet and CWR on the first only, as Linux's TSO does. It returns how
// many packets it wrote, or errBatchFull (writing nothing) when they would
// not fit.
func segmentTCP(pkt [][]byte, mss int, bufs [][]byte, sizes []int, offset int) (int, error) {
	total := 0
	for _, s := range pkt {
		total += len(s)
	}
	// The headers, gathered: at most 60 bytes of IPv4 or 40 of IPv6, and
	// 60 of TCP.
	var headBuf [120]byte
	r := sliceReader{s: pkt}
	head := headBuf[:r.peek(headBuf[:])]
	if len(head) < 1 {
		return 0, errors.New("empty packet")
	}
	var ipLen int
	var src, dst tcpip.Address
	switch head[0] >> 4 {
	case 4:
		ip := header.IPv4(head)
		if len(head) < header.IPv4MinimumSize || int(ip.HeaderLength()) < header.IPv4MinimumSize || len(head) < int(ip.HeaderLength()) {
			return 0, fmt.Errorf("ipv4 packet of %d bytes is too short", total)
		}
		if ip.Protocol() != uint8(header.TCPProtocolNumber) {
			return 0, fmt.Errorf("ipv4 protocol %d is not tcp", ip.Protocol())
		}
		ipLen = int(ip.HeaderLength())
		src, dst = ip.SourceAddress(), ip.DestinationAddress()
	case 6:
		ip := header.IPv6(head)
		if len(head) < header.IPv6MinimumSize {
			return 0, fmt.Errorf("ipv6 packet of %d bytes is too short", total)
		}
		if ip.NextHeader() != uint8(header.TCPProtocolNumber) {
			return 0, fmt.Errorf("ipv6 next header %d is not tcp (extension headers are not segmented)", ip.NextHeader())
		}
		ipLen = header.IPv6MinimumSize
		src, dst = ip.SourceAddress(), ip.DestinationAddress()
	default:
		return 0, fmt.Errorf("ip version %d", head[0]>>4)
	}
	if len(head) < ipLen+header.TCPMinimumSize {
		return 0, fmt.Errorf("tcp header truncated: %d bytes", total)
	}
	tcpLen := int(header.TCP(head[ipLen:]).DataOffset())
	if tcpLen < header.TCPMinimumSize || len(head) < ipLen+tcpLen {
		return 0, fmt.Errorf("tcp header length %d in a packet of %d bytes", tcpLen, total)
	}
	if mss <= 0 {
		return 0, fmt.Errorf("mss %d", mss)
	}
	hdrLen := ipLen + tcpLen
	head = head[:hdrLen]
	payloadLen := total - hdrLen
	n := max(1, (payloadLen+mss-1)/mss)
	if n > len(bufs) {
		return 0, errBatchFull
	}
	for i := 0; i < n; i++ {
		if len(bufs[i]) < offset+hdrLen+min(mss, payloadLen) {
			return 0, fmt.Errorf("buffer %d of %d bytes cannot hold a %d-byte packet at offset %d", i, len(bufs[i]), hdrLen+mss, offset)
		}
	}

	first := header.TCP(head[ipLen:])
	seq, flags := first.SequenceNumber(), first.Flags()
	var id uint16
	if head[0]>>4 == 4 {
		id = header.IPv4(head).ID()
	}
	r.skip(hdrLen)
	for i := 0; i < n; i++ {
		chunk := min(mss, payloadLen-i*mss)
		out := bufs[i][offset : offset+hdrLen+chunk]
		copy(out, head)
		r.read(out[hdrLen:])

		if head[0]>>4 == 4 {
			ip := header.IPv4(out)
			ip.SetTotalLength(uint16(len(out)))
			ip.SetID(id + uint16(i))
			ip.SetChecksum(0)
			ip.SetChecksum(^ip.CalculateChecksum())
		} else {
			header.IPv6(out).SetPayloadLength(uint16(len(out) - ipLen))
		}

		t := header.TCP(out[ipLen:])
		t.SetSequenceNumber(seq + uint32(i*mss))
		f := flags
		if i != n-1 {
			f &^= header.TCPFlagPsh | header.TCPFlagFin
		}
		if i != 0 {
			f &^= header.TCPFlagCwr
		}
		t.SetFlags(uint8(f))
		t.SetChecksum(0)
		xsum := header.PseudoHeaderChecksum(header.TCPProtocolNumber, src, dst, uint16(len(out)-ipLen))
		xsum = checksum.Checksum(out[ipLen:], xsum)
		t.SetChecksum(^xsum)
		sizes[i] = len(out)
	}
	return n, nil
}

// sliceReader reads a packet held in several slices, front to back.
type sliceReader struct{ s [][]byte }

// peek copies the first bytes into dst without consuming them.
func (r *sliceReader) peek(dst []byte) int {
	n := 0
	for _, s := range r.s {
		if n == len(dst) {
			break
		}
		n += copy(dst[n:], s)
	}
	return n
}

// read copies the next len(dst) bytes (or what is left) into dst.
func (r *sliceReader) read(dst []byte) int {
	n := 0
	for n < len(dst) && len(r.s) > 0 {
		c := copy(dst[n:], r.s[0])
		n += c
		if c == len(r.s[0]) {
			r.s = r.s[1:]
		} else {
			r.s[0] = r.s[0][c:]
		}
	}
	return n
}

func (r *sliceReader) skip(n int) {
	for n > 0 && len(r.s) > 0 {
		c := min(n, len(r.s[0]))
		n -= c
		if c == len(r.s[0]) {
			r.s = r.s[1:]
		} else {
			r.s[0] = r.s[0][c:]
		}
	}
}

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
// bufs[i][offset:] with their lengths in sizes[i]. Each packet gets its IP
// length (and, for IPv4, ID+i and header checksum), its TCP sequence
// number and a full TCP checksum; PSH and FIN stay on the last packet and
// CWR on the first only, as Linux's TSO does. It returns how many packets
// it wrote, or errBatchFull (writing nothing) when they would not fit.
func segmentTCP(pkt []byte, mss int, bufs [][]byte, sizes []int, offset int) (int, error) {
	if len(pkt) < 1 {
		return 0, errors.New("empty packet")
	}
	var ipLen int
	var src, dst tcpip.Address
	switch pkt[0] >> 4 {
	case 4:
		ip := header.IPv4(pkt)
		if len(pkt) < header.IPv4MinimumSize || int(ip.HeaderLength()) < header.IPv4MinimumSize || len(pkt) < int(ip.HeaderLength()) {
			return 0, fmt.Errorf("ipv4 packet of %d bytes is too short", len(pkt))
		}
		if ip.Protocol() != uint8(header.TCPProtocolNumber) {
			return 0, fmt.Errorf("ipv4 protocol %d is not tcp", ip.Protocol())
		}
		ipLen = int(ip.HeaderLength())
		src, dst = ip.SourceAddress(), ip.DestinationAddress()
	case 6:
		ip := header.IPv6(pkt)
		if len(pkt) < header.IPv6MinimumSize {
			return 0, fmt.Errorf("ipv6 packet of %d bytes is too short", len(pkt))
		}
		if ip.NextHeader() != uint8(header.TCPProtocolNumber) {
			return 0, fmt.Errorf("ipv6 next header %d is not tcp (extension headers are not segmented)", ip.NextHeader())
		}
		ipLen = header.IPv6MinimumSize
		src, dst = ip.SourceAddress(), ip.DestinationAddress()
	default:
		return 0, fmt.Errorf("ip version %d", pkt[0]>>4)
	}
	if len(pkt) < ipLen+header.TCPMinimumSize {
		return 0, fmt.Errorf("tcp header truncated: %d bytes", len(pkt))
	}
	tcpLen := int(header.TCP(pkt[ipLen:]).DataOffset())
	if tcpLen < header.TCPMinimumSize || len(pkt) < ipLen+tcpLen {
		return 0, fmt.Errorf("tcp header length %d in a packet of %d bytes", tcpLen, len(pkt))
	}
	if mss <= 0 {
		return 0, fmt.Errorf("mss %d", mss)
	}
	hdrLen := ipLen + tcpLen
	payload := pkt[hdrLen:]
	n := max(1, (len(payload)+mss-1)/mss)
	if n > len(bufs) {
		return 0, errBatchFull
	}
	for i := 0; i < n; i++ {
		if len(bufs[i]) < offset+hdrLen+min(mss, len(payload)) {
			return 0, fmt.Errorf("buffer %d of %d bytes cannot hold a %d-byte packet at offset %d", i, len(bufs[i]), hdrLen+mss, offset)
		}
	}

	first := header.TCP(pkt[ipLen:hdrLen])
	seq, flags := first.SequenceNumber(), first.Flags()
	var id uint16
	if pkt[0]>>4 == 4 {
		id = header.IPv4(pkt).ID()
	}
	for i := 0; i < n; i++ {
		chunk := payload[min(i*mss, len(payload)):min((i+1)*mss, len(payload))]
		out := bufs[i][offset : offset+hdrLen+len(chunk)]
		copy(out, pkt[:hdrLen])
		copy(out[hdrLen:], chunk)

		if pkt[0]>>4 == 4 {
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

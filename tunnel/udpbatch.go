package tunnel

// The pure half of our UDP bind (udpbind.go): how a batch of WireGuard
// datagrams is grouped into sendmmsg messages with UDP_SEGMENT, and how a
// GRO-coalesced receive is laid out over wireguard-go's packet buffers.
// Nothing here copies a packet on the send side; the receive side copies
// only when a coalesced datagram did not land on the expected boundaries.

// sendGroup is one message of a sendmmsg call: bufs[first:first+n] as one
// iovec each, sent as one datagram (seg 0, n 1) or as a UDP GSO message of
// seg-byte segments (the last may be shorter), optionally followed by the
// 1-byte sentinel of the kernel-bug workaround (gso.go) as its shorter tail.
type sendGroup struct {
	first, n int
	seg      int
	sentinel bool
}

// planSend appends to dst the messages for bufs under policy p; gso says
// whether the socket can segment at all. Consecutive datagrams of one
// length go into one message (at most gsoMaxSegments segments and
// gsoMaxPayload bytes, sentinel included), and a shorter datagram ends the
// message it joins, as the kernel requires. Under gsoWorkaround a batch
// under gsoMinBatch goes out without GSO and a message whose segments are
// all equal gets the sentinel; a message of one datagram never needs it.
func planSend(dst []sendGroup, bufs [][]byte, p gsoPolicy, gso bool) []sendGroup {
	if !gso || p == gsoNone || (p == gsoWorkaround && len(bufs) < gsoMinBatch) {
		for i := range bufs {
			dst = append(dst, sendGroup{first: i, n: 1})
		}
		return dst
	}
	pad := p == gsoWorkaround
	reserve := 0 // room kept for the sentinel
	if pad {
		reserve = 1
	}
	for i := 0; i < len(bufs); {
		size := len(bufs[i])
		total, n, shortTail := size, 1, false
		if size > len(gsoSentinel) {
			for j := i + 1; j < len(bufs) && n+reserve < gsoMaxSegments; j++ {
				l := len(bufs[j])
				if l > size || total+l+reserve > gsoMaxPayload {
					break
				}
				total += l
				n++
				if l < size {
					shortTail = true
					break
				}
			}
		}
		g := sendGroup{first: i, n: n}
		if n > 1 {
			g.seg = size
			g.sentinel = pad && !shortTail
		}
		dst = append(dst, g)
		i += n
	}
	return dst
}

// minScatterSegment is the smallest segment size the receive side lays
// its iovecs out for: 64 iovecs of it must hold the largest datagram.
const minScatterSegment = 1024

// groSegments is how many datagrams a coalesced receive of n bytes with
// segment size seg holds (seg 0: not coalesced, one datagram).
func groSegments(n, seg int) int {
	if seg <= 0 || n <= seg {
		return 1
	}
	return (n + seg - 1) / seg
}

// scatterSizes sets sizes for a coalesced receive of n bytes whose
// segments of seg bytes landed one per buffer (the iovecs were seg bytes
// each): all seg, the last what is left. It returns how many it set.
func scatterSizes(sizes []int, n, seg int) int {
	k := groSegments(n, seg)
	for i := 0; i < k-1; i++ {
		sizes[i] = seg
	}
	sizes[k-1] = n - (k-1)*seg
	return k
}

// splitInto copies the n bytes of data, a coalesced receive with segment
// size seg (0: one datagram), into bufs one datagram each and sets sizes.
// It returns how many datagrams it wrote; those that do not fit in bufs are
// dropped (the kernel coalesces at most 64, the receive gives 64 buffers).
func splitInto(bufs [][]byte, sizes []int, data []byte, seg int) int {
	if seg <= 0 {
		seg = len(data)
	}
	k := 0
	for start := 0; start < len(data) && k < len(bufs); start += seg {
		end := min(start+seg, len(data))
		sizes[k] = copy(bufs[k], data[start:end])
		k++
	}
	return k
}

// scatterLen is the length of a receive message's iovec over a buffer of
// bufLen bytes when laid out for seg-byte segments: one segment, the last
// iovec the whole buffer (so that any datagram fits).
func scatterLen(bufLen, seg int, last bool) int {
	if last || seg <= 0 {
		return bufLen
	}
	return min(bufLen, seg)
}

// landed reports whether a receive of n bytes with GRO segment size gro
// (0: one datagram) landed one datagram per buffer over iovecs laid out
// for seg (buffers of bufLen bytes, at least seg).
func landed(n, gro, seg, bufLen int) bool {
	if bufLen < seg {
		return false
	}
	if gro == 0 || n <= gro {
		return n <= seg
	}
	return gro == seg
}

// gather appends to dst the n bytes a receive scattered over bufs with
// iovecs laid out for seg (scatterLen) and returns it.
func gather(dst []byte, bufs [][]byte, n, seg int) []byte {
	for j := 0; n > 0 && j < len(bufs); j++ {
		l := min(n, scatterLen(len(bufs[j]), seg, j == len(bufs)-1))
		dst = append(dst, bufs[j][:l]...)
		n -= l
	}
	return dst
}

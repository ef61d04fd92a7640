package hostfw

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/google/nftables"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// nftBatch writes one nf_tables transaction. google/nftables encodes it
// (tables, chains, sets, rules and their expressions); nftBatch sends the
// encoded batch in one sendmsg and reads the kernel's answers in a plain
// loop of blocking recvmsg calls.
//
// Why not google/nftables's own Flush: it reads the acknowledgement of
// each message through mdlayher/socket, which starts a goroutine per
// read. A full table is ~16,000 messages: that cost more than the
// kernel's own work (in a thread locked to a network namespace, each
// read also hands the thread over: 1.6 s against 0.5 s). The Conn
// hands its encoded messages to nftBatch through its dial hook
// (WithTestDial, the one way the library gives them out) and believes
// every message acknowledged; the real answers are read by commit.
type nftBatch struct {
	conn *nftables.Conn
	msgs []netlink.Message
}

// newNftBatch is a Conn whose Flush only collects the batch.
func newNftBatch() (*nftBatch, error) {
	b := &nftBatch{}
	c, err := nftables.New(nftables.WithTestDial(b.collect))
	if err != nil {
		return nil, fmt.Errorf("nftables: %w", err)
	}
	b.conn = c
	return b, nil
}

// collect keeps what Flush sends and answers every read with a success
// acknowledgement (nil req: Flush reading the next message's ack).
func (b *nftBatch) collect(req []netlink.Message) ([]netlink.Message, error) {
	b.msgs = append(b.msgs, req...)
	return []netlink.Message{{Header: netlink.Header{Type: netlink.Error}, Data: make([]byte, 4)}}, nil
}

// commit encodes the queued operations and runs them as one transaction:
// all of it applies or (on any error) none of it.
func (b *nftBatch) commit() error {
	b.msgs = nil
	if err := b.conn.Flush(); err != nil {
		return err // an encoding error: nothing was sent
	}
	if len(b.msgs) == 0 {
		return nil
	}
	return sendBatch(b.msgs)
}

// sendBatch sends msgs (BATCH_BEGIN ... BATCH_END) on a netfilter socket
// of its own and waits for the last message's acknowledgement or the
// first error (the kernel then aborts the whole transaction).
func sendBatch(msgs []netlink.Message) error {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_NETFILTER)
	if err != nil {
		return fmt.Errorf("netfilter socket: %w", err)
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fmt.Errorf("bind netfilter socket: %w", err)
	}
	// Only the last message that asks for an answer keeps asking: the
	// kernel answers errors whatever the flags, in the order it met them,
	// and the last acknowledgement comes after all of them. One answer
	// instead of ~16,000 for a full table (each an skb for the kernel to
	// build and for us to read).
	last := -1
	for i, m := range msgs {
		if m.Header.Flags&netlink.Acknowledge != 0 {
			last = i
		}
	}
	var buf []byte
	acks := map[uint32]int{} // sequence number -> index of the message
	seq := uint32(time.Now().UnixNano())
	for i := range msgs {
		m := msgs[i]
		m.Header.Sequence, m.Header.PID = seq+uint32(i), 0
		if i == last {
			acks[m.Header.Sequence] = i
		} else {
			m.Header.Flags &^= netlink.Acknowledge
		}
		raw, err := m.MarshalBinary()
		if err != nil {
			return fmt.Errorf("encode message %d: %w", i, err)
		}
		buf = append(buf, raw...)
	}
	// The send buffer must hold the whole batch, the receive buffer the
	// answers the kernel queues while it runs the batch inside sendmsg.
	// SO_*BUFFORCE passes the sysctl caps (root, as writing rules is).
	// NETLINK_CAP_ACK: an error answer does not echo the failed message.
	size := len(buf) + 1<<20
	for _, o := range [][2]int{{unix.SOL_SOCKET, unix.SO_SNDBUFFORCE}, {unix.SOL_SOCKET, unix.SO_RCVBUFFORCE}} {
		if err := unix.SetsockoptInt(fd, o[0], o[1], size); err != nil {
			return fmt.Errorf("netfilter socket buffers of %d bytes: %w", size, err)
		}
	}
	_ = unix.SetsockoptInt(fd, unix.SOL_NETLINK, unix.NETLINK_CAP_ACK, 1)
	// A kernel that never answers must not hang the sync forever.
	tv := unix.NsecToTimeval(int64(10 * time.Second))
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		return fmt.Errorf("netfilter socket timeout: %w", err)
	}
	if err := unix.Sendto(fd, buf, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fmt.Errorf("send batch of %d messages: %w", len(msgs), err)
	}
	return readAnswers(fd, acks, msgs, seq)
}

// readAnswers reads until every message in acks is answered; the first
// error answer is returned, naming the message it is about (any message:
// errors come whether asked for or not).
func readAnswers(fd int, acks map[uint32]int, msgs []netlink.Message, seq0 uint32) error {
	rbuf := make([]byte, 64<<10)
	for len(acks) > 0 {
		n, _, err := unix.Recvfrom(fd, rbuf, 0)
		if err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			return fmt.Errorf("read answers (%d of %d messages not answered): %w", len(acks), len(msgs), err)
		}
		var m netlink.Message
		for b := rbuf[:n]; len(b) >= unix.NLMSG_HDRLEN; {
			l := int(binary.NativeEndian.Uint32(b[:4]))
			if l < unix.NLMSG_HDRLEN || l > len(b) {
				return fmt.Errorf("malformed answer of %d bytes", l)
			}
			if err := m.UnmarshalBinary(b[:l]); err != nil {
				return fmt.Errorf("decode answer: %w", err)
			}
			b = b[min(nlAlign(l), len(b)):]
			if m.Header.Type != netlink.Error || len(m.Data) < 4 {
				continue
			}
			i := int(m.Header.Sequence - seq0)
			if code := int32(binary.NativeEndian.Uint32(m.Data[:4])); code != 0 {
				what := "the batch"
				if i >= 0 && i < len(msgs) {
					what = fmt.Sprintf("message %d of %d (%s)", i, len(msgs), nftMsgName(msgs[i]))
				}
				return fmt.Errorf("%s: %w", what, unix.Errno(-code))
			}
			delete(acks, m.Header.Sequence)
		}
	}
	return nil
}

func nlAlign(n int) int { return (n + unix.NLMSG_ALIGNTO - 1) &^ (unix.NLMSG_ALIGNTO - 1) }

// nftMsgName names an nf_tables message type for errors.
func nftMsgName(m netlink.Message) string {
	names := map[int]string{
		unix.NFT_MSG_NEWTABLE: "add table", unix.NFT_MSG_DELTABLE: "delete table",
		unix.NFT_MSG_NEWCHAIN: "add chain", unix.NFT_MSG_DELCHAIN: "delete chain",
		unix.NFT_MSG_NEWRULE: "add rule", unix.NFT_MSG_DELRULE: "delete rule",
		unix.NFT_MSG_NEWSET: "add set", unix.NFT_MSG_DELSET: "delete set",
		unix.NFT_MSG_NEWSETELEM: "add set elements", unix.NFT_MSG_DELSETELEM: "delete set elements",
	}
	if s, ok := names[int(m.Header.Type)&0xff]; ok {
		return s
	}
	return fmt.Sprintf("type %#x", int(m.Header.Type))
}

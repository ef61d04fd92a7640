package hostfw

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
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
	// tableFlags go into every table the batch adds (nftowner.go).
	tableFlags uint32
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

// commit encodes the queued operations and runs them as one transaction
// on sock (nil: a socket of its own): all of it applies or (on any error)
// none of it.
func (b *nftBatch) commit(sock *nfSocket) error {
	b.msgs = nil
	if err := b.conn.Flush(); err != nil {
		return err // an encoding error: nothing was sent
	}
	if len(b.msgs) == 0 {
		return nil
	}
	if b.tableFlags != 0 {
		if err := withTableFlags(b.msgs, b.tableFlags); err != nil {
			return err
		}
	}
	if sock == nil {
		s, err := openNfSocket()
		if err != nil {
			return err
		}
		defer s.close()
		sock = s
	}
	return sock.send(b.msgs)
}

// nfSocket is a netfilter netlink socket of ours: batches go out on it
// and their answers come back on it. With table ownership one lives as
// long as the process (nftowner.go).
type nfSocket struct {
	mu  sync.Mutex
	fd  int
	seq uint32
}

func openNfSocket() (*nfSocket, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_NETFILTER)
	if err != nil {
		return nil, fmt.Errorf("netfilter socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("bind netfilter socket: %w", err)
	}
	// NETLINK_CAP_ACK: an error answer does not echo the failed message.
	_ = unix.SetsockoptInt(fd, unix.SOL_NETLINK, unix.NETLINK_CAP_ACK, 1)
	// A kernel that never answers must not hang the sync forever.
	tv := unix.NsecToTimeval(int64(10 * time.Second))
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("netfilter socket timeout: %w", err)
	}
	return &nfSocket{fd: fd, seq: uint32(time.Now().UnixNano())}, nil
}

func (s *nfSocket) close() { unix.Close(s.fd) }

// send sends msgs (BATCH_BEGIN ... BATCH_END) and waits for the last
// message's acknowledgement or the first error (the kernel then aborts
// the whole transaction).
func (s *nfSocket) send(msgs []netlink.Message) error {
	s.mu.Lock()
	defer s.mu.Unlock()
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
	size := 0
	for _, m := range msgs {
		size += nlAlign(unix.NLMSG_HDRLEN + len(m.Data))
	}
	buf := make([]byte, 0, size)
	acks := map[uint32]int{} // sequence number -> index of the message
	seq := s.seq
	s.seq += uint32(len(msgs))
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
	size = len(buf) + 1<<20
	for _, o := range [][2]int{{unix.SOL_SOCKET, unix.SO_SNDBUFFORCE}, {unix.SOL_SOCKET, unix.SO_RCVBUFFORCE}} {
		if err := unix.SetsockoptInt(s.fd, o[0], o[1], size); err != nil {
			return fmt.Errorf("netfilter socket buffers of %d bytes: %w", size, err)
		}
	}
	if err := unix.Sendto(s.fd, buf, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fmt.Errorf("send batch of %d messages: %w", len(msgs), err)
	}
	return readAnswers(s.fd, acks, msgs, seq)
}

// generation asks the kernel for the ruleset generation (NFT_MSG_GETGEN)
// on this socket: plain blocking calls, no goroutine per read (the
// library's round trip cost 4-6 ms per sync in a namespace-locked thread).
func (s *nfSocket) generation() (uint32, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	seq := s.seq
	s.seq++
	data := []byte{unix.AF_UNSPEC, unix.NFNETLINK_V0, 0, 0} // nfgenmsg
	req, err := (&netlink.Message{
		Header: netlink.Header{Length: uint32(unix.NLMSG_HDRLEN + len(data)),
			Type: netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_GETGEN), Flags: netlink.Request, Sequence: seq},
		Data: data,
	}).MarshalBinary()
	if err != nil {
		return 0, fmt.Errorf("encode the generation request: %w", err)
	}
	if err := unix.Sendto(s.fd, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return 0, fmt.Errorf("ask the ruleset generation: %w", err)
	}
	var gen uint32
	err = readMessages(s.fd, make([]byte, 8<<10), func(m *netlink.Message) (bool, error) {
		if m.Header.Sequence != seq {
			return false, nil // an answer to an earlier batch that failed early
		}
		if m.Header.Type == netlink.Error {
			if len(m.Data) >= 4 {
				if code := int32(binary.NativeEndian.Uint32(m.Data[:4])); code != 0 {
					return true, fmt.Errorf("ruleset generation: %w", unix.Errno(-code))
				}
			}
			return false, nil
		}
		if len(m.Data) < 4 {
			return false, nil
		}
		ad, err := netlink.NewAttributeDecoder(m.Data[4:])
		if err != nil {
			return true, err
		}
		ad.ByteOrder = binary.BigEndian
		for ad.Next() {
			if ad.Type() == unix.NFTA_GEN_ID {
				gen = ad.Uint32()
				return true, nil
			}
		}
		return true, errors.New("no generation id in the answer")
	})
	if err != nil {
		return 0, fmt.Errorf("read the ruleset generation: %w", err)
	}
	return gen, nil
}

// readAnswers reads until every message in acks is answered; the first
// error answer is returned, naming the message it is about (any message:
// errors come whether asked for or not).
func readAnswers(fd int, acks map[uint32]int, msgs []netlink.Message, seq0 uint32) error {
	if len(acks) == 0 {
		return nil
	}
	var refused error // the first message the kernel refused
	err := readMessages(fd, make([]byte, 64<<10), func(m *netlink.Message) (bool, error) {
		if m.Header.Type != netlink.Error || len(m.Data) < 4 {
			return false, nil
		}
		i := int(m.Header.Sequence - seq0)
		if i < 0 || i >= len(msgs) {
			return false, nil // an answer to an earlier batch that failed early
		}
		if code := int32(binary.NativeEndian.Uint32(m.Data[:4])); code != 0 {
			refused = fmt.Errorf("message %d of %d (%s): %w", i, len(msgs), nftMsgName(msgs[i]), unix.Errno(-code))
			return true, nil
		}
		delete(acks, m.Header.Sequence)
		return len(acks) == 0, nil
	})
	if err != nil {
		return fmt.Errorf("read answers (%d of %d messages not answered): %w", len(acks), len(msgs), err)
	}
	return refused
}

// readMessages reads netlink datagrams from fd into rbuf and hands their
// messages, one by one, to each until it says done or fails.
func readMessages(fd int, rbuf []byte, each func(m *netlink.Message) (done bool, err error)) error {
	for {
		n, _, err := unix.Recvfrom(fd, rbuf, 0)
		if err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			return err
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
			if done, err := each(&m); done || err != nil {
				return err
			}
		}
	}
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

package netnstest

import (
	"fmt"
	"io"
	"net"
	"testing"
	"time"
)

// TCPEcho serves a TCP echo on addr inside the namespace ns until the test
// ends.
func TCPEcho(tb testing.TB, ns, addr string) net.Listener {
	tb.Helper()
	var l net.Listener
	if err := In(ns, func() (err error) { l, err = net.Listen("tcp", addr); return err }); err != nil {
		tb.Fatalf("listen %s in %s: %v", addr, ns, err)
	}
	tb.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); io.Copy(c, c) }()
		}
	}()
	return l
}

// DialTCP dials addr from inside the namespace ns, giving up after timeout.
func DialTCP(ns, addr string, timeout time.Duration) (net.Conn, error) {
	var c net.Conn
	err := In(ns, func() (err error) {
		c, err = net.DialTimeout("tcp", addr, timeout)
		return err
	})
	return c, err
}

// EchoRoundTrip sends msg over a new connection to the echo on addr from
// the namespace ns and checks that msg comes back (within 5 s to connect,
// 10 s to send and receive).
func EchoRoundTrip(ns, addr, msg string) error {
	c, err := DialTCP(ns, addr, 5*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, msg); err != nil {
		return err
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil {
		return err
	}
	if string(buf) != msg {
		return fmt.Errorf("echo returned %q, want %q", buf, msg)
	}
	return nil
}

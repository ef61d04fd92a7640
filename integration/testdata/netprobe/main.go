// Command netprobe is a static test tool for the busybox test image:
//
//	netprobe listen PORT FILE          append "SOURCE PAYLOAD" of each UDP datagram to FILE
//	netprobe send SRC DST:PORT PAYLOAD send PAYLOAD three times; SRC "-" is the task's own
//	                                   address, anything else is forged in a raw IPv4
//	                                   header (needs CAP_NET_RAW)
//	netprobe dial HOST:PORT            exit 0 when a TCP connection opens within 3 s
package main

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"os"
	"time"

	"golang.org/x/net/ipv4"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "netprobe:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	switch {
	case len(args) == 3 && args[0] == "listen":
		return listen(args[1], args[2])
	case len(args) == 4 && args[0] == "send":
		return send(args[1], args[2], args[3])
	case len(args) == 2 && args[0] == "dial":
		c, err := net.DialTimeout("tcp4", args[1], 3*time.Second)
		if err != nil {
			return err
		}
		return c.Close()
	}
	return fmt.Errorf("usage: netprobe listen PORT FILE | send SRC DST:PORT PAYLOAD | dial HOST:PORT")
}

func listen(port, file string) error {
	conn, err := net.ListenPacket("udp4", ":"+port)
	if err != nil {
		return err
	}
	buf := make([]byte, 1500)
	for {
		n, from, err := conn.ReadFrom(buf)
		if err != nil {
			return err
		}
		f, err := os.OpenFile(file, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
		if err != nil {
			return err
		}
		fmt.Fprintf(f, "%s %s\n", from.(*net.UDPAddr).IP, buf[:n])
		f.Close()
	}
}

func send(src, dst, payload string) error {
	to, err := netip.ParseAddrPort(dst)
	if err != nil {
		return err
	}
	if src == "-" {
		c, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(to))
		if err != nil {
			return err
		}
		defer c.Close()
		for range 3 {
			if _, err := c.Write([]byte(payload)); err != nil {
				return err
			}
			time.Sleep(50 * time.Millisecond)
		}
		return nil
	}
	from, err := netip.ParseAddr(src)
	if err != nil {
		return err
	}
	pc, err := net.ListenPacket("ip4:udp", "0.0.0.0")
	if err != nil {
		return fmt.Errorf("raw socket (needs CAP_NET_RAW): %w", err)
	}
	defer pc.Close()
	raw, err := ipv4.NewRawConn(pc)
	if err != nil {
		return err
	}
	// UDP header; checksum 0 (none) is valid over IPv4.
	udp := make([]byte, 8+len(payload))
	binary.BigEndian.PutUint16(udp[0:], 40000)
	binary.BigEndian.PutUint16(udp[2:], to.Port())
	binary.BigEndian.PutUint16(udp[4:], uint16(len(udp)))
	copy(udp[8:], payload)
	h := &ipv4.Header{Version: 4, Len: ipv4.HeaderLen, TotalLen: ipv4.HeaderLen + len(udp), TTL: 64,
		Protocol: 17, Src: net.IP(from.AsSlice()), Dst: net.IP(to.Addr().AsSlice())}
	for i := range 3 {
		h.ID = 1000 + i
		if err := raw.WriteTo(h, udp, nil); err != nil {
			return err
		}
		time.Sleep(50 * time.Millisecond)
	}
	return nil
}

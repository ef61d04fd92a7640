package tunnel

import (
	"bufio"
	"encoding/hex"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// peerState is one peer as the running device reports it over UAPI `get`:
// the source of truth for diffs and health, including endpoints the peer
// roamed to and handshakes that happened since the last SetPeers.
type peerState struct {
	PublicKey     Key
	Endpoint      netip.AddrPort
	AllowedIPs    []netip.Prefix
	Keepalive     time.Duration
	LastHandshake time.Time // zero: never
	RxBytes       int64
	TxBytes       int64
}

// parseUAPIGet reads the peers out of a UAPI `get` response (the body only,
// without the trailing errno line, as device.IpcGet returns it).
func parseUAPIGet(text string) ([]peerState, error) {
	var (
		peers []peerState
		cur   *peerState
		sec   int64
		nsec  int64
	)
	flush := func() {
		if cur == nil {
			return
		}
		if sec != 0 || nsec != 0 {
			cur.LastHandshake = time.Unix(sec, nsec)
		}
		peers = append(peers, *cur)
		cur, sec, nsec = nil, 0, 0
	}
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		line := sc.Text()
		if line == "" {
			continue
		}
		key, value, ok := strings.Cut(line, "=")
		if !ok {
			return nil, fmt.Errorf("uapi get: malformed line %q", line)
		}
		if key == "public_key" {
			flush()
			k, err := parseHexKey(value)
			if err != nil {
				return nil, fmt.Errorf("uapi get: public_key: %w", err)
			}
			cur = &peerState{PublicKey: k}
			continue
		}
		if cur == nil {
			continue // device-level keys: private_key, listen_port, fwmark
		}
		var err error
		switch key {
		case "endpoint":
			var ap netip.AddrPort
			ap, err = netip.ParseAddrPort(value)
			cur.Endpoint = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
		case "allowed_ip":
			var p netip.Prefix
			p, err = netip.ParsePrefix(value)
			cur.AllowedIPs = append(cur.AllowedIPs, p.Masked())
		case "persistent_keepalive_interval":
			var s int64
			s, err = strconv.ParseInt(value, 10, 64)
			cur.Keepalive = time.Duration(s) * time.Second
		case "last_handshake_time_sec":
			sec, err = strconv.ParseInt(value, 10, 64)
		case "last_handshake_time_nsec":
			nsec, err = strconv.ParseInt(value, 10, 64)
		case "rx_bytes":
			cur.RxBytes, err = strconv.ParseInt(value, 10, 64)
		case "tx_bytes":
			cur.TxBytes, err = strconv.ParseInt(value, 10, 64)
		}
		if err != nil {
			return nil, fmt.Errorf("uapi get: %s: %w", key, err)
		}
	}
	flush()
	return peers, sc.Err()
}

func parseHexKey(s string) (Key, error) {
	var k Key
	b, err := hex.DecodeString(s)
	if err != nil {
		return k, err
	}
	if len(b) != len(k) {
		return k, fmt.Errorf("key is %d bytes, want %d", len(b), len(k))
	}
	copy(k[:], b)
	return k, nil
}

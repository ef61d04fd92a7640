package api

import (
	"encoding/base64"
	"net/netip"
	"strings"
	"testing"
)

func TestNodeInfoRelayAddress(t *testing.T) {
	key := make([]byte, 32)
	key[0] = 9 // the X25519 base point: a valid key
	n := NodeInfo{Name: "w1", Role: "worker", Endpoint: netip.MustParseAddrPort("192.0.2.1:51820"),
		PublicKey: base64.StdEncoding.EncodeToString(key)}
	for relay, ok := range map[string]bool{"": true, "192.0.2.1:7946": true, "relay.example:7946": false, "192.0.2.1": false, "192.0.2.1:0": false} {
		n.Relay = relay
		err := n.Validate()
		if ok != (err == nil) {
			t.Errorf("relay %q: %v", relay, err)
		}
		if err != nil && !strings.Contains(err.Error(), "relay address") {
			t.Errorf("relay %q: error %q does not name the relay address", relay, err)
		}
	}
}

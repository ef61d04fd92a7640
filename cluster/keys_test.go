package cluster

import (
	"encoding/base64"
	"encoding/hex"
	"net/http"
	"net/netip"
	"strings"
	"testing"

	"github.com/warren-appliance/warren/cluster/api"
	"github.com/warren-appliance/warren/cluster/clustermap"
	"github.com/warren-appliance/warren/cluster/internal/clustertest"
)

func mustAddrPort(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

// Keys whose shared secret with anyone is zero: WireGuard refuses them, and
// before the fix one of them in the map froze every node's mesh.
var badWGKeys = map[string]string{
	"all zero": base64.StdEncoding.EncodeToString(make([]byte, 32)),
	"order 8":  b64hex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
	"p-1":      b64hex("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
}

func b64hex(h string) string {
	b, _ := hex.DecodeString(h)
	return base64.StdEncoding.EncodeToString(b)
}

func TestJoinRefusesZeroAndLowOrderWireGuardKeys(t *testing.T) {
	tm := startManager(t)
	secret := tokenSecret(t, tm.workerToken())
	for what, key := range badWGKeys {
		req, _ := rawJoinRequest(t, secret, "evil", clustermap.RoleWorker, key)
		status, msg := nodeAPICall(t, tm.addr, http.MethodPost, api.PathJoin, req, nil)
		if status != http.StatusBadRequest || !strings.Contains(msg, "WireGuard public key") {
			t.Errorf("join with %s key: %d %q, want 400 naming the WireGuard key", what, status, msg)
		}
	}
	if n := len(tm.m.Map().Nodes); n != 1 {
		t.Fatalf("map has %d nodes after refused joins", n)
	}
}

func TestSelfUpdateRefusesZeroAndLowOrderWireGuardKeys(t *testing.T) {
	tm := startManager(t)
	secret := tokenSecret(t, tm.workerToken())
	req, key := rawJoinRequest(t, secret, "worker-1", clustermap.RoleWorker, clustertest.WGKey(t))
	var resp api.JoinResponse
	status, body := nodeAPICall(t, tm.addr, http.MethodPost, api.PathJoin, req, nil)
	if status != http.StatusOK {
		t.Fatalf("join: %d %s", status, body)
	}
	mustJSON(t, body, &resp)
	cert := certPair(resp.Certificate, key)
	for what, k := range badWGKeys {
		upd := api.SelfUpdate{Endpoint: req.Endpoint, PublicKey: k}
		status, msg := nodeAPICall(t, tm.addr, http.MethodPut, api.PathSelf, upd, certs(cert))
		if status != http.StatusBadRequest || !strings.Contains(msg, "WireGuard public key") {
			t.Errorf("self update to %s key: %d %q, want 400", what, status, msg)
		}
	}
	n, _ := tm.m.Map().Node(resp.Node.ID)
	if n.PublicKey != req.PublicKey {
		t.Fatalf("key in the map changed to %q", n.PublicKey)
	}
}

package cluster

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/warren-appliance/warren/cluster/api"
	"github.com/warren-appliance/warren/cluster/pki"
)

// relayDial opens the relay's TLS leg on a manager's API port with cert and
// returns what the relay handler wrote ("" when refused) and the node ID
// in the manager's certificate.
func relayDial(t *testing.T, addr string, cert tls.Certificate) (string, string) {
	t.Helper()
	conf := &tls.Config{InsecureSkipVerify: true, Certificates: []tls.Certificate{cert}, NextProtos: []string{api.ALPNRelay}}
	c, err := tls.Dial("tcp", addr, conf)
	if err != nil {
		return "", ""
	}
	defer c.Close()
	st := c.ConnectionState()
	cn := ""
	if len(st.PeerCertificates) > 0 {
		cn = st.PeerCertificates[0].Subject.CommonName
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	b, _ := io.ReadAll(c)
	return string(b), cn
}

// TestRelayLegOnTheAPIPort: the API port hands relay connections (ALPN
// warren-relay/1) of members only to the relay handler, with the member's
// node ID from its certificate, and presents the manager's own certificate
// (its node ID) to them; the map carries the relay address a node gives.
func TestRelayLegOnTheAPIPort(t *testing.T) {
	tm := startManager(t)
	got := make(chan string, 4)
	tm.m.SetRelayHandler(func(_ context.Context, c net.Conn, id string) {
		got <- id
		io.WriteString(c, "relay:"+id)
		c.Close()
	})
	cfg := agentConfig(t, tm, "worker-1")
	cfg.Node.Relay = "192.0.2.10:7946"
	w := join(t, cfg)
	wid := w.Self().ID
	if n, ok := tm.m.Map().Node(wid); !ok || n.Relay != "192.0.2.10:7946" {
		t.Fatalf("map node %+v: want the relay address the node gave", n)
	}
	cert := agentCert(t, cfg.StateDir)

	out, cn := relayDial(t, tm.addr, cert)
	if out != "relay:"+wid {
		t.Fatalf("member's relay connection: got %q, want the handler with its node ID %s", out, wid)
	}
	if cn != tm.m.Self().ID {
		t.Fatalf("the API port presented %q to a relay client, want the manager's node ID %s", cn, tm.m.Self().ID)
	}
	// The manager's own certificate (the first manager has no other).
	if out, _ := relayDial(t, tm.addr, *tm.m.NodeCertificate()); out != "relay:"+tm.m.Self().ID {
		t.Fatalf("the manager's own relay connection: %q", out)
	}

	// Another cluster's certificate for the same node ID: refused.
	ca, err := pki.NewCA("other", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	key, _ := pki.NewKey()
	csr, _ := pki.NewCSR(key, wid)
	forged, err := ca.SignNode(csr, wid, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if out, _ := relayDial(t, tm.addr, tls.Certificate{Certificate: [][]byte{forged.Raw}, PrivateKey: key}); out != "" {
		t.Fatalf("another CA's certificate reached the relay: %q", out)
	}

	// A removed node: refused.
	if err := tm.m.RemoveNode("worker-1", true); err != nil {
		t.Fatal(err)
	}
	if out, _ := relayDial(t, tm.addr, cert); out != "" {
		t.Fatalf("a removed node reached the relay: %q", out)
	}

	// No handler (relay.enable = false): the protocol is not offered.
	tm.m.SetRelayHandler(nil)
	conf := &tls.Config{InsecureSkipVerify: true, Certificates: []tls.Certificate{*tm.m.NodeCertificate()}, NextProtos: []string{api.ALPNRelay}}
	if c, err := tls.Dial("tcp", tm.addr, conf); err == nil || !strings.Contains(err.Error(), "no application protocol") {
		if c != nil {
			c.Close()
		}
		t.Fatalf("a manager without relay handler: %v, want the handshake to fail with no application protocol", err)
	}
	// Other clients (the node API) still work.
	if _, err := tls.Dial("tcp", tm.addr, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"http/1.1"}}); err != nil {
		t.Fatalf("the node API's TLS after the relay was turned off: %v", err)
	}
	if n := len(got); n != 2 {
		t.Fatalf("handler called %d times, want 2", n)
	}
}

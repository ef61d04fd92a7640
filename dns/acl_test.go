package dns

import (
	"net"
	"net/netip"
	"testing"
	"time"

	miekg "github.com/miekg/dns"
)

// askFrom queries server from source address src; nil when no answer came.
func askFrom(t *testing.T, server, network, src, name string) *miekg.Msg {
	t.Helper()
	var local net.Addr = &net.UDPAddr{IP: net.ParseIP(src)}
	if network == "tcp" {
		local = &net.TCPAddr{IP: net.ParseIP(src)}
	}
	c := &miekg.Client{Net: network, Timeout: 2 * time.Second, Dialer: &net.Dialer{LocalAddr: local, Timeout: 2 * time.Second}}
	m := new(miekg.Msg)
	m.SetQuestion(name, miekg.TypeA)
	resp, _, err := c.Exchange(m, server)
	if err != nil {
		return nil
	}
	return resp
}

// Finding 11: the node's DNS answered anyone who could reach it (a LAN
// neighbour routing the container block to the node). It answers only the
// configured sources and the cluster's ranges from the records.
func TestAnswersOnlyAllowedSources(t *testing.T) {
	s, addr := startServer(t, Config{Allow: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}})
	s.Update(sampleRecords)
	for _, network := range []string{"udp", "tcp"} {
		if resp := askFrom(t, addr, network, "127.0.0.1", "nginx.warren.local."); resp == nil || len(resp.Answer) != 1 {
			t.Fatalf("%s: allowed source got %v", network, resp)
		}
		if resp := askFrom(t, addr, network, "127.0.0.2", "nginx.warren.local."); resp != nil {
			t.Fatalf("%s: a source outside the allowed ranges got an answer: %v", network, resp)
		}
		if resp := askFrom(t, addr, network, "127.0.0.2", "example.com."); resp != nil {
			t.Fatalf("%s: a source outside the allowed ranges got a forwarded answer: %v", network, resp)
		}
	}
	// The cluster's ranges come with the records (from the map).
	r := sampleRecords
	r.Clients = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/30")}
	s.Update(r)
	if resp := askFrom(t, addr, "udp", "127.0.0.2", "nginx.warren.local."); resp == nil || len(resp.Answer) != 1 {
		t.Fatalf("a source inside the records' client ranges got %v", resp)
	}
}

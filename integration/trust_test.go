package integration

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	miekg "github.com/miekg/dns"

	"github.com/warren-appliance/warren/integration/lab"
)

// nodeInspect is the part of `warren node inspect NAME --json` these
// tests read.
type nodeInspect struct {
	Status      string    `json:"status"`
	OverlayIP   string    `json:"overlay_ip"`
	CertExpires time.Time `json:"cert_expires"`
}

func inspectNode(ctx context.Context, m *lab.Node, name string) (nodeInspect, error) {
	var v nodeInspect
	out, err := m.Exec(ctx, "warren", "node", "inspect", name, "--json")
	if err != nil {
		return v, fmt.Errorf("node inspect %s: %w: %s", name, err, out)
	}
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		return v, fmt.Errorf("node inspect %s --json: %w: %s", name, err, out)
	}
	return v, nil
}

// Issue "hardening", done-when: with a 2-minute cluster.cert_lifetime the
// nodes stay ready for several lifetimes; a worker switched off past its
// certificate's expiry (its token rotated out and removed from its config)
// comes back by itself with the same overlay IP; a service's env is on disk
// only on the nodes running its tasks; the appliance's own ports are
// refused by name; 300 slow unauthenticated connections are closed within
// 45 s; a LAN host gets no answer from a node's DNS.
func TestTrustShortCertificatesEnvPortsSlowClientsDNS(t *testing.T) {
	l := newLab(t)
	start := time.Now()
	c := startCluster(t, l, lab.ClusterOptions{Workers: 2, Images: []string{imageTarball(t)}, ClusterExtra: "cert_lifetime = \"2m\"\n"})
	m, w1, w2 := c.Manager, c.Workers[0], c.Workers[1]
	ctx := ctxFor(t, 15*time.Minute)

	// Env: only worker-1 runs the service, only worker-1 stores its env.
	const secret = "lab-s3cr3t-4711"
	createService(t, c, "vault", append([]string{"--replicas", "1", "--constraint", "node.name==worker-1", "--env", "TOKEN=" + secret}, httpdCommand...)...)
	waitRunning(t, c, "vault", 1)
	for _, n := range []*lab.Node{w1, w2} {
		out, _ := n.Sh(ctx, "grep -rl "+secret+" /var/lib/warren /var/lib/containerd 2>/dev/null; true")
		found := strings.TrimSpace(out) != ""
		if found != (n == w1) {
			t.Errorf("%s: env on disk = %v (files: %q), want %v", n.Name, found, out, n == w1)
		}
	}

	// Reserved ports, refused by name.
	for _, c := range []struct{ publish, want string }{
		{"51820:80/udp", "51820/udp is reserved"},
		{"7946:80", "7946/tcp is reserved"},
		{"53:53/udp", "53/udp is reserved"},
		{"9586:80", "9586/tcp is reserved"}, // [metrics] listen
	} {
		out, err := m.Exec(ctx, "warren", "service", "create", "taken", "--image", testImage, "--publish", c.publish)
		if err == nil || !strings.Contains(out, c.want) {
			t.Errorf("--publish %s: err %v, output %q; want a refusal saying %q", c.publish, err, out, c.want)
		}
	}

	// DNS: a LAN host routing the container block to the manager reaches
	// the bridge address but gets no answer from its resolver.
	bridge := "10.0.1.1"
	if _, err := l.Outside.Exec(ctx, "ip", "route", "replace", "10.0.1.0/24", "via", m.LANIP.String()); err != nil {
		t.Fatal(err)
	}
	if out, err := l.Outside.Exec(ctx, "ping", "-c", "1", "-W", "3", bridge); err != nil {
		t.Fatalf("the LAN host does not reach %s at all (no meaningful DNS check): %v %s", bridge, err, out)
	}
	var answer *miekg.Msg
	if err := l.Outside.Do(func() error {
		q := new(miekg.Msg)
		q.SetQuestion("vault.warren.local.", miekg.TypeA)
		answer, _, _ = (&miekg.Client{Net: "udp", Timeout: 3 * time.Second}).Exchange(q, bridge+":53")
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if answer != nil {
		t.Errorf("a LAN host got a DNS answer from %s: %v", bridge, answer)
	}

	// 300 slow unauthenticated connections to the node API, from the LAN.
	slowClientsClosed(t, l, m.LANIP.String()+":7946", 300, 45*time.Second)

	// Certificates: worker-2 is switched off and its token rotated out;
	// the others keep renewing and stay ready.
	before, err := inspectNode(ctx, m, w2.Name)
	if err != nil {
		t.Fatal(err)
	}
	if err := w2.PowerOff(); err != nil {
		t.Fatal(err)
	}
	if out, err := m.Exec(ctx, "warren", "cluster", "join-token", "worker", "--rotate"); err != nil {
		t.Fatalf("rotate: %v %s", err, out)
	}
	w1First, err := inspectNode(ctx, m, w1.Name)
	if err != nil {
		t.Fatal(err)
	}
	// Stay ready while worker-2's certificate runs out.
	observeReady(t, c, []*lab.Node{m, w1}, time.Until(before.CertExpires)+15*time.Second)
	// Its config no longer holds a token either: it proves its key.
	cfgPath := filepath.Join(w2.Root, "etc", "warren.toml")
	raw, err := os.ReadFile(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	var kept []string
	for _, line := range strings.Split(string(raw), "\n") {
		if !strings.HasPrefix(strings.TrimSpace(line), "token") {
			kept = append(kept, line)
		}
	}
	if err := w2.WriteConfig(strings.Join(kept, "\n")); err != nil {
		t.Fatal(err)
	}
	t.Logf("worker-2's certificate expired at %s; booting it without a token", before.CertExpires.Format(time.RFC3339))
	if err := w2.ForgetVolatile(ctx); err != nil {
		t.Fatal(err)
	}
	if err := w2.StartContainerd(ctx); err != nil {
		t.Fatal(err)
	}
	if err := w2.StartAppliance("warren-appliance"); err != nil {
		t.Fatal(err)
	}
	eventually(t, 2*time.Minute, "worker-2 back, ready, with its overlay IP", func() error {
		v, err := inspectNode(ctx, m, w2.Name)
		if err != nil {
			return err
		}
		if v.Status != "ready" || v.OverlayIP != before.OverlayIP || !v.CertExpires.After(before.CertExpires) {
			return fmt.Errorf("worker-2 is %+v, was %+v", v, before)
		}
		// The agent logs the renewal just after it starts using the new
		// certificate: a heartbeat with it can be seen first.
		if log := w2.ApplianceLog(); !strings.Contains(log, "node certificate renewed") {
			return fmt.Errorf("worker-2's log does not show the renewal:\n%s", log)
		}
		return nil
	})
	// Everyone stays ready until three lifetimes have passed since start.
	observeReady(t, c, c.Nodes(), time.Until(start.Add(6*time.Minute+30*time.Second)))
	w1Last, err := inspectNode(ctx, m, w1.Name)
	if err != nil {
		t.Fatal(err)
	}
	renewed := w1Last.CertExpires.Sub(w1First.CertExpires)
	if renewed < 2*time.Minute {
		t.Errorf("worker-1's certificate moved only %s in %s", renewed, time.Since(start).Round(time.Second))
	}
	t.Logf("after %s: every node ready throughout; worker-1's cert_expires moved %s; worker-2 came back as %s",
		time.Since(start).Round(time.Second), renewed.Round(time.Second), before.OverlayIP)
}

// observeReady checks every few seconds for d that each node in nodes is
// listed ready.
func observeReady(t *testing.T, c *lab.Cluster, nodes []*lab.Node, d time.Duration) {
	t.Helper()
	ctx := ctxFor(t, d+time.Minute)
	for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(5 * time.Second) {
		list, err := c.NodeList(ctx)
		if err != nil {
			t.Fatal(err)
		}
		status := map[string]string{}
		for _, n := range list {
			status[n.Name] = n.Status
		}
		for _, n := range nodes {
			if status[n.Name] != "ready" {
				t.Fatalf("%s is %q: %+v", n.Name, status[n.Name], list)
			}
		}
	}
}

// slowClientsClosed opens n TLS connections from the LAN's outside host to
// addr, each sending part of a join request and then nothing, and checks
// that the server has closed all of them within limit.
func slowClientsClosed(t *testing.T, l *lab.Lab, addr string, n int, limit time.Duration) {
	t.Helper()
	conns := make([]net.Conn, 0, n)
	if err := l.Outside.Do(func() error {
		for range n {
			c, err := net.DialTimeout("tcp", addr, 5*time.Second)
			if err != nil {
				return err
			}
			conns = append(conns, c)
		}
		return nil
	}); err != nil {
		for _, c := range conns {
			c.Close()
		}
		t.Fatalf("open %d connections: %v", n, err)
	}
	start := time.Now()
	var wg sync.WaitGroup
	var mu sync.Mutex
	var slowest time.Duration
	for _, raw := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer raw.Close()
			raw.SetDeadline(time.Now().Add(limit + 30*time.Second))
			c := tls.Client(raw, &tls.Config{InsecureSkipVerify: true})
			if c.Handshake() == nil {
				fmt.Fprintf(c, "POST /v1/join HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{\"secret\": \"")
				buf := make([]byte, 512)
				for {
					if _, err := c.Read(buf); err != nil {
						break
					}
				}
			}
			mu.Lock()
			slowest = max(slowest, time.Since(start))
			mu.Unlock()
		}()
	}
	wg.Wait()
	if slowest > limit {
		t.Errorf("the last of %d slow connections was closed after %s, want within %s", n, slowest.Round(time.Second), limit)
	}
	t.Logf("%d slow unauthenticated connections: all closed by the manager within %s", n, slowest.Round(time.Second))
}

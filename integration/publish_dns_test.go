package integration

import (
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	miekg "github.com/miekg/dns"

	"github.com/warren-appliance/warren/integration/lab"
)

// Seed "Port Mapping": --publish 8080:80 answers on every node's address,
// from a host on the LAN that is not a node.
func TestPublishedPortFromOutside(t *testing.T) {
	l := newLab(t)
	c := startCluster(t, l, lab.ClusterOptions{Workers: 2, Images: []string{imageTarball(t)}})
	createService(t, c, "web", append([]string{"--replicas", "3", "--publish", "8080:80"}, httpdCommand...)...)
	v := waitRunning(t, c, "web", 3)
	ctx := ctxFor(t, 2*time.Minute)
	tasks := map[string]bool{}
	for _, task := range v.Tasks {
		tasks[task.Name] = true
	}
	for _, n := range c.Nodes() {
		url := fmt.Sprintf("http://%s:8080/", n.LANIP)
		seen := map[string]bool{}
		eventually(t, 60*time.Second, "outside reaches every task through "+url, func() error {
			out, err := l.Outside.Exec(ctx, "curl", "-sS", "-m", "3", url)
			if err != nil {
				return err
			}
			page := trim(out)
			if !tasks[page] {
				return fmt.Errorf("unexpected page %q", page)
			}
			seen[page] = true
			if len(seen) < 3 {
				return fmt.Errorf("seen %v so far", seen)
			}
			return nil
		})
	}
}

// serveOutsideDNS answers every A question with 192.0.2.53 on the outside
// host's port 53: the "host's own resolver" of every lab node.
func serveOutsideDNS(t *testing.T, l *lab.Lab) {
	t.Helper()
	var pc net.PacketConn
	if err := l.Outside.Do(func() error {
		var err error
		pc, err = net.ListenPacket("udp4", lab.RouterIP.String()+":53")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	srv := &miekg.Server{PacketConn: pc, Handler: miekg.HandlerFunc(func(w miekg.ResponseWriter, r *miekg.Msg) {
		m := new(miekg.Msg)
		m.SetReply(r)
		for _, q := range r.Question {
			if q.Qtype == miekg.TypeA {
				rr, _ := miekg.NewRR(q.Name + " 60 IN A 192.0.2.53")
				m.Answer = append(m.Answer, rr)
			}
		}
		w.WriteMsg(m)
	})}
	go srv.ActivateAndServe()
	t.Cleanup(func() { srv.Shutdown() })
}

// Seed "Future: DNS-based (M6)": from a task on each node, the service name
// gives the VIP, a task name gives that task's IP, and outside names are
// forwarded to the host's resolver.
func TestDNSNamesFromTasks(t *testing.T) {
	l := newLab(t)
	serveOutsideDNS(t, l)
	c := startCluster(t, l, lab.ClusterOptions{Workers: 2, Images: []string{imageTarball(t)}})
	createService(t, c, "web", append([]string{"--replicas", "3"}, httpdCommand...)...)
	v := waitRunning(t, c, "web", 3)
	ctx := ctxFor(t, 3*time.Minute)
	ips := map[string]string{}
	for _, task := range v.Tasks {
		ips[task.Name] = task.IP
	}
	for _, task := range v.Tasks {
		n := nodeByName(c, task.Node)
		lookup := func(name, want string) {
			eventually(t, 20*time.Second, fmt.Sprintf("%s resolves %s to %s", task.Name, name, want), func() error {
				out, err := taskExec(ctx, n, task.Name, "nslookup", name)
				if err != nil {
					return err
				}
				if !strings.Contains(out, "Address: "+want) && !strings.Contains(out, "Address 1: "+want) {
					return fmt.Errorf("nslookup %s:\n%s", name, out)
				}
				return nil
			})
		}
		lookup("web.warren.local", v.VIP)
		lookup("web-2.warren.local", ips["web-2"])
		lookup("web", v.VIP) // short name through the search domain
		lookup("printer.example.org", "192.0.2.53")
		resolv, err := taskExec(ctx, n, task.Name, "cat", "/etc/resolv.conf")
		if err != nil {
			t.Fatal(err)
		}
		if strings.Count(resolv, "nameserver") != 1 || !strings.Contains(resolv, "search warren.local") {
			t.Errorf("%s: resolv.conf must list only the node's resolver and the search domain:\n%s", task.Name, resolv)
		}
	}
	// `warren network dns` resolves as a task would.
	out, err := c.Manager.Exec(ctx, "warren", "network", "dns", "web")
	if err != nil || !strings.Contains(out, v.VIP) {
		t.Errorf("warren network dns web: %v\n%s", err, out)
	}
	// A removed service's name is gone within a second or so.
	if _, err := c.Manager.Exec(ctx, "warren", "service", "rm", "--detach", "web"); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "web.warren.local answers NXDOMAIN after service rm", func() error {
		out, err := c.Workers[0].Exec(ctx, "warren", "network", "dns", "web.warren.local")
		if err == nil {
			return fmt.Errorf("still resolves: %s", out)
		}
		return nil
	})
}

package integration

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/warren-appliance/warren/integration/lab"
)

// Cluster-wide values (ranges, DNS domain) are decided when the cluster is
// created and reach the other nodes only through the map: workers whose
// configs hold only the defaults route the cluster's VIP range (not their
// own default 10.1.0.0/16) into warren0, and their tasks search and
// resolve the cluster's domain.
func TestClusterWideValuesComeFromTheMap(t *testing.T) {
	l := newLab(t)
	c := startCluster(t, l, lab.ClusterOptions{
		Workers:               2,
		Images:                []string{imageTarball(t)},
		ManagerWireGuardExtra: "subnet = \"172.16.0.0/24\"\n",
		ManagerExtra:          "[network]\ncontainer_subnet = \"172.17.0.0/16\"\nvip_subnet = \"172.18.0.0/16\"\ndns_domain = \"edge.lan\"\n",
	})
	ctx := ctxFor(t, 4*time.Minute)
	nodes, err := c.NodeList(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes {
		if !strings.HasPrefix(n.OverlayIP, "172.16.0.") || !strings.HasPrefix(n.ContainerBlock, "172.17.") {
			t.Errorf("node %s: overlay %s block %s, want them in the cluster's ranges", n.Name, n.OverlayIP, n.ContainerBlock)
		}
	}
	for _, n := range c.Nodes() {
		eventually(t, 30*time.Second, n.Name+" routes the cluster's VIP range into warren0", func() error {
			out, err := n.Exec(ctx, "ip", "-4", "route", "show", "dev", "warren0")
			if err != nil {
				return err
			}
			if !strings.Contains(out, "172.18.0.0/16") || strings.Contains(out, "10.1.0.0/16") {
				return fmt.Errorf("ip route show dev warren0:\n%s", out)
			}
			return nil
		})
	}

	createService(t, c, "web", append([]string{"--replicas", "3"}, httpdCommand...)...)
	v := waitRunning(t, c, "web", 3)
	if !strings.HasPrefix(v.VIP, "172.18.0.") {
		t.Fatalf("VIP %s is not from the cluster's vip_subnet 172.18.0.0/16", v.VIP)
	}
	onNodes := map[string]bool{}
	for _, task := range v.Tasks {
		n := nodeByName(c, task.Node)
		onNodes[task.Node] = true
		resolv, err := taskExec(ctx, n, task.Name, "cat", "/etc/resolv.conf")
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(resolv, "search edge.lan") {
			t.Errorf("%s on %s: resolv.conf does not search the cluster's domain edge.lan:\n%s", task.Name, task.Node, resolv)
		}
		eventually(t, 30*time.Second, fmt.Sprintf("%s resolves web.edge.lan to the VIP %s", task.Name, v.VIP), func() error {
			out, err := taskExec(ctx, n, task.Name, "nslookup", "web.edge.lan")
			if err != nil {
				return fmt.Errorf("%v: %s", err, out)
			}
			if !strings.Contains(out, "Address: "+v.VIP) && !strings.Contains(out, "Address 1: "+v.VIP) {
				return fmt.Errorf("nslookup web.edge.lan:\n%s", out)
			}
			return nil
		})
		eventually(t, 30*time.Second, task.Name+" fetches http://web/", func() error {
			// Not busybox wget: its static glibc cannot resolve names.
			out, err := taskExec(ctx, n, task.Name, "httpget", "http://web/")
			if err != nil {
				return fmt.Errorf("%v: %s", err, out)
			}
			if !strings.HasPrefix(trim(out), "web-") {
				return fmt.Errorf("unexpected page %q", out)
			}
			return nil
		})
	}
	if len(onNodes) != 3 {
		t.Errorf("tasks on %v, want one on every node", onNodes)
	}
}

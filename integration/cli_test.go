package integration

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/warren-appliance/warren/integration/lab"
)

// Seed "WireGuard Configuration (Automatic)", "Future: Custom Configuration"
// and "Collocate Related Services": `warren cluster init` with custom
// ranges, `warren worker start --manager --token`, and constraints.
func TestCLIInitJoinCustomSubnetsAndConstraints(t *testing.T) {
	l := newLab(t)
	ctx := ctxFor(t, 4*time.Minute)
	img := imageTarball(t)
	var nodes []*lab.Node
	for _, name := range []string{"manager-1", "worker-1", "worker-2"} {
		n, err := l.AddNode(name)
		if err != nil {
			t.Fatal(err)
		}
		if err := n.AddImage(img); err != nil {
			t.Fatal(err)
		}
		if err := n.StartContainerd(ctx); err != nil {
			t.Fatal(err)
		}
		// Only what the lab needs; everything else comes from the flags.
		if err := n.WriteConfig(fmt.Sprintf("[runtime]\ncgroup_parent = %q\n", n.CgroupParent())); err != nil {
			t.Fatal(err)
		}
		nodes = append(nodes, n)
	}
	m := nodes[0]
	if err := m.StartAppliance("warren", "cluster", "init", "--name", "manager-1", "--advertise-address", m.LANIP.String(),
		"--wireguard-subnet", "172.16.0.0/16", "--container-subnet", "172.17.0.0/16", "--vip-subnet", "172.18.0.0/16"); err != nil {
		t.Fatal(err)
	}
	var token string
	eventually(t, 30*time.Second, "join token", func() error {
		out, err := m.Exec(ctx, "warren", "cluster", "join-token", "worker", "-q")
		token = trim(out)
		return err
	})
	if !strings.HasPrefix(token, "WRN-1-") || strings.Contains(token, "\n") {
		t.Fatalf("join-token -q printed %q, want the token alone", token)
	}
	// `cluster init` says where to read the join command; the token itself
	// never reaches its output (the journal, under systemd).
	if want := "warren cluster join-token worker"; !strings.Contains(m.ApplianceLog(), want) {
		t.Errorf("cluster init did not print %q:\n%s", want, m.ApplianceLog())
	}
	if strings.Contains(m.ApplianceLog(), token) {
		t.Errorf("cluster init printed the join token:\n%s", m.ApplianceLog())
	}
	for _, w := range nodes[1:] {
		if err := w.StartAppliance("warren", "worker", "start", "--name", w.Name, "--advertise-address", w.LANIP.String(),
			"--manager", m.LANIP.String()+":7946", "--token", token); err != nil {
			t.Fatal(err)
		}
	}
	c := &lab.Cluster{Manager: m, Workers: nodes[1:]}
	eventually(t, 60*time.Second, "three nodes ready in the custom ranges", func() error {
		list, err := c.NodeList(ctx)
		if err != nil {
			return err
		}
		ready := 0
		for _, n := range list {
			if n.Status == "ready" && strings.HasPrefix(n.OverlayIP, "172.16.0.") && strings.HasPrefix(n.ContainerBlock, "172.17.") {
				ready++
			}
		}
		if ready != 3 {
			return fmt.Errorf("%+v", list)
		}
		return nil
	})
	createService(t, c, "cache", append([]string{"--replicas", "2", "--constraint", "node.name==worker-1"}, httpdCommand...)...)
	v := waitRunning(t, c, "cache", 2)
	if !strings.HasPrefix(v.VIP, "172.18.0.") {
		t.Errorf("VIP %s not from --vip-subnet 172.18.0.0/16", v.VIP)
	}
	for _, task := range v.Tasks {
		if task.Node != "worker-1" {
			t.Errorf("task %s on %s, constraint says worker-1", task.Name, task.Node)
		}
	}
	// Same worker: the two tasks talk over the bridge.
	w1 := nodes[1]
	if _, err := taskExec(ctx, w1, v.Tasks[0].Name, "ping", "-c1", "-W2", v.Tasks[1].IP); err != nil {
		t.Errorf("tasks on the same node cannot reach each other over the bridge: %v", err)
	}
	// From the manager, the VIP reaches worker-1's tasks across the mesh.
	eventually(t, 30*time.Second, "manager reaches the custom VIP", func() error {
		_, err := m.Exec(ctx, "curl", "-sS", "-m", "3", "http://"+v.VIP+"/")
		return err
	})

	// A constraint nothing satisfies: the service says why in `service ps`.
	createService(t, c, "nowhere", append([]string{"--constraint", "node.labels.zone==mars"}, httpdCommand...)...)
	eventually(t, 20*time.Second, "service ps explains the unplaceable task", func() error {
		out, err := m.Exec(ctx, "warren", "service", "ps", "nowhere")
		if err != nil {
			return err
		}
		if !strings.Contains(out, "zone") {
			return fmt.Errorf("service ps nowhere:\n%s", out)
		}
		return nil
	})
	// Bad input is refused with a clear error and creates nothing.
	for _, bad := range [][]string{
		{"service", "create", "x", "--image", testImage, "--constraint", "node.zone==a"},
		{"service", "create", "y", "--image", testImage, "--replicas", "-1"},
		{"service", "create", "cache", "--image", testImage},
	} {
		if out, err := m.Exec(ctx, "warren", bad...); err == nil {
			t.Errorf("warren %v accepted:\n%s", bad, out)
		}
	}
	out, err := m.Exec(ctx, "warren", "service", "ls", "--json")
	if err != nil {
		t.Fatal(err)
	}
	var svcs []struct {
		Name string `json:"name"`
	}
	json.Unmarshal([]byte(out), &svcs)
	if len(svcs) != 2 {
		t.Errorf("bad input left services behind: %s", out)
	}
}

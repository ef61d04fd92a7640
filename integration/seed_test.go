package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/warren-appliance/warren/integration/lab"
)

// The seed document's command lines as it writes them (issue 25), on two
// boards: `warren cluster init --enable-mtls`; `warren worker start
// --manager <manager-ip>` (no port: 7946); `warren service create nginx
// ... --replicas 3` and `curl http://nginx-task-1.warren.local`; the
// constraint `node.id==worker-1` refused with the node.name it means; and
// `warren manager join --token <token>` without --manager refused instead
// of creating a second cluster.
func TestSeedCommandsVerbatim(t *testing.T) {
	l := newLab(t)
	ctx := ctxFor(t, 4*time.Minute)
	img := imageTarball(t)
	var nodes []*lab.Node
	for _, name := range []string{"manager-1", "worker-1", "board-3"} {
		n, err := l.AddNode(name)
		if err != nil {
			t.Fatal(err)
		}
		if err := n.WriteConfig(fmt.Sprintf("[runtime]\ncgroup_parent = %q\n", n.CgroupParent())); err != nil {
			t.Fatal(err)
		}
		if name != "board-3" {
			if err := n.AddImage(img); err != nil {
				t.Fatal(err)
			}
			if err := n.StartContainerd(ctx); err != nil {
				t.Fatal(err)
			}
		}
		nodes = append(nodes, n)
	}
	m, w, b3 := nodes[0], nodes[1], nodes[2]
	if err := m.StartAppliance("warren", "cluster", "init", "--enable-mtls"); err != nil {
		t.Fatal(err)
	}
	var token, managerToken string
	eventually(t, time.Minute, "join tokens", func() error {
		out, err := m.Exec(ctx, "warren", "cluster", "join-token", "worker", "-q")
		token = trim(out)
		if err == nil {
			out, err = m.Exec(ctx, "warren", "cluster", "join-token", "manager", "-q")
			managerToken = trim(out)
		}
		return err
	})
	if !strings.Contains(m.ApplianceLog(), "mTLS is always on") {
		t.Errorf("cluster init --enable-mtls did not say that mTLS is always on:\n%s", m.ApplianceLog())
	}
	// The seed's `--manager <manager-ip>`: no port.
	if err := w.StartAppliance("warren", "worker", "start", "--manager", m.LANIP.String(), "--token", token); err != nil {
		t.Fatal(err)
	}
	c := &lab.Cluster{Manager: m, Workers: []*lab.Node{w}}
	eventually(t, 90*time.Second, "both boards ready", func() error {
		_, err := readyNodes(ctx, m, 2)
		return err
	})

	// `manager join` without --manager: refused at once (exit 2), naming
	// the flag; nothing set up on that board.
	out, err := b3.Exec(ctx, "warren", "manager", "join", "--token", managerToken)
	if err == nil || !strings.Contains(out, "--manager") || !strings.Contains(out, "only `warren cluster init` creates") || !strings.Contains(err.Error(), "exit status 2") {
		t.Errorf("manager join without --manager: %v\n%s", err, out)
	}
	if _, err := os.Stat(filepath.Join(b3.Root, "lib", "setup.json")); err == nil {
		t.Errorf("manager join without --manager set the board up")
	}

	createService(t, c, "nginx", append([]string{"--replicas", "3"}, httpdCommand...)...)
	v := waitRunning(t, c, "nginx", 3)
	want := map[string]string{}
	for _, task := range v.Tasks {
		want[task.Name] = task.IP
	}
	// `curl http://nginx-task-1.warren.local`, from a task on each board
	// (httpget: busybox's wget resolves no names in a static build).
	for _, task := range v.Tasks {
		n := nodeByName(c, task.Node)
		for slot := 1; slot <= 3; slot++ {
			name := fmt.Sprintf("nginx-task-%d.warren.local", slot)
			eventually(t, 30*time.Second, task.Name+" fetches http://"+name, func() error {
				got, err := taskExec(ctx, n, task.Name, "httpget", "http://"+name+"/")
				if err == nil && trim(got) != fmt.Sprintf("nginx-%d", slot) {
					err = fmt.Errorf("page %q, want nginx-%d", trim(got), slot)
				}
				return err
			})
		}
	}

	// The seed's constraint names a node by what is its name.
	out, err = m.Exec(ctx, "warren", "service", "create", "app", "--image", testImage, "--replicas", "3", "--constraint", "node.id==worker-1")
	if err == nil || !strings.Contains(out, "did you mean node.name==worker-1?") {
		t.Errorf("constraint node.id==worker-1: %v\n%s", err, out)
	}
	createService(t, c, "app", "--replicas", "2", "--constraint", "node.name==worker-1", "--", "sleep", "3600")
	for _, task := range waitRunning(t, c, "app", 2).Tasks {
		if task.Node != "worker-1" {
			t.Errorf("%s on %s, want worker-1", task.Name, task.Node)
		}
	}
}

package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/warren-appliance/warren/integration/lab"
	"github.com/warren-appliance/warren/internal/testimage"
)

const testImage = "warren.test/busybox:latest"

// httpdCommand serves a page naming the task (its hostname) on port 80.
var httpdCommand = []string{"--", "sh", "-c", "mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 80 -h /www"}

// imageTarball builds the busybox image for a test.
func imageTarball(t *testing.T) string { return imageTarballB(t) }

func imageTarballB(tb testing.TB) string {
	tb.Helper()
	httpget, err := os.ReadFile(httpgetBin)
	if err != nil {
		tb.Fatal(err)
	}
	netprobe, err := os.ReadFile(netprobeBin)
	if err != nil {
		tb.Fatal(err)
	}
	p, err := testimage.BusyboxTarball(tb.TempDir(), testImage, testimage.File{Path: "bin/httpget", Mode: 0o755, Data: httpget},
		testimage.File{Path: "bin/netprobe", Mode: 0o755, Data: netprobe})
	if err != nil {
		tb.Fatal(err)
	}
	return p
}

type serviceView struct {
	Name     string `json:"name"`
	Image    string `json:"image"`
	VIP      string `json:"vip"`
	Replicas int    `json:"replicas"`
	Tasks    []struct {
		Name  string `json:"name"`
		Node  string `json:"node"`
		IP    string `json:"ip"`
		State string `json:"state"`
		Error string `json:"error"`
	} `json:"tasks"`
}

func inspect(ctx context.Context, n *lab.Node, name string) (serviceView, error) {
	var v serviceView
	out, err := n.Exec(ctx, "warren", "service", "inspect", name, "--json")
	if err != nil {
		return v, err
	}
	err = json.Unmarshal([]byte(out), &v)
	return v, err
}

// waitRunning waits until the service has exactly want running tasks.
func waitRunning(t *testing.T, c *lab.Cluster, name string, want int) serviceView {
	t.Helper()
	ctx := ctxFor(t, 3*time.Minute)
	var v serviceView
	eventually(t, 3*time.Minute, fmt.Sprintf("%d tasks of %s running", want, name), func() error {
		var err error
		if v, err = inspect(ctx, c.Manager, name); err != nil {
			return err
		}
		running := 0
		for _, task := range v.Tasks {
			if task.State == "running" {
				running++
			}
		}
		if running != want || len(v.Tasks) != want {
			return fmt.Errorf("%d running of %d tasks: %+v", running, len(v.Tasks), v.Tasks)
		}
		return nil
	})
	return v
}

func createService(t *testing.T, c *lab.Cluster, name string, args ...string) {
	t.Helper()
	ctx := ctxFor(t, time.Minute)
	// --detach: the tests wait for what they check themselves (some
	// services here never converge on purpose).
	argv := append([]string{"service", "create", name, "--detach", "--image", testImage}, args...)
	if out, err := c.Manager.Exec(ctx, "warren", argv...); err != nil {
		t.Fatalf("service create: %v\n%s", err, out)
	}
}

// taskExec runs a command inside a task's container on node n.
//
// The output comes through a file in the node's /run (--log-uri), not
// ctr's FIFOs: with containerd 1.6's runc shim a FIFO exec now and then
// delivers nothing although the command ran and exited 0 (orchestrate's
// execIn has the figures).
func taskExec(ctx context.Context, n *lab.Node, task string, args ...string) (string, error) {
	id := fmt.Sprintf("t%d", time.Now().UnixNano())
	logPath := "/run/warren-test-exec/" + id + ".log"
	argv := append([]string{"-n", "warren", "tasks", "exec", "--log-uri", "file://" + logPath, "--exec-id", id, task}, args...)
	_, err := n.Exec(ctx, "ctr", argv...)
	printed, readErr := n.Exec(ctx, "sh", "-c", `cat "$1" && rm -f "$1"`, "sh", logPath)
	if err != nil {
		return printed, fmt.Errorf("%w (the command printed %q)", err, printed)
	}
	if readErr != nil {
		return "", readErr
	}
	return printed, nil
}

func nodeByName(c *lab.Cluster, name string) *lab.Node {
	for _, n := range c.Nodes() {
		if n.Name == name {
			return n
		}
	}
	return nil
}

// Seed "Container Networking": one task per node, each with its own IP,
// reachable from every node and every other task through the tunnel.
func TestServiceTasksReachEachOther(t *testing.T) {
	l := newLab(t)
	c := startCluster(t, l, lab.ClusterOptions{Workers: 2, Images: []string{imageTarball(t)}})
	createService(t, c, "web", append([]string{"--replicas", "3"}, httpdCommand...)...)
	v := waitRunning(t, c, "web", 3)
	ctx := ctxFor(t, 3*time.Minute)

	nodes := map[string]bool{}
	for _, task := range v.Tasks {
		nodes[task.Node] = true
	}
	if len(nodes) != 3 {
		t.Fatalf("3 replicas should land one per node: %+v", v.Tasks)
	}
	for _, task := range v.Tasks {
		n := nodeByName(c, task.Node)
		if out, err := n.Exec(ctx, "ctr", "-n", "warren", "containers", "list"); err != nil || !strings.Contains(out, task.Name) {
			t.Errorf("%s: ctr -n warren containers list lacks %s: %v\n%s", n.Name, task.Name, err, out)
		}
		// The task's page from every node (host to task, across the mesh).
		for _, from := range c.Nodes() {
			eventually(t, 30*time.Second, fmt.Sprintf("%s fetches %s (%s)", from.Name, task.Name, task.IP), func() error {
				out, err := from.Exec(ctx, "curl", "-sS", "-m", "3", "http://"+task.IP+"/")
				if err != nil {
					return err
				}
				if trim(out) != task.Name {
					return fmt.Errorf("page says %q, want %q", trim(out), task.Name)
				}
				return nil
			})
		}
		// Task to task, across nodes, keeping the source address.
		for _, other := range v.Tasks {
			if other.Name == task.Name {
				continue
			}
			// (wget, not ping: tasks lack NET_RAW, which busybox's ping needs.)
			eventually(t, 30*time.Second, fmt.Sprintf("%s fetches %s", task.Name, other.Name), func() error {
				out, err := taskExec(ctx, n, task.Name, "timeout", "5", "wget", "-qO-", "http://"+other.IP+"/")
				if err == nil && trim(out) != other.Name {
					err = fmt.Errorf("page says %q, want %q", trim(out), other.Name)
				}
				return err
			})
		}
	}
}

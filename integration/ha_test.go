package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/warren-appliance/warren/integration/lab"
)

// servicesOn runs `warren service ls --json` on node n.
func servicesOn(ctx context.Context, n *lab.Node) (map[string]string, error) {
	out, err := n.Exec(ctx, "warren", "service", "ls", "--json")
	if err != nil {
		return nil, fmt.Errorf("%v: %s", err, out)
	}
	var list []struct {
		Name string `json:"name"`
		VIP  string `json:"vip"`
	}
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		return nil, fmt.Errorf("service ls --json: %w: %s", err, out)
	}
	vips := map[string]string{}
	for _, s := range list {
		vips[s.Name] = s.VIP
	}
	return vips, nil
}

// leaderIn returns the manager that `node ls` on n calls the leader.
func leaderIn(ctx context.Context, c *lab.Cluster, n *lab.Node) (*lab.Node, error) {
	nodes, err := c.NodeListOn(ctx, n)
	if err != nil {
		return nil, err
	}
	for _, v := range nodes {
		if v.ManagerStatus == "leader" {
			return nodeByName(c, v.Name), nil
		}
	}
	return nil, fmt.Errorf("no leader in %+v", nodes)
}

func allocations(t *testing.T, ctx context.Context, c *lab.Cluster, on *lab.Node) map[string]string {
	t.Helper()
	nodes, err := c.NodeListOn(ctx, on)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, n := range nodes {
		out[n.Name] = n.OverlayIP + " " + n.ContainerBlock
	}
	vips, err := servicesOn(ctx, on)
	if err != nil {
		t.Fatal(err)
	}
	for name, vip := range vips {
		out["service "+name] = vip
	}
	return out
}

// Issue 17 "Done when": three managers and a worker. Writes through
// followers; kill -9 of the leader during a burst of writes loses no
// acknowledged write and a survivor accepts one within 10 s; the worker
// keeps its task and follows; the old leader rejoins and catches up. Then
// two of three managers are killed: writes fail naming the lost quorum,
// reads and the data plane keep working, and --force-new-cluster on the
// survivor brings writes back with every allocation unchanged.
func TestManagersFailoverLostQuorumForceNewCluster(t *testing.T) {
	l := newLab(t)
	c := startCluster(t, l, lab.ClusterOptions{Managers: 2, Workers: 1, Images: []string{imageTarball(t)}})
	ctx := ctxFor(t, 15*time.Minute)
	worker := c.Workers[0]
	managers := []*lab.Node{c.Manager, c.Managers[0], c.Managers[1]}

	var leader *lab.Node
	eventually(t, time.Minute, "a leader and two reachable managers", func() error {
		nodes, err := c.NodeList(ctx)
		if err != nil {
			return err
		}
		st := map[string]int{}
		for _, n := range nodes {
			st[n.ManagerStatus]++
		}
		if st["leader"] != 1 || st["reachable"] != 2 || st[""] != 1 {
			return fmt.Errorf("manager statuses: %+v", nodes)
		}
		leader, err = leaderIn(ctx, c, c.Manager)
		return err
	})
	var followers []*lab.Node
	for _, m := range managers {
		if m != leader {
			followers = append(followers, m)
		}
	}
	// A task on the worker, created through a follower.
	if out, err := followers[0].Exec(ctx, "warren", append([]string{"service", "create", "web", "--image", testImage, "--constraint", "node.name==worker-1"}, stoppableHTTPD...)...); err != nil {
		t.Fatalf("service create through a follower: %v\n%s", err, out)
	}
	var web serviceView
	eventually(t, 3*time.Minute, "web running on the worker", func() error {
		v, err := inspect(ctx, followers[1], "web")
		if err != nil {
			return err
		}
		if len(v.Tasks) != 1 || v.Tasks[0].State != "running" {
			return fmt.Errorf("tasks: %+v", v.Tasks)
		}
		web = v
		return nil
	})
	taskBefore, err := ctrTasks(ctx, worker)
	if err != nil {
		t.Fatal(err)
	}

	t.Run("kill -9 of the leader during a burst of writes", func(t *testing.T) {
		var mu sync.Mutex
		var acked []string
		var killedAt time.Time
		var firstAfter time.Duration
		stop := make(chan struct{})
		var wg sync.WaitGroup
		for w, f := range followers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; ; i++ {
					select {
					case <-stop:
						return
					default:
					}
					name := fmt.Sprintf("burst-%d-%d", w, i)
					sent := time.Now()
					_, err := f.Exec(ctx, "warren", "service", "create", name, "--image", testImage, "--replicas", "0")
					mu.Lock()
					if err == nil {
						acked = append(acked, name)
						if !killedAt.IsZero() && sent.After(killedAt) && firstAfter == 0 {
							firstAfter = time.Since(killedAt)
						}
					}
					mu.Unlock()
					if err != nil {
						time.Sleep(100 * time.Millisecond)
					}
				}
			}()
		}
		eventually(t, time.Minute, "writes acknowledged", func() error {
			mu.Lock()
			defer mu.Unlock()
			if len(acked) < 6 {
				return fmt.Errorf("%d acknowledged", len(acked))
			}
			return nil
		})
		mu.Lock()
		killedAt = time.Now()
		mu.Unlock()
		if err := leader.StopAppliance(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		eventually(t, 30*time.Second, "a write acknowledged by a survivor after the kill", func() error {
			mu.Lock()
			defer mu.Unlock()
			if firstAfter == 0 {
				return fmt.Errorf("none yet")
			}
			return nil
		})
		close(stop)
		wg.Wait()
		t.Logf("first write acknowledged %s after kill -9 of the leader %s; %d writes acknowledged in all", firstAfter.Round(time.Millisecond), leader.Name, len(acked))
		if firstAfter > 10*time.Second {
			t.Errorf("the survivors took %s to accept a write, want under 10 s", firstAfter)
		}
		// Every acknowledged write is on both survivors (a follower may
		// lag the leader by a few milliseconds: reads are local).
		for _, f := range followers {
			eventually(t, 30*time.Second, f.Name+" holds every acknowledged write", func() error {
				have, err := servicesOn(ctx, f)
				if err != nil {
					return err
				}
				for _, name := range acked {
					if _, ok := have[name]; !ok {
						return fmt.Errorf("no %s", name)
					}
				}
				return nil
			})
		}
	})

	t.Run("the worker keeps its task and follows a survivor", func(t *testing.T) {
		if out, err := followers[0].Exec(ctx, "warren", append([]string{"service", "create", "after", "--image", testImage, "--constraint", "node.name==worker-1"}, stoppableHTTPD...)...); err != nil {
			t.Fatalf("create after failover: %v\n%s", err, out)
		}
		eventually(t, 3*time.Minute, "the worker runs the new service (maps from a survivor)", func() error {
			v, err := inspect(ctx, followers[1], "after")
			if err != nil {
				return err
			}
			if len(v.Tasks) != 1 || v.Tasks[0].State != "running" {
				return fmt.Errorf("tasks: %+v", v.Tasks)
			}
			return nil
		})
		after, err := ctrTasks(ctx, worker)
		if err != nil {
			t.Fatal(err)
		}
		for name, pid := range taskBefore {
			if after[name] != pid {
				t.Errorf("task %s changed across the failover: %s -> %s", name, pid, after[name])
			}
		}
	})

	t.Run("the old leader rejoins as a follower and catches up", func(t *testing.T) {
		if err := leader.StartAppliance("warren-appliance"); err != nil {
			t.Fatal(err)
		}
		eventually(t, 2*time.Minute, leader.Name+" caught up", func() error {
			have, err := servicesOn(ctx, leader)
			if err != nil {
				return err
			}
			if _, ok := have["after"]; !ok {
				return fmt.Errorf("%d services, no 'after'", len(have))
			}
			now, err := leaderIn(ctx, c, followers[0])
			if err != nil {
				return err
			}
			if now == leader {
				return fmt.Errorf("%s leads again", leader.Name)
			}
			return nil
		})
	})

	t.Run("two of three managers killed, then --force-new-cluster", func(t *testing.T) {
		survivor := followers[1]
		before := allocations(t, ctx, c, survivor)
		for _, m := range managers {
			if m != survivor {
				if err := m.StopAppliance(syscall.SIGKILL); err != nil {
					t.Fatal(err)
				}
			}
		}
		killed := time.Now()
		var out string
		eventually(t, 15*time.Second, "writes refused naming the lost quorum", func() error {
			var err error
			out, err = survivor.Exec(ctx, "warren", "service", "create", "nope", "--image", testImage, "--replicas", "0")
			if err == nil {
				t.Fatal("a write succeeded with one manager of three")
			}
			if !strings.Contains(out, "no quorum: 1 of 3 managers reachable") {
				return fmt.Errorf("%s", out)
			}
			return nil
		})
		t.Logf("write refused %s after the kill: %s", time.Since(killed).Round(time.Millisecond), trim(out))
		// Reads and the data plane keep working.
		if _, err := servicesOn(ctx, survivor); err != nil {
			t.Fatalf("read without quorum: %v", err)
		}
		for _, n := range []*lab.Node{survivor, worker} {
			if out, err := n.Exec(ctx, "curl", "-sS", "-m", "5", "http://"+web.VIP+"/"); err != nil {
				t.Fatalf("%s: VIP without quorum: %v %s", n.Name, err, out)
			}
		}
		// Recovery on the survivor.
		if err := survivor.StopAppliance(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		if err := survivor.StartAppliance("warren", "cluster", "init", "--force-new-cluster", "--config", "/etc/warren/warren.toml"); err != nil {
			t.Fatal(err)
		}
		eventually(t, 2*time.Minute, "a write after --force-new-cluster", func() error {
			out, err := survivor.Exec(ctx, "warren", "service", "create", "recovered", "--image", testImage, "--replicas", "0")
			if err != nil {
				return fmt.Errorf("%v: %s", err, out)
			}
			return nil
		})
		after := allocations(t, ctx, c, survivor)
		for k, v := range before {
			if after[k] != v {
				t.Errorf("%s: %q before, %q after --force-new-cluster", k, v, after[k])
			}
		}
		// The worker reports to the survivor.
		waitNodeStatus(t, ctx, 2*time.Minute, func(ctx context.Context) ([]lab.NodeView, error) { return c.NodeListOn(ctx, survivor) }, worker.Name, "ready")
		if out, err := worker.Exec(ctx, "curl", "-sS", "-m", "5", "http://"+web.VIP+"/"); err != nil {
			t.Fatalf("VIP after recovery: %v %s", err, out)
		}
	})
}

// Issue 17 "Done when": a one-manager cluster is backed up while running,
// the manager's state dir is wiped, and --restore on the fresh board
// brings back every service and allocation; the worker reconnects by
// itself.
func TestBackupWipeRestore(t *testing.T) {
	l := newLab(t)
	c := startCluster(t, l, lab.ClusterOptions{Workers: 1, Images: []string{imageTarball(t)}})
	ctx := ctxFor(t, 10*time.Minute)
	m, worker := c.Manager, c.Workers[0]
	createService(t, c, "web", append([]string{"--constraint", "node.name==worker-1"}, stoppableHTTPD...)...)
	web := waitRunning(t, c, "web", 1)
	createService(t, c, "idle", "--replicas", "0")
	before := allocations(t, ctx, c, m)

	const file = "/etc/warren/backup.json"
	if out, err := m.Exec(ctx, "warren", "cluster", "backup", file); err != nil {
		t.Fatalf("backup: %v\n%s", err, out)
	}
	if out, err := m.Exec(ctx, "stat", "-c", "%a", file); err != nil || trim(out) != "600" {
		t.Fatalf("backup file mode: %q %v", out, err)
	}
	// hardening-2: an encrypted copy too (age, passphrase from a file).
	const enc, pass = "/etc/warren/backup.age", "/etc/warren/backup-pass"
	if out, err := m.Sh(ctx, "echo 'a passphrase for the lab backup' > "+pass+" && warren cluster backup --passphrase-file "+pass+" "+enc); err != nil || !strings.Contains(out, "encrypted") {
		t.Fatalf("encrypted backup: %v\n%s", err, out)
	}
	// The board dies; a fresh one (empty state dir) takes its place.
	if err := m.StopAppliance(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if out, err := m.Sh(ctx, "rm -rf /var/lib/warren/* && ls -A /var/lib/warren | wc -l"); err != nil || trim(out) != "0" {
		t.Fatalf("wipe: %v %s", err, out)
	}
	// Without the passphrase the encrypted copy is refused, writing nothing.
	if out, err := m.Sh(ctx, "warren cluster init --force-new-cluster --restore "+enc+" --config /etc/warren/warren.toml; ls -A /var/lib/warren | grep -c manager.db"); err == nil || !strings.Contains(out, "give its passphrase") {
		t.Fatalf("restore of the encrypted backup without its passphrase: %v\n%s", err, out)
	}
	if err := m.StartAppliance("warren", "cluster", "init", "--force-new-cluster", "--restore", enc, "--passphrase-file", pass, "--config", "/etc/warren/warren.toml"); err != nil {
		t.Fatal(err)
	}
	waitNodesReady(t, c, 2*time.Minute)
	after := allocations(t, ctx, c, m)
	for k, v := range before {
		if after[k] != v {
			t.Errorf("%s: %q before, %q after the restore", k, v, after[k])
		}
	}
	waitRunning(t, c, "web", 1)
	for _, n := range []*lab.Node{m, worker} {
		eventually(t, time.Minute, n.Name+" reaches web's VIP", func() error {
			_, err := n.Exec(ctx, "curl", "-sS", "-m", "3", "http://"+web.VIP+"/")
			return err
		})
	}
}

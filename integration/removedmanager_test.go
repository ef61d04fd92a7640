package integration

import (
	"context"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/warren-appliance/warren/integration/lab"
)

// hardening-2, finding 2: a manager removed with `node rm` kept writing
// through Raft with its certificate. Here a manager board is taken (its
// state dir copied, then it is switched off), the operator removes it and
// rotates both join tokens, and the copy's certificates and key are tried
// on every door of the leader: the node API (read), the internal admin
// API (write), Raft, and a join with the tokens the copy holds. Then the
// copy is started as the board was, and stays out.
func TestRemovedManagerBoardCopyIsCutOff(t *testing.T) {
	l := newLab(t)
	c := startCluster(t, l, lab.ClusterOptions{Managers: 2})
	ctx := ctxFor(t, 10*time.Minute)
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
		if st["leader"] != 1 || st["reachable"] != 2 {
			return fmt.Errorf("manager statuses: %+v", nodes)
		}
		leader, err = leaderIn(ctx, c, c.Manager)
		return err
	})
	victim, tokens := stealManagerCopy(ctx, t, c, leader)
	const stolen = stolenDir
	api := leader.LANIP.String() + ":7946"
	// What the copy can do before the operator acts: proves each probe
	// below reaches the door it tests.
	curl := func(method, path, body string) string {
		out, _ := victim.Sh(ctx, fmt.Sprintf("curl -sk -m 5 -o /dev/null -w '%%{http_code}' --cert %s/node-tls.crt --key %s/node-tls.key -X %s -H 'Content-Type: application/json' --data '%s' https://%s%s",
			stolen, stolen, method, body, api, path))
		return trim(out)
	}
	if got := curl("GET", "/v1/internal/admin/v1/nodes", ""); got != "200" {
		t.Fatalf("the manager's own certificate on the internal admin API before its removal: %s", got)
	}
	if out, err := leader.Exec(ctx, "warren", "node", "rm", victim.Name, "--force"); err != nil {
		t.Fatalf("node rm: %v\n%s", err, out)
	}
	// The leader replaces the data key: the remaining managers hold the
	// new one, and the copy's secrets.key opens nothing written from now on
	// (README: Re-key on manager removal).
	keySum := func(n *lab.Node, dir string) string {
		out, err := n.Sh(ctx, "sha256sum "+dir+"/secrets.key | cut -d' ' -f1")
		if err != nil {
			t.Fatalf("%s: %v\n%s", n.Name, err, out)
		}
		return trim(out)
	}
	stolenKey := keySum(victim, stolen)
	eventually(t, time.Minute, "the remaining managers hold a new data key", func() error {
		sums := map[string]bool{}
		for _, n := range append([]*lab.Node{c.Manager}, c.Managers...) {
			if n == victim {
				continue
			}
			sum := keySum(n, "/var/lib/warren")
			if sum == stolenKey {
				return fmt.Errorf("%s still holds the removed manager's data key", n.Name)
			}
			sums[sum] = true
		}
		if len(sums) != 1 {
			return fmt.Errorf("the remaining managers hold %d different keys", len(sums))
		}
		return nil
	})
	for _, role := range []string{"worker", "manager"} {
		if out, err := leader.Exec(ctx, "warren", "cluster", "join-token", role, "--rotate", "-q"); err != nil {
			t.Fatalf("rotate the %s token: %v\n%s", role, err, out)
		}
	}
	// Read: the map.
	if got := curl("GET", "/v1/watch", ""); got != "403" {
		t.Errorf("watch with the removed manager's certificate: %s, want 403", got)
	}
	// Write: a service through the internal admin API.
	if got := curl("POST", "/v1/internal/admin/v1/services", `{"name":"evil","image":"x"}`); got != "403" {
		t.Errorf("service create through the internal admin API: %s, want 403", got)
	}
	checkCopyRefused(ctx, t, victim, api, tokens)
	checkCopyStaysOut(ctx, t, c, leader, victim)
}

// stolenDir is where a test keeps a copy of a manager's state dir, as a
// thief who took the board would.
const stolenDir = "/etc/warren/stolen"

// stealManagerCopy picks a manager other than leader, records both join
// tokens as they are now, kills the manager and copies its state dir to
// stolenDir on its board (without tasks/: a task's network namespace mount
// cannot be read as a file).
func stealManagerCopy(ctx context.Context, t *testing.T, c *lab.Cluster, leader *lab.Node) (victim *lab.Node, tokens map[string]string) {
	t.Helper()
	victim = c.Managers[1]
	if victim == leader {
		victim = c.Managers[0]
	}
	tokens = map[string]string{}
	for _, role := range []string{"worker", "manager"} {
		out, err := leader.Exec(ctx, "warren", "cluster", "join-token", role, "-q")
		if err != nil {
			t.Fatal(err)
		}
		tokens[role] = trim(out)
	}
	if err := victim.StopAppliance(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	copyCmd := "mkdir -p " + stolenDir + " && tar -C /var/lib/warren --exclude=./tasks -cf - . | tar -C " + stolenDir + " -xf - && ls " + stolenDir
	if out, err := victim.Sh(ctx, copyCmd); err != nil || !strings.Contains(out, "node-tls.key") {
		t.Fatalf("copy the state dir: %v\n%s", err, out)
	}
	return victim, tokens
}

// checkCopyRefused checks, from the victim's board, that the copy's
// certificate in stolenDir fails the Raft handshake on api and that the
// join tokens it holds (their secrets are in its state) get 401.
func checkCopyRefused(ctx context.Context, t *testing.T, victim *lab.Node, api string, tokens map[string]string) {
	t.Helper()
	out, _ := victim.Sh(ctx, fmt.Sprintf("(sleep 2; echo) | openssl s_client -connect %s -alpn warren-raft/1 -cert %s/node-tls.crt -key %s/node-tls.key 2>&1; echo", api, stolenDir, stolenDir))
	if !strings.Contains(out, "alert") {
		t.Errorf("raft handshake with the removed manager's certificate was not refused:\n%s", out)
	}
	for role, tok := range tokens {
		secret := tok[strings.LastIndex(tok, "-")+1:]
		got, _ := victim.Sh(ctx, fmt.Sprintf(`curl -sk -m 5 -o /dev/null -w '%%{http_code}' -X POST -H 'Content-Type: application/json' --data '{"secret":"%s","name":"thief","role":"%s"}' https://%s/v1/join`, secret, role, api))
		if trim(got) != "401" {
			t.Errorf("join with the copy's %s token: %s, want 401", role, trim(got))
		}
	}
}

// checkCopyStaysOut starts the victim's board again as it was (it keeps
// retrying, as an edge node never gives up) and checks after 20 s that
// neither it nor what the probes tried to add is in the cluster; it
// returns the node list it read.
func checkCopyStaysOut(ctx context.Context, t *testing.T, c *lab.Cluster, leader, victim *lab.Node) []lab.NodeView {
	t.Helper()
	if err := victim.StartAppliance("warren-appliance"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(20 * time.Second)
	if victim.AppliancePID() == 0 {
		t.Fatal("the copy's appliance did not start")
	}
	nodes, err := c.NodeListOn(ctx, leader)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes {
		if n.Name == victim.Name || n.Name == "thief" || n.Name == "evil" {
			t.Errorf("node list with the copy running: %+v", nodes)
		}
	}
	if out, err := leader.Exec(ctx, "warren", "service", "ls"); err != nil || strings.Contains(out, "evil") {
		t.Errorf("services: %v\n%s", err, out)
	}
	return nodes
}

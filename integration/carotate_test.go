package integration

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/warren-appliance/warren/integration/lab"
)

// caStatus is what `warren cluster ca status --json` prints (the fields
// read here).
type caStatus struct {
	Fingerprint string `json:"fingerprint"`
	Generation  int    `json:"generation"`
	Rotating    bool   `json:"rotating"`
	Previous    string `json:"previous"`
	Nodes       []struct {
		Name  string `json:"name"`
		NewCA bool   `json:"new_ca"`
	} `json:"nodes"`
}

// hardening-2, finding 3: a stolen manager board held the CA key and the
// join secrets. After `node rm --force` of the manager and `cluster ca
// rotate`, every remaining node renews onto the new CA, the rotation
// finishes by itself, and a copy of the removed manager's state dir can
// neither read, write, speak Raft nor join; certificates of the old CA
// (which the copy's key can still sign, for any node ID) are refused by
// chain, before membership. A task's traffic to a VIP served across
// nodes runs throughout the rotation without a failed request.
func TestCARotationCutsOffRemovedManagerCopy(t *testing.T) {
	l := newLab(t)
	c := startCluster(t, l, lab.ClusterOptions{Managers: 2, Workers: 2, Images: []string{imageTarball(t)}})
	ctx := ctxFor(t, 15*time.Minute)
	createService(t, c, "web", append([]string{"--replicas", "3"}, httpdCommand...)...)
	v := waitRunning(t, c, "web", 3)
	var leader *lab.Node
	eventually(t, time.Minute, "a leader", func() error {
		var err error
		leader, err = leaderIn(ctx, c, c.Manager)
		return err
	})
	victim, tokens := stealManagerCopy(ctx, t, c, leader)
	const stolen = stolenDir
	if out, err := leader.Exec(ctx, "warren", "node", "rm", victim.Name, "--force"); err != nil {
		t.Fatalf("node rm: %v\n%s", err, out)
	}
	v = waitRunning(t, c, "web", 3)
	from, fromTask := nodeByName(c, v.Tasks[0].Node), v.Tasks[0].Name
	for _, task := range v.Tasks {
		if n := nodeByName(c, task.Node); n != nil && n != leader {
			from, fromTask = n, task.Name
		}
	}
	url := "http://" + v.VIP + "/"
	eventually(t, time.Minute, fromTask+" reaches the VIP", func() error {
		_, err := taskExec(ctx, from, fromTask, "sh", "-c", "wget -qO- "+url)
		return err
	})
	before := caStatusOn(t, leader)

	// Traffic from a task to the VIP (its backends on several nodes, over
	// WireGuard) for the whole rotation.
	const window = 90
	traffic := make(chan string, 1)
	go func() {
		out, err := taskExec(ctx, from, fromTask, "sh", "-c", fmt.Sprintf(
			`end=$(( $(date +%%s) + %d )); while [ $(date +%%s) -lt $end ]; do wget -qO- %s >/dev/null && echo OK || echo FAIL; sleep 0.2; done`, window, url))
		if err != nil {
			out += "\nexec error: " + err.Error()
		}
		traffic <- out
	}()
	time.Sleep(5 * time.Second)
	started := time.Now()
	if out, err := c.Manager.Exec(ctx, "warren", "cluster", "ca", "rotate"); err != nil {
		t.Fatalf("cluster ca rotate: %v\n%s", err, out)
	} else {
		t.Logf("cluster ca rotate:\n%s", out)
	}
	if out, err := c.Manager.Exec(ctx, "warren", "cluster", "ca", "rotate"); err == nil || !strings.Contains(out, "--force") {
		t.Errorf("a second rotation while one is in progress: %v\n%s", err, out)
	}
	var after caStatus
	eventually(t, 3*time.Minute, "the rotation to finish with every node on the new CA", func() error {
		after = caStatusOn(t, leader)
		if after.Rotating {
			return fmt.Errorf("still rotating: %+v", after)
		}
		for _, n := range after.Nodes {
			if !n.NewCA {
				return fmt.Errorf("%s not on the new CA: %+v", n.Name, after)
			}
		}
		return nil
	})
	took := time.Since(started)
	t.Logf("rotation finished in %s", took.Round(time.Second))
	if after.Fingerprint == before.Fingerprint || after.Generation != before.Generation+1 {
		t.Fatalf("CA before %s (generation %d), after %s (generation %d)", before.Fingerprint, before.Generation, after.Fingerprint, after.Generation)
	}
	if took > window*time.Second-10*time.Second {
		t.Fatalf("the rotation took %s, longer than the traffic window: the traffic check did not cover it", took)
	}
	out := <-traffic
	ok, fail := strings.Count(out, "OK"), strings.Count(out, "FAIL")
	t.Logf("task traffic during the rotation: %d answered, %d failed", ok, fail)
	if ok == 0 || fail > 0 || strings.Contains(out, "exec error") {
		t.Errorf("task traffic to the VIP broke during the rotation: %d answered, %d failed\n%s", ok, fail, out)
	}

	// The copy against the leader's doors.
	api := leader.LANIP.String() + ":7946"
	curl := func(method, path, body string) (code, msg string) {
		out, _ := victim.Sh(ctx, fmt.Sprintf("curl -sk -m 5 -w ' %%{http_code}' --cert %s/node-tls.crt --key %s/node-tls.key -X %s -H 'Content-Type: application/json' --data '%s' https://%s%s",
			stolen, stolen, method, body, api, path))
		out = trim(out)
		i := strings.LastIndex(out, " ")
		return out[i+1:], out
	}
	for _, probe := range []struct{ method, path, body string }{
		{"GET", "/v1/watch", ""},
		{"POST", "/v1/internal/admin/v1/services", `{"name":"evil","image":"x"}`},
		{"GET", "/v1/internal/admin/v1/nodes", ""},
	} {
		code, msg := curl(probe.method, probe.path, probe.body)
		// "not valid for this cluster": refused by the chain (the old
		// CA), whatever ID the certificate names.
		if (code != "401" && code != "403") || !strings.Contains(msg, "not valid for this cluster") {
			t.Errorf("%s %s with the removed manager's certificate: %s, want 401/403 (old CA refused)", probe.method, probe.path, msg)
		}
	}
	checkCopyRefused(ctx, t, victim, api, tokens)
	// The board comes back as it was: its pinned CA no longer matches the
	// one the managers serve, and it stays out.
	for _, n := range checkCopyStaysOut(ctx, t, c, leader, victim) {
		if n.Status != "ready" {
			t.Errorf("node %s is %s after the rotation, want ready", n.Name, n.Status)
		}
	}
	waitRunning(t, c, "web", 3)
	// The token printed now pins the new CA.
	tok, err := leader.Exec(ctx, "warren", "cluster", "join-token", "worker", "-q")
	if err != nil || !strings.Contains(trim(tok), after.Fingerprint) {
		t.Errorf("worker token after the rotation does not pin the new CA %s: %v %s", after.Fingerprint, err, tok)
	}
}

func caStatusOn(t *testing.T, n *lab.Node) caStatus {
	t.Helper()
	out, err := n.Exec(ctxFor(t, time.Minute), "warren", "cluster", "ca", "status", "--json")
	if err != nil {
		t.Fatalf("cluster ca status: %v\n%s", err, out)
	}
	var st caStatus
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("cluster ca status --json: %v\n%s", err, out)
	}
	return st
}

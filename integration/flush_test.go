package integration

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"
)

// A flush of FORWARD on a worker (a firewall reload, a second container
// engine) must not open a hole in the network policies, not for a moment:
// a task the seed policy cuts off from api-w-1 probes it without pause
// (a new connection every 50 ms from inside its namespace) while FORWARD
// is flushed three times, once with the chain's policy ACCEPT and twice
// with DROP (as Docker sets it, so that allowed traffic depends on the
// rules coming back); after each flush allowed traffic works again within
// 15 s.
func TestPolicyHoldsWhileForwardIsFlushed(t *testing.T) {
	p := startPolicyLab(t)
	seed, err := os.ReadFile("../netpolicy/testdata/seed.yaml")
	if err != nil {
		t.Fatal(err)
	}
	allowed := []path{{"front-w-1", fmt.Sprintf("http://%s:8080/", p.ips["api-w-1"]), "same node, with br_netfilter"}}
	denied := []path{{"other-w-1", fmt.Sprintf("http://%s:8080/", p.ips["api-w-1"]), "same node, with br_netfilter"}}
	p.wantAllowed(denied, "api-w-1") // reachable before the policy: the probe can see a leak
	p.apply(string(seed))
	p.wantDenied(denied)
	p.wantAllowed(allowed, "api-w-1")

	// The probe runs in other-w-1's network namespace on the worker: every
	// connection that gets an answer prints a LEAK line.
	probeCtx, stopProbe := context.WithCancel(p.ctx)
	probeDone := make(chan string, 1)
	script := fmt.Sprintf(`end=$(( $(date +%%s) + 600 ))
while [ "$(date +%%s)" -lt "$end" ] && [ ! -e /run/warren-flush-probe-stop ]; do
  (curl -s -o /dev/null --connect-timeout 1 -m 2 http://%s:8080/ && echo "LEAK $(date +%%T.%%N)") &
  sleep 0.05
done
wait
echo probe-done`, p.ips["api-w-1"])
	go func() {
		out, err := p.w.Exec(probeCtx, "nsenter", "--net=/var/lib/warren/tasks/netns/other-w-1", "sh", "-c", script)
		if err != nil {
			out += fmt.Sprintf(" (probe: %v)", err)
		}
		probeDone <- out
	}()
	t.Cleanup(stopProbe)
	time.Sleep(2 * time.Second) // the probe is running

	for i, policy := range []string{"ACCEPT", "DROP", "DROP"} {
		if out, err := p.w.Sh(p.ctx, "iptables -w -P FORWARD "+policy+" && iptables -w -F FORWARD"); err != nil {
			t.Fatalf("flush %d: %v %s", i+1, err, out)
		}
		flushed := time.Now()
		t.Logf("flush %d at %s", i+1, flushed.Format("15:04:05.000"))
		eventually(t, 15*time.Second, fmt.Sprintf("after flush %d (FORWARD policy %s) front-w-1 reaches api-w-1 again", i+1, policy), func() error {
			_, err := p.get("front-w-1", allowed[0].url, 2)
			return err
		})
		t.Logf("flush %d (policy %s): allowed traffic back after %v", i+1, policy, time.Since(flushed).Round(100*time.Millisecond))
		// The issue measured leaks up to 21 s after a flush: watch 25 s.
		time.Sleep(time.Until(flushed.Add(25 * time.Second)))
	}
	if _, err := p.w.Sh(p.ctx, "touch /run/warren-flush-probe-stop"); err != nil {
		t.Fatal(err)
	}
	var out string
	select {
	case out = <-probeDone:
	case <-time.After(30 * time.Second):
		stopProbe()
		out = <-probeDone
	}
	if !strings.Contains(out, "probe-done") {
		t.Fatalf("the probe did not run to its end: %s", out)
	}
	if leaks := strings.Count(out, "LEAK"); leaks > 0 {
		lines := strings.Split(trim(out), "\n")
		t.Fatalf("other-w-1 reached api-w-1 %d times while FORWARD was flushed; first and last:\n%s\n...\n%s",
			leaks, strings.Join(lines[:min(10, len(lines))], "\n"), strings.Join(lines[max(0, len(lines)-10):], "\n"))
	}
	p.wantDenied(denied)
	if out, err := p.w.Sh(p.ctx, "iptables -w -P FORWARD ACCEPT"); err != nil {
		t.Fatal(out, err)
	}
}

package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/warren-appliance/warren/integration/lab"
	"github.com/warren-appliance/warren/internal/testimage"
)

// Images with a HEALTHCHECK in their config: one that passes once httpd
// serves its page, one that never passes.
const (
	checkedImage = "warren.test/checked:good"
	brokenImage  = "warren.test/checked:bad"
)

func checkedTarballs(tb testing.TB) []string {
	tb.Helper()
	httpget, err := os.ReadFile(httpgetBin)
	if err != nil {
		tb.Fatal(err)
	}
	var out []string
	for ref, test := range map[string]string{
		checkedImage: "wget -q -O /dev/null http://127.0.0.1/",
		brokenImage:  "echo broken on purpose; exit 1",
	} {
		p, err := testimage.BusyboxTarballWithHealthcheck(tb.TempDir(), ref,
			testimage.Healthcheck{Test: []string{"CMD-SHELL", test}, Interval: time.Second, Timeout: time.Second, Retries: 2},
			testimage.File{Path: "bin/httpget", Mode: 0o755, Data: httpget})
		if err != nil {
			tb.Fatal(err)
		}
		out = append(out, p)
	}
	return out
}

// healthView is what the health tests read of `service inspect --json`.
type healthView struct {
	Name         string `json:"name"`
	Image        string `json:"image"`
	VIP          string `json:"vip"`
	UpdateStatus *struct {
		State   string `json:"state"`
		Message string `json:"message"`
	} `json:"update_status"`
	Tasks []struct {
		Name         string `json:"name"`
		Node         string `json:"node"`
		Image        string `json:"image"`
		DesiredState string `json:"desired_state"`
		State        string `json:"state"`
		Error        string `json:"error"`
		Health       *struct {
			Status        string `json:"status"`
			FailingStreak int    `json:"failing_streak"`
			Log           []struct {
				ExitCode int    `json:"exit_code"`
				Output   string `json:"output"`
			} `json:"log"`
		} `json:"health"`
	} `json:"tasks"`
}

func inspectHealth(ctx context.Context, n *lab.Node, name string) (healthView, error) {
	var v healthView
	out, err := n.Exec(ctx, "warren", "service", "inspect", name, "--json")
	if err != nil {
		return v, err
	}
	err = json.Unmarshal([]byte(out), &v)
	return v, err
}

// waitHealthy waits until want tasks of name run and are healthy.
func waitHealthy(t *testing.T, c *lab.Cluster, name string, want int) healthView {
	t.Helper()
	ctx := ctxFor(t, 3*time.Minute)
	var v healthView
	eventually(t, 3*time.Minute, fmt.Sprintf("%d healthy tasks of %s", want, name), func() error {
		var err error
		if v, err = inspectHealth(ctx, c.Manager, name); err != nil {
			return err
		}
		healthy := 0
		for _, task := range v.Tasks {
			if task.DesiredState == "running" && task.State == "running" && task.Health != nil && task.Health.Status == "healthy" {
				healthy++
			}
		}
		if healthy != want {
			return fmt.Errorf("%d of %d healthy: %+v", healthy, want, v.Tasks)
		}
		return nil
	})
	return v
}

// vipPoller asks the VIP from node 5 times a second until stopped and
// records who answered when.
type vipPoller struct {
	mu      sync.Mutex
	answers []vipAnswer
	stop    chan struct{}
	done    chan struct{}
}

type vipAnswer struct {
	at   time.Time
	page string // "" when the request failed
}

func pollVIP(ctx context.Context, n *lab.Node, vip string) *vipPoller {
	return pollVIPEvery(ctx, n, vip, 200*time.Millisecond)
}

func pollVIPEvery(ctx context.Context, n *lab.Node, vip string, every time.Duration) *vipPoller {
	p := &vipPoller{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(p.done)
		tick := time.NewTicker(every)
		defer tick.Stop()
		for {
			select {
			case <-p.stop:
				return
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			at := time.Now()
			out, err := n.Exec(ctx, "curl", "-sS", "-m", "1", "http://"+vip+"/")
			a := vipAnswer{at: at}
			if err == nil {
				a.page = trim(out)
			}
			p.mu.Lock()
			p.answers = append(p.answers, a)
			p.mu.Unlock()
		}
	}()
	return p
}

func (p *vipPoller) Stop() []vipAnswer {
	close(p.stop)
	<-p.done
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.answers
}

func (p *vipPoller) since(t time.Time) []vipAnswer {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []vipAnswer
	for _, a := range p.answers {
		if !a.at.Before(t) {
			out = append(out, a)
		}
	}
	return out
}

// healthServe serves the task's name and, at each start, clears the
// marker that makes its health check fail.
var healthServe = []string{"--", "sh", "-c", "rm -f /tmp/sick; mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 80 -h /www"}

// Issue 26: health checks decide who gets traffic, and a rolling update
// to tasks that never turn healthy rolls back by itself.
func TestHealthChecksGateTrafficAndRollBack(t *testing.T) {
	l := newLab(t)
	c := startCluster(t, l, lab.ClusterOptions{Workers: 1, Images: append([]string{imageTarball(t)}, checkedTarballs(t)...)})
	ctx := ctxFor(t, 10*time.Minute)
	m := c.Manager

	// 1. A task whose check starts failing leaves the VIP within 6 s
	//    (1 s interval, 2 retries) and is replaced.
	createService(t, c, "hc", append([]string{"--replicas", "2", "--health-cmd", "test ! -f /tmp/sick || (echo sick; exit 1)",
		"--health-interval", "1s", "--health-timeout", "1s", "--health-retries", "2"}, healthServe...)...)
	v := waitHealthy(t, c, "hc", 2)
	sick := v.Tasks[0]
	poll := pollVIP(ctx, m, v.VIP)
	eventually(t, 30*time.Second, "both tasks answer on the VIP", func() error {
		seen := map[string]bool{}
		for _, a := range poll.since(time.Now().Add(-5 * time.Second)) {
			seen[a.page] = true
		}
		if !seen["hc-1"] || !seen["hc-2"] {
			return fmt.Errorf("answers from %v", seen)
		}
		return nil
	})
	if _, err := taskExec(ctx, nodeByName(c, sick.Node), sick.Name, "sh", "-c", ": > /tmp/sick"); err != nil {
		t.Fatal(err)
	}
	sickAt := time.Now()
	time.Sleep(6 * time.Second)
	window := time.Now()
	time.Sleep(4 * time.Second)
	var after []vipAnswer
	for _, a := range poll.since(window) {
		after = append(after, a)
		if a.page == sick.Name {
			t.Errorf("%s answered on the VIP %s after its check started failing", sick.Name, a.at.Sub(sickAt).Round(time.Millisecond))
		}
	}
	if len(after) < 10 {
		t.Errorf("only %d requests in 4 s", len(after))
	}
	// Replaced: stopped as unhealthy, restarted (the new process clears
	// the marker), healthy and serving again.
	eventually(t, time.Minute, sick.Name+" serves again after its replacement", func() error {
		for _, a := range poll.since(time.Now().Add(-3 * time.Second)) {
			if a.page == sick.Name {
				return nil
			}
		}
		return fmt.Errorf("no answer from %s yet", sick.Name)
	})
	logs := nodeByName(c, sick.Node).ApplianceLog()
	if !strings.Contains(logs, "task="+sick.Name+" from=healthy to=unhealthy output=sick") {
		t.Errorf("the appliance log does not show %s turning unhealthy and being replaced", sick.Name)
	}
	poll.Stop()

	// 2. A new task whose check passes only 10 s after start gets no
	//    traffic before that.
	createService(t, c, "slow", append([]string{"--replicas", "1", "--health-cmd", "test -f /tmp/ready",
		"--health-interval", "1s", "--health-retries", "3", "--health-start-period", "15s"},
		"--", "sh", "-c", "(sleep 10; : > /tmp/ready) & mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 80 -h /www")...)
	sv := waitHealthy(t, c, "slow", 1)
	poll = pollVIP(ctx, m, sv.VIP)
	if out, err := m.Exec(ctx, "warren", "service", "scale", "slow=2", "--detach"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	scaledAt := time.Now()
	var firstSlow2 time.Time
	eventually(t, time.Minute, "slow-2 serves", func() error {
		for _, a := range poll.since(scaledAt) {
			if a.page == "slow-2" {
				firstSlow2 = a.at
				return nil
			}
		}
		return fmt.Errorf("no answer from slow-2 yet")
	})
	answers := poll.Stop()
	if d := firstSlow2.Sub(scaledAt); d < 10*time.Second {
		t.Errorf("slow-2 answered %s after the scale, before its check could pass (10 s after start)", d)
	}
	for _, a := range answers {
		if a.at.After(scaledAt) && a.at.Before(firstSlow2) && a.page != "slow-1" {
			t.Errorf("while slow-2 started, a request got %q instead of slow-1", a.page)
		}
	}

	// 3. An image's HEALTHCHECK is used without flags.
	createService(t, c, "img", "--image", checkedImage, "--replicas", "1", "--", "sh", "-c", healthServe[3])
	iv := waitHealthy(t, c, "img", 1)
	if h := iv.Tasks[0].Health; h == nil || len(h.Log) == 0 || h.Log[len(h.Log)-1].ExitCode != 0 {
		t.Errorf("img-1 health = %+v, want passing probes of the image's HEALTHCHECK", h)
	}
	if out, err := m.Exec(ctx, "warren", "service", "ps", "img"); err != nil || !strings.Contains(out, "running (healthy)") {
		t.Errorf("service ps img: %v\n%s", err, out)
	}

	// 4. An update to tasks that never turn healthy rolls back by itself
	//    while a client polling the VIP sees >= 98 % answered, and
	//    `service update` exits non-zero naming the failing task.
	createService(t, c, "web", append([]string{"--replicas", "3"}, healthServe...)...)
	wv2 := waitRunning(t, c, "web", 3) // no check: running is enough
	poll = pollVIP(ctx, m, wv2.VIP)
	eventually(t, 30*time.Second, "web answers on its VIP", func() error {
		for _, a := range poll.since(time.Now().Add(-2 * time.Second)) {
			if strings.HasPrefix(a.page, "web-") {
				return nil
			}
		}
		return fmt.Errorf("no answer yet")
	})
	start := time.Now()
	out, err := m.Exec(ctx, "warren", "service", "update", "web", "--image", brokenImage, "--timeout", "3m")
	if err == nil {
		t.Errorf("service update to a never-healthy image succeeded:\n%s", out)
	} else if !strings.Contains(out, "rolled back") || !strings.Contains(out, "web-") {
		t.Errorf("service update should say it rolled back, naming the task: %v\n%s", err, out)
	}
	time.Sleep(2 * time.Second)
	answers = poll.Stop()
	total, failed := 0, 0
	for _, a := range answers {
		if a.at.Before(start) {
			continue
		}
		total++
		if a.page == "" {
			failed++
		}
	}
	if total < 20 || float64(total-failed)/float64(total) < 0.98 {
		t.Errorf("during the update and rollback %d of %d VIP requests failed (want >= 98%% answered)", failed, total)
	}
	t.Logf("update and rollback: %d of %d VIP requests answered", total-failed, total)
	fv, err := inspectHealth(ctx, m, "web")
	if err != nil {
		t.Fatal(err)
	}
	if fv.Image != testImage || fv.UpdateStatus == nil || fv.UpdateStatus.State != "rollback_completed" {
		t.Errorf("after the rollback: image %s, status %+v", fv.Image, fv.UpdateStatus)
	}
	for _, task := range fv.Tasks {
		if task.DesiredState == "running" && task.Image != testImage {
			t.Errorf("%s still on %s after the rollback", task.Name, task.Image)
		}
	}

	// 5. `service rollback` goes back to the previous image, here the
	//    broken one: the rollback pauses (--rollback-failure-action pause
	//    by default) and the verb exits non-zero saying so.
	out, err = m.Exec(ctx, "warren", "service", "rollback", "web", "--timeout", "2m")
	if err == nil || !strings.Contains(out, "rollback paused") || !strings.Contains(out, "web-") {
		t.Errorf("service rollback to a never-healthy image: %v\n%s", err, out)
	}
	if fv, err = inspectHealth(ctx, m, "web"); err != nil {
		t.Fatal(err)
	}
	if fv.UpdateStatus == nil || fv.UpdateStatus.State != "rollback_paused" {
		t.Errorf("after rolling back to the broken image: %+v", fv.UpdateStatus)
	}
}

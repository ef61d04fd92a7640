package orchestrate

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/warren-appliance/warren/cluster/clustermap"
	"github.com/warren-appliance/warren/internal/testimage"
	"github.com/warren-appliance/warren/internal/testimage/testnode"
)

func healthOf(r *Reconciler, name string) (TaskStatus, string) {
	s, _ := statusOf(r, name)
	if s.Health == nil {
		return s, ""
	}
	return s, s.Health.Status
}

// Health checks run as execs in real containers: a service check, an
// image's HEALTHCHECK, --no-healthcheck, a timeout; an unhealthy task is
// stopped and started again.
func TestHealthProbes(t *testing.T) {
	if !testnode.Enter(t, "orchhealth") {
		return
	}
	n := newNode(t)
	if _, err := testimage.BusyboxTarballWithHealthcheck(n.cfg.ImagesDir, "checked:latest", testimage.Healthcheck{
		Test: []string{"CMD-SHELL", "test -f /var/www/index.html"}, Interval: 200 * time.Millisecond, Retries: 2}); err != nil {
		t.Fatal(err)
	}
	r, stop := n.start(t)
	fast := func(test string) *clustermap.HealthCheck {
		return &clustermap.HealthCheck{Test: []string{"CMD-SHELL", test}, Interval: 200 * time.Millisecond, Timeout: time.Second, Retries: 2}
	}
	hc := webTask("hc-1", "10.0.1.2")
	hc.Command = []string{"sh", "-c", `rm -f /tmp/sick; echo "hello-$(hostname)" > /var/www/index.html && exec httpd -f -p 80 -h /var/www`}
	hc.Health = fast("test ! -f /tmp/sick")
	img := webTask("img-1", "10.0.1.3")
	img.Image = "checked"
	off := webTask("off-1", "10.0.1.4")
	off.Image = "checked"
	off.Health = &clustermap.HealthCheck{Test: []string{"NONE"}}
	slow := webTask("slow-1", "10.0.1.5")
	slow.Health = &clustermap.HealthCheck{Test: []string{"CMD-SHELL", "sleep 5"}, Interval: 200 * time.Millisecond, Timeout: 300 * time.Millisecond, Retries: 100}
	r.Apply([]TaskSpec{hc, img, off, slow})

	waitFor(t, "all running", 60*time.Second, running(r, "hc-1", "img-1", "off-1", "slow-1"))
	waitFor(t, "hc-1 and img-1 healthy", 30*time.Second, func() error {
		for _, name := range []string{"hc-1", "img-1"} {
			if s, h := healthOf(r, name); h != clustermap.HealthHealthy {
				return fmt.Errorf("%s: %+v", name, s.Health)
			}
		}
		return nil
	})
	if s, _ := healthOf(r, "img-1"); s.Health.Log[len(s.Health.Log)-1].ExitCode != 0 {
		t.Fatalf("img-1 log: %+v", s.Health.Log)
	}
	if s, _ := healthOf(r, "off-1"); s.Health != nil {
		t.Fatalf("off-1 has a health check despite NONE: %+v", s.Health)
	}
	waitFor(t, "slow-1's probe times out", 30*time.Second, func() error {
		s, h := healthOf(r, "slow-1")
		if h != clustermap.HealthStarting || len(s.Health.Log) == 0 {
			return fmt.Errorf("%+v", s.Health)
		}
		last := s.Health.Log[len(s.Health.Log)-1]
		if last.ExitCode != -1 || !strings.Contains(last.Output, "exceeded timeout") {
			return fmt.Errorf("last probe %+v", last)
		}
		return nil
	})

	// The task's MAC follows its IP, so a task recreated on the same IP
	// is reached at once (the host's neighbour entry stays right).
	if out, err := n.execIn("hc-1", "cat", "/sys/class/net/eth0/address"); err != nil || strings.TrimSpace(out) != "02:42:0a:00:01:02" {
		t.Fatalf("eth0 MAC of hc-1 (10.0.1.2) = %q %v, want 02:42:0a:00:01:02", out, err)
	}
	pid := n.taskPID(t, "hc-1")
	if _, err := n.execIn("hc-1", "sh", "-c", ": > /tmp/sick"); err != nil {
		t.Fatal(err)
	}
	sawUnhealthy := false
	waitFor(t, "hc-1 unhealthy, stopped and started again", 60*time.Second, func() error {
		s, h := healthOf(r, "hc-1")
		if h == clustermap.HealthUnhealthy || strings.Contains(s.Error, "stopped as unhealthy") {
			sawUnhealthy = true
		}
		if !sawUnhealthy {
			return fmt.Errorf("not unhealthy yet: %+v %s", s.Health, s.Error)
		}
		if s.State != clustermap.TaskRunning || h != clustermap.HealthHealthy || s.Restarts < 1 {
			return fmt.Errorf("state %s health %s restarts %d", s.State, h, s.Restarts)
		}
		return nil
	})
	if n.taskPID(t, "hc-1") == pid {
		t.Fatal("hc-1 runs the same process after turning unhealthy")
	}

	// A restarted appliance adopts hc-1 and probes it at once; until then
	// it reports no health rather than "starting", so a healthy task does
	// not leave its endpoints across the restart.
	stop()
	r2, _ := n.start(t)
	r2.Apply([]TaskSpec{hc, img, off, slow})
	waitFor(t, "hc-1 adopted and healthy", 30*time.Second, func() error {
		s, h := healthOf(r2, "hc-1")
		if s.State == clustermap.TaskRunning && h == clustermap.HealthStarting {
			t.Fatalf("adopted hc-1 reported starting: %+v", s.Health)
		}
		if s.State != clustermap.TaskRunning || h != clustermap.HealthHealthy {
			return fmt.Errorf("state %s health %s", s.State, h)
		}
		return nil
	})
}

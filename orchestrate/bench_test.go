package orchestrate

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/warren-appliance/warren/cluster/clustermap"
	"github.com/warren-appliance/warren/internal/testimage/testnode"
)

// politeWebTask serves like webTask but exits on SIGTERM, so removal does
// not wait for the stop grace period.
func politeWebTask(service string, slot int, ip netip.Addr) TaskSpec {
	return TaskSpec{
		Name: fmt.Sprintf("%s-%d", service, slot), Service: service, Image: "busybox", IP: ip,
		Command: []string{"sh", "-c", `trap 'exit 0' TERM
echo "hello-$(hostname)" > /var/www/index.html
httpd -p 80 -h /var/www
sleep 2147483647 & wait`},
	}
}

// tasksFor builds services x replicas tasks with sequential IPs.
func tasksFor(services, replicas int) []TaskSpec {
	var specs []TaskSpec
	ip := netip.MustParseAddr("10.0.1.2")
	for s := 1; s <= services; s++ {
		for r := 1; r <= replicas; r++ {
			specs = append(specs, politeWebTask(fmt.Sprintf("svc%02d", s), r, ip))
			ip = ip.Next()
		}
	}
	return specs
}

// allAnswer waits until every task answers HTTP with its own name.
func allAnswer(b *testing.B, specs []TaskSpec, timeout time.Duration) {
	b.Helper()
	pending := map[string]TaskSpec{}
	for _, s := range specs {
		pending[s.Name] = s
	}
	waitFor(b, fmt.Sprintf("%d tasks answering", len(specs)), timeout, func() error {
		for name, s := range pending {
			if answers(s.IP.String(), "hello-"+name)() == nil {
				delete(pending, name)
			}
		}
		if len(pending) > 0 {
			return fmt.Errorf("%d tasks not answering yet", len(pending))
		}
		return nil
	})
}

// BenchmarkApplyToAnswering measures, on one node with a private
// containerd, the time from Apply to every task running and answering
// HTTP on its own IP, for 3 tasks and for 30 services x 3 tasks, and the
// time to remove them all again.
func BenchmarkApplyToAnswering(b *testing.B) {
	if !testnode.Enter(b, "orchb") {
		b.Log("single-node figures; the cross-node version (tasks answering over the WireGuard mesh) is the integration suite's")
		return
	}
	n := newNode(b)
	r, _ := n.start(b)
	// Warm up: image import and unpack, bridge and rules, so the runs
	// measure tasks only.
	warm := tasksFor(1, 1)
	r.Apply(warm)
	allAnswer(b, warm, 2*time.Minute)
	r.Apply(nil)
	waitFor(b, "warm-up task removed", time.Minute, func() error { return n.gone(warm[0].Name) })

	for _, c := range []struct{ services, replicas int }{{1, 3}, {30, 3}} {
		specs := tasksFor(c.services, c.replicas)
		label := fmt.Sprintf("%dtasks", len(specs))
		b.ResetTimer()
		start := time.Now()
		r.Apply(specs)
		allAnswer(b, specs, 10*time.Minute)
		up := time.Since(start)
		start = time.Now()
		r.Apply(nil)
		waitFor(b, "all removed", 5*time.Minute, func() error {
			for _, s := range specs {
				if st, _ := statusOf(r, s.Name); st.State != clustermap.TaskShutdown {
					return fmt.Errorf("%s: %+v", s.Name, st)
				}
			}
			return nil
		})
		down := time.Since(start)
		b.StopTimer()
		for _, s := range specs {
			if err := n.gone(s.Name); err != nil {
				b.Fatal(err)
			}
		}
		testnode.ReportMetric(b, up.Seconds(), "s-up-"+label)
		testnode.ReportMetric(b, float64(up.Milliseconds())/float64(len(specs)), "ms/task-up-"+label)
		testnode.ReportMetric(b, down.Seconds(), "s-removed-"+label)
	}
}

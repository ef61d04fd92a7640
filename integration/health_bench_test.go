package integration

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/warren-appliance/warren/integration/lab"
	"github.com/warren-appliance/warren/internal/testimage"
)

// BenchmarkRollingUpdateFailedRequests (issue 26): on a manager and two
// workers, a steady client asks a 3-replica service's VIP 10 times a
// second from the manager while `warren service update --image` rolls it
// to a new image with a passing health check; the failed requests are
// counted for each update order, start-first and stop-first, in one run
// (both services live on the same cluster, updated one after the other).
func BenchmarkRollingUpdateFailedRequests(b *testing.B) {
	httpget, err := os.ReadFile(httpgetBin)
	if err != nil {
		b.Fatal(err)
	}
	const nextImage = "warren.test/busybox:next"
	next, err := testimage.BusyboxTarball(b.TempDir(), nextImage, testimage.File{Path: "bin/httpget", Mode: 0o755, Data: httpget})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	l, err := lab.New(lab.Options{Dir: b.TempDir(), BinDir: binDir()})
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	c, err := l.StartCluster(ctx, lab.ClusterOptions{Workers: 2, Images: []string{imageTarballB(b), next}})
	if err != nil {
		b.Fatal(err)
	}
	m := c.Manager
	type result struct {
		order              string
		failed, total      int
		quietFailed, quiet int      // the same client for 10 s before the update: the noise floor
		failedAt           []string // offsets of the failed requests from the update's start
		took               time.Duration
		updateExitedOK     bool
	}
	var results []result
	b.ResetTimer()
	for _, order := range []string{"start-first", "stop-first"} {
		name := "roll-" + order[:4]
		args := append([]string{"service", "create", name, "--image", testImage, "--replicas", "3",
			"--health-cmd", "wget -q -O /dev/null http://127.0.0.1/", "--health-interval", "1s", "--health-retries", "2",
			"--update-order", order, "--timeout", "3m"}, httpdCommand...)
		if out, err := m.Exec(ctx, "warren", args...); err != nil {
			b.Fatalf("%v\n%s", err, out)
		}
		v, err := inspectHealth(ctx, m, name)
		if err != nil {
			b.Fatal(err)
		}
		if err := lab.Poll(ctx, 200*time.Millisecond, func() error {
			_, err := m.Exec(ctx, "curl", "-sS", "-m", "1", "http://"+v.VIP+"/")
			return err
		}); err != nil {
			b.Fatal(err)
		}
		poll := pollVIPEvery(ctx, m, v.VIP, 100*time.Millisecond)
		time.Sleep(10 * time.Second) // the client runs steadily before the update
		start := time.Now()
		out, err := m.Exec(ctx, "warren", "service", "update", name, "--image", nextImage, "--timeout", "5m")
		took := time.Since(start)
		time.Sleep(3 * time.Second) // and after it
		answers := poll.Stop()
		r := result{order: order, took: took, updateExitedOK: err == nil}
		for _, a := range answers {
			if a.at.Before(start) {
				r.quiet++
				if a.page == "" {
					r.quietFailed++
				}
				continue
			}
			r.total++
			if a.page == "" {
				r.failed++
				r.failedAt = append(r.failedAt, fmt.Sprintf("%.1fs", a.at.Sub(start).Seconds()))
			}
		}
		if err != nil {
			b.Errorf("update (%s): %v\n%s", order, err, out)
		}
		results = append(results, r)
	}
	b.StopTimer()
	for _, r := range results {
		b.ReportMetric(float64(r.failed), "failed-requests/"+r.order)
		fmt.Fprintf(os.Stderr, "rolling update of 3 healthy replicas, %s: %d of %d requests of a 10/s client failed (at %v); update took %.1fs (exit ok: %v); before the update %d of %d failed\n",
			r.order, r.failed, r.total, r.failedAt, r.took.Seconds(), r.updateExitedOK, r.quietFailed, r.quiet)
	}
}

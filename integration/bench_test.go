package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/warren-appliance/warren/integration/lab"
)

// BenchmarkServiceStart (issue "orchestrate"): on a manager and two workers,
// the time from `warren service create --replicas 3` until all three tasks
// run and answer HTTP from the manager, then the time until 30 more
// services of 3 replicas (90 tasks across the three nodes) all run.
func BenchmarkServiceStart(b *testing.B) {
	l, err := lab.New(lab.Options{Dir: b.TempDir(), BinDir: binDir()})
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	img := imageTarballB(b)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	c, err := l.StartCluster(ctx, lab.ClusterOptions{Workers: 2, Images: []string{img}})
	if err != nil {
		b.Fatal(err)
	}
	m := c.Manager
	create := func(name string) {
		args := append([]string{"service", "create", name, "--image", testImage, "--replicas", "3"}, httpdCommand...)
		if out, err := m.Exec(ctx, "warren", args...); err != nil {
			b.Fatalf("%v\n%s", err, out)
		}
	}
	running := func() (int, []string, error) {
		out, err := m.Exec(ctx, "warren", "service", "ls", "--json")
		if err != nil {
			return 0, nil, err
		}
		var svcs []struct {
			Name    string `json:"name"`
			Running int    `json:"running"`
		}
		if err := json.Unmarshal([]byte(out), &svcs); err != nil {
			return 0, nil, err
		}
		n := 0
		var names []string
		for _, s := range svcs {
			n += s.Running
			names = append(names, s.Name)
		}
		return n, names, nil
	}

	b.ResetTimer()
	start := time.Now()
	create("bench")
	if err := lab.Poll(ctx, 100*time.Millisecond, func() error {
		v, err := inspect(ctx, m, "bench")
		if err != nil {
			return err
		}
		up := 0
		for _, t := range v.Tasks {
			if t.State != "running" {
				continue
			}
			if _, err := m.Exec(ctx, "curl", "-sS", "-m", "2", "http://"+t.IP+"/"); err == nil {
				up++
			}
		}
		if up != 3 {
			return fmt.Errorf("%d of 3 answering", up)
		}
		return nil
	}); err != nil {
		b.Fatal(err)
	}
	one := time.Since(start)

	start = time.Now()
	for i := 1; i <= 30; i++ {
		create(fmt.Sprintf("svc%02d", i))
	}
	if err := lab.Poll(ctx, 250*time.Millisecond, func() error {
		n, _, err := running()
		if err != nil {
			return err
		}
		if n != 93 {
			return fmt.Errorf("%d of 93 tasks running", n)
		}
		return nil
	}); err != nil {
		b.Fatal(err)
	}
	thirty := time.Since(start)
	b.StopTimer()
	b.ReportMetric(one.Seconds(), "s/3-replica-service-reachable")
	b.ReportMetric(thirty.Seconds(), "s/30x3-services-running")
	fmt.Fprintf(os.Stderr, "service start: 3 replicas running and answering in %.2fs; 30 services x 3 replicas (90 tasks on 3 nodes) running in %.2fs\n",
		one.Seconds(), thirty.Seconds())
}

package integration

import (
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/warren-appliance/warren/integration/lab"
	"github.com/warren-appliance/warren/internal/testimage"
)

// registryUplink is the registry's egress rate in the benchmark (tc tbf):
// a site's slow uplink to the registry.
const registryUplink = "40mbit"

// BenchmarkRegistryPull (issue 28): the time from `warren service create
// --replicas 3` of a 50 MiB image in a private registry until the three
// tasks (one per node) run, with the registry's uplink limited by tc to
// registryUplink, measured in one run: every node pulling the image from
// the registry itself (cluster.share_images = false, the baseline) and one
// pull per cluster (the default: the manager fetches each blob once, the
// workers take it from the manager over the mesh). Each on a fresh lab.
func BenchmarkRegistryPull(b *testing.B) {
	for _, bin := range []string{"docker-registry", "skopeo", "tc"} {
		if _, err := exec.LookPath(bin); err != nil {
			b.Skipf("%s is not installed (Debian: docker-registry skopeo iproute2)", bin)
		}
	}
	big := make([]byte, 50<<20)
	rand.Read(big) // does not compress: 50 MiB on the wire
	img, err := testimage.BusyboxTarball(b.TempDir(), testImage, testimage.File{Path: "data/blob", Mode: 0o644, Data: big})
	if err != nil {
		b.Fatal(err)
	}
	info, _ := os.Stat(img)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	b.ResetTimer()
	perNode := registryPullRun(ctx, b, img, "share_images = false\n")
	shared := registryPullRun(ctx, b, img, "")
	b.StopTimer()
	b.ReportMetric(perNode.Seconds(), "s/baseline-every-node-pulls")
	b.ReportMetric(shared.Seconds(), "s/one-pull-per-cluster")
	fmt.Fprintf(os.Stderr, "registry pull: 3 replicas (one per node) of a %.0f MiB image running after %.1fs with one pull per cluster vs %.1fs with every node pulling itself (%.2fx), registry uplink %s (tc tbf)\n",
		float64(info.Size())/(1<<20), shared.Seconds(), perNode.Seconds(), perNode.Seconds()/shared.Seconds(), registryUplink)
}

func registryPullRun(ctx context.Context, b *testing.B, img, clusterExtra string) time.Duration {
	b.Helper()
	l, err := lab.New(lab.Options{Dir: b.TempDir(), BinDir: binDir()})
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	c, err := l.StartCluster(ctx, lab.ClusterOptions{Workers: 2, ClusterExtra: clusterExtra})
	if err != nil {
		b.Fatal(err)
	}
	m := c.Manager
	r := startLabRegistry(b, ctx, l, "registry", "", "")
	image := r.addr + "/bench/big:1"
	if out, err := m.Exec(ctx, "skopeo", "copy", "--insecure-policy", "--dest-cert-dir", filepath.Join(r.dir, "certs"),
		"oci-archive:"+img, "docker://"+image); err != nil {
		b.Fatalf("skopeo push: %v\n%s", err, out)
	}
	if out, err := r.host.Sh(ctx, "tc qdisc add dev eth0 root tbf rate "+registryUplink+" burst 64kb latency 400ms"); err != nil {
		b.Fatalf("tc: %v\n%s", err, out)
	}
	if out, err := m.Exec(ctx, "warren", "registry", "add", r.addr, "--ca-file", filepath.Join(r.dir, "ca.pem")); err != nil {
		b.Fatalf("registry add: %v\n%s", err, out)
	}
	// The map with the registry reaches every node before the clock starts.
	time.Sleep(2 * time.Second)
	start := time.Now()
	if out, err := m.Exec(ctx, "warren", "service", "create", "big", "--detach", "--image", image, "--replicas", "3", "--", "sleep", "100000"); err != nil {
		b.Fatalf("service create: %v\n%s", err, out)
	}
	if err := lab.Poll(ctx, 100*time.Millisecond, func() error {
		v, err := inspect(ctx, m, "big")
		if err != nil {
			return err
		}
		nodes := map[string]bool{}
		for _, t := range v.Tasks {
			if t.State == "running" {
				nodes[t.Node] = true
			}
		}
		if len(nodes) != 3 {
			return fmt.Errorf("running on %v: %+v", nodes, v.Tasks)
		}
		return nil
	}); err != nil {
		for _, n := range c.Nodes() {
			b.Log(n.Logs())
		}
		b.Fatalf("3 replicas never ran: %v", err)
	}
	return time.Since(start)
}

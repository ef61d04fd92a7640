// Command demo is `make demo`: a local three-node Warren cluster (one
// manager, two workers) in network and mount namespaces on this machine,
// with a 3-replica HTTP service, kept running until Ctrl-C.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/warren-appliance/warren/integration/lab"
	"github.com/warren-appliance/warren/internal/testimage"
)

const imageRef = "warren.demo/busybox:latest"

func main() {
	dir := flag.String("dir", "/var/tmp/warren-demo", "working directory for the nodes' state and logs (wiped at start)")
	binDir := flag.String("bin", "bin", "directory holding warren and warren-appliance")
	workers := flag.Int("workers", 2, "number of workers")
	flag.Parse()
	if err := run(*dir, *binDir, *workers); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

func run(dir, binDir string, workers int) error {
	binDir, err := filepath.Abs(binDir)
	if err != nil {
		return err
	}
	if _, err := os.Stat(filepath.Join(binDir, "warren-appliance")); err != nil {
		return fmt.Errorf("no binaries in %s: run `make build` first (make demo does)", binDir)
	}
	// Ctrl-C (SIGINT) or SIGTERM at any moment, even while the cluster
	// starts, tears the demo down and exits 0: stopping it is not a
	// failure. Signals stay caught until the teardown is over.
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	os.RemoveAll(dir) // a previous demo's state; its namespaces are swept by lab.New
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	l, err := lab.New(lab.Options{Dir: dir, BinDir: binDir, Logger: log})
	if err != nil {
		return err
	}
	defer func() {
		fmt.Println("tearing the demo down ...")
		if err := l.Close(); err != nil {
			fmt.Fprintln(os.Stderr, "demo teardown:", err)
		}
	}()
	err = start(ctx, dir, l, workers)
	if ctx.Err() != nil || killedBySignal(err) {
		fmt.Println("\nstopped.")
		return nil
	}
	return err
}

// killedBySignal says whether err comes from a command that the same
// Ctrl-C (or SIGTERM) killed: the terminal sends SIGINT to the whole
// process group, and a child (`ip netns add` while the cluster starts)
// can die of it and fail start before the signal has cancelled ctx.
func killedBySignal(err error) bool {
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		return false
	}
	ws, ok := ee.Sys().(syscall.WaitStatus)
	return ok && ws.Signaled() && (ws.Signal() == syscall.SIGINT || ws.Signal() == syscall.SIGTERM)
}

// start brings the cluster and the service up and waits for the signal.
func start(ctx context.Context, dir string, l *lab.Lab, workers int) error {

	if err := os.MkdirAll(filepath.Join(dir, "images"), 0o755); err != nil {
		return err
	}
	img, err := testimage.BusyboxTarball(filepath.Join(dir, "images"), imageRef)
	if err != nil {
		return err
	}
	fmt.Printf("starting a manager and %d workers (logs under %s) ...\n", workers, dir)
	upCtx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	c, err := l.StartCluster(upCtx, lab.ClusterOptions{Workers: workers, Images: []string{img}})
	if err != nil {
		for _, n := range l.Nodes() {
			fmt.Fprint(os.Stderr, n.Logs())
		}
		return err
	}
	m := c.Manager
	fmt.Println("creating service web: 3 replicas of busybox httpd, each page naming its task ...")
	if _, err := m.Exec(upCtx, "warren", "service", "create", "web", "--image", imageRef, "--replicas", "3", "--",
		"sh", "-c", "mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 80 -h /www"); err != nil {
		return err
	}
	var vip string
	if err := lab.Poll(upCtx, 500*time.Millisecond, func() error {
		out, err := m.Exec(upCtx, "warren", "service", "inspect", "web", "--json")
		if err != nil {
			return err
		}
		var svc struct {
			VIP   string `json:"vip"`
			Tasks []struct {
				State string `json:"state"`
			} `json:"tasks"`
		}
		if err := json.Unmarshal([]byte(out), &svc); err != nil {
			return err
		}
		running := 0
		for _, t := range svc.Tasks {
			if t.State == "running" {
				running++
			}
		}
		if running < 3 {
			return fmt.Errorf("%d of 3 tasks running", running)
		}
		vip = svc.VIP
		return nil
	}); err != nil {
		return fmt.Errorf("service web did not start: %w", err)
	}
	out, _ := m.Exec(upCtx, "warren", "node", "ls")
	fmt.Printf("\nThe cluster is up.\n\n%s\n", out)
	fmt.Println("Enter a node (as root, in another terminal):")
	for _, n := range c.Nodes() {
		fmt.Printf("  %-10s %s\n", n.Name+":", n.EnterCommand())
	}
	fmt.Printf(`
Then try, inside a node:
  warren node ls
  warren service inspect web
  wg show warren0
  wg show warren0 latest-handshakes
  ip route show table main | grep warren0
  curl http://%s/          # the VIP: each request may land on another task
  iptables -t nat -L -n -v | grep %s
  ctr -n warren containers list
  warren network status --cluster             # on manager-1: every node's handshake age with every other
  curl -s http://127.0.0.1:9586/metrics | grep -E '^(wireguard|warren)_'
  warren service scale web=5                  # waits until 5 replicas run, showing each task

Press Ctrl-C to stop the demo and remove everything it created.
`, vip, vip)
	<-ctx.Done()
	return nil
}

package integration

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/warren-appliance/warren/integration/lab"
)

// Binaries built once for the suite, as `make build` builds them
// (warren-appliance is a symlink to warren).
var (
	applianceBin string
	warrenBin    string
	// httpgetBin goes into the test image as /bin/httpget (see testdata/httpget).
	httpgetBin string
	// netprobeBin goes into the test image as /bin/netprobe (see testdata/netprobe).
	netprobeBin string
)

func TestMain(m *testing.M) {
	if os.Geteuid() != 0 {
		fmt.Println("integration: skipped, needs root (network and mount namespaces)")
		os.Exit(0)
	}
	dir, err := os.MkdirTemp("", "warren-it-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	applianceBin = filepath.Join(dir, "warren-appliance")
	warrenBin = filepath.Join(dir, "warren")
	httpgetBin = filepath.Join(dir, "httpget")
	netprobeBin = filepath.Join(dir, "netprobe")
	for bin, pkg := range map[string]string{warrenBin: "../cmd/warren", httpgetBin: "./testdata/httpget", netprobeBin: "./testdata/netprobe"} {
		cmd := exec.Command("go", "build", "-o", bin, pkg)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "build %s: %v\n%s", pkg, err, out)
			os.Exit(1)
		}
	}
	// One binary, as the packages install it: the daemon is warren called
	// as warren-appliance.
	if err := os.Symlink("warren", applianceBin); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	// Every lab tears down what it made, even after a failed test.
	if left := lab.Leftovers(); len(left) > 0 {
		fmt.Fprintf(os.Stderr, "integration: the labs left behind: %v\n", left)
		code = 1
	}
	os.Exit(code)
}

// newLab starts a lab whose nodes' logs are printed if the test fails.
func newLab(t *testing.T) *lab.Lab {
	t.Helper()
	l, err := lab.New(lab.Options{Dir: t.TempDir(), BinDir: binDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, n := range l.Nodes() {
				t.Log(n.Logs())
			}
		}
		if err := l.Close(); err != nil {
			t.Errorf("lab teardown: %v", err)
		}
	})
	return l
}

// binDir holds the suite's binaries, mounted on the nodes' PATH.
func binDir() string { return filepath.Dir(applianceBin) }

// ctxFor gives a test step a generous deadline: the machine is shared.
func ctxFor(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// eventually polls fn until it succeeds, failing the test with fn's last
// error after timeout.
func eventually(t *testing.T, timeout time.Duration, what string, fn func() error) {
	t.Helper()
	if err := lab.Poll(ctxFor(t, timeout), 200*time.Millisecond, fn); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

func trim(s string) string { return strings.TrimSpace(s) }

package main

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Ctrl-C stops the demo cleanly, exit 0, whether the cluster is up or
// still starting (make demo then reports no error): the signal goes to the
// demo's process group, as a terminal sends it.
func TestCtrlCExitsZero(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: the demo builds network and mount namespaces")
	}
	bin := t.TempDir()
	for out, pkg := range map[string]string{"warren": "../../cmd/warren", "warren-demo": "."} {
		cmd := exec.Command("go", "build", "-o", filepath.Join(bin, out), pkg)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("build %s: %v\n%s", pkg, err, b)
		}
	}
	if err := os.Symlink("warren", filepath.Join(bin, "warren-appliance")); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ name, after string }{
		{"while starting", "starting a manager"},
		{"cluster up", "Press Ctrl-C to stop the demo"},
	} {
		t.Run(c.name, func(t *testing.T) {
			cmd := exec.Command(filepath.Join(bin, "warren-demo"), "-bin", bin, "-dir", filepath.Join(t.TempDir(), "demo"), "-workers", "1")
			cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
			stdout, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			var stderr strings.Builder
			cmd.Stderr = &stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			lines := make(chan string, 100)
			go func() {
				s := bufio.NewScanner(stdout)
				for s.Scan() {
					lines <- s.Text()
				}
				close(lines)
			}()
			var seen []string
			deadline := time.After(3 * time.Minute)
		wait:
			for {
				select {
				case l, ok := <-lines:
					if !ok {
						t.Fatalf("demo ended before %q: %v\n%s\n%s", c.after, cmd.Wait(), strings.Join(seen, "\n"), stderr.String())
					}
					seen = append(seen, l)
					if strings.Contains(l, c.after) {
						break wait
					}
				case <-deadline:
					syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
					t.Fatalf("no %q within 3 minutes:\n%s\n%s", c.after, strings.Join(seen, "\n"), stderr.String())
				}
			}
			if err := syscall.Kill(-cmd.Process.Pid, syscall.SIGINT); err != nil {
				t.Fatal(err)
			}
			for l := range lines {
				seen = append(seen, l)
			}
			if err := cmd.Wait(); err != nil {
				t.Fatalf("demo after Ctrl-C: %v, want exit 0\n%s\n%s", err, strings.Join(seen, "\n"), stderr.String())
			}
			if out := strings.Join(seen, "\n"); !strings.Contains(out, "tearing the demo down") || !strings.Contains(out, "stopped.") {
				t.Fatalf("no teardown reported:\n%s", out)
			}
			if strings.Contains(stderr.String(), "demo teardown:") {
				t.Fatalf("teardown failed:\n%s", stderr.String())
			}
		})
	}
}

// A child the Ctrl-C killed counts as stopping, wrapped or not (the race
// TestCtrlCExitsZero/while_starting lost once: `ip netns add` died of the
// SIGINT before the signal cancelled the demo's context); a child that
// failed on its own does not.
func TestKilledBySignal(t *testing.T) {
	interrupted := exec.Command("sh", "-c", "kill -INT $$").Run()
	if !killedBySignal(interrupted) || !killedBySignal(fmt.Errorf("ip netns add x: %w", interrupted)) {
		t.Errorf("a child killed by SIGINT (%v) is not seen as interrupted", interrupted)
	}
	if failed := exec.Command("false").Run(); killedBySignal(failed) {
		t.Errorf("a child that exited 1 (%v) is seen as interrupted", failed)
	}
	if killedBySignal(nil) || killedBySignal(errors.New("other")) {
		t.Error("a non-exit error is seen as interrupted")
	}
}

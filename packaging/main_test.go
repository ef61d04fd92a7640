// Tests of the release packages: the first test that needs them builds the
// binaries for the three architectures and runs build.sh once; the tests inspect the six packages,
// run the foreign binaries under qemu-user-static, install the amd64 .deb
// and .rpm into a Debian chroot, and check the systemd unit.
package packaging_test

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

const (
	// What `git describe` printed for the release under test, and what
	// build.sh must turn it into.
	testDescribe   = "1.2.3-4-gabcdef0"
	testPkgVersion = "1.2.3+4.gabcdef0"
	modulePath     = "github.com/warren-appliance/warren"
)

// target is one architecture the release ships.
type target struct {
	goarch  string
	debArch string
	rpmArch string
	qemu    string // qemu-user-static binary that runs it here; "" for native
}

var targets = []target{
	{goarch: "amd64", debArch: "amd64", rpmArch: "x86_64"},
	{goarch: "arm64", debArch: "arm64", rpmArch: "aarch64", qemu: "qemu-aarch64-static"},
	{goarch: "arm", debArch: "armhf", rpmArch: "armv6hl", qemu: "qemu-arm-static"},
}

func (tg target) debFile() string {
	return filepath.Join(distDir, fmt.Sprintf("warren-appliance_%s_%s.deb", testPkgVersion, tg.debArch))
}

func (tg target) rpmFile() string {
	return filepath.Join(distDir, fmt.Sprintf("warren-appliance-%s-1.%s.rpm", testPkgVersion, tg.rpmArch))
}

var (
	repoRoot string // the module root, where build.sh runs
	workDir  string // removed after the run
	binDir   string // linux-<goarch>/ directories, as `make cross` writes them
	distDir  string // build.sh's output
)

func TestMain(m *testing.M) {
	os.Exit(runTests(m))
}

func runTests(m *testing.M) int {
	if out, err := exec.Command("go", "version").CombinedOutput(); err != nil {
		fmt.Printf("skipping packaging tests: go cannot run here: %v %s\n", err, out)
		return 0
	}
	root, err := filepath.Abs("..")
	if err != nil {
		fmt.Println(err)
		return 1
	}
	repoRoot = root
	workDir, err = os.MkdirTemp("", "warren-packaging-test-")
	if err != nil {
		fmt.Println(err)
		return 1
	}
	defer os.RemoveAll(workDir)
	binDir = filepath.Join(workDir, "bin")
	distDir = filepath.Join(workDir, "dist")
	return m.Run()
}

var (
	buildOnce sync.Once
	buildErr  error
)

// needPackages builds the binaries and the six packages the first time a
// test asks for them, so tests of build.sh's pure parts do not wait on it.
func needPackages(t *testing.T) {
	t.Helper()
	buildOnce.Do(func() {
		start := time.Now()
		if err := crossBuild(binDir, testDescribe); err != nil {
			buildErr = err
			return
		}
		built := time.Now()
		if out, err := buildPackages(testDescribe, binDir, distDir, nil); err != nil {
			buildErr = fmt.Errorf("build.sh: %v\n%s", err, out)
			return
		}
		fmt.Fprintf(os.Stderr, "packaging: binaries built in %v, six packages in %v\n",
			built.Sub(start).Round(time.Millisecond), time.Since(built).Round(time.Millisecond))
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
}

// crossBuild writes the binary and its warren-appliance link for every
// target into dir/linux-<goarch>/ with the flags the Makefile's cross target
// uses (its output in bin/ is shared with everyone else working in the tree,
// so the tests build their own).
func crossBuild(dir, version string) error {
	ldflags := strings.Join([]string{"-s", "-w",
		"-X", modulePath + "/internal/buildinfo.Version=" + version,
		"-X", modulePath + "/internal/buildinfo.Commit=abcdef0123456789abcdef0123456789abcdef01",
		"-X", modulePath + "/internal/buildinfo.Date=" + time.Now().UTC().Format(time.RFC3339),
	}, " ")
	for _, tg := range targets {
		out := filepath.Join(dir, "linux-"+tg.goarch)
		cmd := exec.Command("go", "build", "-trimpath", "-tags", "grpcnotrace", "-ldflags", ldflags,
			"-o", filepath.Join(out, "warren"), "./cmd/warren")
		cmd.Dir = repoRoot
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+tg.goarch, "GOARM=6")
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("go build warren for %s: %v\n%s", tg.goarch, err, out)
		}
		if err := os.Symlink("warren", filepath.Join(out, "warren-appliance")); err != nil {
			return err
		}
	}
	return nil
}

// buildPackages runs build.sh as `make package` does, with extra env.
func buildPackages(version, bins, dist string, env []string) ([]byte, error) {
	cmd := exec.Command("sh", "packaging/build.sh")
	cmd.Dir = repoRoot
	cmd.Env = append(os.Environ(), "VERSION="+version, "BIN_DIR="+bins, "DIST_DIR="+dist)
	cmd.Env = append(cmd.Env, env...)
	return cmd.CombinedOutput()
}

// requireTool fails (not skips) when a tool CI must install is missing.
func requireTool(t *testing.T, name, debianPackage string) {
	t.Helper()
	if _, err := exec.LookPath(name); err != nil {
		t.Fatalf("%s not found: apt-get install -y %s", name, debianPackage)
	}
}

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
}

// run runs a command and returns its stdout, failing the test on error.
func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := runErr(name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return out
}

func runErr(name string, args ...string) (string, error) {
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if err != nil {
		return stdout.String() + stderr.String(), err
	}
	return stdout.String(), nil
}

// extractDeb unpacks a .deb's files into a fresh directory.
func extractDeb(t *testing.T, deb string) string {
	t.Helper()
	dir := t.TempDir()
	run(t, "dpkg-deb", "-x", deb, dir)
	return dir
}

// readRepoFile reads a file relative to the module root.
func readRepoFile(t *testing.T, rel string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot, rel))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// shippedConfigSource is the file build.sh installs as /etc/warren/warren.toml.
func shippedConfigSource() string { return "packaging/config/warren.toml" }

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

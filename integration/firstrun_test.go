package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/warren-appliance/warren/integration/lab"
)

// buildDeb builds this machine's .deb with packaging/build.sh from the
// suite's binaries and extracts it, as `apt install` would lay it out.
func buildDeb(t *testing.T) string {
	t.Helper()
	if runtime.GOARCH != "amd64" && runtime.GOARCH != "arm64" {
		t.Skipf("no .deb for %s in this test", runtime.GOARCH)
	}
	for _, tool := range []string{"dpkg-deb", "go"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s not found", tool)
		}
	}
	dir := t.TempDir()
	bins := filepath.Join(dir, "bin", "linux-"+runtime.GOARCH)
	if err := os.MkdirAll(bins, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, b := range []string{applianceBin, warrenBin} {
		data, err := os.ReadFile(b)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(bins, filepath.Base(b)), data, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command("sh", "packaging/build.sh")
	cmd.Dir = ".."
	cmd.Env = append(os.Environ(), "VERSION=0.0.0-dev", "ARCHS="+runtime.GOARCH, "PACKAGERS=deb",
		"BIN_DIR="+filepath.Join(dir, "bin"), "DIST_DIR="+filepath.Join(dir, "dist"))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build.sh: %v\n%s", err, out)
	}
	debs, _ := filepath.Glob(filepath.Join(dir, "dist", "*.deb"))
	if len(debs) != 1 {
		t.Fatalf("want one .deb, got %v", debs)
	}
	root := filepath.Join(dir, "root")
	if out, err := exec.Command("dpkg-deb", "-x", debs[0], root).CombinedOutput(); err != nil {
		t.Fatalf("dpkg-deb -x: %v\n%s", err, out)
	}
	return root
}

// unitCommand is the packaged unit's ExecStart, with the binary named as on
// PATH (the lab puts the package's /usr/bin on each board's PATH).
func unitCommand(t *testing.T, pkgRoot string) []string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(pkgRoot, "usr/lib/systemd/system/warren-appliance.service"))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "ExecStart="); ok {
			argv := strings.Fields(v)
			argv[0] = filepath.Base(argv[0])
			return argv
		}
	}
	t.Fatal("the unit has no ExecStart")
	return nil
}

// readmeCommand returns line if README's real-board section holds it as a
// command line, so the test runs what README says, verbatim.
func readmeCommand(t *testing.T, line string) []string {
	t.Helper()
	b, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	start := strings.Index(s, "## Running a cluster on real boards")
	end := strings.Index(s[start+1:], "\n## ")
	if start < 0 || end < 0 {
		t.Fatal("README has no section \"Running a cluster on real boards\"")
	}
	for _, l := range strings.Split(s[start:start+1+end], "\n") {
		if strings.TrimSpace(l) == line {
			return strings.Fields(line)
		}
	}
	t.Fatalf("README's real-board section does not have the command line %q", line)
	return nil
}

// addBoard adds a simulated Raspberry Pi with the package's files installed.
func addBoard(t *testing.T, l *lab.Lab, name, hostname, pkgRoot, image string) *lab.Node {
	t.Helper()
	ctx := ctxFor(t, 2*time.Minute)
	n, err := l.AddBoard(name, hostname)
	if err != nil {
		t.Fatal(err)
	}
	if err := n.InstallPackage(ctx, pkgRoot); err != nil {
		t.Fatal(err)
	}
	// Simulated boards share one kernel: each needs a cgroup parent of
	// its own (the only key the lab adds to the shipped config).
	if err := n.AppendConfig(fmt.Sprintf("\n[runtime]\ncgroup_parent = %q\n", n.CgroupParent())); err != nil {
		t.Fatal(err)
	}
	if err := n.AddImage(image); err != nil {
		t.Fatal(err)
	}
	if err := n.StartContainerd(ctx); err != nil {
		t.Fatal(err)
	}
	return n
}

func waitLog(t *testing.T, n *lab.Node, want string, timeout time.Duration) {
	t.Helper()
	eventually(t, timeout, n.Name+" prints "+want, func() error {
		if !strings.Contains(n.ApplianceLog(), want) {
			return fmt.Errorf("not yet:\n%s", n.ApplianceLog())
		}
		return nil
	})
}

type nodeRow struct {
	Name           string `json:"name"`
	Role           string `json:"role"`
	Status         string `json:"status"`
	OverlayIP      string `json:"overlay_ip"`
	ContainerBlock string `json:"container_block"`
}

func readyNodes(ctx context.Context, m *lab.Node, want int) ([]nodeRow, error) {
	out, err := m.Exec(ctx, "warren", "node", "ls", "--json")
	if err != nil {
		return nil, err
	}
	var rows []nodeRow
	if err := json.Unmarshal([]byte(out), &rows); err != nil {
		return nil, err
	}
	for _, r := range rows {
		if r.Status != "ready" {
			return nil, fmt.Errorf("%s is %s", r.Name, r.Status)
		}
	}
	if len(rows) != want {
		return nil, fmt.Errorf("%d nodes, want %d: %+v", len(rows), want, rows)
	}
	slices.SortFunc(rows, func(a, b nodeRow) int { return strings.Compare(a.Name, b.Name) })
	return rows, nil
}

// Issue "first-run", Done when: the package's files on three boards (each
// its own host name), README's commands verbatim (the join command as
// `warren cluster join-token worker` prints it), a VIP served, then every
// board cold-booted into the unit's command: same names, addresses and
// service, and no token anywhere.
func TestFirstRunThreeBoardsSurviveReboot(t *testing.T) {
	pkg := buildDeb(t)
	unit := unitCommand(t, pkg)
	if got := strings.Join(unit, " "); got != "warren-appliance --config /etc/warren/warren.toml" {
		t.Fatalf("the unit runs %q", got)
	}
	l := newLab(t)
	img := imageTarball(t)
	ctx := ctxFor(t, 8*time.Minute)
	var boards []*lab.Node
	for _, name := range []string{"pi-1", "pi-2", "pi-3"} {
		boards = append(boards, addBoard(t, l, name, name, pkg, img))
	}
	pi1 := boards[0]

	// Step 2: the first board creates the cluster with the shipped config.
	if err := pi1.StartAppliance("warren", readmeCommand(t, "warren cluster init")[1:]...); err != nil {
		t.Fatal(err)
	}
	waitLog(t, pi1, "warren cluster join-token worker", time.Minute)

	// Step 3: the join command exactly as join-token prints it.
	var join []string
	eventually(t, 30*time.Second, "join-token worker", func() error {
		out, err := pi1.Exec(ctx, readmeCommand(t, "warren cluster join-token worker")[0], "cluster", "join-token", "worker")
		if err != nil {
			return err
		}
		for _, line := range strings.Split(out, "\n") {
			if f := strings.Fields(line); len(f) > 2 && f[0] == "warren" && f[1] == "worker" {
				join = f
				return nil
			}
		}
		return fmt.Errorf("no join command in:\n%s", out)
	})
	token := join[len(join)-1]
	if !strings.HasPrefix(token, "WRN-1-") || strings.Contains(pi1.ApplianceLog(), token) {
		t.Fatalf("join command %q; the token must not be in cluster init's output:\n%s", join, pi1.ApplianceLog())
	}
	for _, b := range boards[1:] {
		if err := b.StartAppliance(join[0], join[1:]...); err != nil {
			t.Fatal(err)
		}
	}
	var before []nodeRow
	eventually(t, 90*time.Second, "three boards ready", func() error {
		var err error
		before, err = readyNodes(ctx, pi1, 3)
		return err
	})
	// The token given with --token is not in the running command line,
	// which every user of the board can read (ps, /proc/PID/cmdline).
	for _, b := range boards[1:] {
		cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", b.AppliancePID()))
		if err != nil {
			t.Fatal(err)
		}
		if args := strings.ReplaceAll(string(cmdline), "\x00", " "); strings.Contains(args, token) || !strings.Contains(args, "worker start") {
			t.Errorf("%s runs %q: the token must not be on its command line", b.Name, args)
		}
	}
	for i, r := range before {
		if r.Name != boards[i].Name {
			t.Errorf("node %d is named %q, want its host name %q", i, r.Name, boards[i].Name)
		}
	}

	// Step 4: Ctrl-C, then the service (the unit's command) on every board.
	for _, b := range boards {
		if err := b.StopAppliance(syscall.SIGINT); err != nil {
			t.Fatal(err)
		}
		if err := b.StartAppliance(unit[0], unit[1:]...); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, 90*time.Second, "three boards ready under the unit's command", func() error {
		_, err := readyNodes(ctx, pi1, 3)
		return err
	})

	// Step 5: a service with a VIP (the lab's image instead of nginx).
	readmeCommand(t, "warren service create web --image nginx:alpine --replicas 3")
	if out, err := pi1.Exec(ctx, "warren", append([]string{"service", "create", "web", "--image", testImage, "--replicas", "3"}, httpdCommand...)...); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	c := &lab.Cluster{Manager: pi1, Workers: boards[1:]}
	v := waitRunning(t, c, "web", 3)
	for _, b := range boards {
		eventually(t, 60*time.Second, b.Name+" reaches the VIP", func() error {
			_, err := b.Exec(ctx, "curl", "-sS", "-m", "3", "http://"+v.VIP+"/")
			return err
		})
	}

	// Every board is cold-booted (power cut: tasks, interfaces, rules and
	// /run gone) and starts the unit's command again.
	for _, b := range boards {
		if err := b.PowerOff(); err != nil {
			t.Fatal(err)
		}
		if err := b.ForgetVolatile(ctx); err != nil {
			t.Fatal(err)
		}
	}
	for _, b := range boards {
		if err := b.StartContainerd(ctx); err != nil {
			t.Fatal(err)
		}
		if err := b.StartAppliance(unit[0], unit[1:]...); err != nil {
			t.Fatal(err)
		}
	}
	var after []nodeRow
	eventually(t, 2*time.Minute, "three boards ready after the reboot", func() error {
		var err error
		after, err = readyNodes(ctx, pi1, 3)
		return err
	})
	if !slices.Equal(before, after) {
		t.Errorf("nodes changed across the reboot:\nbefore %+v\nafter  %+v", before, after)
	}
	v2 := waitRunning(t, c, "web", 3)
	if v2.VIP != v.VIP {
		t.Errorf("VIP %s became %s", v.VIP, v2.VIP)
	}
	for _, b := range boards {
		eventually(t, 90*time.Second, b.Name+" reaches the VIP after the reboot", func() error {
			_, err := b.Exec(ctx, "curl", "-sS", "-m", "3", "http://"+v.VIP+"/")
			return err
		})
		// No token on the board: the config never had one, and what the
		// setup command remembered holds none.
		out, err := b.Sh(ctx, "cat /etc/warren/warren.toml /var/lib/warren/setup.json")
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(out, "WRN-1-") {
			t.Errorf("%s keeps a join token on disk:\n%s", b.Name, out)
		}
	}

	// Retiring pi-3 as README says: drain (its tasks move), stop, node rm,
	// --cleanup; then nothing of ours is left on it.
	pi3 := boards[2]
	if out, err := pi1.Exec(ctx, "warren", "node", "drain", "pi-3"); err != nil || !strings.Contains(out, "pi-3: drain") {
		t.Fatalf("node drain: %v\n%s", err, out)
	}
	eventually(t, 2*time.Minute, "pi-3's tasks moved to the other boards", func() error {
		v, err := inspect(ctx, pi1, "web")
		if err != nil {
			return err
		}
		running := 0
		for _, task := range v.Tasks {
			if task.Node == "pi-3" {
				return fmt.Errorf("task %s still on pi-3 (%s)", task.Name, task.State)
			}
			if task.State == "running" {
				running++
			}
		}
		if running != 3 {
			return fmt.Errorf("%d of 3 running", running)
		}
		return nil
	})
	if tasks, err := ctrTasks(ctx, pi3); err != nil || len(tasks) != 0 {
		t.Errorf("containerd on the drained pi-3 still has tasks %v (%v)", tasks, err)
	}
	for _, b := range boards[:2] {
		if _, err := b.Exec(ctx, "curl", "-sS", "-m", "3", "http://"+v.VIP+"/"); err != nil {
			t.Errorf("%s: VIP after the drain: %v", b.Name, err)
		}
	}
	if err := pi3.StopAppliance(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if out, err := pi1.Exec(ctx, "warren", "node", "rm", "--force", "pi-3"); err != nil {
		t.Fatalf("node rm: %v\n%s", err, out)
	}
	cleanup, err := pi3.Exec(ctx, "warren-appliance", "--cleanup")
	if err != nil {
		t.Fatalf("--cleanup: %v\n%s", err, cleanup)
	}
	left, err := pi3.Sh(ctx, "ctr namespaces ls -q | grep -x warren; iptables-save | grep -i warren; nft list table inet warren 2>/dev/null; ip -o link | grep -E 'warren0|warren-br0'; true")
	if err != nil || strings.TrimSpace(left) != "" {
		t.Errorf("after --cleanup pi-3 still has (containerd namespace, rules, links):\n%s %v\n--cleanup said:\n%s", left, err, cleanup)
	}
}

// Issue "first-run": boards that kept the OS's default host name. The
// second "raspberrypi" joins under a unique name derived from its key, and
// keeps it when restarted into the unit's command.
func TestDuplicateHostnamesGetUniqueStableNames(t *testing.T) {
	l := newLab(t)
	ctx := ctxFor(t, 5*time.Minute)
	img := imageTarball(t)
	var boards []*lab.Node
	for _, name := range []string{"board-a", "board-b", "board-c"} {
		n, err := l.AddBoard(name, "raspberrypi")
		if err != nil {
			t.Fatal(err)
		}
		if err := n.WriteConfig(fmt.Sprintf("[runtime]\ncgroup_parent = %q\n", n.CgroupParent())); err != nil {
			t.Fatal(err)
		}
		if err := n.AddImage(img); err != nil {
			t.Fatal(err)
		}
		if err := n.StartContainerd(ctx); err != nil {
			t.Fatal(err)
		}
		boards = append(boards, n)
	}
	m := boards[0]
	if err := m.StartAppliance("warren", "cluster", "init"); err != nil {
		t.Fatal(err)
	}
	var token string
	eventually(t, time.Minute, "join token", func() error {
		out, err := m.Exec(ctx, "warren", "cluster", "join-token", "worker", "-q")
		token = trim(out)
		return err
	})
	for _, b := range boards[1:] {
		if err := b.StartAppliance("warren", "worker", "start", "--manager", m.LANIP.String()+":7946", "--token", token); err != nil {
			t.Fatal(err)
		}
	}
	var before []nodeRow
	eventually(t, 90*time.Second, "three boards ready", func() error {
		var err error
		before, err = readyNodes(ctx, m, 3)
		return err
	})
	names := map[string]bool{}
	for _, r := range before {
		names[r.Name] = true
		if r.Name != "raspberrypi" && !regexpUnique.MatchString(r.Name) {
			t.Errorf("node name %q: want raspberrypi or raspberrypi-<4 hex>", r.Name)
		}
	}
	if len(names) != 3 || !names["raspberrypi"] {
		t.Fatalf("names not unique: %+v", before)
	}
	// Restarted into the unit's command, every board keeps its name.
	for _, b := range boards {
		if err := b.StopAppliance(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		if err := b.StartAppliance("warren-appliance", "--config", "/etc/warren/warren.toml"); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, 90*time.Second, "the same three names after a restart", func() error {
		after, err := readyNodes(ctx, m, 3)
		if err != nil {
			return err
		}
		if !slices.Equal(before, after) {
			return fmt.Errorf("before %+v\nafter %+v", before, after)
		}
		return nil
	})
}

var regexpUnique = regexp.MustCompile(`^raspberrypi-[0-9a-f]{4}$`)

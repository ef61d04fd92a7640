package packaging_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/warren-appliance/warren/internal/testimage"
	"github.com/warren-appliance/warren/internal/testimage/testnode"
)

const envPackagedBin = "WARREN_PKGTEST_BIN"

// A manager running a containerd task under the unit's sandbox: task
// namespace, veth, bridge and IP are made with only the unit's capabilities
// and NoNewPrivileges, and the task answers on its IP. Runs as a simulated
// node (own network and mount namespaces, private containerd).
func TestManagerRunsTaskUnderUnitSandbox(t *testing.T) {
	if os.Getenv(envPackagedBin) == "" {
		requireRoot(t)
		requireTool(t, "setpriv", "util-linux")
		needPackages(t)
		t.Setenv(envPackagedBin, filepath.Join(extractDeb(t, targets[0].debFile()), "usr/bin"))
	}
	if !testnode.Enter(t, "pkgtask") {
		return
	}
	bin := os.Getenv(envPackagedBin)
	caps := unitCapabilities(t)

	cgroup := fmt.Sprintf("pkgtask%d", os.Getpid())
	t.Cleanup(func() { removeCgroupDirs(cgroup) })
	ctrd := testnode.StartContainerd(t)
	run(t, "sh", "-ec", lanSetup)

	dir := t.TempDir()
	// Task namespaces are bind mounts under the state dir; they outlive the
	// daemon by design, so unmount whatever --cleanup left before the
	// TempDir is removed.
	t.Cleanup(func() { unmountUnder(dir) })
	state := filepath.Join(dir, "state")
	images := filepath.Join(dir, "images")
	for _, d := range []string{state, images} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := testimage.BusyboxTarball(images, "warren.test/busybox:latest"); err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(dir, "warren.toml")
	writeFile(t, cfg, fmt.Sprintf(`[node]
name = "pkg-task-manager"
role = "manager"
state_dir = %q

[wireguard]
mode = "tun"

[runtime]
containerd_address = %q
images_dir = %q
cgroup_parent = "/%s"
`, state, ctrd.Address, images, cgroup))
	if err := os.MkdirAll("/run/warren", 0o755); err != nil {
		t.Fatal(err)
	}

	d := startSandboxedDaemon(t, filepath.Join(bin, "warren-appliance"), caps, "", "", cfg)
	if err := d.waitReady(120 * time.Second); err != nil {
		t.Fatalf("%v\n%s", err, d.output)
	}
	warren := filepath.Join(bin, "warren")
	if out, err := runErr(warren, "service", "create", "web", "--image", "warren.test/busybox:latest", "--replicas", "1",
		"--", "sh", "-c", "mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 80 -h /www"); err != nil {
		t.Fatalf("warren service create: %v\n%s\n%s", err, out, d.output)
	}

	var task struct{ Name, IP, State, Error string }
	deadline := time.Now().Add(3 * time.Minute)
	for {
		out, err := runErr(warren, "service", "inspect", "web", "--json")
		var v struct {
			Tasks []struct{ Name, IP, State, Error string }
		}
		if err == nil && json.Unmarshal([]byte(out), &v) == nil && len(v.Tasks) == 1 {
			task = v.Tasks[0]
			if task.State == "running" && task.IP != "" {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no running task within 3 min: %v %+v\n%s\n%s", err, task, out, d.output)
		}
		time.Sleep(500 * time.Millisecond)
	}

	// The task's page over its own IP, via the bridge the daemon made.
	client := &http.Client{Timeout: 3 * time.Second}
	var page string
	deadline = time.Now().Add(60 * time.Second)
	for {
		resp, err := client.Get("http://" + task.IP + "/")
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			page = strings.TrimSpace(string(b))
			if page == task.Name {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("task %s at %s: page %q, err %v\n%s", task.Name, task.IP, page, err, d.output)
		}
		time.Sleep(500 * time.Millisecond)
	}
	d.stop(t)

	// --cleanup, under the same sandbox, removes the task and its network.
	out, err := runErr("setpriv", "--no-new-privs", "--bounding-set", boundingSet(caps), "--inh-caps", "-all", "--",
		filepath.Join(bin, "warren-appliance"), "--cleanup", "--config", cfg)
	if err != nil {
		t.Fatalf("warren-appliance --cleanup: %v\n%s", err, out)
	}
	if out, _ := runErr("ip", "-o", "link", "show"); strings.Contains(out, "warren") {
		t.Errorf("links left after --cleanup:\n%s", out)
	}
	if out, _ := ctrd.Ctr("-n", "warren", "containers", "list", "-q"); strings.TrimSpace(out) != "" {
		t.Errorf("containers left after --cleanup:\n%s", out)
	}
}

// unmountUnder detaches every mount below dir.
func unmountUnder(dir string) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && strings.HasPrefix(f[4], dir+"/") {
			syscall.Unmount(f[4], syscall.MNT_DETACH)
		}
	}
}

// removeCgroupDirs removes the (empty, once the tasks are dead) cgroup
// directories named name under every v1 controller or the v2 hierarchy,
// deepest first.
func removeCgroupDirs(name string) {
	roots, _ := filepath.Glob("/sys/fs/cgroup/*/" + name)
	v2, _ := filepath.Glob("/sys/fs/cgroup/" + name)
	for _, root := range append(roots, v2...) {
		var dirs []string
		filepath.Walk(root, func(path string, info os.FileInfo, err error) error {
			if err == nil && info.IsDir() {
				dirs = append(dirs, path)
			}
			return nil
		})
		for i := len(dirs) - 1; i >= 0; i-- {
			os.Remove(dirs[i])
		}
	}
}

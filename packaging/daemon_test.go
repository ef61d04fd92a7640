package packaging_test

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// sandboxedDaemon is the packaged warren-appliance started the way the unit
// starts it: NoNewPrivileges, the unit's CapabilityBoundingSet, a private
// /run (RuntimeDirectory) and NOTIFY_SOCKET; here also in its own empty
// network namespace, so nothing reaches the host's interfaces.
type sandboxedDaemon struct {
	cmd    *exec.Cmd
	notify *net.UnixConn
	exited chan error
	output *syncBuffer
}

// syncBuffer collects the daemon's output while the test reads it.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// standaloneConfig is a standalone node; mode = "tun" so a missing
// capability cannot hide behind the netstack fallback.
const standaloneConfig = `[node]
name = "pkg-sandbox"
role = "standalone"
state_dir = %q

[wireguard]
mode = "tun"
listen_port = 51820
address = "10.77.0.1/24"
`

// managerConfig is a first manager (cluster init). Its namespace gets a
// LAN address and default route from lanSetup; containerd is absent, which
// the manager reports and keeps retrying.
const managerConfig = `[node]
name = "pkg-sandbox-manager"
role = "manager"
state_dir = %q

[wireguard]
mode = "tun"
`

const lanSetup = `ip link set lo up
ip link add pkglan0 type veth peer name pkglan1
ip addr add 192.0.2.10/24 dev pkglan0
ip link set pkglan0 up; ip link set pkglan1 up
ip route add default via 192.0.2.1
`

// startSandboxedDaemon starts exe with configTemplate (its %q is the state
// dir) after the setup commands, in new network and mount namespaces; or,
// with cfg set, with that config file in the caller's namespaces.
// boundingSet turns CAP_NET_ADMIN... into setpriv's -all,+net_admin,...
func boundingSet(caps []string) string {
	set := []string{"-all"}
	for _, c := range caps {
		set = append(set, "+"+strings.ToLower(strings.TrimPrefix(c, "CAP_")))
	}
	return strings.Join(set, ",")
}

func startSandboxedDaemon(t *testing.T, exe string, caps []string, configTemplate, setup, cfg string) *sandboxedDaemon {
	t.Helper()
	dir := t.TempDir()
	if cfg == "" {
		state := filepath.Join(dir, "state")
		if err := os.Mkdir(state, 0o700); err != nil {
			t.Fatal(err)
		}
		cfg = filepath.Join(dir, "warren.toml")
		writeFile(t, cfg, fmt.Sprintf(configTemplate, state))
	}

	notifyPath := filepath.Join(dir, "notify.sock")
	notify, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: notifyPath, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { notify.Close() })

	sandbox := `exec setpriv --no-new-privs --bounding-set "$BOUNDING" --inh-caps -all -- "$EXE" --config "$CFG"`
	cmd := exec.Command("sh", "-ec", sandbox)
	if configTemplate != "" {
		cmd = exec.Command("unshare", "--mount", "--net", "--propagation", "private", "sh", "-ec",
			setup+"mount -t tmpfs tmpfs /run; install -d -m 0755 /run/warren\n"+sandbox)
	}
	cmd.Env = append(os.Environ(), "BOUNDING="+boundingSet(caps), "EXE="+exe, "CFG="+cfg,
		"NOTIFY_SOCKET="+notifyPath)
	d := &sandboxedDaemon{cmd: cmd, notify: notify, exited: make(chan error, 1), output: &syncBuffer{}}
	cmd.Stdout, cmd.Stderr = d.output, d.output
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { d.exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-d.exited
	})
	return d
}

// waitReady returns nil once the daemon sent READY=1, or why it did not.
func (d *sandboxedDaemon) waitReady(timeout time.Duration) error {
	got := make(chan error, 1)
	go func() {
		buf := make([]byte, 4096)
		d.notify.SetReadDeadline(time.Now().Add(timeout))
		for {
			n, err := d.notify.Read(buf)
			if err != nil {
				got <- fmt.Errorf("no READY=1 on NOTIFY_SOCKET: %w", err)
				return
			}
			for _, line := range strings.Split(string(buf[:n]), "\n") {
				if line == "READY=1" {
					got <- nil
					return
				}
			}
		}
	}()
	select {
	case err := <-got:
		return err
	case err := <-d.exited:
		d.exited <- err
		return fmt.Errorf("daemon exited before READY=1: %v", err)
	}
}

func TestDaemonStartsUnderUnitSandboxAndNotifiesReady(t *testing.T) {
	requireRoot(t)
	requireTool(t, "setpriv", "util-linux")
	requireTool(t, "nsenter", "util-linux")
	needPackages(t)
	exe := filepath.Join(extractDeb(t, targets[0].debFile()), "usr/bin/warren-appliance")
	caps := unitCapabilities(t)

	// Loopback up, as on any host: /metrics listens on 127.0.0.1:9586.
	d := startSandboxedDaemon(t, exe, caps, standaloneConfig, "ip link set lo up\n", "")
	if err := d.waitReady(90 * time.Second); err != nil {
		t.Fatalf("%v\n%s", err, d.output)
	}
	pid := fmt.Sprint(d.cmd.Process.Pid)
	if out, err := runErr("nsenter", "--target", pid, "--net", "curl", "-sS", "-m", "5", "http://127.0.0.1:9586/metrics"); err != nil ||
		!strings.Contains(out, "warren_map_version 0") {
		t.Errorf("/metrics of the sandboxed daemon: %v\n%s", err, out)
	}
	if out, err := runErr("nsenter", "--target", pid, "--net", "ip", "-o", "addr", "show", "dev", "warren0"); err != nil ||
		!strings.Contains(out, "10.77.0.1/24") {
		t.Errorf("warren0 with 10.77.0.1/24 in the daemon's namespace: %v\n%s", err, out)
	}
	status := readFile(t, "/proc/"+pid+"/status")
	if !strings.Contains(status, "NoNewPrivs:\t1") {
		t.Errorf("daemon runs without NoNewPrivs:\n%s", status)
	}

	d.stop(t)
}

// stop sends SIGTERM, as systemctl stop does, and wants a clean exit.
func (d *sandboxedDaemon) stop(t *testing.T) {
	t.Helper()
	if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-d.exited:
		d.exited <- err
		if err != nil {
			t.Errorf("daemon exit after SIGTERM: %v\n%s", err, d.output)
		}
	case <-time.After(60 * time.Second):
		t.Errorf("daemon still running 60 s after SIGTERM\n%s", d.output)
	}
}

// A manager under the same sandbox: cluster store, API, tunnel, NAT rules
// (iptables-restore) and DNS on port 53 all come up and it sends READY=1.
func TestManagerStartsUnderUnitSandbox(t *testing.T) {
	requireRoot(t)
	requireTool(t, "setpriv", "util-linux")
	requireTool(t, "nsenter", "util-linux")
	needPackages(t)
	exe := filepath.Join(extractDeb(t, targets[0].debFile()), "usr/bin/warren-appliance")

	d := startSandboxedDaemon(t, exe, unitCapabilities(t), managerConfig, lanSetup, "")
	if err := d.waitReady(120 * time.Second); err != nil {
		t.Fatalf("%v\n%s", err, d.output)
	}
	pid := fmt.Sprint(d.cmd.Process.Pid)
	// READY=1 follows the start of the reconcilers; their first pass over
	// the map (NAT rules, DNS) lands shortly after, so poll for it.
	in := func(args ...string) string {
		out, _ := runErr("nsenter", append([]string{"--target", pid, "--net"}, args...)...)
		return out
	}
	checks := []struct {
		what string
		ok   func() bool
	}{
		{"warren0 with the first manager's overlay address 10.0.0.1", func() bool {
			return strings.Contains(in("ip", "-o", "addr", "show", "dev", "warren0"), "10.0.0.1/")
		}},
		{"warren NAT chains", func() bool { return strings.Contains(strings.ToUpper(in("iptables-save", "-t", "nat")), "WARREN") }},
		{"a DNS listener on port 53", func() bool { return strings.Contains(in("ss", "-Hlnu", "sport", "= :53"), ":53") }},
	}
	deadline := time.Now().Add(60 * time.Second)
	for _, c := range checks {
		for !c.ok() {
			if time.Now().After(deadline) {
				t.Errorf("no %s in the manager's namespace within 60 s\n%s", c.what, d.output)
				break
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	d.stop(t)
}

// Without CAP_NET_ADMIN the daemon cannot make its TUN device: the sandbox
// test above would notice a capability the unit forgot.
func TestDaemonFailsWithoutNetAdmin(t *testing.T) {
	requireRoot(t)
	requireTool(t, "setpriv", "util-linux")
	needPackages(t)
	exe := filepath.Join(extractDeb(t, targets[0].debFile()), "usr/bin/warren-appliance")
	var caps []string
	for _, c := range unitCapabilities(t) {
		if c != "CAP_NET_ADMIN" {
			caps = append(caps, c)
		}
	}
	d := startSandboxedDaemon(t, exe, caps, standaloneConfig, "", "")
	err := d.waitReady(90 * time.Second)
	if err == nil {
		t.Fatalf("daemon became ready without CAP_NET_ADMIN\n%s", d.output)
	}
	t.Logf("without CAP_NET_ADMIN: %v\n%s", err, d.output)
	var exitErr *exec.ExitError
	select {
	case werr := <-d.exited:
		d.exited <- werr
		if !errors.As(werr, &exitErr) {
			t.Errorf("daemon without CAP_NET_ADMIN: %v, want a failure exit\n%s", werr, d.output)
		}
	case <-time.After(60 * time.Second):
		t.Errorf("daemon without CAP_NET_ADMIN neither ready nor exited\n%s", d.output)
	}
}

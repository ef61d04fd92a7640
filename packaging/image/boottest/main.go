// Command boottest boots copies of the appliance image (make image) as
// emulated arm64 boards (qemu-system-aarch64 -M virt, TCG, with the image's
// own kernel and initrd) on a bridge inside a network namespace it creates,
// configures them only through the image's NoCloud seed (one manager, the
// others workers), waits until `warren node ls` on the manager shows every
// board ready, runs a 2-replica service and reaches its VIP from every board.
// It prints each board's boot-to-ready time and the appliance's RSS, and
// removes every process, file and namespace it made. Run as root:
//
//	go run ./packaging/image/boottest -image dist/warren-appliance-<v>-arm64.img
package main

import (
	"bytes"
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
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/warren-appliance/warren/internal/testimage"
)

const (
	imageRef  = "warren.test/busybox:latest"
	subnet    = "192.168.213" // only inside the test's namespace
	gatewayIP = subnet + ".254"
	fatLabel  = "RASPIFIRM"
	seedImage = "warren-test-busybox.tar"
)

type board struct {
	name    string
	ip      string
	mac     string
	memMiB  int
	role    string
	disk    string
	console string
	cmd     *exec.Cmd
	started time.Time
	ready   time.Duration
	rss     string
	cgroups string
	boot    string
}

type run struct {
	image   string
	work    string
	netns   string
	kernel  string
	initrd  string
	cmdline string
	fatOff  int64
	key     string
	tarball string
	boards  []*board
	log     *slog.Logger
}

func main() {
	image := flag.String("image", "", "the appliance image (dist/warren-appliance-<version>-arm64.img)")
	n := flag.Int("boards", 3, "boards to boot (2 or more): the first is the manager, the last has -small-mem")
	mem := flag.Int("mem", 1024, "MiB of memory of every board but the last")
	small := flag.Int("small-mem", 512, "MiB of memory of the last board")
	timeout := flag.Duration("timeout", 75*time.Minute, "give up after this long")
	keep := flag.Bool("keep", false, "keep the work directory (console logs, disks) after a failure")
	flag.Parse()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	if *image == "" || *n < 2 {
		fmt.Fprintln(os.Stderr, "usage: boottest -image IMG [-boards N>=2]")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()

	r := &run{image: *image, log: log, netns: fmt.Sprintf("wboot-%d", os.Getpid())}
	err := r.main(ctx, *n, *mem, *small)
	if err != nil {
		r.dumpConsoles()
	}
	r.cleanup(*keep && err != nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, "boottest: FAIL:", err)
		os.Exit(1)
	}
	fmt.Println("boottest: PASS")
}

func (r *run) main(ctx context.Context, n, mem, small int) error {
	if os.Geteuid() != 0 {
		return errors.New("run as root (network namespace, tap devices)")
	}
	for _, t := range []string{"qemu-system-aarch64", "mcopy", "mdir", "sfdisk", "ssh", "ssh-keygen", "apt-get", "dpkg-deb", "ip"} {
		if _, err := exec.LookPath(t); err != nil {
			return fmt.Errorf("%s missing (run tools/install-image-deps.sh): %w", t, err)
		}
	}
	var err error
	if r.work, err = os.MkdirTemp("/var/tmp", "warren-boot-"); err != nil {
		return err
	}
	if err := r.readImage(); err != nil {
		return err
	}
	if err := r.prepare(ctx); err != nil {
		return err
	}
	for i := 1; i <= n; i++ {
		b := &board{
			name:   fmt.Sprintf("board%d", i),
			ip:     fmt.Sprintf("%s.%d", subnet, 10+i),
			mac:    fmt.Sprintf("52:54:00:77:00:%02x", i),
			memMiB: mem,
			role:   "worker",
		}
		if i == 1 {
			b.role = "manager"
		}
		if i == n {
			b.memMiB = small
		}
		b.disk = filepath.Join(r.work, b.name+".img")
		b.console = filepath.Join(r.work, b.name+".console")
		r.boards = append(r.boards, b)
	}
	if err := r.network(ctx); err != nil {
		return err
	}

	// The manager first, as a user does: its token goes into the workers' seeds.
	m := r.boards[0]
	if err := r.start(ctx, m, ""); err != nil {
		return err
	}
	if err := r.waitReady(ctx, m, []*board{m}); err != nil {
		return err
	}
	token, err := r.ssh(ctx, m, "warren cluster join-token worker -q")
	if err != nil {
		return fmt.Errorf("read the worker token: %w", err)
	}
	token = strings.TrimSpace(token)
	// One worker at a time: TCG boards on two shared cores starve each
	// other (systemd's device and start timeouts expire) when booted together.
	for _, b := range r.boards[1:] {
		if err := r.start(ctx, b, token); err != nil {
			return err
		}
		if err := r.waitReady(ctx, m, []*board{b}); err != nil {
			return err
		}
	}
	out, _ := r.ssh(ctx, m, "warren node ls")
	fmt.Printf("\nwarren node ls on %s:\n%s\n", m.name, out)

	vip, err := r.service(ctx, m)
	if err != nil {
		return err
	}
	for _, b := range r.boards {
		if err := r.reachVIP(ctx, b, vip); err != nil {
			return err
		}
	}
	for _, b := range r.boards {
		r.measure(ctx, b)
	}
	r.report(vip)
	return nil
}

// readImage finds the FAT partition, checks the seed and firmware files are
// there, and extracts the image's own kernel, initrd and cmdline.txt.
func (r *run) readImage() error {
	out, err := exec.Command("sfdisk", "--json", r.image).Output()
	if err != nil {
		return fmt.Errorf("read the partition table of %s: %w", r.image, err)
	}
	var pt struct {
		PartitionTable struct {
			SectorSize int64 `json:"sectorsize"`
			Partitions []struct {
				Start int64  `json:"start"`
				Type  string `json:"type"`
			} `json:"partitions"`
		} `json:"partitiontable"`
	}
	if err := json.Unmarshal(out, &pt); err != nil {
		return fmt.Errorf("parse sfdisk --json: %w", err)
	}
	if len(pt.PartitionTable.Partitions) < 2 || pt.PartitionTable.Partitions[0].Type != "c" {
		return fmt.Errorf("%s: want a FAT32 (type c) first partition and a root partition, got %s", r.image, out)
	}
	ss := pt.PartitionTable.SectorSize
	if ss == 0 {
		ss = 512
	}
	r.fatOff = pt.PartitionTable.Partitions[0].Start * ss
	list, err := exec.Command("mdir", "-b", "-i", r.fatImage(r.image), "::/").Output()
	if err != nil {
		return fmt.Errorf("list the FAT partition: %w", err)
	}
	files := map[string]bool{}
	for _, l := range strings.Fields(string(list)) {
		files[strings.TrimPrefix(l, "::/")] = true
	}
	for _, want := range []string{"config.txt", "cmdline.txt", "user-data", "meta-data", "network-config", "start4.elf", "bootcode.bin"} {
		if !files[want] {
			return fmt.Errorf("the FAT partition has no %s (has %s)", want, strings.TrimSpace(string(list)))
		}
	}
	for f := range files {
		switch {
		case strings.HasPrefix(f, "vmlinuz-"):
			r.kernel = filepath.Join(r.work, f)
		case strings.HasPrefix(f, "initrd.img-"):
			r.initrd = filepath.Join(r.work, f)
		}
	}
	if r.kernel == "" || r.initrd == "" {
		return fmt.Errorf("no vmlinuz-*/initrd.img-* on the FAT partition")
	}
	for _, f := range []string{r.kernel, r.initrd} {
		if err := r.mcopyOut(r.image, filepath.Base(f), f); err != nil {
			return err
		}
	}
	cmdline := filepath.Join(r.work, "cmdline.txt")
	if err := r.mcopyOut(r.image, "cmdline.txt", cmdline); err != nil {
		return err
	}
	b, err := os.ReadFile(cmdline)
	if err != nil {
		return err
	}
	// The board's own command line, with the Pi's serial consoles replaced
	// by the virt board's PL011.
	var args []string
	for _, a := range strings.Fields(string(b)) {
		if !strings.HasPrefix(a, "console=") {
			args = append(args, a)
		}
	}
	if !strings.Contains(string(b), "cgroup_enable=memory") {
		return fmt.Errorf("cmdline.txt does not enable the memory cgroup: %q", b)
	}
	r.cmdline = strings.Join(append(args, "console=ttyAMA0"), " ")
	r.log.Info("image", "kernel", filepath.Base(r.kernel), "cmdline", r.cmdline)
	return nil
}

func (r *run) fatImage(disk string) string { return fmt.Sprintf("%s@@%d", disk, r.fatOff) }

func (r *run) mcopyOut(disk, name, dst string) error {
	if out, err := exec.Command("mcopy", "-n", "-o", "-i", r.fatImage(disk), "::/"+name, dst).CombinedOutput(); err != nil {
		return fmt.Errorf("copy %s out of the FAT partition: %v: %s", name, err, out)
	}
	return nil
}

func (r *run) mcopyIn(disk, src, name string) error {
	if out, err := exec.Command("mcopy", "-n", "-o", "-i", r.fatImage(disk), src, "::/"+name).CombinedOutput(); err != nil {
		return fmt.Errorf("copy %s onto the FAT partition: %v: %s", name, err, out)
	}
	return nil
}

// prepare makes the SSH key and the arm64 busybox image tarball (from
// Debian's busybox-static for arm64, fetched with a private apt state).
func (r *run) prepare(ctx context.Context) error {
	r.key = filepath.Join(r.work, "id_ed25519")
	if out, err := exec.CommandContext(ctx, "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", r.key).CombinedOutput(); err != nil {
		return fmt.Errorf("ssh-keygen: %v: %s", err, out)
	}
	apt := filepath.Join(r.work, "apt")
	for _, d := range []string{"lists/partial", "cache/archives/partial", "deb"} {
		if err := os.MkdirAll(filepath.Join(apt, d), 0o755); err != nil {
			return err
		}
	}
	sources := filepath.Join(apt, "sources.list")
	if err := os.WriteFile(sources, []byte("deb http://deb.debian.org/debian bookworm main\n"), 0o644); err != nil {
		return err
	}
	opts := []string{
		"-q", "-o", "APT::Architecture=arm64", "-o", "APT::Architectures=arm64",
		"-o", "Dir::State=" + apt, "-o", "Dir::State::Lists=" + filepath.Join(apt, "lists"),
		"-o", "Dir::State::status=/dev/null", "-o", "Dir::Cache=" + filepath.Join(apt, "cache"),
		"-o", "Dir::Etc::SourceList=" + sources, "-o", "Dir::Etc::SourceParts=/nonexistent",
		"-o", "Acquire::Check-Valid-Until=false", "-o", "Debug::NoLocking=1", "-o", "APT::Sandbox::User=root",
	}
	if out, err := exec.CommandContext(ctx, "apt-get", append(opts, "update")...).CombinedOutput(); err != nil {
		return fmt.Errorf("apt-get update (arm64 lists): %v: %s", err, out)
	}
	dl := exec.CommandContext(ctx, "apt-get", append(opts, "download", "busybox-static:arm64")...)
	dl.Dir = filepath.Join(apt, "deb")
	if out, err := dl.CombinedOutput(); err != nil {
		return fmt.Errorf("apt-get download busybox-static:arm64: %v: %s", err, out)
	}
	debs, _ := filepath.Glob(filepath.Join(apt, "deb", "busybox-static_*_arm64.deb"))
	if len(debs) != 1 {
		return fmt.Errorf("busybox-static arm64 package not downloaded")
	}
	root := filepath.Join(apt, "root")
	if out, err := exec.CommandContext(ctx, "dpkg-deb", "-x", debs[0], root).CombinedOutput(); err != nil {
		return fmt.Errorf("dpkg-deb -x: %v: %s", err, out)
	}
	images := filepath.Join(r.work, "images")
	if err := os.MkdirAll(images, 0o755); err != nil {
		return err
	}
	p, err := testimage.BusyboxTarballFor(images, imageRef, filepath.Join(root, "bin/busybox"), "arm64")
	if err != nil {
		return err
	}
	r.tarball = p
	return nil
}

// network creates the namespace with a bridge and one tap per board. The
// host side of the bridge is the boards' default gateway; the namespace has
// no other link, so nothing leaves it.
func (r *run) network(ctx context.Context) error {
	if out, err := exec.CommandContext(ctx, "ip", "netns", "add", r.netns).CombinedOutput(); err != nil {
		return fmt.Errorf("ip netns add: %v: %s", err, out)
	}
	cmds := [][]string{
		{"link", "set", "lo", "up"},
		{"link", "add", "br0", "type", "bridge"},
		{"addr", "add", gatewayIP + "/24", "dev", "br0"},
		{"link", "set", "br0", "up"},
	}
	for i := range r.boards {
		tap := fmt.Sprintf("tap%d", i)
		cmds = append(cmds,
			[]string{"tuntap", "add", "dev", tap, "mode", "tap"},
			[]string{"link", "set", tap, "master", "br0"},
			[]string{"link", "set", tap, "up"})
	}
	for _, c := range cmds {
		if out, err := exec.CommandContext(ctx, "ip", append([]string{"-n", r.netns}, c...)...).CombinedOutput(); err != nil {
			return fmt.Errorf("ip -n %s %s: %v: %s", r.netns, strings.Join(c, " "), err, out)
		}
	}
	return nil
}

// seed writes the board's NoCloud seed onto its copy of the image: the
// documented user-data with its placeholders filled as a user would, plus
// this test's SSH key and the busybox image tarball.
func (r *run) seed(b *board, token string) error {
	example := filepath.Join(r.work, b.name+".user-data.example")
	if err := r.mcopyOut(b.disk, "user-data", example); err != nil {
		return err
	}
	raw, err := os.ReadFile(example)
	if err != nil {
		return err
	}
	ud := string(raw)
	pub, err := os.ReadFile(r.key + ".pub")
	if err != nil {
		return err
	}
	if b.role == "manager" {
		// The first board: role manager, no [cluster] section.
		ud = strings.Replace(ud, `role = "worker"`, `role = "manager"`, 1)
		ud = regexp.MustCompile(`(?m)^ +\[cluster\]\n.*\n.*\n`).ReplaceAllString(ud, "")
		ud = regexp.MustCompile(`(?s)  # Workers only.*?REPLACE_JOIN_TOKEN\n`).ReplaceAllString(ud, "")
	} else {
		ud = strings.ReplaceAll(ud, "REPLACE_MANAGER_ADDRESS", r.boards[0].ip)
		ud = strings.ReplaceAll(ud, "REPLACE_JOIN_TOKEN", token)
	}
	ud = strings.Replace(ud, "# disable_root: false", "disable_root: false", 1)
	ud = strings.Replace(ud, "# ssh_authorized_keys:", "ssh_authorized_keys:", 1)
	ud = strings.Replace(ud, "#   - ssh-ed25519 AAAA... you@laptop", "  - "+strings.TrimSpace(string(pub)), 1)
	if strings.Contains(ud, "REPLACE_") || !strings.Contains(ud, "ssh_authorized_keys:\n  - ssh-ed25519") {
		return fmt.Errorf("the image's user-data changed shape; the test cannot fill it in:\n%s", ud)
	}
	// The boards have no registry: the image tarball goes into images_dir,
	// which the appliance imports from (airgap).
	// (fstab mounts /boot/firmware with nofail: on a starved emulated board
	// the device can time out at boot; runcmd runs later, and mounts it.)
	// The seed has a runcmd list already (it enables warren-forget-token.path):
	// the copy joins it.
	if !strings.Contains(ud, "\nruncmd:\n") {
		return fmt.Errorf("the image's user-data has no runcmd list; the test cannot add its step:\n%s", ud)
	}
	ud = strings.Replace(ud, "\nruncmd:\n", fmt.Sprintf("\nruncmd:\n  - [sh, -c, \"mountpoint -q /boot/firmware || mount /boot/firmware; mkdir -p /var/lib/warren/images && cp /boot/firmware/%s /var/lib/warren/images/\"]\n", seedImage), 1)
	meta := fmt.Sprintf("instance-id: %s\nlocal-hostname: %s\n", b.name, b.name)
	netcfg := fmt.Sprintf(`version: 2
ethernets:
  wired:
    match:
      macaddress: "%s"
    addresses: [%s/24]
    routes: [{to: 0.0.0.0/0, via: %s}]
`, b.mac, b.ip, gatewayIP)
	for name, content := range map[string]string{"user-data": ud, "meta-data": meta, "network-config": netcfg} {
		p := filepath.Join(r.work, b.name+"."+name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			return err
		}
		if err := r.mcopyIn(b.disk, p, name); err != nil {
			return err
		}
	}
	return r.mcopyIn(b.disk, r.tarball, seedImage)
}

// start copies the image (sparse) for the board, writes its seed and boots it.
func (r *run) start(ctx context.Context, b *board, token string) error {
	if out, err := exec.CommandContext(ctx, "cp", "--sparse=always", r.image, b.disk).CombinedOutput(); err != nil {
		return fmt.Errorf("copy the image for %s: %v: %s", b.name, err, out)
	}
	if err := r.seed(b, token); err != nil {
		return err
	}
	idx := 0
	for i, x := range r.boards {
		if x == b {
			idx = i
		}
	}
	args := []string{"netns", "exec", r.netns, "nice", "-n", "10", "qemu-system-aarch64",
		"-M", "virt", "-cpu", "cortex-a72", "-smp", "1", "-m", strconv.Itoa(b.memMiB),
		"-kernel", r.kernel, "-initrd", r.initrd, "-append", r.cmdline,
		"-drive", "if=none,id=hd0,format=raw,file=" + b.disk, "-device", "virtio-blk-pci,drive=hd0",
		"-netdev", fmt.Sprintf("tap,id=n0,ifname=tap%d,script=no,downscript=no", idx),
		// romfile=: no PXE option ROM (ipxe-qemu is not installed, not needed).
		"-device", "virtio-net-pci,netdev=n0,romfile=,mac=" + b.mac,
		"-device", "virtio-rng-pci",
		"-display", "none", "-monitor", "none", "-serial", "file:" + b.console, "-no-reboot",
	}
	b.cmd = exec.Command("ip", args...)
	b.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	stderr, err := os.Create(b.console + ".stderr")
	if err != nil {
		return err
	}
	defer stderr.Close()
	b.cmd.Stdout, b.cmd.Stderr = stderr, stderr
	b.started = time.Now()
	if err := b.cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", b.name, err)
	}
	r.log.Info("board started", "board", b.name, "role", b.role, "mem_mib", b.memMiB, "ip", b.ip)
	return nil
}

func (r *run) ssh(ctx context.Context, b *board, command string) (string, error) {
	cctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(cctx, "ip", "netns", "exec", r.netns, "ssh", "-i", r.key,
		"-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
		"-o", "ConnectTimeout=30", "-o", "LogLevel=ERROR", "root@"+b.ip, command)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("ssh %s %q: %v: %s", b.name, command, err, strings.TrimSpace(errb.String()))
	}
	return out.String(), nil
}

// waitReady polls `warren node ls --json` on the manager until every board
// of want is ready, and records each one's boot-to-ready time.
func (r *run) waitReady(ctx context.Context, m *board, want []*board) error {
	last := ""
	for {
		if err := r.exited(); err != nil {
			return err
		}
		out, err := r.ssh(ctx, m, "warren node ls --json")
		if err == nil {
			var nodes []struct {
				Name   string `json:"name"`
				Status string `json:"status"`
			}
			if jerr := json.Unmarshal([]byte(out), &nodes); jerr == nil {
				status := map[string]string{}
				for _, n := range nodes {
					status[n.Name] = n.Status
				}
				done := true
				for _, b := range want {
					if status[b.name] == "ready" {
						if b.ready == 0 {
							b.ready = time.Since(b.started)
							r.log.Info("board ready", "board", b.name, "boot_to_ready", b.ready.Round(time.Second))
						}
					} else {
						done = false
					}
				}
				if done {
					return nil
				}
				err = fmt.Errorf("nodes: %v", status)
			} else {
				err = fmt.Errorf("node ls --json: %w: %s", jerr, out)
			}
		}
		if msg := err.Error(); msg != last {
			r.log.Info("waiting for boards", "state", msg)
			last = msg
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("boards not ready: %w (last: %s)", ctx.Err(), last)
		case <-time.After(5 * time.Second):
		}
	}
}

// exited fails when a board's emulator is gone.
func (r *run) exited() error {
	for _, b := range r.boards {
		if b.cmd != nil && b.cmd.ProcessState == nil {
			var ws syscall.WaitStatus
			pid, err := syscall.Wait4(b.cmd.Process.Pid, &ws, syscall.WNOHANG, nil)
			if err == nil && pid == b.cmd.Process.Pid {
				b.cmd.Process = nil
				return fmt.Errorf("%s's emulator exited (%v)", b.name, ws)
			}
		}
	}
	return nil
}

func (r *run) service(ctx context.Context, m *board) (string, error) {
	if _, err := r.ssh(ctx, m, `warren service create web --image `+imageRef+` --replicas 2 -- sh -c 'mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 80 -h /www'`); err != nil {
		return "", err
	}
	start := time.Now()
	last := ""
	for {
		out, err := r.ssh(ctx, m, "warren service inspect web --json")
		if err == nil {
			var svc struct {
				VIP   string `json:"vip"`
				Tasks []struct {
					Name  string `json:"name"`
					Node  string `json:"node"`
					State string `json:"state"`
				} `json:"tasks"`
			}
			if jerr := json.Unmarshal([]byte(out), &svc); jerr != nil {
				return "", fmt.Errorf("service inspect --json: %w: %s", jerr, out)
			}
			running := 0
			var states []string
			for _, t := range svc.Tasks {
				states = append(states, t.Name+"@"+t.Node+"="+t.State)
				if t.State == "running" {
					running++
				}
			}
			if running == 2 && svc.VIP != "" {
				r.log.Info("service web running", "vip", svc.VIP, "tasks", strings.Join(states, " "), "after", time.Since(start).Round(time.Second))
				return svc.VIP, nil
			}
			err = fmt.Errorf("tasks %v", states)
		}
		if msg := err.Error(); msg != last {
			r.log.Info("waiting for service web", "state", msg)
			last = msg
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("service web did not run 2 tasks: %w (last: %s)", ctx.Err(), last)
		case <-time.After(5 * time.Second):
		}
	}
}

// reachVIP fetches the service's page through its VIP from the board (bash's
// /dev/tcp: the image has no HTTP client).
func (r *run) reachVIP(ctx context.Context, b *board, vip string) error {
	cmd := fmt.Sprintf(`timeout 20 bash -c 'exec 3<>/dev/tcp/%s/80 && printf "GET / HTTP/1.0\r\n\r\n" >&3 && cat <&3'`, vip)
	var last error
	for i := 0; i < 12; i++ {
		out, err := r.ssh(ctx, b, cmd)
		if err == nil && strings.HasPrefix(out, "HTTP/1.") && strings.Contains(out, " 200 ") {
			body := strings.TrimSpace(out[strings.LastIndex(out, "\r\n\r\n")+4:])
			r.log.Info("VIP reached", "board", b.name, "vip", vip, "answered_by", body)
			return nil
		}
		last = fmt.Errorf("%v: %q", err, out)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(5 * time.Second):
		}
	}
	return fmt.Errorf("VIP %s not reachable from %s: %w", vip, b.name, last)
}

func (r *run) measure(ctx context.Context, b *board) {
	if out, err := r.ssh(ctx, b, "ps -o rss= -C warren-appliance | head -n 1"); err == nil {
		if kib, err := strconv.Atoi(strings.TrimSpace(out)); err == nil {
			b.rss = fmt.Sprintf("%.1f MiB", float64(kib)/1024)
		}
	}
	if out, err := r.ssh(ctx, b, "cat /sys/fs/cgroup/cgroup.controllers"); err == nil {
		b.cgroups = strings.TrimSpace(out)
	}
	if out, err := r.ssh(ctx, b, "systemd-analyze time | head -n 1"); err == nil {
		b.boot = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(out), "Startup finished in "))
	}
}

func (r *run) report(vip string) {
	fmt.Printf("\nemulated boards (qemu-system-aarch64 -M virt, TCG, cortex-a72, 1 vCPU each, nice 10), VIP %s reached from each:\n", vip)
	fmt.Printf("%-8s %-8s %-8s %-14s %-16s %s\n", "BOARD", "ROLE", "MEMORY", "BOOT-TO-READY", "APPLIANCE RSS", "SYSTEMD STARTUP")
	for _, b := range r.boards {
		fmt.Printf("%-8s %-8s %-8s %-14s %-16s %s\n", b.name, b.role, fmt.Sprintf("%d MiB", b.memMiB),
			b.ready.Round(time.Second), b.rss, b.boot)
	}
	fmt.Println("(boot-to-ready: emulator start until `warren node ls` on the manager shows the board ready)")
	for _, b := range r.boards {
		if !strings.Contains(" "+b.cgroups+" ", " memory ") {
			fmt.Printf("warning: %s has no memory cgroup controller (%q)\n", b.name, b.cgroups)
		}
	}
}

func (r *run) dumpConsoles() {
	for _, b := range r.boards {
		if e, err := os.ReadFile(b.console + ".stderr"); err == nil && len(e) > 0 {
			fmt.Fprintf(os.Stderr, "---- %s emulator stderr ----\n%s\n", b.name, e)
		}
		data, err := os.ReadFile(b.console)
		if err != nil {
			continue
		}
		lines := strings.Split(string(data), "\n")
		if len(lines) > 40 {
			lines = lines[len(lines)-40:]
		}
		fmt.Fprintf(os.Stderr, "---- %s console (last lines) ----\n%s\n", b.name, strings.Join(lines, "\n"))
	}
}

// cleanup stops the emulators this run started (by process group), deletes
// the namespace and the work directory.
func (r *run) cleanup(keep bool) {
	for _, b := range r.boards {
		if b.cmd == nil || b.cmd.Process == nil {
			continue
		}
		_ = syscall.Kill(-b.cmd.Process.Pid, syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = b.cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = syscall.Kill(-b.cmd.Process.Pid, syscall.SIGKILL)
			<-done
		}
	}
	if r.netns != "" {
		_ = exec.Command("ip", "netns", "del", r.netns).Run()
	}
	if r.work != "" {
		if keep {
			fmt.Fprintln(os.Stderr, "boottest: kept", r.work)
		} else {
			_ = os.RemoveAll(r.work)
		}
	}
}

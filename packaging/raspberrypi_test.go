package packaging_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

const userDataPath = "packaging/raspberrypi/user-data"

func TestCloudInitUserDataIsValid(t *testing.T) {
	requireTool(t, "cloud-init", "cloud-init")
	out, err := runErr("cloud-init", "schema", "--config-file", filepath.Join(repoRoot, userDataPath))
	if err != nil || !strings.Contains(out, "Valid cloud-config") {
		t.Fatalf("cloud-init schema: %v\n%s", err, out)
	}
	// The check can fail: a schema error is reported.
	broken := filepath.Join(t.TempDir(), "user-data")
	writeFile(t, broken, strings.Replace(readRepoFile(t, userDataPath), "runcmd:", "runcmd: 7\nignored:", 1))
	if out, err := runErr("cloud-init", "schema", "--config-file", broken); err == nil {
		t.Errorf("cloud-init schema accepted runcmd: 7\n%s", out)
	}
}

// The config user-data writes is a valid worker config once the user fills
// in the placeholders, and it is written 0600 (it holds the token).
func TestCloudInitUserDataWritesValidWorkerConfig(t *testing.T) {
	requireTool(t, "python3", "python3-yaml")
	needPackages(t)
	const extract = `import sys, yaml
doc = yaml.safe_load(open(sys.argv[1]))
f = [f for f in doc["write_files"] if f["path"] == "/etc/warren/warren.toml"][0]
print(f["permissions"], f["owner"])
sys.stdout.write(f["content"])`
	out := run(t, "python3", "-c", extract, filepath.Join(repoRoot, userDataPath))
	header, content, _ := strings.Cut(out, "\n")
	if header != "0600 root:root" {
		t.Errorf("warren.toml written as %q, want 0600 root:root", header)
	}
	for _, placeholder := range []string{"REPLACE_MANAGER_ADDRESS", "REPLACE_JOIN_TOKEN"} {
		if !strings.Contains(content, placeholder) {
			t.Errorf("warren.toml lacks the placeholder %s", placeholder)
		}
	}
	filled := strings.NewReplacer("REPLACE_MANAGER_ADDRESS", "192.0.2.10",
		"REPLACE_JOIN_TOKEN", "WRN-1-0123456789abcdef-0123456789abcdef").Replace(content)
	cfg := filepath.Join(t.TempDir(), "warren.toml")
	writeFile(t, cfg, filled)
	exe := filepath.Join(extractDeb(t, targets[0].debFile()), "usr/bin/warren-appliance")
	got := run(t, exe, "--check", "--config", cfg)
	for _, want := range []string{`role = "worker"`, `192.0.2.10:7946`} {
		if !strings.Contains(got, want) {
			t.Errorf("effective config lacks %s:\n%s", want, got)
		}
	}
}

// cloud-init's steps, in order, in the chroot on a "running" system:
// write_files writes warren.toml, then runcmd picks the package for the
// machine's architecture from the boot partition, installs it keeping that
// warren.toml, and enables and starts the service.
func TestCloudInitRunCmdInstallsPackageKeepingWrittenConfig(t *testing.T) {
	requireTool(t, "python3", "python3-yaml")
	needPackages(t)
	c := newChroot(t)
	const extract = `import sys, yaml
doc = yaml.safe_load(open(sys.argv[1]))
open(sys.argv[2], "w").write([f for f in doc["write_files"] if f["path"] == "/etc/warren/warren.toml"][0]["content"])
open(sys.argv[3], "w").write("\n".join(doc["runcmd"]) + "\n")`
	run(t, "python3", "-c", extract, filepath.Join(repoRoot, userDataPath),
		filepath.Join(c.share, "warren.toml"), filepath.Join(c.share, "runcmd.sh"))
	for _, tg := range targets[:3:3] {
		c.put(tg.debFile(), filepath.Base(tg.debFile()))
	}

	out := c.mustSh(booted, false, `mkdir -p /boot/firmware && cp /mnt/*.deb /boot/firmware/
install -d /etc/warren && install -m 0600 /mnt/warren.toml /etc/warren/warren.toml
sh -e /mnt/runcmd.sh 2>&1
cmp /mnt/warren.toml /etc/warren/warren.toml && echo config-kept
stat -c '%a' /etc/warren/warren.toml
dpkg-query -W -f '${Version} ${Architecture}\n' warren-appliance`)
	calls := c.calls()
	for _, want := range []string{"config-kept\n600\n" + testPkgVersion + " amd64\n"} {
		if !strings.HasSuffix(out, want) {
			t.Errorf("after runcmd: want output ending in %q:\n%s", want, out)
		}
	}
	for _, want := range []string{"apt-get update", "/boot/firmware/warren-appliance_" + testPkgVersion + "_amd64.deb",
		"systemctl enable --now warren-appliance.service"} {
		if !strings.Contains(calls, want) {
			t.Errorf("runcmd calls lack %q:\n%s", want, calls)
		}
	}
}

// The pi-gen stage, run the way pi-gen runs it (01-run.sh on the host with
// $ROOTFS_DIR, 02-run-chroot.sh piped to bash -e in the chroot), installs
// and enables the package, bakes a fleet config, and the first-boot unit
// then imports a per-card warren.toml from the boot partition.
func TestPiGenStageBakesPackageAndFirstBootConfig(t *testing.T) {
	needPackages(t)
	c := newChroot(t)
	stage := filepath.Join(t.TempDir(), "stage-warren")
	run(t, "cp", "-a", filepath.Join(repoRoot, "packaging/raspberrypi/stage-warren"), stage)
	sub := filepath.Join(stage, "00-warren")
	run(t, "cp", targets[0].debFile(), filepath.Join(sub, "files"))
	writeFile(t, filepath.Join(sub, "files/warren.toml"), "# fleet config\n"+readRepoFile(t, shippedConfigSource()))
	run(t, "cp", filepath.Join(sub, "02-run-chroot.sh"), filepath.Join(c.share, "02-run-chroot.sh"))

	c.mustSh(offline, true, `cd "`+sub+`" && ROOTFS_DIR="$ROOT" bash -e ./01-run.sh`)
	c.mustSh(offline, false, "bash -e < /mnt/02-run-chroot.sh")
	got := c.mustSh(offline, false, `dpkg-query -W -f '${Status}\n' warren-appliance
systemctl is-enabled warren-appliance.service warren-firstboot-config.service
head -n1 /etc/warren/warren.toml; stat -c '%a' /etc/warren/warren.toml
test -e /var/cache/warren-stage && echo staging-left || true
systemd-analyze verify warren-firstboot-config.service warren-appliance.service 2>&1`)
	want := "install ok installed\nenabled\nenabled\n# fleet config\n600\n"
	if got != want {
		t.Errorf("image after the stage:\n%s\nwant:\n%s", got, want)
	}

	// First boot with a per-card config on the boot partition.
	got = c.mustSh(offline, false, `mkdir -p /boot/firmware
printf '# card 7\n' > /boot/firmware/warren.toml; chmod 0755 /boot/firmware/warren.toml
/usr/local/sbin/warren-firstboot-config >/dev/null
cat /etc/warren/warren.toml; stat -c '%a' /etc/warren/warren.toml
test -e /boot/firmware/warren.toml && echo left-on-boot-partition || true
/usr/local/sbin/warren-firstboot-config && echo second-run-ok`)
	if want := "# card 7\n600\nsecond-run-ok\n"; got != want {
		t.Errorf("first boot import:\n%s\nwant:\n%s", got, want)
	}
}

// Without a package in files/, the stage stops with a message that says what
// to copy there instead of baking an image without Warren.
func TestPiGenStageRequiresPackage(t *testing.T) {
	stage := filepath.Join(t.TempDir(), "stage-warren")
	run(t, "cp", "-a", filepath.Join(repoRoot, "packaging/raspberrypi/stage-warren"), stage)
	cmd := exec.Command("bash", "-e", "./01-run.sh")
	cmd.Dir = filepath.Join(stage, "00-warren")
	cmd.Env = append(os.Environ(), "ROOTFS_DIR="+t.TempDir())
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "_armhf.deb") {
		t.Fatalf("01-run.sh without a package: err=%v\n%s", err, out)
	}
}

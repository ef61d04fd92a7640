package packaging_test

import (
	"fmt"
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
	for _, placeholder := range []string{"REPLACE_MANAGER_ADDRESS"} {
		if !strings.Contains(content, placeholder) {
			t.Errorf("warren.toml lacks the placeholder %s", placeholder)
		}
	}
	if !strings.Contains(content, `token_file = "/etc/warren/token"`) || strings.Contains(content, "REPLACE_JOIN_TOKEN") {
		t.Errorf("warren.toml must read the token from /etc/warren/token, not hold it:\n%s", content)
	}
	const extractToken = `import sys, yaml
doc = yaml.safe_load(open(sys.argv[1]))
f = [f for f in doc["write_files"] if f["path"] == "/etc/warren/token"][0]
print(f["permissions"], f["owner"])
sys.stdout.write(f["content"])`
	tokHeader, tokContent, _ := strings.Cut(run(t, "python3", "-c", extractToken, filepath.Join(repoRoot, userDataPath)), "\n")
	if tokHeader != "0600 root:root" || strings.TrimSpace(tokContent) != "REPLACE_JOIN_TOKEN" {
		t.Errorf("/etc/warren/token written as %q with %q, want 0600 root:root holding REPLACE_JOIN_TOKEN", tokHeader, tokContent)
	}
	dir := t.TempDir()
	tokenFile := filepath.Join(dir, "token")
	writeFile(t, tokenFile, strings.Replace(tokContent, "REPLACE_JOIN_TOKEN", "WRN-1-"+strings.Repeat("0f", 32)+"-abcdefghijklmnopqrstuvwxyz", 1))
	filled := strings.NewReplacer("REPLACE_MANAGER_ADDRESS", "192.0.2.10", "/etc/warren/token", tokenFile).Replace(content)
	cfg := filepath.Join(dir, "warren.toml")
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
	// write_files, every entry with its mode, as a script; warren.toml is
	// also kept aside to compare.
	const extract = `import sys, yaml, shlex
doc = yaml.safe_load(open(sys.argv[1]))
open(sys.argv[2], "w").write([f for f in doc["write_files"] if f["path"] == "/etc/warren/warren.toml"][0]["content"])
open(sys.argv[3], "w").write("\n".join(doc["runcmd"]) + "\n")
with open(sys.argv[4], "w") as out:
    for f in doc["write_files"]:
        out.write("install -d %s\nprintf '%%s' %s > %s\nchmod %s %s\n" % (shlex.quote(f["path"].rsplit("/", 1)[0]),
            shlex.quote(f["content"]), shlex.quote(f["path"]), f["permissions"], shlex.quote(f["path"])))`
	run(t, "python3", "-c", extract, filepath.Join(repoRoot, userDataPath),
		filepath.Join(c.share, "warren.toml"), filepath.Join(c.share, "runcmd.sh"), filepath.Join(c.share, "write_files.sh"))
	for _, tg := range targets[:3:3] {
		c.put(tg.debFile(), filepath.Base(tg.debFile()))
	}

	out := c.mustSh(booted, false, `mkdir -p /boot/firmware && cp /mnt/*.deb /boot/firmware/
sh -e /mnt/write_files.sh
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
		"systemctl enable --now warren-forget-token.path", "systemctl enable --now warren-appliance.service"} {
		if !strings.Contains(calls, want) {
			t.Errorf("runcmd calls lack %q:\n%s", want, calls)
		}
	}
}

// Once the node joined, the packaged warren-forget-token deletes
// /etc/warren/token and overwrites the token on the boot partition's
// user-data and in cloud-init's copies; before that it changes nothing. The
// package installs its units disabled (the seeds enable the path unit) and
// they pass systemd-analyze verify. Both seeds (Raspberry Pi OS and the
// appliance image) write the token where the script looks for it.
func TestCloudInitForgetsTokenOnceJoined(t *testing.T) {
	requireTool(t, "python3", "python3-yaml")
	needPackages(t)
	for _, seed := range []string{userDataPath, imageSeed + "/user-data"} {
		t.Run(filepath.Base(filepath.Dir(seed)), func(t *testing.T) {
			c := newChroot(t)
			const tokenPath = `import sys, yaml
doc = yaml.safe_load(open(sys.argv[1]))
print([f["path"] for f in doc["write_files"] if "REPLACE_JOIN_TOKEN" in f["content"]][0])
print([c for c in doc["runcmd"] if "warren-forget-token.path" in str(c)] != [])`
			if got := run(t, "python3", "-c", tokenPath, filepath.Join(repoRoot, seed)); got != "/etc/warren/token\nTrue\n" {
				t.Fatalf("%s: token path and runcmd enabling warren-forget-token.path: %q, want /etc/warren/token and True", seed, got)
			}
			token := "WRN-1-" + strings.Repeat("0f", 32) + "-abcdefghijklmnopqrstuvwxyz"
			userData := strings.ReplaceAll(readRepoFile(t, seed), "REPLACE_JOIN_TOKEN", token)
			writeFile(t, filepath.Join(c.share, "user-data"), userData)
			c.put(targets[0].debFile(), filepath.Base(targets[0].debFile()))
			setup := `dpkg -i /mnt/` + filepath.Base(targets[0].debFile()) + ` >/dev/null 2>&1
systemctl is-enabled warren-forget-token.path || true
mkdir -p /boot/firmware /var/lib/cloud/instances/i-1 && cp /mnt/user-data /boot/firmware/user-data
cp /mnt/user-data /var/lib/cloud/instances/i-1/user-data.txt
printf '%s\n' '` + token + `' > /etc/warren/token
warren-forget-token
grep -c '` + token + `' /boot/firmware/user-data /var/lib/cloud/instances/i-1/user-data.txt /etc/warren/token
systemd-analyze verify warren-forget-token.path warren-forget-token.service 2>&1`
			// Not joined yet: the token stays where the join needs it.
			if got, want := c.mustSh(offline, false, setup), "disabled\n/boot/firmware/user-data:1\n/var/lib/cloud/instances/i-1/user-data.txt:1\n/etc/warren/token:1\n"; got != want {
				t.Fatalf("before the join:\n got %q\nwant %q", got, want)
			}
			got := c.mustSh(offline, false, `echo '{"role":"worker"}' > /var/lib/warren/setup.json
systemctl enable warren-forget-token.path >/dev/null 2>&1; systemctl is-enabled warren-forget-token.path
/usr/sbin/warren-forget-token
test -e /etc/warren/token && echo token-file-left || true
grep -c '`+token+`' /boot/firmware/user-data /var/lib/cloud/instances/i-1/user-data.txt || true
wc -c < /boot/firmware/user-data
grep -c 'REPLACE_MANAGER_ADDRESS' /boot/firmware/user-data`)
			want := fmt.Sprintf("enabled\nwarren-forget-token: removed the join token from /boot/firmware/user-data\n"+
				"warren-forget-token: removed the join token from /var/lib/cloud/instances/i-1/user-data.txt\n"+
				"/boot/firmware/user-data:0\n/var/lib/cloud/instances/i-1/user-data.txt:0\n%d\n1\n", len(userData))
			if got != want {
				t.Errorf("after the join:\n got %q\nwant %q", got, want)
			}
		})
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

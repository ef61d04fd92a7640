package packaging_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
)

// The Debian chroot the install tests use, made once by debootstrap and kept
// (about 45 s to make; reruns reuse it). Every test mounts a throwaway
// overlay over it, so the cache never changes.
const (
	chrootCacheDir = "/var/cache/warren-packaging-test"
	chrootName     = "bookworm-minbase-systemd-iptables"
)

// ensureChroot returns the cached chroot, making it first if needed.
func ensureChroot(t *testing.T) string {
	t.Helper()
	requireRoot(t)
	requireTool(t, "debootstrap", "debootstrap")
	root := filepath.Join(chrootCacheDir, chrootName)
	if err := os.MkdirAll(chrootCacheDir, 0o755); err != nil {
		t.Fatal(err)
	}
	// Concurrent test runs wait for one debootstrap instead of racing.
	lock, err := os.OpenFile(filepath.Join(chrootCacheDir, chrootName+".lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "usr/bin/dpkg")); err == nil {
		return root
	}
	mirror := os.Getenv("WARREN_DEBIAN_MIRROR")
	if mirror == "" {
		mirror = "http://deb.debian.org/debian"
	}
	tmp := root + ".partial"
	os.RemoveAll(tmp)
	t.Logf("debootstrap bookworm into %s (cached for later runs)", root)
	out, err := exec.Command("debootstrap", "--variant=minbase", "--include=systemd,iptables",
		"bookworm", tmp, mirror).CombinedOutput()
	if err != nil {
		os.RemoveAll(tmp)
		t.Fatalf("debootstrap: %v\n%s", err, out)
	}
	debs, _ := filepath.Glob(filepath.Join(tmp, "var/cache/apt/archives/*.deb"))
	for _, deb := range debs {
		os.Remove(deb)
	}
	if err := os.Rename(tmp, root); err != nil {
		t.Fatal(err)
	}
	return root
}

// chroot is a writable overlay over the cached chroot that lives as long as
// the test. Each step mounts it in a private mount namespace and a fresh,
// empty network namespace (whatever the maintainer scripts or the binaries
// do to interfaces and iptables stays there), with /proc, a tmpfs /run and
// the test's share directory at /mnt.
type chroot struct {
	t                    *testing.T
	lower, upper, work   string
	merged, share, fakes string
}

func newChroot(t *testing.T) *chroot {
	lower := ensureChroot(t)
	dir := t.TempDir()
	c := &chroot{t: t, lower: lower}
	for _, d := range []*string{&c.upper, &c.work, &c.merged, &c.share} {
		*d = filepath.Join(dir, fmt.Sprintf("d%p", d))
		if err := os.Mkdir(*d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	c.fakes = filepath.Join(c.share, "fake")
	// Stand-ins that record how the maintainer scripts drive systemd;
	// /tmp/calls.log is in the overlay.
	for name, script := range map[string]string{
		"deb-systemd-invoke": recordCall,
		// Verbs that need a running systemd are recorded; enable, disable,
		// preset and is-enabled go to the chroot's systemctl, which works
		// offline in a chroot.
		// "enable --now" is passed through as "enable"; --root=/ keeps the
		// real systemctl off the bus it would look for on a booted system.
		"systemctl": recordCall + `for a; do case $a in -*) ;; *) verb=$a; break ;; esac; done
case $verb in
start|stop|restart|try-restart|reload|reload-or-restart|daemon-reload|is-active|is-failed|status) exit 0 ;;
esac
for a; do shift; [ "$a" = --now ] || set -- "$@" "$a"; done
exec /usr/bin/systemctl --root=/ "$@"
`,
		// apt-get without a network: "install -o Dpkg::Options::=X ... FILE.deb"
		// becomes "dpkg -i X ... FILE.deb" (dependencies are already there).
		"apt-get": recordCall + `[ "$1" = update ] && exit 0
opts=
while [ $# -gt 0 ]; do
	case $1 in
	-o) shift; opts="$opts ${1#Dpkg::Options::=}" ;;
	-*|install) ;;
	*) deb=$1 ;;
	esac
	shift
done
exec dpkg -i $opts "$deb"
`,
	} {
		writeFile(t, filepath.Join(c.fakes, name), script)
		if err := os.Chmod(filepath.Join(c.fakes, name), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return c
}

const recordCall = "#!/bin/sh\necho \"${0##*/} $*\" >> /tmp/calls.log\n"

// put copies a host file into the share directory, seen as /mnt/<name>.
func (c *chroot) put(src, name string) {
	c.t.Helper()
	run(c.t, "cp", src, filepath.Join(c.share, name))
}

// stepMode says how a step sees systemd.
type stepMode int

const (
	// offline: no systemd running, the chroot's own systemctl (as in an
	// image build).
	offline stepMode = iota
	// booted: /run/systemd/system exists, as on a running host, and
	// systemctl, deb-systemd-invoke and apt-get are the recording stand-ins
	// from /mnt/fake (systemctl passes offline verbs through).
	booted
)

// sh runs script as root inside the chroot. With host=true the script runs
// on the host instead, with $ROOT naming the mounted chroot (for rpm --root).
func (c *chroot) sh(mode stepMode, host bool, script string) (string, error) {
	c.t.Helper()
	outer := `set -e
mount -t overlay overlay -o "lowerdir=$LOWER,upperdir=$UPPER,workdir=$WORK" "$ROOT"
mount -t proc proc "$ROOT/proc"
mount -t tmpfs tmpfs "$ROOT/run"
mount --bind "$SHARE" "$ROOT/mnt"
if [ "$BOOTED" = 1 ]; then mkdir -p "$ROOT/run/systemd/system"; fi
if [ "$HOST" = 1 ]; then exec sh -ec "$STEP"; fi
exec chroot "$ROOT" /usr/bin/env -i HOME=/root LC_ALL=C PATH="$CHROOT_PATH" /bin/sh -ec "$STEP"
`
	path := "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	bootedFlag, hostFlag := "0", "0"
	if mode == booted {
		path = "/mnt/fake:" + path
		bootedFlag = "1"
	}
	if host {
		hostFlag = "1"
	}
	cmd := exec.Command("unshare", "--mount", "--net", "--propagation", "private", "sh", "-ec", outer)
	cmd.Env = append(os.Environ(), "LOWER="+c.lower, "UPPER="+c.upper, "WORK="+c.work, "ROOT="+c.merged,
		"SHARE="+c.share, "BOOTED="+bootedFlag, "HOST="+hostFlag, "CHROOT_PATH="+path, "STEP="+script)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func (c *chroot) mustSh(mode stepMode, host bool, script string) string {
	c.t.Helper()
	out, err := c.sh(mode, host, script)
	if err != nil {
		c.t.Fatalf("step failed: %v\n--- script\n%s\n--- output\n%s", err, script, out)
	}
	return out
}

// calls returns what the stand-ins recorded since the last call, and resets it.
func (c *chroot) calls() string {
	c.t.Helper()
	return c.mustSh(offline, false, "cat /tmp/calls.log 2>/dev/null || true; rm -f /tmp/calls.log")
}

// snapshotScript lists every path of the chroot with type, mode and owner,
// leaving out what dpkg itself keeps (its database and log) and /tmp.
const snapshotScript = `find / -xdev \( -path /proc -o -path /run -o -path /mnt -o -path /tmp -o -path /var/lib/dpkg -o -path /var/log \) -prune -o -printf '%M %u:%g %p\n' | sort`

// upgradePackage builds the amd64 package of another version (as the next
// release would be) with build.sh.
func upgradePackage(t *testing.T, packager, describe string) string {
	t.Helper()
	needPackages(t)
	dist := t.TempDir()
	out, err := buildPackages(describe, binDir, dist, []string{"ARCHS=amd64", "PACKAGERS=" + packager})
	if err != nil {
		t.Fatalf("build.sh: %v\n%s", err, out)
	}
	matches, _ := filepath.Glob(filepath.Join(dist, "*."+packager))
	if len(matches) != 1 {
		t.Fatalf("build.sh ARCHS=amd64 PACKAGERS=%s wrote %v", packager, matches)
	}
	return matches[0]
}

var serviceStart = regexp.MustCompile(`(?m)\b(start|restart|reload-or-restart|try-restart|enable --now)\b.*warren-appliance`)

const unitLink = "/etc/systemd/system/multi-user.target.wants/warren-appliance.service"

func TestDebInstallUpgradeRemovePurge(t *testing.T) {
	requireTool(t, "unshare", "util-linux")
	needPackages(t)
	c := newChroot(t)
	c.put(targets[0].debFile(), "v1.deb")
	c.put(upgradePackage(t, "deb", "1.2.4"), "v2.deb")
	before := c.mustSh(offline, false, snapshotScript)

	// First install on a running system: enabled, not started.
	out := c.mustSh(booted, false, "dpkg -i /mnt/v1.deb")
	calls := c.calls()
	if serviceStart.MatchString(calls) {
		t.Errorf("first install started the service:\n%s", calls)
	}
	got := c.mustSh(offline, false, `test -L `+unitLink+` && echo enabled
stat -c '%n %a %U' /var/lib/warren /etc/warren/warren.toml /usr/bin/warren; echo "link $(readlink /usr/bin/warren-appliance)"`)
	for _, want := range []string{"enabled\n", "/var/lib/warren 700 root\n", "/etc/warren/warren.toml 600 root\n",
		"link warren\n", "/usr/bin/warren 755 root\n"} {
		if !strings.Contains(got, want) {
			t.Errorf("after dpkg -i: want %q in\n%s\n(dpkg said: %s)", want, got, out)
		}
	}

	// The installed binaries run, --check of the shipped config says which
	// setup command to run (nothing set this board up yet), and the unit
	// passes systemd-analyze verify against the chroot's systemd.
	got = c.mustSh(offline, false, "warren-appliance --version; warren --version; warren-appliance --check 2>&1 >/dev/null | grep -q 'warren cluster init' && echo config-ok")
	for _, want := range []string{"warren-appliance " + testDescribe, "warren " + testDescribe, "platform: linux/amd64", "config-ok"} {
		if !strings.Contains(got, want) {
			t.Errorf("installed binaries: want %q in\n%s", want, got)
		}
	}
	if got := c.mustSh(offline, false, "systemd-analyze verify warren-appliance.service 2>&1"); got != "" {
		t.Errorf("systemd-analyze verify in the chroot:\n%s", got)
	}

	// A cloud-init seed enables the packaged token remover; removal must
	// take that enablement away too, or purge leaves a dangling link.
	c.mustSh(offline, false, "systemctl enable warren-forget-token.path")

	// Upgrade with an edited config and a key in the state dir: the edit
	// stays, and the service is restarted only if it was running.
	c.mustSh(offline, false, "echo '# edited by the admin' >> /etc/warren/warren.toml; echo secret > /var/lib/warren/wireguard.key")
	out = c.mustSh(booted, false, "dpkg -i /mnt/v2.deb")
	calls = c.calls()
	if !strings.Contains(calls, "deb-systemd-invoke try-restart warren-appliance.service") {
		t.Errorf("upgrade did not try-restart the service; calls:\n%s\ndpkg:\n%s", calls, out)
	}
	if m := serviceStart.FindAllString(calls, -1); len(m) != 1 {
		t.Errorf("upgrade should only try-restart; calls:\n%s", calls)
	}
	got = c.mustSh(offline, false, `dpkg-query -W -f '${Version}\n' warren-appliance; tail -n1 /etc/warren/warren.toml
ls /etc/warren; test -L `+unitLink+` && echo enabled; cat /var/lib/warren/wireguard.key`)
	for _, want := range []string{"1.2.4\n", "# edited by the admin\n", "enabled\n", "secret\n"} {
		if !strings.Contains(got, want) {
			t.Errorf("after upgrade: want %q in\n%s", want, got)
		}
	}
	if strings.Contains(got, ".dpkg-") {
		t.Errorf("upgrade left a .dpkg-new/.dpkg-dist beside an unchanged conffile:\n%s", got)
	}

	// An admin's disable survives a reinstall.
	c.mustSh(offline, false, "systemctl disable warren-appliance.service; dpkg -i /mnt/v2.deb")
	if got := c.mustSh(offline, false, "test -L "+unitLink+" && echo enabled || echo disabled"); got != "disabled\n" {
		t.Errorf("reinstall re-enabled a disabled service: %s", got)
	}
	c.mustSh(offline, false, "systemctl enable warren-appliance.service")

	// Remove: stop, and clean up while the binary exists (the real
	// --cleanup, in the step's own network namespace, removes a warren0
	// made there); state and config stay.
	out = c.mustSh(booted, true, `ip tuntap add dev warren0 mode tun
chroot "$ROOT" /usr/bin/env -i HOME=/root LC_ALL=C PATH="$CHROOT_PATH" dpkg -r warren-appliance
ip link show warren0 >/dev/null 2>&1 && echo warren0-left || echo warren0-removed`)
	if calls := c.calls(); !strings.Contains(calls, "deb-systemd-invoke stop warren-appliance.service") {
		t.Errorf("dpkg -r did not stop the service; calls:\n%s\ndpkg:\n%s", calls, out)
	}
	if !strings.Contains(out, "warren0-removed") || strings.Contains(out, "--cleanup failed") {
		t.Errorf("dpkg -r did not clean up warren0:\n%s", out)
	}
	got = c.mustSh(offline, false, "ls /usr/bin/warren-appliance 2>&1 || true; ls /var/lib/warren /etc/warren")
	for _, want := range []string{"No such file", "wireguard.key", "warren.toml"} {
		if !strings.Contains(got, want) {
			t.Errorf("after dpkg -r: want %q in\n%s", want, got)
		}
	}

	// Purge: nothing of the package is left.
	c.mustSh(booted, false, "dpkg -P warren-appliance")
	c.calls()
	after := c.mustSh(offline, false, snapshotScript)
	if diff := diffLines(before, after); diff != "" {
		t.Errorf("purge left the chroot different from before the install:\n%s", diff)
	}
}

func TestRPMInstallUpgradeErase(t *testing.T) {
	requireTool(t, "unshare", "util-linux")
	requireTool(t, "rpm", "rpm")
	needPackages(t)
	c := newChroot(t)
	c.put(targets[0].rpmFile(), "v1.rpm")
	c.put(upgradePackage(t, "rpm", "1.2.4"), "v2.rpm")

	// Host rpm installs into the chroot and runs the scriptlets chrooted,
	// with the chroot's real (offline) systemctl. --nodeps: the chroot's
	// iptables is a dpkg package rpm does not know.
	rpm := `rpm --root "$ROOT" --nodeps `
	c.mustSh(offline, true, rpm+`-i "$ROOT/mnt/v1.rpm"`)
	got := c.mustSh(offline, false, `test -L `+unitLink+` && echo enabled
stat -c '%n %a' /var/lib/warren /etc/warren/warren.toml; warren-appliance --version`)
	for _, want := range []string{"enabled\n", "/var/lib/warren 700\n", "/etc/warren/warren.toml 600\n", "warren-appliance " + testDescribe} {
		if !strings.Contains(got, want) {
			t.Errorf("after rpm -i: want %q in\n%s", want, got)
		}
	}

	c.mustSh(offline, false, "echo '# edited by the admin' >> /etc/warren/warren.toml; echo secret > /var/lib/warren/wireguard.key")
	c.mustSh(offline, true, rpm+`-U "$ROOT/mnt/v2.rpm"`)
	got = c.mustSh(offline, true, `rpm --root "$ROOT" -q --qf '%{VERSION}\n' warren-appliance; tail -n1 "$ROOT/etc/warren/warren.toml"; ls "$ROOT/etc/warren"`)
	for _, want := range []string{"1.2.4\n", "# edited by the admin\n"} {
		if !strings.Contains(got, want) {
			t.Errorf("after rpm -U: want %q in\n%s", want, got)
		}
	}
	if strings.Contains(got, ".rpmnew") {
		t.Errorf("upgrade wrote .rpmnew beside an unchanged %%config(noreplace):\n%s", got)
	}

	// Erase: cleaned up (a warren0 in the step's namespace is removed),
	// disabled, binaries gone, the edited config saved, the node's keys
	// kept (rpm has no purge; see README).
	out := c.mustSh(offline, true, `ip tuntap add dev warren0 mode tun
rpm --root "$ROOT" -e warren-appliance
ip link show warren0 >/dev/null 2>&1 && echo warren0-left || echo warren0-removed`)
	if !strings.Contains(out, "warren0-removed") || strings.Contains(out, "--cleanup failed") {
		t.Errorf("rpm -e did not clean up warren0:\n%s", out)
	}
	got = c.mustSh(offline, false, `test -L `+unitLink+` && echo enabled || echo disabled
ls /usr/bin/warren-appliance /usr/lib/systemd/system/warren-appliance.service 2>&1 || true
ls /etc/warren; cat /var/lib/warren/wireguard.key`)
	for _, want := range []string{"disabled\n", "warren.toml.rpmsave", "secret\n"} {
		if !strings.Contains(got, want) {
			t.Errorf("after rpm -e: want %q in\n%s", want, got)
		}
	}
	if strings.Contains(got, "/usr/bin/warren-appliance\n") {
		t.Errorf("rpm -e left the binary:\n%s", got)
	}
}

// diffLines returns the lines only in a (-) and only in b (+).
func diffLines(a, b string) string {
	inA, inB := map[string]bool{}, map[string]bool{}
	for _, l := range strings.Split(a, "\n") {
		inA[l] = true
	}
	for _, l := range strings.Split(b, "\n") {
		inB[l] = true
	}
	var out []string
	for _, l := range strings.Split(a, "\n") {
		if !inB[l] {
			out = append(out, "- "+l)
		}
	}
	for _, l := range strings.Split(b, "\n") {
		if !inA[l] {
			out = append(out, "+ "+l)
		}
	}
	return strings.Join(out, "\n")
}

// rpm runs scriptlets with its own PATH, so the install test above cannot
// see what they do on a running system; here each one runs in the chroot
// with systemd "booted" and the recording systemctl.
func TestRPMScriptletsOnRunningSystem(t *testing.T) {
	c := newChroot(t)
	for _, s := range []string{"post", "preun", "postun"} {
		c.put(filepath.Join(repoRoot, "packaging/scripts/rpm", s), "rpm-"+s)
	}
	for _, tc := range []struct {
		script, arg string
		want        string // the calls, in order
	}{
		{"post", "1", "systemctl enable warren-appliance.service\n"},
		{"post", "2", "systemctl daemon-reload\nsystemctl try-restart warren-appliance.service\n"},
		{"preun", "1", ""},
		{"preun", "0", "systemctl stop warren-appliance.service\nsystemctl disable warren-appliance.service\nsystemctl disable warren-forget-token.path\n"},
		{"postun", "1", ""},
		{"postun", "0", "systemctl daemon-reload\n"},
	} {
		c.mustSh(booted, false, "sh /mnt/rpm-"+tc.script+" "+tc.arg)
		if got := c.calls(); got != tc.want {
			t.Errorf("%%%s with $1=%s called:\n%s\nwant:\n%s", tc.script, tc.arg, got, tc.want)
		}
	}
}

package packaging_test

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// wantFile is one file or directory every package must ship.
type wantFile struct {
	path string
	mode string // as ls -l prints it
	link string // a symlink's target
}

var wantFiles = []wantFile{
	// One binary; called as warren-appliance it is the daemon.
	{"/usr/bin/warren-appliance", "lrwxrwxrwx", "warren"},
	{"/usr/bin/warren", "-rwxr-xr-x", ""},
	{"/usr/lib/systemd/system/warren-appliance.service", "-rw-r--r--", ""},
	// Deletes the join token once joined; the cloud-init seeds enable the path unit.
	{"/usr/sbin/warren-forget-token", "-rwxr-xr-x", ""},
	{"/usr/lib/systemd/system/warren-forget-token.path", "-rw-r--r--", ""},
	{"/usr/lib/systemd/system/warren-forget-token.service", "-rw-r--r--", ""},
	{"/etc/warren", "drwxr-xr-x", ""},
	{"/etc/warren/warren.toml", "-rw-------", ""}, // holds the join token
	{"/usr/share/doc/warren-appliance/examples/worker.toml", "-rw-r--r--", ""},
	{"/usr/share/warren-appliance/prometheus/alerts.yml", "-rw-r--r--", ""},
	{"/var/lib/warren", "drwx------", ""}, // keys
}

func TestDistHoldsSixPackages(t *testing.T) {
	needPackages(t)
	entries, err := os.ReadDir(distDir)
	if err != nil {
		t.Fatal(err)
	}
	var got, want []string
	for _, e := range entries {
		got = append(got, filepath.Join(distDir, e.Name()))
	}
	for _, tg := range targets {
		want = append(want, tg.debFile(), tg.rpmFile())
	}
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Fatalf("dist holds\n  %s\nwant\n  %s", strings.Join(got, "\n  "), strings.Join(want, "\n  "))
	}
}

func TestDebMetadataFilesAndScripts(t *testing.T) {
	requireTool(t, "dpkg-deb", "dpkg")
	needPackages(t)
	for _, tg := range targets {
		t.Run(tg.debArch, func(t *testing.T) {
			deb := tg.debFile()
			fields := map[string]string{
				"Package":      "warren-appliance",
				"Version":      testPkgVersion,
				"Architecture": tg.debArch,
				"Depends":      "iptables",
				"Recommends":   "containerd, wireguard-tools",
			}
			for field, want := range fields {
				if got := strings.TrimSpace(run(t, "dpkg-deb", "-f", deb, field)); got != want {
					t.Errorf("%s: %s = %q, want %q", filepath.Base(deb), field, got, want)
				}
			}

			// dpkg-deb -c: "-rwxr-xr-x root/root 2781346 2026-11-27 06:35 ./usr/bin/warren"
			listed := map[string][]string{}
			for _, line := range strings.Split(strings.TrimSpace(run(t, "dpkg-deb", "-c", deb)), "\n") {
				f := strings.Fields(line)
				if len(f) < 6 {
					t.Fatalf("unexpected dpkg-deb -c line %q", line)
				}
				path := strings.TrimSuffix(strings.TrimPrefix(f[5], "."), "/")
				listed[path] = f
			}
			for _, w := range wantFiles {
				f, ok := listed[w.path]
				if !ok {
					t.Errorf("%s lacks %s", filepath.Base(deb), w.path)
					continue
				}
				if f[0] != w.mode || f[1] != "root/root" {
					t.Errorf("%s: %s is %s %s, want %s root/root", filepath.Base(deb), w.path, f[0], f[1], w.mode)
				}
				// "lrwxrwxrwx root/root 0 2026-11-28 17:00 ./usr/bin/warren-appliance -> warren"
				if w.link != "" && (len(f) != 8 || f[6] != "->" || f[7] != w.link) {
					t.Errorf("%s: %s is not a link to %s: %v", filepath.Base(deb), w.path, w.link, f)
				}
			}

			control := t.TempDir()
			run(t, "dpkg-deb", "-e", deb, control)
			if got := readFile(t, filepath.Join(control, "conffiles")); got != "/etc/warren/warren.toml\n" {
				t.Errorf("conffiles = %q, want only /etc/warren/warren.toml", got)
			}
			for _, script := range []string{"postinst", "prerm", "postrm"} {
				path := filepath.Join(control, script)
				if got, want := readFile(t, path), readRepoFile(t, "packaging/scripts/deb/"+script); got != want {
					t.Errorf("%s in the package differs from packaging/scripts/deb/%s", script, script)
				}
				if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o755 {
					t.Errorf("%s: mode %v (%v), want 0755", script, fi.Mode(), err)
				}
			}
			if _, err := os.Stat(filepath.Join(control, "preinst")); err == nil {
				t.Errorf("package has a preinst; none is expected")
			}

			root := extractDeb(t, deb)
			if got, want := readFile(t, filepath.Join(root, "usr/lib/systemd/system/warren-appliance.service")),
				readRepoFile(t, "packaging/systemd/warren-appliance.service"); got != want {
				t.Error("packaged unit differs from packaging/systemd/warren-appliance.service")
			}
			for pkg, repo := range map[string]string{
				"usr/sbin/warren-forget-token":                       "packaging/scripts/warren-forget-token",
				"usr/lib/systemd/system/warren-forget-token.path":    "packaging/systemd/warren-forget-token.path",
				"usr/lib/systemd/system/warren-forget-token.service": "packaging/systemd/warren-forget-token.service",
			} {
				if got, want := readFile(t, filepath.Join(root, pkg)), readRepoFile(t, repo); got != want {
					t.Errorf("packaged /%s differs from %s", pkg, repo)
				}
			}
			if got, want := readFile(t, filepath.Join(root, "etc/warren/warren.toml")), readRepoFile(t, shippedConfigSource()); got != want {
				t.Errorf("packaged /etc/warren/warren.toml differs from %s", shippedConfigSource())
			}
		})
	}
}

func TestRPMMetadataFilesAndScripts(t *testing.T) {
	requireTool(t, "rpm", "rpm")
	needPackages(t)
	for _, tg := range targets {
		t.Run(tg.rpmArch, func(t *testing.T) {
			rpm := tg.rpmFile()
			header := run(t, "rpm", "-qp", "--qf", "%{NAME}|%{VERSION}|%{RELEASE}|%{ARCH}|%{OS}", rpm)
			if want := "warren-appliance|" + testPkgVersion + "|1|" + tg.rpmArch + "|linux"; header != want {
				t.Errorf("header %q, want %q", header, want)
			}
			requires := strings.Fields(run(t, "rpm", "-qp", "--requires", rpm))
			if !slices.Contains(requires, "iptables") {
				t.Errorf("requires %v, want iptables among them", requires)
			}
			recommends := strings.Fields(run(t, "rpm", "-qp", "--recommends", rpm))
			slices.Sort(recommends)
			if !slices.Equal(recommends, []string{"containerd", "wireguard-tools"}) {
				t.Errorf("recommends %v, want containerd and wireguard-tools", recommends)
			}

			type entry struct{ mode, owner, flags, link string }
			listed := map[string]entry{}
			out := run(t, "rpm", "-qp", "--qf", `[%{FILENAMES}|%{FILEMODES:perms}|%{FILEUSERNAME}:%{FILEGROUPNAME}|%{FILEFLAGS:fflags}|%{FILELINKTOS}\n]`, rpm)
			for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
				f := strings.Split(line, "|")
				if len(f) != 5 {
					t.Fatalf("unexpected file line %q", line)
				}
				listed[f[0]] = entry{f[1], f[2], f[3], f[4]}
			}
			for _, w := range wantFiles {
				e, ok := listed[w.path]
				if !ok {
					t.Errorf("%s lacks %s", filepath.Base(rpm), w.path)
					continue
				}
				mode := e.mode
				if w.link != "" && strings.HasPrefix(mode, "l") {
					mode = w.mode // rpm keeps no permission bits on links (nfpm writes l---------)
				}
				if mode != w.mode || e.owner != "root:root" || e.link != w.link {
					t.Errorf("%s is %s %s -> %q, want %s root:root -> %q", w.path, e.mode, e.owner, e.link, w.mode, w.link)
				}
			}
			// c = %config, n = noreplace: upgrades keep the admin's edits.
			if got := listed["/etc/warren/warren.toml"].flags; got != "cn" {
				t.Errorf("/etc/warren/warren.toml flags %q, want cn (%%config(noreplace))", got)
			}
			if got := strings.TrimSpace(run(t, "rpm", "-qp", "--configfiles", rpm)); got != "/etc/warren/warren.toml" {
				t.Errorf("configfiles %q, want only /etc/warren/warren.toml", got)
			}

			scripts := run(t, "rpm", "-qp", "--scripts", rpm)
			for heading, file := range map[string]string{
				"postinstall scriptlet (using /bin/sh):\n":   "post",
				"preuninstall scriptlet (using /bin/sh):\n":  "preun",
				"postuninstall scriptlet (using /bin/sh):\n": "postun",
			} {
				body := strings.TrimSpace(readRepoFile(t, "packaging/scripts/rpm/"+file))
				if !strings.Contains(scripts, heading+body) {
					t.Errorf("rpm --scripts lacks packaging/scripts/rpm/%s under %q:\n%s", file, heading, scripts)
				}
			}
			if strings.Contains(scripts, "preinstall scriptlet") {
				t.Errorf("package has a %%pre; none is expected")
			}
		})
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

package packaging_test

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// The appliance image's NoCloud seed (packaging/raspberrypi/image-seed),
// which `make image` puts on the firmware partition for the user to edit.
const imageSeed = "packaging/raspberrypi/image-seed"

func TestImageSeedUserDataIsValid(t *testing.T) {
	requireTool(t, "cloud-init", "cloud-init")
	path := filepath.Join(repoRoot, imageSeed, "user-data")
	out, err := runErr("cloud-init", "schema", "--config-file", path)
	if err != nil || !strings.Contains(out, "Valid cloud-config") {
		t.Fatalf("cloud-init schema: %v\n%s", err, out)
	}
	broken := filepath.Join(t.TempDir(), "user-data")
	writeFile(t, broken, strings.Replace(readRepoFile(t, imageSeed+"/user-data"), "write_files:", "write_files: 7\nignored:", 1))
	if out, err := runErr("cloud-init", "schema", "--config-file", broken); err == nil {
		t.Errorf("cloud-init schema accepted write_files: 7\n%s", out)
	}
}

// The seed's files, as written by cloud-init: warren.toml and the join token
// (/etc/warren/token, as in the Raspberry Pi OS seed) 0600 root; its runcmd
// enables the token's removal once joined; filled in as the comments say,
// the worker config (token from token_file) and the manager config pass
// warren-appliance --check.
func TestImageSeedWritesValidConfigs(t *testing.T) {
	requireTool(t, "python3", "python3-yaml")
	needPackages(t)
	dir := t.TempDir()
	const extract = `import sys, yaml
doc = yaml.safe_load(open(sys.argv[1]))
for f in doc["write_files"]:
    print(f["path"], f["permissions"], f["owner"])
    open(sys.argv[2] + "/" + f["path"].rsplit("/", 1)[1], "w").write(f["content"])
meta = yaml.safe_load(open(sys.argv[3]))
print("meta", meta["instance-id"], meta["local-hostname"])
net = yaml.safe_load(open(sys.argv[4]))
print("net", net["version"], net["ethernets"]["wired"]["match"]["name"], net["ethernets"]["wired"]["dhcp4"])
print("runcmd", doc["runcmd"])`
	out := run(t, "python3", "-c", extract, filepath.Join(repoRoot, imageSeed, "user-data"), dir,
		filepath.Join(repoRoot, imageSeed, "meta-data"), filepath.Join(repoRoot, imageSeed, "network-config"))
	want := "/etc/warren/warren.toml 0600 root:root\n/etc/warren/token 0600 root:root\n" +
		"meta warren-node-1 warren-node-1\nnet 2 e* True\n" +
		// The package ships warren-forget-token.path disabled; the seed enables it.
		"runcmd [['systemctl', 'enable', '--now', 'warren-forget-token.path']]\n"
	if out != want {
		t.Fatalf("seed files:\n%s\nwant:\n%s", out, want)
	}
	exe := filepath.Join(extractDeb(t, targets[0].debFile()), "usr/bin/warren-appliance")
	toml, err := os.ReadFile(filepath.Join(dir, "warren.toml"))
	if err != nil {
		t.Fatal(err)
	}
	tokenFile := filepath.Join(dir, "token")
	token := strings.Replace(readFileT(t, tokenFile), "REPLACE_JOIN_TOKEN", "WRN-1-"+strings.Repeat("0f", 32)+"-abcdefghijklmnopqrstuvwxyz", 1)
	writeFile(t, tokenFile, token)

	worker := strings.NewReplacer("REPLACE_MANAGER_ADDRESS", "192.0.2.10",
		"/etc/warren/token", tokenFile).Replace(string(toml))
	writeFile(t, filepath.Join(dir, "worker.toml"), worker)
	got := run(t, exe, "--check", "--config", filepath.Join(dir, "worker.toml"))
	for _, w := range []string{`role = "worker"`, `manager = "192.0.2.10:7946"`, `token = "(set, hidden)"`} {
		if !strings.Contains(got, w) {
			t.Errorf("worker config lacks %s:\n%s", w, got)
		}
	}
	// The token comes from token_file: without the file the config is refused.
	if err := os.Remove(tokenFile); err != nil {
		t.Fatal(err)
	}
	if out, err := runErr(exe, "--check", "--config", filepath.Join(dir, "worker.toml")); err == nil || !strings.Contains(out, "cluster.token_file") {
		t.Errorf("--check without the token file: %v\n%s", err, out)
	}

	// The manager edit the comments describe: role manager, no [cluster] lines.
	manager := regexp.MustCompile(`(?m)^\[cluster\]\n.*\n.*\n`).ReplaceAllString(
		strings.Replace(string(toml), `role = "worker"`, `role = "manager"`, 1), "")
	if strings.Contains(manager, "[cluster]") || strings.Contains(manager, "REPLACE_") {
		t.Fatalf("manager edit left the cluster section:\n%s", manager)
	}
	writeFile(t, filepath.Join(dir, "manager.toml"), manager)
	if got := run(t, exe, "--check", "--config", filepath.Join(dir, "manager.toml")); !strings.Contains(got, `role = "manager"`) {
		t.Errorf("manager config:\n%s", got)
	}
}

func readFileT(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

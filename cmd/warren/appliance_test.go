package main

import (
	"bytes"
	"encoding/json"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/warren-appliance/warren/cluster/clustermap"
	"github.com/warren-appliance/warren/configs"
)

func TestApplianceCheckExitCodes(t *testing.T) {
	bad := filepath.Join(t.TempDir(), "bad.toml")
	os.WriteFile(bad, []byte("[wireguard]\nlisten_port = 70000\n"), 0o644)
	cases := []struct {
		args []string
		want int
	}{
		// Its token_file (/etc/warren/token) does not exist here.
		{[]string{"--check", "--config", "../../configs/examples/worker.toml"}, exitBadConfig},
		{[]string{"--check", "--config", "../../configs/examples/manager.toml"}, 0},
		{[]string{"--check", "--config", "../../configs/examples/standalone.toml"}, 0},
		{[]string{"--check", "--config", bad}, exitBadConfig},
		{[]string{"--check", "--config", filepath.Join(t.TempDir(), "missing.toml")}, exitBadConfig},
		{[]string{"--no-such-flag"}, exitBadConfig},
		{[]string{"--version"}, 0},
		// Stray arguments are refused, not ignored (before, `warren-appliance
		// check` started the daemon).
		{[]string{"--version", "check"}, exitBadConfig},
		{[]string{"--check", "--config", "../../configs/examples/manager.toml", "extra"}, exitBadConfig},
	}
	for _, tc := range cases {
		if got := applianceMain(tc.args); got != tc.want {
			t.Errorf("warren-appliance %v exited %d, want %d", tc.args, got, tc.want)
		}
	}
}

func TestDefaultConfigForCleanupIsValid(t *testing.T) {
	cfg, err := defaultConfig()
	if err != nil {
		t.Fatalf("the fallback config for --cleanup does not load: %v", err)
	}
	if cfg.WireGuard.Interface != "warren0" || cfg.Network.Bridge != "warren-br0" || cfg.Runtime.Namespace != "warren" {
		t.Fatalf("fallback names differ from the defaults: %+v", cfg.Config)
	}
}

// runCaptured runs the command with stdout and stderr captured.
func runCaptured(t *testing.T, args ...string) (int, string) {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	oldOut, oldErr := os.Stdout, os.Stderr
	os.Stdout, os.Stderr = w, w
	done := make(chan string)
	go func() { var b bytes.Buffer; io.Copy(&b, r); done <- b.String() }()
	code := applianceMain(args)
	os.Stdout, os.Stderr = oldOut, oldErr
	w.Close()
	return code, <-done
}

// --check checks what start checks: the setup a fresh board lacks, a
// placeholder token, a range overlapping a network of this host.
func TestCheckParityWithStart(t *testing.T) {
	dir := t.TempDir()
	write := func(name, text string) string {
		p := filepath.Join(dir, name)
		os.WriteFile(p, []byte(text), 0o600)
		return p
	}
	state := filepath.Join(dir, "state")
	shipped, err := os.ReadFile("../../packaging/config/warren.toml")
	if err != nil {
		t.Fatal(err)
	}
	fresh := write("shipped.toml", strings.Replace(string(shipped), "[node]\n", "[node]\nstate_dir = '"+state+"'\n", 1))
	if code, out := runCaptured(t, "--check", "--config", fresh); code != exitBadConfig || !strings.Contains(out, "warren cluster init") {
		t.Errorf("shipped config on a fresh board: exit %d, want 2 naming `warren cluster init`:\n%s", code, out)
	}
	placeholder := write("placeholder.toml", "[node]\nname='w1'\nstate_dir='"+state+"'\n[cluster]\nmanager='192.0.2.1:7946'\ntoken='WRN-1-replace-with-the-token-the-manager-printed'\n")
	if code, out := runCaptured(t, "--check", "--config", placeholder); code != exitBadConfig || !strings.Contains(out, "cluster.token: join token is malformed") {
		t.Errorf("placeholder token: exit %d, want 2 naming cluster.token:\n%s", code, out)
	}
	// Once a setup is remembered, the shipped config passes and says where
	// the remembered keys came from.
	if err := configs.SaveSetup(state, configs.Setup{Role: "manager", Name: "pi-1", AdvertiseAddress: "192.0.2.10"}); err != nil {
		t.Fatal(err)
	}
	if code, out := runCaptured(t, "--check", "--config", fresh); code != 0 || !strings.Contains(out, "setup.json") || !strings.Contains(out, `advertise_address = "192.0.2.10"`) {
		t.Errorf("shipped config on a set-up board: exit %d, want 0 with the remembered keys:\n%s", code, out)
	}

	// A range overlapping a network this host is on fails --check as it
	// fails start.
	nets, err := configs.HostNetworks(configs.Default())
	if err != nil || len(nets) == 0 {
		t.Skipf("no host network to overlap: %v", err)
	}
	var host netip.Prefix
	for _, n := range nets {
		if n.Bits() >= 8 {
			host = n.Masked()
			break
		}
	}
	if !host.IsValid() {
		t.Skip("no host network of /8 or longer")
	}
	// A manager about to create its cluster: the config's ranges.
	overlap := write("overlap.toml", "[node]\nname='m1'\nrole='manager'\nstate_dir='"+filepath.Join(dir, "fresh")+"'\n[network]\nvip_subnet='"+host.String()+"'\n")
	if code, out := runCaptured(t, "--check", "--config", overlap); code != exitBadConfig || !strings.Contains(out, "a network this host is already on") {
		t.Errorf("vip_subnet %s overlapping a host network: exit %d, want 2:\n%s", host, code, out)
	}
	// A node that joined: the cluster's ranges, from its cached map.
	var m clustermap.Map
	m.SetNetwork(clustermap.Network{Domain: "warren.local", WireGuardSubnet: netip.MustParsePrefix("10.0.0.0/24"),
		ContainerSubnet: netip.MustParsePrefix("10.0.0.0/16"), VIPSubnet: host})
	b, _ := json.Marshal(&m)
	os.WriteFile(filepath.Join(state, "map.json"), b, 0o600)
	if code, out := runCaptured(t, "--check", "--config", fresh); code != exitBadConfig || !strings.Contains(out, "the cluster's network.vip_subnet") {
		t.Errorf("a joined node whose cluster's VIP range %s overlaps a host network: exit %d, want 2:\n%s", host, code, out)
	}
}

// A board nothing set up yet can still show its public key and clean up:
// neither depends on the role.
func TestShowKeyAndCleanupNeedNoSetup(t *testing.T) {
	dir := t.TempDir()
	shipped, err := os.ReadFile("../../packaging/config/warren.toml")
	if err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(dir, "warren.toml")
	os.WriteFile(cfg, []byte(strings.Replace(string(shipped), "[node]\n", "[node]\nstate_dir = '"+filepath.Join(dir, "state")+"'\n", 1)), 0o600)
	code, out := runCaptured(t, "--show-public-key", "--config", cfg)
	if code != 0 || len(strings.TrimSpace(out)) != 44 {
		t.Fatalf("--show-public-key on a fresh board: exit %d\n%s", code, out)
	}
}

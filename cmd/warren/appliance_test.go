package main

import (
	"os"
	"path/filepath"
	"testing"
)

func TestApplianceCheckExitCodes(t *testing.T) {
	bad := filepath.Join(t.TempDir(), "bad.toml")
	os.WriteFile(bad, []byte("[wireguard]\nlisten_port = 70000\n"), 0o644)
	cases := []struct {
		args []string
		want int
	}{
		{[]string{"--check", "--config", "../../configs/examples/worker.toml"}, 0},
		{[]string{"--check", "--config", "../../configs/examples/manager.toml"}, 0},
		{[]string{"--check", "--config", "../../configs/examples/standalone.toml"}, 0},
		{[]string{"--check", "--config", bad}, exitBadConfig},
		{[]string{"--check", "--config", filepath.Join(t.TempDir(), "missing.toml")}, exitBadConfig},
		{[]string{"--no-such-flag"}, exitBadConfig},
		{[]string{"--version"}, 0},
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

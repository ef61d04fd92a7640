package main

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/cobra"

	"github.com/warren-appliance/warren/configs"
)

func execute(args ...string) (string, error) {
	root := newRoot()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(args)
	err := root.Execute()
	return out.String(), err
}

// Every verb answers --help with its usage, and no verb is a placeholder.
func TestEveryVerbHasHelp(t *testing.T) {
	var walk func(c *cobra.Command)
	count := 0
	walk = func(c *cobra.Command) {
		if c.Name() == "help" || c.Name() == "completion" {
			return
		}
		path := strings.Fields(c.CommandPath())[1:]
		out, err := execute(append(path, "--help")...)
		if err != nil || !strings.Contains(out, "Usage:") {
			t.Errorf("warren %s --help: %v\n%s", strings.Join(path, " "), err, out)
		}
		if strings.Contains(strings.ToLower(c.Short), "not built") {
			t.Errorf("warren %s is still a placeholder", strings.Join(path, " "))
		}
		count++
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(newRoot())
	if count < 20 {
		t.Fatalf("only %d verbs found", count)
	}
}

func TestDaemonNotReachableSaysSo(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "none.sock")
	for _, args := range [][]string{{"node", "ls"}, {"service", "ls"}, {"network", "status"}, {"cluster", "info"}} {
		_, err := execute(append(args, "--socket", sock)...)
		if err == nil || !strings.Contains(err.Error(), "cannot reach the warren daemon at "+sock) {
			t.Errorf("warren %v with no daemon: %v", args, err)
		}
	}
	t.Setenv("WARREN_SOCKET", sock)
	if _, err := execute("node", "ls"); err == nil || !strings.Contains(err.Error(), sock) {
		t.Errorf("WARREN_SOCKET not used: %v", err)
	}
}

func TestDaemonVerbsRejectBadFlagsWithExit2(t *testing.T) {
	cfg := filepath.Join(t.TempDir(), "missing.toml")
	for _, args := range [][]string{
		{"worker", "start", "--config", cfg},
		{"worker", "start", "--name", "w1", "--manager", "192.0.2.1:7946"},
		{"cluster", "init", "--name", "m1", "--vip-subnet", "10.1.0.1/16"},
	} {
		_, err := execute(args...)
		var ee *exitError
		if !errors.As(err, &ee) || ee.code != 2 {
			t.Errorf("warren %v: want exit 2 with a config error, got %v", args, err)
		}
	}
	_, err := execute("cluster", "init", "--name", "m1", "--vip-subnet", "10.1.0.1/16")
	if err == nil || !strings.Contains(err.Error(), "host bits set, did you mean 10.1.0.0/16?") {
		t.Errorf("bad --vip-subnet: %v", err)
	}
}

// Bad policy files and labels are refused before the daemon is asked
// (exit 2), naming the file and line.
func TestPolicyApplyAndLabelsRejectBadInputWithExit2(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "p.yaml")
	if err := os.WriteFile(file, []byte("apiVersion: warren.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: p\nspec:\n  podSelector: {}\n  ingres: []\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "none.sock")
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"policy", "apply", "-f", file}, file + `: line 7: unknown field "ingres" in spec`},
		{[]string{"policy", "apply", "-f", filepath.Join(dir, "missing.yaml")}, "no such file"},
		{[]string{"policy", "apply", "-f", "../../netpolicy/testdata/recipes/05-allow-traffic-from-all-namespaces.yaml"}, "line 13: spec.ingress[0].from[0].namespaceSelector cannot be honoured: Warren has no namespaces"},
		{[]string{"service", "create", "web", "--image", "x", "--label", "app"}, `label "app": want KEY=VALUE`},
		{[]string{"service", "update", "web", "--label-rm", "bad key"}, `label key "bad key"`},
		{[]string{"service", "update", "web"}, "nothing to update"},
	} {
		_, err := execute(append(c.args, "--socket", sock)...)
		var ee *exitError
		if !errors.As(err, &ee) || ee.code != 2 || !strings.Contains(err.Error(), c.want) {
			t.Errorf("warren %v: got %v, want exit 2 containing %q", c.args, err, c.want)
		}
	}
}

// An unknown verb under any group exits 2 naming the group, with a
// suggestion, as the top level does; the bare group still prints help.
func TestUnknownVerbInEveryGroupExits2(t *testing.T) {
	groups := 0
	for _, c := range newRoot().Commands() {
		if !c.HasSubCommands() || c.Name() == "help" || c.Name() == "completion" {
			continue
		}
		groups++
		sub := c.Commands()[0].Name()
		typo := sub[:len(sub)-1] + "x" + sub[len(sub)-1:] // one letter off: a suggestion is due
		_, err := execute(c.Name(), typo)
		var ee *exitError
		if !errors.As(err, &ee) || ee.code != 2 {
			t.Errorf("warren %s %s: want exit 2, got %v", c.Name(), typo, err)
			continue
		}
		want := `unknown command "` + typo + `" for "warren ` + c.Name() + `"`
		if !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "Did you mean this?\n\t"+sub) {
			t.Errorf("warren %s %s: want %q and a suggestion of %q, got:\n%v", c.Name(), typo, want, sub, err)
		}
		if out, err := execute(c.Name()); err != nil || !strings.Contains(out, "Available Commands:") {
			t.Errorf("warren %s alone: want its help, got %v\n%s", c.Name(), err, out)
		}
	}
	if groups < 5 {
		t.Fatalf("only %d groups found (cluster, manager, worker, node, service, network)", groups)
	}
	// A typo at the top level exits 2 as well (before: 1), with cobra's suggestion.
	_, err := execute("sevrice")
	var ee *exitError
	if !errors.As(err, &ee) || ee.code != 2 || !strings.Contains(err.Error(), `unknown command "sevrice" for "warren"`) || !strings.Contains(err.Error(), "\tservice") {
		t.Errorf("warren sevrice: want exit 2 with a suggestion, got %v", err)
	}
	if out, err := execute(); err != nil || !strings.Contains(out, "Available Commands:") {
		t.Errorf("warren alone: want its help, got %v\n%s", err, out)
	}
	_, err = execute("service", "lss")
	if err == nil || !strings.Contains(err.Error(), `unknown command "lss" for "warren service"`) || !strings.Contains(err.Error(), "\tls") {
		t.Errorf("warren service lss: %v", err)
	}
}

// daemonConfigFor builds the config `warren <verb...> <flags>` would run.
func daemonConfigFor(t *testing.T, role string, args ...string) (*configs.Loaded, error) {
	t.Helper()
	root := newRoot()
	var verb []string
	for len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		verb, args = append(verb, args[0]), args[1:]
	}
	cmd, _, err := root.Find(verb)
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.ParseFlags(args); err != nil {
		t.Fatal(err)
	}
	return daemonConfig(cmd, role)
}

// The shipped config works as shipped for every setup verb; what the verb
// set up is what the state dir remembers; a node set up in one role is not
// silently turned into another.
func TestSetupVerbsWithShippedConfig(t *testing.T) {
	dir := t.TempDir()
	shipped, err := os.ReadFile("../../packaging/config/warren.toml")
	if err != nil {
		t.Fatal(err)
	}
	cfgPath := filepath.Join(dir, "warren.toml")
	os.WriteFile(cfgPath, shipped, 0o600)
	tokenFile := filepath.Join(dir, "token")
	token := "WRN-1-" + strings.Repeat("0f", 32) + "-abcdefghijklmnopqrstuvwxyz"
	os.WriteFile(tokenFile, []byte(token+"\n"), 0o600)

	// cluster init: a manager creating the cluster.
	mstate := filepath.Join(dir, "m")
	cfg, err := daemonConfigFor(t, configs.RoleManager, "cluster", "init", "--config", cfgPath, "--state-dir", mstate, "--advertise-address", "192.0.2.10")
	if err != nil {
		t.Fatalf("cluster init with the shipped config: %v", err)
	}
	if cfg.Node.Role != configs.RoleManager || cfg.Cluster.Manager != "" {
		t.Fatalf("cluster init would not create a cluster: %+v", cfg.Cluster)
	}
	if s := cfg.RememberedSetup("pi-1", nil); s.AdvertiseAddress != "192.0.2.10" || s.Role != configs.RoleManager {
		t.Fatalf("cluster init's flags not remembered: %+v", s)
	}

	// worker start with --token-file.
	wstate := filepath.Join(dir, "w")
	cfg, err = daemonConfigFor(t, configs.RoleWorker, "worker", "start", "--config", cfgPath, "--state-dir", wstate, "--manager", "192.0.2.10:7946", "--token-file", tokenFile)
	if err != nil {
		t.Fatalf("worker start with the shipped config: %v", err)
	}
	if cfg.Cluster.Token != token || cfg.Node.Role != configs.RoleWorker {
		t.Fatalf("token file not read: %+v", cfg.Cluster)
	}
	if err := configs.SaveSetup(wstate, cfg.RememberedSetup("pi-2", []string{cfg.Cluster.Manager})); err != nil {
		t.Fatal(err)
	}
	// Later: no manager, no token needed; cluster init refuses.
	if _, err := daemonConfigFor(t, configs.RoleWorker, "worker", "start", "--config", cfgPath, "--state-dir", wstate); err != nil {
		t.Fatalf("worker start again on a joined worker: %v", err)
	}
	if _, err := daemonConfigFor(t, configs.RoleManager, "cluster", "init", "--config", cfgPath, "--state-dir", wstate); err == nil || !strings.Contains(err.Error(), "was set up as a worker (by `warren worker start`") {
		t.Fatalf("cluster init on a worker: %v", err)
	}

	// cluster init with a config that joins is refused, naming the key.
	joining := filepath.Join(dir, "joining.toml")
	os.WriteFile(joining, []byte("[cluster]\nmanager = '192.0.2.10:7946'\n"), 0o600)
	_, err = execute("cluster", "init", "--config", joining, "--state-dir", filepath.Join(dir, "x"))
	var ee *exitError
	if !errors.As(err, &ee) || ee.code != 2 || !strings.Contains(err.Error(), "joining.toml:2: cluster.manager") {
		t.Fatalf("cluster init with cluster.manager set: %v", err)
	}
}

// `manager join` and `worker start` only join: without a manager address
// they refuse naming --manager (exit 2) instead of creating a new cluster
// (issue 25); only `cluster init` creates one.
func TestJoinVerbsWithoutManagerRefuse(t *testing.T) {
	dir := t.TempDir()
	token := "WRN-1-" + strings.Repeat("0f", 32) + "-abcdefghijklmnopqrstuvwxyz"
	if err := os.WriteFile(filepath.Join(dir, "none.toml"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		role string
		args []string
	}{
		{configs.RoleManager, []string{"manager", "join", "--name", "m2", "--token", token}},
		{configs.RoleManager, []string{"manager", "join", "--name", "m2"}},
		{configs.RoleWorker, []string{"worker", "start", "--name", "w1", "--token", token}},
	} {
		// daemonConfig, not execute: before the fix this ran a new cluster.
		args := append(c.args, "--config", filepath.Join(dir, "none.toml"), "--state-dir", filepath.Join(dir, c.args[0]))
		_, err := daemonConfigFor(t, c.role, args...)
		if err == nil || !strings.Contains(err.Error(), "cluster.manager") || !strings.Contains(err.Error(), "--manager") {
			t.Errorf("warren %v: want an error naming cluster.manager and --manager, got %v", args, err)
		}
	}
	// The same with the shipped config file (no cluster.manager in it).
	cfg, err := daemonConfigFor(t, configs.RoleManager, "manager", "join", "--config", "../../packaging/config/warren.toml", "--state-dir", filepath.Join(dir, "m3"), "--token", token)
	if err == nil || !strings.Contains(err.Error(), "only `warren cluster init` creates") {
		t.Fatalf("manager join without --manager and the shipped config: %v (%v)", err, cfg != nil)
	}
	// With --manager it joins; a manager address without a port gets 7946.
	cfg, err = daemonConfigFor(t, configs.RoleManager, "manager", "join", "--config", filepath.Join(dir, "none.toml"), "--state-dir", filepath.Join(dir, "m4"), "--token", token, "--manager", "192.0.2.10")
	if err != nil || cfg.Cluster.Manager != "192.0.2.10:7946" {
		t.Fatalf("manager join --manager 192.0.2.10: %v (%v)", err, cfg != nil)
	}
	cfg, err = daemonConfigFor(t, configs.RoleWorker, "worker", "start", "--config", filepath.Join(dir, "none.toml"), "--state-dir", filepath.Join(dir, "w4"), "--token", token, "--manager", "mgr.example:8000")
	if err != nil || cfg.Cluster.Manager != "mgr.example:8000" {
		t.Fatalf("worker start --manager mgr.example:8000: %v (%v)", err, cfg != nil)
	}
}

// --token's help names its value TOKEN, not the command that prints it.
func TestJoinFlagsValueNames(t *testing.T) {
	out, err := execute("worker", "start", "--help")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"--token TOKEN ", "--manager HOST[:PORT] ", "--token-file FILE ", "where the daemon always listens"} {
		if !strings.Contains(out, want) {
			t.Errorf("help lacks %q:\n%s", want, out)
		}
	}
}

// A Kubernetes NetworkPolicy (apiVersion networking.k8s.io/v1, namespace
// default) passes the CLI's checks unchanged and goes to the daemon.
func TestPolicyApplyTakesKubernetesYAML(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "none.sock")
	_, err := execute("policy", "apply", "-f", "../../netpolicy/testdata/recipes/02a-allow-all-traffic-to-an-application.yaml", "--socket", sock)
	if err == nil || !strings.Contains(err.Error(), "cannot reach the warren daemon at "+sock) {
		t.Fatalf("policy apply of a Kubernetes recipe: %v, want it sent to the daemon", err)
	}
}

// The seed's `warren cluster init --enable-mtls` is accepted and says that
// mTLS is always on.
func TestClusterInitEnableMTLS(t *testing.T) {
	root := newRoot()
	cmd, _, err := root.Find([]string{"cluster", "init"})
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.SetErr(&stderr)
	if err := cmd.ParseFlags([]string{"--enable-mtls", "--name", "m1", "--state-dir", t.TempDir(), "--config", filepath.Join(t.TempDir(), "none.toml")}); err != nil {
		t.Fatalf("--enable-mtls: %v", err)
	}
	cmd.Flags().Lookup("config").Changed = false // a missing default config is fine
	if _, err := daemonConfig(cmd, configs.RoleManager); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(stderr.String(), "mTLS is always on") {
		t.Fatalf("no note that mTLS is always on: %q", stderr.String())
	}
}

// Every update flag of either feature (spec flags, capabilities, health
// and rollout settings, labels, secrets) counts as something to update:
// the command goes on to the daemon instead of refusing.
func TestServiceUpdateKnowsEveryFlag(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "none.sock")
	for _, flags := range [][]string{
		{"--image", "x:2"}, {"--env-add", "A=1"}, {"--env-rm", "A"}, {"--limit-memory", "10M"}, {"--reserve-cpu", "0.5"},
		{"--mount-add", "type=tmpfs,target=/t"}, {"--mount-rm", "/t"}, {"--restart-condition", "none"}, {"--user", "1000"},
		{"--replicas", "2"}, {"--publish-add", "8080:80"}, {"--constraint-add", "node.name==a"},
		{"--cap-add", "NET_RAW"}, {"--cap-drop", "CHOWN"}, {"--health-cmd", "true"}, {"--no-healthcheck"},
		{"--update-order", "stop-first"}, {"--rollback-monitor", "1s"}, {"--label-add", "a=b"}, {"--secret-rotation", "restart"},
		{"--", "sleep", "1"},
	} {
		args := append([]string{"service", "update", "web", "--socket", sock}, flags...)
		_, err := execute(args...)
		if err == nil || !strings.Contains(err.Error(), "cannot reach the warren daemon") {
			t.Errorf("warren %v: %v", flags, err)
		}
	}
}

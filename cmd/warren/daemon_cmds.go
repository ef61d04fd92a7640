package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/warren-appliance/warren/appliance"
	"github.com/warren-appliance/warren/configs"
)

// The verbs that start a node run the same daemon as warren-appliance, in
// the foreground; their flags override the TOML keys of the same meaning
// (k3s style), so a first board needs no config file at all.
func addDaemonCommands(root *cobra.Command) {
	initCmd := daemonVerb("init", "Create a new cluster with this node as its first manager, and run it", configs.RoleManager)
	initCmd.Flags().String("wireguard-subnet", "", "node overlay range (wireguard.subnet)")
	initCmd.Flags().String("container-subnet", "", "range cut into per-node container blocks (network.container_subnet)")
	initCmd.Flags().String("vip-subnet", "", "service VIP range (network.vip_subnet)")
	initCmd.Flags().String("api-listen", "", "where the cluster API listens (cluster.api_listen)")
	initCmd.Flags().Bool("force-new-cluster", false, "restart this manager's state as a one-manager cluster (after the managers lost their quorum)")
	initCmd.Flags().Bool("enable-mtls", false, "accepted for the seed's command line: mTLS between nodes is always on (every API call after join; Raft between managers)")
	initCmd.Flags().String("restore", "", "with --force-new-cluster: start from a FILE written by warren cluster backup (on a fresh state dir)")
	findOrAdd(root, &cobra.Command{Use: "cluster", Short: "Create a cluster and manage its join tokens"}).AddCommand(initCmd)

	joinCmd := daemonVerb("join --manager HOST[:PORT] --token TOKEN", "Join an existing cluster with a manager token, and run it", configs.RoleManager)
	joinFlags(joinCmd)
	findOrAdd(root, &cobra.Command{Use: "manager", Short: "Run this node as a manager"}).AddCommand(joinCmd)

	startCmd := daemonVerb("start --manager HOST[:PORT] --token TOKEN", "Join a cluster as a worker (or rejoin with the stored identity), and run it", configs.RoleWorker)
	joinFlags(startCmd)
	findOrAdd(root, &cobra.Command{Use: "worker", Short: "Run this node as a worker"}).AddCommand(startCmd)
}

// daemonVerb is a verb that runs the node daemon in role, in the foreground.
func daemonVerb(use, short, role string) *cobra.Command {
	c := &cobra.Command{
		Use:   use,
		Short: short,
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runDaemon(cmd, role)
		},
	}
	daemonFlags(c)
	return c
}

// findOrAdd returns root's subcommand named like c, adding c if absent, so
// verb groups can be filled from several files.
func findOrAdd(root *cobra.Command, c *cobra.Command) *cobra.Command {
	for _, sub := range root.Commands() {
		if sub.Name() == c.Name() {
			return sub
		}
	}
	root.AddCommand(c)
	return c
}

func daemonFlags(c *cobra.Command) {
	c.Flags().String("config", configs.DefaultPath, "node config; used if it exists, flags override its keys")
	c.Flags().String("name", "", "node name (node.name; default: the host name)")
	c.Flags().String("advertise-address", "", "underlay IP other nodes reach this one on (node.advertise_address)")
	c.Flags().String("state-dir", "", "keys, certificates, cached map and store (node.state_dir)")
	c.Flags().Int("listen-port", 0, "WireGuard UDP port (wireguard.listen_port)")
	c.Flags().String("mode", "", "tun, netstack or auto (wireguard.mode)")
}

func joinFlags(c *cobra.Command) {
	c.Flags().String("manager", "", "a manager's API address `HOST[:PORT]`, port 7946 if not given (cluster.manager; remembered)")
	c.Flags().String("token", "", "join `TOKEN` printed by warren cluster join-token (cluster.token; needed only for the first start; moved from the command line to $"+tokenEnv+" at once, or use --token-file)")
	c.Flags().String("token-file", "", "`FILE` holding the join token (cluster.token_file; needed only for the first start)")
}

// runDaemon builds the config from the file (if any) and the flags, and
// runs the node in the foreground until SIGINT/SIGTERM.
func runDaemon(cmd *cobra.Command, role string) error {
	cfg, err := daemonConfig(cmd, role)
	if err != nil {
		return &exitError{code: 2, err: err}
	}
	force, _ := cmd.Flags().GetBool("force-new-cluster")
	restore, _ := cmd.Flags().GetString("restore")
	if restore != "" && !force {
		return &exitError{code: 2, err: errors.New("--restore needs --force-new-cluster: restoring replaces the cluster's managers with this one")}
	}
	if force {
		if err := appliance.ForceNewCluster(cfg, restore, slog.Default()); err != nil {
			return err
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	return appliance.Run(ctx, cfg)
}

func daemonConfig(cmd *cobra.Command, role string) (*configs.Loaded, error) {
	path, _ := cmd.Flags().GetString("config")
	cfg, err := configs.Load(path)
	if errors.Is(err, fs.ErrNotExist) && !cmd.Flags().Changed("config") {
		cfg, err = configs.Parse(nil, "flags")
	}
	if err != nil {
		return nil, err
	}
	verb := cmd.CommandPath()
	if on, _ := cmd.Flags().GetBool("enable-mtls"); on {
		fmt.Fprintln(cmd.ErrOrStderr(), "warren: --enable-mtls: mTLS is always on in Warren (every API call after join, and Raft between managers); the flag changes nothing")
	}
	// --force-new-cluster restarts an existing manager (one that joined
	// keeps its cluster.manager and identity): it creates nothing.
	force, _ := cmd.Flags().GetBool("force-new-cluster")
	creating := cmd.Name() == "init" && !force
	if creating && cfg.Cluster.Manager != "" {
		return nil, configs.Errors{{File: cfg.File, Line: cfg.Line("cluster.manager"), Key: "cluster.manager",
			Msg: fmt.Sprintf("`%s` creates a new cluster, but the config says to join %s: remove cluster.manager (or run `warren worker start` / `warren manager join`)", verb, cfg.Cluster.Manager)}}
	}
	cfg.Node.Role = role
	cfg.SetByFlag("node.role")
	if creating {
		cfg.SetByFlag("cluster.manager") // none: what a joined node remembered must not apply
	}
	if role == configs.RoleManager && cmd.Name() == "join" {
		cfg.JoinVerb = verb // never the creator of a new cluster
	}
	var errs configs.Errors
	set := func(flag, key string, apply func(string) error) {
		f := cmd.Flags().Lookup(flag)
		if f == nil || !f.Changed {
			return
		}
		if err := apply(f.Value.String()); err != nil {
			errs = append(errs, &configs.Error{File: "flags", Key: "--" + flag, Msg: err.Error()})
			return
		}
		cfg.SetByFlag(key)
	}
	str := func(dst *string) func(string) error { return func(v string) error { *dst = v; return nil } }
	set("name", "node.name", str(&cfg.Node.Name))
	set("advertise-address", "node.advertise_address", str(&cfg.Node.AdvertiseAddress))
	set("state-dir", "node.state_dir", str(&cfg.Node.StateDir))
	set("mode", "wireguard.mode", str(&cfg.WireGuard.Mode))
	set("manager", "cluster.manager", str(&cfg.Cluster.Manager))
	// A flag's token replaces the TOML's token or token file, and vice versa.
	set("token", "cluster.token", func(v string) error { cfg.Cluster.Token, cfg.Cluster.TokenFile = v, ""; return nil })
	set("token-file", "cluster.token_file", func(v string) error { cfg.Cluster.Token, cfg.Cluster.TokenFile = "", v; return nil })
	// --token, moved out of the command line by hideTokenFromCmdline (or
	// the variable set by the operator).
	if tok := os.Getenv(tokenEnv); tok != "" && cmd.Flags().Lookup("token") != nil && !cmd.Flags().Changed("token") && !cmd.Flags().Changed("token-file") {
		cfg.Cluster.Token, cfg.Cluster.TokenFile = tok, ""
		cfg.SetByFlag("cluster.token")
	}
	set("api-listen", "cluster.api_listen", str(&cfg.Cluster.APIListen))
	set("listen-port", "wireguard.listen_port", func(v string) error { _, err := fmt.Sscan(v, &cfg.WireGuard.ListenPort); return err })
	set("wireguard-subnet", "wireguard.subnet", func(v string) error { return cfg.WireGuard.Subnet.Set(v) })
	set("container-subnet", "network.container_subnet", func(v string) error { return cfg.Network.ContainerSubnet.Set(v) })
	set("vip-subnet", "network.vip_subnet", func(v string) error { return cfg.Network.VIPSubnet.Set(v) })
	if len(errs) > 0 {
		return nil, errs
	}
	if err := cfg.Finish(); err != nil {
		return nil, err
	}
	// A node set up in one role is not silently turned into another.
	if s := cfg.Setup; s != nil {
		was := setupCommand(s)
		switch {
		case s.Role != role:
			return nil, fmt.Errorf("this node was set up as a %s (%s; remembered in %s): to give it another role, remove it from the cluster (`warren node rm %s` on a manager), stop warren-appliance, delete %s and run `%s` again",
				s.Role, was, filepath.Join(cfg.Node.StateDir, configs.SetupFile), s.Name, cfg.Node.StateDir, verb)
		case creating && len(s.Managers) > 0:
			return nil, fmt.Errorf("this node joined the cluster of %s as a manager; `%s` would create another cluster: run `warren-appliance --config %s` (or `warren manager join`) to resume it", s.Managers[0], verb, configs.DefaultPath)
		}
	}
	return cfg, nil
}

// setupCommand names the command that set a node up, for messages.
func setupCommand(s *configs.Setup) string {
	switch {
	case s.Role == configs.RoleWorker:
		return "by `warren worker start`"
	case len(s.Managers) > 0:
		return "by `warren manager join`"
	default:
		return "by `warren cluster init`"
	}
}

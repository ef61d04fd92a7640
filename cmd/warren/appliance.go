package main

// The daemon's own command line, unchanged from when warren-appliance was a
// binary of its own: one TOML file, and --check, --version,
// --show-public-key, --cleanup.

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/warren-appliance/warren/appliance"
	"github.com/warren-appliance/warren/configs"
	"github.com/warren-appliance/warren/internal/buildinfo"
)

// Exit codes: 2 is "your config is wrong", 1 everything else.
const (
	exitFailure   = 1
	exitBadConfig = 2
)

// applianceMain is `warren-appliance [flags]`: the same binary as warren,
// called by that name (the packages install a symlink), as the systemd
// unit runs it.
func applianceMain(args []string) int {
	fs := flag.NewFlagSet("warren-appliance", flag.ContinueOnError)
	configPath := fs.String("config", configs.DefaultPath, "path of the node's warren.toml")
	check := fs.Bool("check", false, "load and validate the config, print the effective config, and exit (0 valid, 2 invalid)")
	version := fs.Bool("version", false, "print version, commit, Go version and platform, and exit")
	showKey := fs.Bool("show-public-key", false, "print this node's WireGuard public key (creating the private key on first use) and exit")
	cleanup := fs.Bool("cleanup", false, "remove everything the appliance created on this host (interface, rules, task networks) and exit")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: warren-appliance [--config PATH] [--check | --version | --show-public-key | --cleanup]\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return exitBadConfig
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(fs.Output(), "warren-appliance takes no arguments, got %q (did you mean --%s?)\n", fs.Args(), strings.TrimLeft(fs.Arg(0), "-"))
		fs.Usage()
		return exitBadConfig
	}
	if *version {
		fmt.Print(buildinfo.String("warren-appliance"))
		return 0
	}

	cfg, err := loadConfig(*configPath)
	if err != nil && (*showKey || *cleanup) && configs.IsNotSetUp(err) {
		// Neither needs to know the role: the key and what to remove are
		// the same for every role.
		err = nil
	}
	if err != nil && *cleanup {
		// Removal must work even with a broken or missing config (package
		// purge): fall back to the default names of what to remove.
		fmt.Fprintf(os.Stderr, "%v\nwarren-appliance: cleaning up with the default interface, bridge and namespace names\n", err)
		cfg, err = defaultConfig()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return exitBadConfig
	}
	switch {
	case *check:
		// What start checks before anything else, against this host.
		if err := appliance.CheckHost(cfg); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return exitBadConfig
		}
		out, err := cfg.Encode()
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return exitFailure
		}
		if keys := cfg.Remembered(); len(keys) > 0 {
			fmt.Printf("# From %s (what the setup command remembered): %s\n", filepath.Join(cfg.Node.StateDir, configs.SetupFile), strings.Join(keys, ", "))
		}
		os.Stdout.Write(out)
		return 0
	case *showKey:
		key, err := appliance.PublicKey(cfg)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return exitFailure
		}
		fmt.Println(key)
		return 0
	case *cleanup:
		if err := appliance.Cleanup(context.Background(), cfg); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return exitFailure
		}
		return 0
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := appliance.Run(ctx, cfg); err != nil {
		fmt.Fprintln(os.Stderr, "warren-appliance:", err)
		return exitFailure
	}
	return 0
}

// loadConfig loads and validates path, with every error on its own line.
func loadConfig(path string) (*configs.Loaded, error) {
	cfg, err := configs.Load(path)
	if err != nil {
		return nil, err
	}
	return cfg, cfg.Finish()
}

// defaultConfig is the reference defaults, as a standalone node so that no
// cluster keys are required.
func defaultConfig() (*configs.Loaded, error) {
	cfg, err := configs.Parse([]byte("[node]\nname = \"cleanup\"\nrole = \"standalone\"\n[wireguard]\naddress = \"10.0.0.1/24\"\n"), "defaults")
	if err != nil {
		return nil, err
	}
	return cfg, cfg.Finish()
}

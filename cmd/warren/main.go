// Command warren is the operator's CLI: it starts a node in the foreground
// (cluster init, manager join, worker start) and talks to the local daemon
// over /run/warren/warren.sock for everything else. Called as
// warren-appliance (a symlink to it), it is the daemon run from one TOML
// file, as the systemd unit starts it: one binary on the SD card, not two.
package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/warren-appliance/warren/internal/buildinfo"
	"github.com/warren-appliance/warren/orchestrate/tasklog"

	"github.com/warren-appliance/warren/cluster/api"
)

const defaultSocket = api.SocketPath

// exitError carries a specific exit code (2: bad input) through cobra.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

// applianceName is the name that makes this binary the daemon.
const applianceName = "warren-appliance"

func main() {
	switch filepath.Base(os.Args[0]) {
	case applianceName:
		os.Exit(applianceMain(os.Args[1:]))
	case tasklog.LoggerName: // containerd's shim runs it beside a task
		tasklog.Main(os.Args[1:])
	}
	hideTokenFromCmdline()
	root := newRoot()
	if err := root.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "warren:", err)
		var ee *exitError
		if errors.As(err, &ee) {
			os.Exit(ee.code)
		}
		os.Exit(1)
	}
}

func newRoot() *cobra.Command {
	root := &cobra.Command{
		Use:           "warren",
		Short:         "Operate a Warren cluster: nodes, services, the WireGuard mesh",
		Version:       buildinfo.Version,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetVersionTemplate(buildinfo.String("warren"))
	root.PersistentFlags().String("socket", "", "where this CLI connects to the daemon (default $WARREN_SOCKET, else "+defaultSocket+", where the daemon always listens)")
	addDaemonCommands(root)
	addClusterCommands(root)
	addNodeCommands(root)
	addServiceCommands(root)
	addPeerCommands(root)
	addVolumeCommands(root)
	addNetworkCommands(root)
	addPolicyCommands(root)
	addObjectCommands(root)
	addRegistryCommands(root)
	strictGroups(root)
	return root
}

// strictGroups makes the top level and every verb group (warren cluster,
// warren service, ...) refuse an unknown verb with exit 2 (bad input),
// instead of printing its help and exiting 0 or cobra's error with exit 1:
// a script's typo must not pass silently.
func strictGroups(c *cobra.Command) {
	for _, sub := range c.Commands() {
		strictGroups(sub)
	}
	if !c.HasSubCommands() || c.Runnable() {
		return
	}
	if c.SuggestionsMinimumDistance <= 0 {
		c.SuggestionsMinimumDistance = 2 // cobra's default at the top level
	}
	c.Args = cobra.ArbitraryArgs
	c.RunE = func(cmd *cobra.Command, args []string) error {
		if len(args) == 0 {
			return cmd.Help()
		}
		msg := fmt.Sprintf("unknown command %q for %q", args[0], cmd.CommandPath())
		if s := cmd.SuggestionsFor(args[0]); len(s) > 0 {
			msg += "\n\nDid you mean this?\n\t" + strings.Join(s, "\n\t")
		}
		return &exitError{code: 2, err: fmt.Errorf("%s\n\nRun '%s --help' for usage", msg, cmd.CommandPath())}
	}
}

// socketPath is where the CLI finds the daemon: --socket, $WARREN_SOCKET,
// or the default.
func socketPath(cmd *cobra.Command) string {
	if s, _ := cmd.Flags().GetString("socket"); s != "" {
		return s
	}
	if s := os.Getenv("WARREN_SOCKET"); s != "" {
		return s
	}
	return defaultSocket
}

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

	"github.com/spf13/cobra"

	"github.com/warren-appliance/warren/internal/buildinfo"

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
	if filepath.Base(os.Args[0]) == applianceName {
		os.Exit(applianceMain(os.Args[1:]))
	}
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
	root.PersistentFlags().String("socket", "", "path of the local daemon's socket (default "+defaultSocket+", or $WARREN_SOCKET)")
	addDaemonCommands(root)
	addClusterCommands(root)
	addNodeCommands(root)
	addServiceCommands(root)
	addNetworkCommands(root)
	addPolicyCommands(root)
	return root
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

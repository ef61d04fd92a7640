package main

import (
	"fmt"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/warren-appliance/warren/cluster/api"
	"github.com/warren-appliance/warren/cluster/client"
)

// newServiceLogsCmd is `warren service logs NAME|TASK`.
func newServiceLogsCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "logs NAME|TASK [--follow] [--tail N] [--since DURATION] [--timestamps]",
		Short: "Show the output of a service's tasks (or one task), gathered from their nodes",
		Example: "  warren service logs mqtt --tail 50\n" +
			"  warren service logs web-2 --follow --since 10m --timestamps",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			f := cmd.Flags()
			follow, _ := f.GetBool("follow")
			stamps, _ := f.GetBool("timestamps")
			tailArg, _ := f.GetString("tail")
			since, _ := f.GetDuration("since")
			opts := client.LogOptions{Follow: follow, Tail: -1, Since: since}
			if tailArg != "all" {
				n, err := fmt.Sscanf(tailArg, "%d", &opts.Tail)
				if n != 1 || err != nil || opts.Tail < 0 {
					return &exitError{code: 2, err: fmt.Errorf("--tail %q: want a number of lines or all", tailArg)}
				}
			}
			if since < 0 {
				return &exitError{code: 2, err: fmt.Errorf("--since must not be negative")}
			}
			ctx, stop := signal.NotifyContext(cmdContext(cmd), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			out, errOut := cmd.OutOrStdout(), cmd.ErrOrStderr()
			err := apiClient(cmd).Logs(ctx, args[0], opts, func(e api.LogEntry) error {
				if e.Error != "" {
					fmt.Fprintf(errOut, "warren: %s: %s\n", e.Node, e.Error)
					return nil
				}
				prefix := e.Task + "@" + e.Node
				if stamps {
					prefix = e.Time.Format(time.RFC3339Nano) + " " + prefix
				}
				_, err := fmt.Fprintf(out, "%s | %s\n", prefix, e.Text)
				return err
			})
			if ctx.Err() != nil {
				return nil // interrupted while following
			}
			return err
		},
	}
	f := cmd.Flags()
	f.BoolP("follow", "f", false, "keep printing new lines")
	f.String("tail", "all", "print only the last N lines of each task")
	f.Duration("since", 0, "print only lines newer than this, e.g. 10m")
	f.BoolP("timestamps", "t", false, "print each line's time")
	return cmd
}

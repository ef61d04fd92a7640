package main

import (
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/warren-appliance/warren/internal/dockerflags"
)

// addVolumeCommands adds `warren volume ls|rm`.
func addVolumeCommands(root *cobra.Command) {
	volCmd := findOrAdd(root, &cobra.Command{Use: "volume", Short: "List and remove named volumes (local to each node)"})
	lsCmd := &cobra.Command{
		Use:     "ls",
		Aliases: []string{"list"},
		Short:   "List every node's named volumes, their size and the services using them",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			vols, unreachable, err := apiClient(cmd).Volumes(cmdContext(cmd))
			if err != nil {
				return err
			}
			if unreachable != "" {
				fmt.Fprintf(cmd.ErrOrStderr(), "warning: not listed: %s\n", unreachable)
			}
			if asJSON(cmd) {
				return printJSON(cmd.OutOrStdout(), vols)
			}
			tw := newTable(cmd.OutOrStdout())
			fmt.Fprintln(tw, "NODE\tVOLUME\tSIZE\tSERVICES")
			for _, v := range vols {
				svcs := strings.Join(v.Services, ",")
				if svcs == "" {
					svcs = "-"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", v.Node, v.Name, dockerflags.FormatBytes(v.SizeBytes), svcs)
			}
			return tw.Flush()
		},
	}
	addJSONFlag(lsCmd)
	rmCmd := &cobra.Command{
		Use:     "rm NAME [--node NODE]",
		Aliases: []string{"remove"},
		Short:   "Remove a volume and its data (on every node, or on --node); refused while a service uses it",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			node, _ := cmd.Flags().GetString("node")
			res, err := apiClient(cmd).RemoveVolume(cmdContext(cmd), args[0], node)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s removed from %s\n", res.Name, strings.Join(res.Nodes, ", "))
			return nil
		},
	}
	rmCmd.Flags().String("node", "", "remove it on this node only")
	volCmd.AddCommand(lsCmd, rmCmd)
}

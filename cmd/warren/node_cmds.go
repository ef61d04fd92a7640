package main

import (
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"
)

// addNodeCommands adds `warren node ls|inspect|rm`.
func addNodeCommands(root *cobra.Command) {
	nodeCmd := findOrAdd(root, &cobra.Command{Use: "node", Short: "List, inspect and remove cluster nodes"})

	voterCmd := func(use, short string, voter bool) *cobra.Command {
		return &cobra.Command{
			Use:   use + " NODE...",
			Short: short,
			Args:  cobra.MinimumNArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				c := apiClient(cmd)
				for _, ref := range args {
					if err := c.SetManagerVoter(cmdContext(cmd), ref, voter); err != nil {
						return err
					}
					fmt.Fprintln(cmd.OutOrStdout(), ref)
				}
				return nil
			},
		}
	}
	promoteCmd := voterCmd("promote", "Make managers vote in Raft (managers that joined vote once caught up)", true)
	demoteCmd := voterCmd("demote", "Make managers stop voting in Raft (they keep a copy of the state and can be promoted again)", false)

	nodeCmd.AddCommand(newNodeLsCmd(), newNodeInspectCmd(), newNodeRmCmd(), newNodeDrainCmd(), newNodeActivateCmd(), promoteCmd, demoteCmd)
}

func newNodeLsCmd() *cobra.Command {
	lsCmd := &cobra.Command{
		Use:     "ls",
		Aliases: []string{"list"},
		Short:   "List the cluster's nodes",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			nodes, err := apiClient(cmd).Nodes(cmdContext(cmd))
			if err != nil {
				return err
			}
			if asJSON(cmd) {
				return printJSON(cmd.OutOrStdout(), nodes)
			}
			// LAST HANDSHAKE is this manager's WireGuard handshake with each
			// node, from its own tunnel report.
			handshakes := map[string]time.Time{}
			for _, n := range nodes {
				if n.Self {
					for _, p := range n.Tunnel {
						handshakes[p.PublicKey] = p.LastHandshake
					}
				}
			}
			tw := newTable(cmd.OutOrStdout())
			fmt.Fprintln(tw, "NAME\tROLE\tSTATUS\tMANAGER STATUS\tOVERLAY IP\tCONTAINER BLOCK\tENDPOINT\tTASKS\tLAST SEEN\tLAST HANDSHAKE")
			for _, n := range nodes {
				name, hs := n.Name, "never"
				if n.Self {
					name, hs = name+" *", "-"
				} else if t := handshakes[n.PublicKey]; !t.IsZero() {
					hs = ago(t)
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\n", name, n.Role, statusText(n.Status, n.Availability), n.ManagerStatus, n.OverlayIP,
					n.ContainerBlock, n.Endpoint, n.Tasks, ago(n.LastSeen), hs)
			}
			return tw.Flush()
		},
	}
	addJSONFlag(lsCmd)
	return lsCmd
}

func newNodeInspectCmd() *cobra.Command {
	inspectCmd := &cobra.Command{
		Use:   "inspect NODE",
		Short: "Show one node (by name or ID)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			n, err := apiClient(cmd).Node(cmdContext(cmd), args[0])
			if err != nil {
				return err
			}
			if asJSON(cmd) {
				return printJSON(cmd.OutOrStdout(), n)
			}
			tw := newTable(cmd.OutOrStdout())
			row := func(k string, v any) { fmt.Fprintf(tw, "%s:\t%v\n", k, v) }
			row("Name", n.Name)
			row("ID", n.ID)
			row("Role", n.Role)
			row("Status", n.Status)
			row("Availability", n.Availability)
			if n.ManagerStatus != "" {
				row("Manager status", n.ManagerStatus)
			}
			row("Overlay IP", n.OverlayIP)
			row("Container block", n.ContainerBlock)
			row("Endpoint", n.Endpoint)
			row("Public key", n.PublicKey)
			row("Labels", formatLabels(n.Labels))
			row("Tasks", n.Tasks)
			row("Joined", n.JoinedAt.Format(time.RFC3339))
			row("Last seen", ago(n.LastSeen))
			if off := time.Duration(n.ClockOffsetSeconds * float64(time.Second)); off.Abs() >= time.Second {
				row("Clock offset", fmt.Sprintf("%+v (the node's clock minus the manager's)", off.Round(time.Second)))
			}
			if !n.CertExpires.IsZero() {
				row("Certificate expires", n.CertExpires.UTC().Format(time.RFC3339))
			}
			for _, p := range n.Tunnel {
				hs := "never"
				if !p.LastHandshake.IsZero() {
					hs = ago(p.LastHandshake)
				}
				row("Peer "+p.PublicKey, fmt.Sprintf("handshake %s, rx %d B, tx %d B", hs, p.RxBytes, p.TxBytes))
			}
			return tw.Flush()
		},
	}
	addJSONFlag(inspectCmd)
	return inspectCmd
}

func newNodeRmCmd() *cobra.Command {
	rmCmd := &cobra.Command{
		Use:     "rm NODE...",
		Aliases: []string{"remove"},
		Short:   "Remove nodes from the cluster (their tasks move, their certificates stop working)",
		Args:    cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			force, _ := cmd.Flags().GetBool("force")
			c := apiClient(cmd)
			for _, ref := range args {
				if err := c.RemoveNode(cmdContext(cmd), ref, force); err != nil {
					return err
				}
				fmt.Fprintln(cmd.OutOrStdout(), ref)
			}
			return nil
		},
	}
	rmCmd.Flags().BoolP("force", "f", false, "remove the node even if it is still reporting (ready); a dead manager also leaves the Raft configuration")
	return rmCmd
}

func newNodeDrainCmd() *cobra.Command {
	drainCmd := &cobra.Command{
		Use:   "drain NODE...",
		Short: "Move a node's tasks to other nodes and place nothing new there (before retiring it)",
		Long: "Drain nodes: their tasks are shut down and placed on other nodes, and the scheduler places nothing\n" +
			"new on them. Once `warren service ps` shows no task on a node, it can be stopped and removed\n" +
			"(`warren node rm`). `warren node activate` undoes a drain.",
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error { return setAvailability(cmd, args, true) },
	}
	return drainCmd
}

func newNodeActivateCmd() *cobra.Command {
	activateCmd := &cobra.Command{
		Use:   "activate NODE...",
		Short: "Let the scheduler place tasks on a drained node again",
		Args:  cobra.MinimumNArgs(1),
		RunE:  func(cmd *cobra.Command, args []string) error { return setAvailability(cmd, args, false) },
	}
	return activateCmd
}

func setAvailability(cmd *cobra.Command, refs []string, drain bool) error {
	c := apiClient(cmd)
	for _, ref := range refs {
		v, err := c.SetNodeAvailability(cmdContext(cmd), ref, drain)
		if err != nil {
			return err
		}
		fmt.Fprintf(cmd.OutOrStdout(), "%s: %s\n", v.Name, v.Availability)
	}
	return nil
}

// statusText is a node's status, with its availability when drained.
func statusText(status, availability string) string {
	if availability == "drain" {
		return status + ", drained"
	}
	return status
}

func formatLabels(labels map[string]string) string {
	if len(labels) == 0 {
		return "-"
	}
	keys := make([]string, 0, len(labels))
	for k := range labels {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = k + "=" + labels[k]
	}
	return strings.Join(parts, ",")
}

package main

import (
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/warren-appliance/warren/cluster/api"
)

// addPeerCommands adds `warren cluster peer token|add|ls|rm` and
// `warren service export|unexport` (federation).
func addPeerCommands(root *cobra.Command) {
	clusterCmd := findOrAdd(root, &cobra.Command{Use: "cluster", Short: "Create a cluster and manage its join tokens"})
	peerCmd := &cobra.Command{Use: "peer", Short: "Peer this cluster with other clusters (federation)"}
	clusterCmd.AddCommand(peerCmd)

	peerCmd.AddCommand(newPeerTokenCmd(), newPeerAddCmd(), newPeerLsCmd(), newPeerRmCmd())

	svcCmd := findOrAdd(root, &cobra.Command{Use: "service", Short: "Create, scale, update and remove services"})
	for _, exported := range []bool{true, false} {
		verb, short := "export", "Let peered clusters reach the service (they resolve NAME.<this cluster's name there>)"
		if !exported {
			verb, short = "unexport", "Stop exporting the service to peered clusters"
		}
		svcCmd.AddCommand(&cobra.Command{
			Use:   verb + " NAME",
			Short: short,
			Args:  cobra.ExactArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				if err := apiClient(cmd).SetExported(cmdContext(cmd), args[0], exported); err != nil {
					return err
				}
				fmt.Fprintln(cmd.OutOrStdout(), args[0])
				return nil
			},
		})
	}
}

func newPeerTokenCmd() *cobra.Command {
	tokenCmd := &cobra.Command{
		Use:   "token",
		Short: "Print this cluster's peer token (run on the cluster another one peers with)",
		Long: "Print the token another cluster's operator gives to `warren cluster peer add`. It carries this\n" +
			"cluster's manager addresses, its address ranges and the hash of its CA, which the other cluster\n" +
			"pins before it sends anything.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			tok, err := apiClient(cmd).PeerToken(cmdContext(cmd))
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if q, _ := cmd.Flags().GetBool("quiet"); q {
				fmt.Fprintln(out, tok.Token)
				return nil
			}
			fmt.Fprintf(out, "To peer another cluster with this one, run on one of its managers:\n\n    warren cluster peer add NAME --token %s\n\n", tok.Token)
			return nil
		},
	}
	tokenCmd.Flags().BoolP("quiet", "q", false, "print the token alone on one line")
	return tokenCmd
}

func newPeerAddCmd() *cobra.Command {
	addCmd := &cobra.Command{
		Use:   "add NAME --token TOKEN",
		Short: "Peer with the cluster whose peer token is given; NAME is how this cluster names it in DNS",
		Example: "  warren cluster peer add eu --token WRNP-1-... --as us\n" +
			"  # tasks here then resolve web.eu.warren.local; the peer's resolve SERVICE.us.warren.local",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			tok, _ := cmd.Flags().GetString("token")
			if strings.TrimSpace(tok) == "" {
				return &exitError{code: 2, err: fmt.Errorf("--token is required: print one on the other cluster's manager with `warren cluster peer token`")}
			}
			as, _ := cmd.Flags().GetString("as")
			v, err := apiClient(cmd).AddPeer(cmdContext(cmd), api.PeerAdd{Name: args[0], Token: tok, As: as})
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Peered with %s (cluster %s); it recorded this cluster too.\n", v.Name, v.ClusterID)
			return nil
		},
	}
	addCmd.Flags().String("token", "", "the other cluster's peer token (`warren cluster peer token` there)")
	addCmd.Flags().String("as", "", "how the peer names this cluster (default cluster-<8 hex of this cluster's ID>)")
	return addCmd
}

func newPeerLsCmd() *cobra.Command {
	lsCmd := &cobra.Command{
		Use:     "ls",
		Aliases: []string{"list"},
		Short:   "List the peers: link status, exported services, last contact",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			peers, err := apiClient(cmd).Peers(cmdContext(cmd))
			if err != nil {
				return err
			}
			if asJSON(cmd) {
				return printJSON(cmd.OutOrStdout(), peers)
			}
			tw := newTable(cmd.OutOrStdout())
			fmt.Fprintln(tw, "NAME\tSTATUS\tEXPORTS\tLAST CONTACT\tRANGES\tREASON")
			for _, p := range peers {
				var ex []string
				for _, e := range p.Exports {
					ex = append(ex, fmt.Sprintf("%s(%d)", e.Service, len(e.Endpoints)))
				}
				last := "-"
				if p.LastContact != nil {
					last = ago(*p.LastContact)
				}
				exs := strings.Join(ex, ",")
				if exs == "" {
					exs = "-"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s %s %s\t%s\n", p.Name, p.Status, exs, last,
					p.Network.WireGuardSubnet, p.Network.ContainerSubnet, p.Network.VIPSubnet, p.Reason)
			}
			return tw.Flush()
		},
	}
	addJSONFlag(lsCmd)
	return lsCmd
}

func newPeerRmCmd() *cobra.Command {
	rmCmd := &cobra.Command{
		Use:     "rm NAME",
		Aliases: []string{"remove"},
		Short:   "Unpeer: both clusters forget each other and the imported names",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := apiClient(cmd).RemovePeer(cmdContext(cmd), args[0]); err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), args[0])
			return nil
		},
	}
	return rmCmd
}

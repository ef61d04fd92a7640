package main

import (
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	"github.com/warren-appliance/warren/cluster/api"
)

// addCACommands adds `warren cluster ca rotate|status`.
func addCACommands(clusterCmd *cobra.Command) {
	caCmd := &cobra.Command{Use: "ca", Short: "Show or rotate the cluster's certificate authority"}

	rotateCmd := &cobra.Command{
		Use:   "rotate",
		Short: "Replace the cluster CA; every node renews onto the new one, then the old one is retired",
		Long: "Start a CA rotation: a new CA signs every join and renewal from now on, every node takes the new CA\n" +
			"from its map stream and renews its certificate at once, and the join secrets are replaced. The old CA\n" +
			"stays trusted until every member holds a certificate of the new one, or until --grace ends; then it is\n" +
			"retired (its certificates are refused by every manager and node, its key leaves the cluster state).\n" +
			"--finish retires it now: nodes that have not renewed must join again with a new token.\n" +
			"Join tokens pin the CA managers serve: the old one until the rotation finishes, the new one after;\n" +
			"print them again with `warren cluster join-token` once it has.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var req api.CARotateRequest
			req.Force, _ = cmd.Flags().GetBool("force")
			req.Finish, _ = cmd.Flags().GetBool("finish")
			req.Grace, _ = cmd.Flags().GetDuration("grace")
			if req.Finish && (req.Force || cmd.Flags().Changed("grace")) {
				return &exitError{code: 2, err: fmt.Errorf("--finish ends the rotation in progress: it takes neither --force nor --grace")}
			}
			if req.Grace < 0 {
				return &exitError{code: 2, err: fmt.Errorf("--grace %s: want a positive duration such as 24h", req.Grace)}
			}
			st, err := apiClient(cmd).RotateCA(cmdContext(cmd), req)
			if err != nil {
				return err
			}
			if asJSON(cmd) {
				return printJSON(cmd.OutOrStdout(), st)
			}
			out := cmd.OutOrStdout()
			if req.Finish {
				fmt.Fprintf(out, "Retired the previous CA: its certificates are refused from now on.\n\n")
			} else {
				fmt.Fprintf(out, "Started a CA rotation: every node renews with the new CA now; the join secrets were replaced.\n"+
					"The previous CA stays trusted until every node holds a new certificate, or until %s.\n\n", st.GraceUntil.Local().Format(time.RFC3339))
			}
			printCAStatus(out, st)
			return nil
		},
	}
	rotateCmd.Flags().Bool("force", false, "start a new rotation even though one is in progress")
	rotateCmd.Flags().Bool("finish", false, "retire the previous CA now (nodes that have not renewed must join again)")
	rotateCmd.Flags().Duration("grace", 0, "how long nodes have to renew before the previous CA is retired anyway (default 24h)")
	addJSONFlag(rotateCmd)

	statusCmd := &cobra.Command{
		Use:   "status",
		Short: "Show the CA, the one being retired and which CA signed each node's certificate",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			st, err := apiClient(cmd).CAStatus(cmdContext(cmd))
			if err != nil {
				return err
			}
			if asJSON(cmd) {
				return printJSON(cmd.OutOrStdout(), st)
			}
			printCAStatus(cmd.OutOrStdout(), st)
			return nil
		},
	}
	addJSONFlag(statusCmd)

	caCmd.AddCommand(rotateCmd, statusCmd)
	clusterCmd.AddCommand(caCmd)
}

func printCAStatus(w io.Writer, st api.CAStatus) {
	tw := newTable(w)
	row := func(k string, v any) { fmt.Fprintf(tw, "%s:\t%v\n", k, v) }
	row("CA", st.Fingerprint)
	row("Subject", st.Subject)
	row("Expires", st.Expires.Local().Format(time.RFC3339))
	row("Rotations", st.Generation)
	if st.Rotating {
		row("Previous CA (in grace)", st.Previous)
		row("Grace until", st.GraceUntil.Local().Format(time.RFC3339))
	}
	tw.Flush()
	fmt.Fprintln(w)
	tw = newTable(w)
	fmt.Fprintln(tw, "NODE\tROLE\tNEW CA")
	for _, n := range st.Nodes {
		yes := "no"
		if n.NewCA {
			yes = "yes"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\n", n.Name, n.Role, yes)
	}
	tw.Flush()
}

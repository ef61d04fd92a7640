package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/warren-appliance/warren/cluster"
	"github.com/warren-appliance/warren/cluster/client"
	"github.com/warren-appliance/warren/internal/atomicfile"
)

// addClusterCommands adds the operator verbs of `warren cluster` (the
// daemon verb `cluster init` lives in daemon_cmds.go).
func addClusterCommands(root *cobra.Command) {
	clusterCmd := findOrAdd(root, &cobra.Command{Use: "cluster", Short: "Create a cluster and manage its join tokens"})

	clusterCmd.AddCommand(newClusterTokenCmd(), newClusterInfoCmd(), newClusterBackupCmd())
	addCACommands(clusterCmd)
}

func newClusterTokenCmd() *cobra.Command {
	tokenCmd := &cobra.Command{
		Use:   "join-token worker|manager",
		Short: "Print (or rotate) the token another node joins with",
		Long: "Print the join token for a worker or a manager. The token pins this cluster's CA by hash, so a\n" +
			"joining node verifies the manager before it sends anything. --rotate replaces the secret: the old\n" +
			"token stops working at once (nodes that already joined are not affected).",
		Args:      cobra.ExactArgs(1),
		ValidArgs: []string{"worker", "manager"},
		RunE: func(cmd *cobra.Command, args []string) error {
			role := args[0]
			if role != "worker" && role != "manager" {
				return &exitError{code: 2, err: fmt.Errorf("unknown role %q: want worker or manager", role)}
			}
			rotate, _ := cmd.Flags().GetBool("rotate")
			quiet, _ := cmd.Flags().GetBool("quiet")
			tok, err := apiClient(cmd).JoinToken(cmdContext(cmd), role, rotate)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if quiet {
				fmt.Fprintln(out, tok.Token)
				return nil
			}
			if rotate {
				fmt.Fprintf(out, "Rotated the %s join token: the previous one no longer works.\n\n", role)
			}
			verb := "worker start"
			if role == "manager" {
				verb = "manager join"
			}
			fmt.Fprintf(out, "To add a %s to this cluster, run on the new node:\n\n    warren %s --manager %s --token %s\n\n",
				role, verb, tok.Manager, tok.Token)
			return nil
		},
	}
	tokenCmd.Flags().Bool("rotate", false, "replace the secret; the old token stops working")
	tokenCmd.Flags().BoolP("quiet", "q", false, "print the token alone on one line")
	return tokenCmd
}

func newClusterInfoCmd() *cobra.Command {
	infoCmd := &cobra.Command{
		Use:   "info",
		Short: "Show the cluster's identity, address ranges and size",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			info, err := apiClient(cmd).ClusterInfo(cmdContext(cmd))
			if err != nil {
				return err
			}
			if asJSON(cmd) {
				return printJSON(cmd.OutOrStdout(), info)
			}
			tw := newTable(cmd.OutOrStdout())
			row := func(k string, v any) { fmt.Fprintf(tw, "%s:\t%v\n", k, v) }
			row("Cluster ID", info.ID)
			row("Manager", info.Manager)
			row("Join address", info.JoinAddress)
			row("CA sha256", info.CAHash)
			row("CA expires", info.CAExpires.Format(time.DateOnly))
			row("Created", info.CreatedAt.Format(time.RFC3339))
			row("Map version", info.MapVersion)
			leader := info.Leader
			if leader == "" {
				leader = "none (no quorum?)"
			}
			row("Raft leader", leader)
			row("Raft term", info.RaftTerm)
			row("Raft last index", fmt.Sprintf("%d (applied here: %d, this manager is %s)", info.RaftLastIndex, info.RaftApplied, info.RaftState))
			row("Voters", strings.Join(info.Voters, ", "))
			if len(info.NonVoters) > 0 {
				row("Non-voters", strings.Join(info.NonVoters, ", "))
			}
			row("Nodes", fmt.Sprintf("%d (%d ready)", info.Nodes, info.NodesReady))
			row("Services", info.Services)
			row("Tasks", info.Tasks)
			row("WireGuard subnet", info.WireGuardSubnet)
			row("Container subnet", fmt.Sprintf("%s (blocks of /%d)", info.ContainerSubnet, info.ContainerBlock))
			row("VIP subnet", info.VIPSubnet)
			row("DNS domain", info.Domain)
			return tw.Flush()
		},
	}
	addJSONFlag(infoCmd)
	return infoCmd
}

func newClusterBackupCmd() *cobra.Command {
	backupCmd := &cobra.Command{
		Use:   "backup FILE",
		Short: "Write a consistent copy of the cluster state to FILE (0600; it holds the CA key)",
		Long: "Write the cluster state (nodes, addresses, services, VIPs, the CA and its key, join secrets) as this\n" +
			"manager holds it, while it runs. Keep FILE as secret as the state dir. Restore it on a fresh board with\n" +
			"`warren cluster init --force-new-cluster --restore FILE` (add --passphrase-file for an encrypted one).\n" +
			"Secrets and configs in FILE are sealed with the cluster's data key, written to FILE.key:\n" +
			"a restore needs FILE.key beside FILE.",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var pass []byte
			if p, _ := cmd.Flags().GetString("passphrase-file"); p != "" {
				var err error
				if pass, err = cluster.ReadPassphraseFile(p); err != nil {
					return &exitError{code: 2, err: err}
				}
			}
			var buf bytes.Buffer
			if err := apiClient(cmd).Backup(cmdContext(cmd), &buf); err != nil {
				return err
			}
			out, what := buf.Bytes(), "with a SHA-256 of its content"
			if pass != nil {
				var err error
				if out, err = cluster.EncryptBackup(out, pass); err != nil {
					return err
				}
				what = "encrypted and authenticated with the passphrase (age)"
			}
			if err := atomicfile.Write(args[0], out, 0o600); err != nil {
				return fmt.Errorf("write backup: %w", err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Backup written to %s (%d bytes, mode 0600, %s).\n", args[0], len(out), what)
			key, err := apiClient(cmd).DataKey(cmdContext(cmd))
			switch {
			case client.IsNotFound(err):
				// A cluster from before sealing whose leader has no key
				// yet: nothing in the backup is sealed.
			case err != nil:
				return fmt.Errorf("read the data key of secrets and configs: %w", err)
			default:
				keyFile := args[0] + cluster.BackupKeySuffix
				if err := atomicfile.Write(keyFile, key, 0o600); err != nil {
					return fmt.Errorf("write the data key: %w", err)
				}
				fmt.Fprintf(cmd.OutOrStdout(), "Data key written to %s (mode 0600): FILE's CA key, join secrets, secrets and configs are sealed with it and a restore needs it; keep it apart from FILE.\n", keyFile)
			}
			return nil
		},
	}
	backupCmd.Flags().String("passphrase-file", "", "encrypt the backup with the passphrase on the first line of this file (age, scrypt); restore with --passphrase-file too")
	return backupCmd
}

// Helpers shared by the operator verbs in this file, node_cmds.go and
// service_cmds.go.

func apiClient(cmd *cobra.Command) *client.Client { return client.New(socketPath(cmd)) }

func cmdContext(cmd *cobra.Command) context.Context {
	if ctx := cmd.Context(); ctx != nil {
		return ctx
	}
	return context.Background()
}

func addJSONFlag(c *cobra.Command) {
	c.Flags().Bool("json", false, "print JSON instead of a table")
}

func asJSON(cmd *cobra.Command) bool {
	v, _ := cmd.Flags().GetBool("json")
	return v
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func newTable(w io.Writer) *tabwriter.Writer {
	if w == nil {
		w = os.Stdout
	}
	return tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
}

// ago renders how long ago t was, or "-" for never.
func ago(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	d := time.Since(t)
	switch {
	case d < 0:
		return "just now"
	case d < time.Minute:
		return fmt.Sprintf("%ds ago", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm ago", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh ago", int(d.Hours()))
	default:
		return fmt.Sprintf("%dd ago", int(d.Hours()/24))
	}
}

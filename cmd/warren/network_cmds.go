package main

import (
	"fmt"
	"strings"

	"github.com/spf13/cobra"
)

// addNetworkCommands adds `warren network`: what this node's tunnel, service
// rules and resolver look like, asked of the local daemon.
func addNetworkCommands(root *cobra.Command) {
	netCmd := findOrAdd(root, &cobra.Command{Use: "network", Short: "Inspect this node's mesh, VIPs and DNS"})

	status := &cobra.Command{
		Use:   "status",
		Short: "This node's WireGuard interface and each peer's health",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			st, err := apiClient(cmd).NetworkStatus(cmdContext(cmd))
			if err != nil {
				return err
			}
			if asJSON(cmd) {
				return printJSON(cmd.OutOrStdout(), st)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "interface: %s (%s)\npublic key: %s\n\n", st.Interface, st.Mode, st.PublicKey)
			tw := newTable(cmd.OutOrStdout())
			fmt.Fprintln(tw, "PEER\tENDPOINT\tALLOWED IPS\tHANDSHAKE\tRX\tTX\tHEALTHY")
			for _, p := range st.Peers {
				age := "never"
				if p.HandshakeAge != "" {
					age = p.HandshakeAge + " ago"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%d\t%v\n", p.PublicKey, orDash(p.Endpoint), strings.Join(p.AllowedIPs, ","), age, p.RxBytes, p.TxBytes, p.Healthy)
			}
			return tw.Flush()
		},
	}
	addJSONFlag(status)

	vips := &cobra.Command{
		Use:   "vips [--render]",
		Short: "Each service VIP with its endpoints; --render prints the iptables rules this node applies",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			render, _ := cmd.Flags().GetBool("render")
			v, err := apiClient(cmd).NetworkVIPs(cmdContext(cmd), render)
			if err != nil {
				return err
			}
			if asJSON(cmd) {
				return printJSON(cmd.OutOrStdout(), v)
			}
			if render {
				fmt.Fprint(cmd.OutOrStdout(), v.Rules)
				return nil
			}
			fmt.Fprint(cmd.OutOrStdout(), v.Summary)
			return nil
		},
	}
	vips.Flags().Bool("render", false, "print the iptables-restore text instead (a dry run: nothing is applied)")
	addJSONFlag(vips)

	dnsCmd := &cobra.Command{
		Use:   "dns NAME",
		Short: "Resolve NAME through this node's resolver, as a task would (short names in the cluster domain)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			v, err := apiClient(cmd).NetworkDNS(cmdContext(cmd), args[0])
			if err != nil {
				return err
			}
			if asJSON(cmd) {
				return printJSON(cmd.OutOrStdout(), v)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s (via %s):\n", v.Name, v.Server)
			for _, a := range v.Addresses {
				fmt.Fprintf(cmd.OutOrStdout(), "  %s\n", a)
			}
			return nil
		},
	}
	addJSONFlag(dnsCmd)
	netCmd.AddCommand(status, vips, dnsCmd)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

package main

import (
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/warren-appliance/warren/cluster/meshmatrix"
)

// addNetworkCommands adds `warren network`: what this node's tunnel, service
// rules and resolver look like, asked of the local daemon.
func addNetworkCommands(root *cobra.Command) {
	netCmd := findOrAdd(root, &cobra.Command{Use: "network", Short: "Inspect this node's mesh, VIPs and DNS"})

	status := &cobra.Command{
		Use:   "status",
		Short: "This node's WireGuard interface and each peer's health; --cluster: every node's view of every other (on a manager)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if all, _ := cmd.Flags().GetBool("cluster"); all {
				return clusterMeshStatus(cmd)
			}
			st, err := apiClient(cmd).NetworkStatus(cmdContext(cmd))
			if err != nil {
				return err
			}
			if asJSON(cmd) {
				return printJSON(cmd.OutOrStdout(), st)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "interface: %s (%s)\npublic key: %s\n\n", st.Interface, st.Mode, st.PublicKey)
			tw := newTable(cmd.OutOrStdout())
			fmt.Fprintln(tw, "PEER\tNODE\tPATH\tENDPOINT\tALLOWED IPS\tHANDSHAKE\tRX\tTX\tHEALTHY")
			for _, p := range st.Peers {
				age := "never"
				if p.HandshakeAge != "" {
					age = p.HandshakeAge + " ago"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%d\t%d\t%v\n", p.PublicKey, orDash(p.Node), pathText(p.Path, p.Relay, p.RelayTransport), orDash(p.Endpoint), strings.Join(p.AllowedIPs, ","), age, p.RxBytes, p.TxBytes, p.Healthy)
			}
			return tw.Flush()
		},
	}
	status.Flags().Bool("cluster", false, "the N×N matrix of every node's handshake age with every other, from the nodes' reports, and the gateway links to peered clusters (on a manager)")
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

// clusterMeshStatus prints the mesh matrix: row FROM, column TO, each cell
// the age of FROM's last handshake with TO; "!" marks unhealthy links,
// which are then listed with the reason.
func clusterMeshStatus(cmd *cobra.Command) error {
	nodes, err := apiClient(cmd).Nodes(cmdContext(cmd))
	if err != nil {
		return err
	}
	peers, err := apiClient(cmd).Peers(cmdContext(cmd))
	if err != nil {
		return err
	}
	now := time.Now()
	m := meshmatrix.Build(nodes, now)
	gws := meshmatrix.Gateways(nodes, peers, now)
	if asJSON(cmd) {
		return printJSON(cmd.OutOrStdout(), struct {
			meshmatrix.Matrix
			Gateways []meshmatrix.GatewayLink `json:"gateways"`
		}{m, gws})
	}
	defer printGateways(cmd, gws)
	cells := map[[2]string]string{}
	var bad []meshmatrix.Link
	for _, l := range m.Links {
		cells[[2]string{l.From, l.To}] = meshmatrix.Cell(l)
		if !l.Healthy {
			bad = append(bad, l)
		}
	}
	out := cmd.OutOrStdout()
	tw := newTable(out)
	fmt.Fprintln(tw, "FROM \\ TO\t"+strings.Join(m.Nodes, "\t"))
	for _, from := range m.Nodes {
		row := []string{from}
		for _, to := range m.Nodes {
			c := "-"
			if from != to {
				c = cells[[2]string{from, to}]
			}
			row = append(row, c)
		}
		fmt.Fprintln(tw, strings.Join(row, "\t"))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(out, "\ncells: time since FROM's last handshake with TO; \"(relay)\": FROM reaches TO through a relay; \"!\": unhealthy (no handshake within %s, either node down, or no report)\n", meshmatrix.HealthyWithin)
	if len(bad) == 0 {
		fmt.Fprintf(out, "all %d links healthy\n", len(m.Links))
		return nil
	}
	fmt.Fprintf(out, "%d of %d links unhealthy:\n", len(bad), len(m.Links))
	for _, l := range bad {
		fmt.Fprintf(out, "  %s -> %s: %s\n", l.From, l.To, l.Problem)
	}
	return nil
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// pathText is a peer's PATH column: "direct", "relay via NODE (udp|tls)", "relay"
// when the relay node is not known, "-" without an endpoint.
func pathText(path, relay, transport string) string {
	if transport != "" {
		transport = " (" + transport + ")"
	}
	switch {
	case path == "relay" && relay != "":
		return "relay via " + relay + transport
	case path == "":
		return "-"
	}
	return path
}

// printGateways lists the gateway links to peered clusters (federation).
func printGateways(cmd *cobra.Command, gws []meshmatrix.GatewayLink) {
	if len(gws) == 0 {
		return
	}
	out := cmd.OutOrStdout()
	fmt.Fprintln(out, "\ngateway links to peered clusters:")
	tw := newTable(out)
	fmt.Fprintln(tw, "PEER\tGATEWAY\tPEER GATEWAY\tPEER LINK\tHANDSHAKE\tRX\tTX\tPROBLEM")
	for _, g := range gws {
		hs := "never"
		if g.HandshakeAgeSeconds != nil {
			hs = (time.Duration(*g.HandshakeAgeSeconds) * time.Second).String() + " ago"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%d\t%s\n", g.Peer, orDash(g.From), orDash(g.Endpoint), g.Status, hs, g.RxBytes, g.TxBytes, orDash(g.Problem))
	}
	_ = tw.Flush()
}

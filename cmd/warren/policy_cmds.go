package main

import (
	"fmt"
	"io"
	"os"
	"slices"
	"strings"

	"github.com/spf13/cobra"

	"github.com/warren-appliance/warren/cluster/api"
	"github.com/warren-appliance/warren/cluster/clustermap"
	"github.com/warren-appliance/warren/netpolicy"
)

// addPolicyCommands adds `warren policy apply|ls|inspect|rm`.
func addPolicyCommands(root *cobra.Command) {
	polCmd := findOrAdd(root, &cobra.Command{Use: "policy", Short: "Apply, list and remove network policies (Kubernetes NetworkPolicy YAML)"})

	applyCmd := &cobra.Command{
		Use:   "apply -f FILE",
		Short: "Create or replace the NetworkPolicy documents of a YAML file (all or none)",
		Example: "  warren policy apply -f api-policy.yaml\n" +
			"  cat policies.yaml | warren policy apply -f -",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			file, _ := cmd.Flags().GetString("filename")
			var data []byte
			var err error
			if file == "-" {
				data, err = io.ReadAll(cmd.InOrStdin())
				file = "(stdin)"
			} else {
				data, err = os.ReadFile(file)
			}
			if err != nil {
				return &exitError{code: 2, err: err}
			}
			policies, err := netpolicy.Parse(file, data)
			if err != nil {
				return &exitError{code: 2, err: err}
			}
			out, err := apiClient(cmd).ApplyPolicies(cmdContext(cmd), policies)
			if err != nil {
				return err
			}
			if asJSON(cmd) {
				return printJSON(cmd.OutOrStdout(), out)
			}
			for _, a := range out {
				fmt.Fprintf(cmd.OutOrStdout(), "networkpolicy/%s %s\n", a.Name, a.Result)
			}
			return nil
		},
	}
	applyCmd.Flags().StringP("filename", "f", "", "YAML file with one or more NetworkPolicy documents (- for stdin)")
	_ = applyCmd.MarkFlagRequired("filename")
	addJSONFlag(applyCmd)

	lsCmd := &cobra.Command{
		Use:     "ls",
		Aliases: []string{"list"},
		Short:   "List network policies and how many tasks they select",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			list, err := apiClient(cmd).Policies(cmdContext(cmd))
			if err != nil {
				return err
			}
			if asJSON(cmd) {
				return printJSON(cmd.OutOrStdout(), list)
			}
			tw := newTable(cmd.OutOrStdout())
			fmt.Fprintln(tw, "NAME\tPOD-SELECTOR\tTYPES\tINGRESS\tEGRESS\tSELECTED")
			for _, p := range list {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%d\n", p.Name, netpolicy.SelectorString(p.PodSelector),
					strings.Join(p.PolicyTypes, ","), len(p.Ingress), len(p.Egress), len(p.Selected))
			}
			return tw.Flush()
		},
	}
	addJSONFlag(lsCmd)

	inspectCmd := &cobra.Command{
		Use:   "inspect NAME",
		Short: "Show a network policy and the tasks each of its selectors matches now",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			p, err := apiClient(cmd).Policy(cmdContext(cmd), args[0])
			if err != nil {
				return err
			}
			if asJSON(cmd) {
				return printJSON(cmd.OutOrStdout(), p)
			}
			printPolicy(cmd.OutOrStdout(), p)
			return nil
		},
	}
	addJSONFlag(inspectCmd)

	rmCmd := &cobra.Command{
		Use:     "rm NAME...",
		Aliases: []string{"remove"},
		Short:   "Remove network policies",
		Args:    cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c := apiClient(cmd)
			for _, name := range args {
				if err := c.RemovePolicy(cmdContext(cmd), name); err != nil {
					return err
				}
				fmt.Fprintln(cmd.OutOrStdout(), name)
			}
			return nil
		},
	}

	polCmd.AddCommand(applyCmd, lsCmd, inspectCmd, rmCmd)
}

func printPolicy(w io.Writer, p api.PolicyView) {
	fmt.Fprintf(w, "Name:          %s\n", p.Name)
	fmt.Fprintf(w, "Pod selector:  %s\n", netpolicy.SelectorString(p.PodSelector))
	fmt.Fprintf(w, "Policy types:  %s\n", strings.Join(p.PolicyTypes, ", "))
	fmt.Fprintf(w, "Updated:       %s\n", p.UpdatedAt.Format("2006-01-02T15:04:05Z07:00"))
	fmt.Fprintf(w, "Selected tasks (%d):\n", len(p.Selected))
	printPolicyTasks(w, p.Selected)
	for _, d := range []struct {
		dir   string
		rules []clustermap.PolicyRule
	}{{"Ingress", p.Ingress}, {"Egress", p.Egress}} {
		dir, rules := d.dir, d.rules
		if !slices.Contains(p.PolicyTypes, dir) {
			continue
		}
		if len(rules) == 0 {
			fmt.Fprintf(w, "%s: none allowed (every new %s connection of the selected tasks is dropped)\n", dir, strings.ToLower(dir))
			continue
		}
		fmt.Fprintf(w, "%s rules:\n", dir)
		field := "from"
		if dir == "Egress" {
			field = "to"
		}
		for i, r := range rules {
			fmt.Fprintf(w, "  [%d] %s: ", i, field)
			if len(r.Peers) == 0 {
				fmt.Fprint(w, "anywhere")
			}
			var peers []string
			for _, pe := range r.Peers {
				switch {
				case pe.PodSelector != nil:
					peers = append(peers, "tasks "+netpolicy.SelectorString(*pe.PodSelector))
				case pe.IPBlock != nil:
					s := pe.IPBlock.CIDR
					if len(pe.IPBlock.Except) > 0 {
						s += " except " + strings.Join(pe.IPBlock.Except, ",")
					}
					peers = append(peers, s)
				}
			}
			fmt.Fprint(w, strings.Join(peers, "; "))
			fmt.Fprintf(w, "  ports: %s\n", formatPolicyPorts(r.Ports))
		}
	}
	for _, pv := range p.Peers {
		if pv.Selector == "" {
			continue
		}
		fmt.Fprintf(w, "Peer %s (%s) matches %d task(s):\n", pv.Rule, pv.Selector, len(pv.Tasks))
		printPolicyTasks(w, pv.Tasks)
	}
}

func printPolicyTasks(w io.Writer, tasks []api.PolicyTask) {
	for _, t := range tasks {
		fmt.Fprintf(w, "  %-20s %-15s %-12s %s\n", t.Name, t.IP, t.Node, t.State)
	}
}

func formatPolicyPorts(ports []clustermap.PolicyPort) string {
	if len(ports) == 0 {
		return "all"
	}
	var out []string
	for _, p := range ports {
		switch {
		case p.Port == 0:
			out = append(out, "all/"+p.Protocol)
		case p.EndPort != 0:
			out = append(out, fmt.Sprintf("%d-%d/%s", p.Port, p.EndPort, p.Protocol))
		default:
			out = append(out, fmt.Sprintf("%d/%s", p.Port, p.Protocol))
		}
	}
	return strings.Join(out, ",")
}

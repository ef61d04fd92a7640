package main

import (
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/warren-appliance/warren/cluster/api"
)

// addRegistryCommands adds `warren registry add|login|logout|ls|rm`.
func addRegistryCommands(root *cobra.Command) {
	parent := &cobra.Command{Use: "registry", Short: "Private image registries: TLS, credentials and mirrors, cluster-wide"}

	parent.AddCommand(newRegistryAddCmd(), newRegistryLoginCmd(), newRegistryLogoutCmd(), newRegistryLsCmd(), newRegistryRmCmd())
	root.AddCommand(parent)
}

func newRegistryAddCmd() *cobra.Command {
	addCmd := &cobra.Command{
		Use:   "add HOST[:PORT]",
		Short: "Add a registry (or change an added one's settings): its CA, plain HTTP, or the registry it mirrors",
		Example: "  warren registry add registry.example.com:5000 --ca-file ./ca.pem\n" +
			"  warren registry add mirror.local:5000 --mirror-of docker.io",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			spec := api.RegistrySpec{Host: args[0]}
			spec.Insecure, _ = cmd.Flags().GetBool("insecure")
			spec.MirrorOf, _ = cmd.Flags().GetString("mirror-of")
			if file, _ := cmd.Flags().GetString("ca-file"); file != "" {
				data, err := os.ReadFile(file)
				if err != nil {
					return &exitError{code: 2, err: fmt.Errorf("--ca-file: %w", err)}
				}
				spec.CA = string(data)
			}
			v, err := apiClient(cmd).AddRegistry(cmdContext(cmd), spec)
			if err != nil {
				return err
			}
			if asJSON(cmd) {
				return printJSON(cmd.OutOrStdout(), v)
			}
			fmt.Fprintln(cmd.OutOrStdout(), v.Host)
			return nil
		},
	}
	addCmd.Flags().String("ca-file", "", "PEM file of the CA that signs the registry's certificate")
	addCmd.Flags().Bool("insecure", false, "speak plain HTTP to the registry")
	addCmd.Flags().String("mirror-of", "", "this registry mirrors REGISTRY (e.g. docker.io): nodes try it first")
	addJSONFlag(addCmd)
	return addCmd
}

func newRegistryLoginCmd() *cobra.Command {
	loginCmd := &cobra.Command{
		Use:     "login HOST[:PORT] --username USER --password-stdin",
		Short:   "Log the cluster in to a registry: the credentials are checked against it, then kept encrypted",
		Example: "  printf %s \"$PASS\" | warren registry login registry.example.com:5000 --username ci --password-stdin",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			user, _ := cmd.Flags().GetString("username")
			if user == "" {
				return &exitError{code: 2, err: fmt.Errorf("give --username USER")}
			}
			if stdin, _ := cmd.Flags().GetBool("password-stdin"); !stdin {
				return &exitError{code: 2, err: fmt.Errorf("give the password on stdin with --password-stdin (never as an argument: it would show in ps and the shell's history)")}
			}
			data, err := io.ReadAll(io.LimitReader(cmd.InOrStdin(), api.MaxObjectSize))
			if err != nil {
				return fmt.Errorf("read the password: %w", err)
			}
			pass := strings.TrimRight(string(data), "\r\n") // as docker login
			if pass == "" {
				return &exitError{code: 2, err: fmt.Errorf("the password on stdin is empty")}
			}
			v, err := apiClient(cmd).LoginRegistry(cmdContext(cmd), args[0], api.RegistryLogin{Username: user, Password: pass})
			if err != nil {
				return err
			}
			if asJSON(cmd) {
				return printJSON(cmd.OutOrStdout(), v)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Login Succeeded: %s as %s\n", v.Host, v.Username)
			return nil
		},
	}
	loginCmd.Flags().StringP("username", "u", "", "user name")
	loginCmd.Flags().Bool("password-stdin", false, "read the password from stdin")
	addJSONFlag(loginCmd)
	return loginCmd
}

func newRegistryLogoutCmd() *cobra.Command {
	logoutCmd := &cobra.Command{
		Use:   "logout HOST[:PORT]",
		Short: "Forget a registry's credentials",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			v, err := apiClient(cmd).LogoutRegistry(cmdContext(cmd), args[0])
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Removed login credentials for %s\n", v.Host)
			return nil
		},
	}
	return logoutCmd
}

func newRegistryLsCmd() *cobra.Command {
	lsCmd := &cobra.Command{
		Use:     "ls",
		Aliases: []string{"list"},
		Short:   "List the added registries (never a password)",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			list, err := apiClient(cmd).Registries(cmdContext(cmd))
			if err != nil {
				return err
			}
			if asJSON(cmd) {
				return printJSON(cmd.OutOrStdout(), list)
			}
			tw := newTable(cmd.OutOrStdout())
			fmt.Fprintln(tw, "HOST\tMIRROR OF\tTLS\tUSERNAME")
			for _, r := range list {
				tlsMode := "system CAs"
				switch {
				case r.Insecure:
					tlsMode = "plain HTTP"
				case r.CA:
					tlsMode = "own CA"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", r.Host, orDash(r.MirrorOf), tlsMode, orDash(r.Username))
			}
			return tw.Flush()
		},
	}
	addJSONFlag(lsCmd)
	return lsCmd
}

func newRegistryRmCmd() *cobra.Command {
	rmCmd := &cobra.Command{
		Use:     "rm HOST[:PORT]...",
		Aliases: []string{"remove"},
		Short:   "Remove registries and their credentials",
		Args:    cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c := apiClient(cmd)
			for _, h := range args {
				if err := c.RemoveRegistry(cmdContext(cmd), h); err != nil {
					return err
				}
				fmt.Fprintln(cmd.OutOrStdout(), h)
			}
			return nil
		},
	}
	return rmCmd
}

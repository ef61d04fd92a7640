package main

import (
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/warren-appliance/warren/cluster/api"
)

// addObjectCommands adds `warren secret|config create|ls|inspect|update|rm`.
func addObjectCommands(root *cobra.Command) {
	for _, kind := range []string{api.KindSecret, api.KindConfig} {
		addObjectKind(root, kind)
	}
}

// readValue reads a value from FILE or, for "-", stdin, bounded to the
// largest value the manager takes (plus one byte, to say it is too big).
func readValue(cmd *cobra.Command, kind, file string) ([]byte, error) {
	if file == "" {
		return nil, &exitError{code: 2, err: fmt.Errorf("give the %s's value with -f FILE, or -f - to read it from stdin", kind)}
	}
	var r io.Reader
	if file == "-" {
		r = cmd.InOrStdin()
	} else {
		f, err := os.Open(file)
		if err != nil {
			return nil, &exitError{code: 2, err: fmt.Errorf("-f: %w", err)}
		}
		defer f.Close()
		r = f
	}
	data, err := io.ReadAll(io.LimitReader(r, api.MaxObjectSize+1))
	if err != nil {
		return nil, fmt.Errorf("read the %s's value: %w", kind, err)
	}
	if len(data) > api.MaxObjectSize {
		return nil, &exitError{code: 2, err: fmt.Errorf("the %s's value is larger than 500 KiB (%d bytes): secrets and configs are for small values", kind, api.MaxObjectSize)}
	}
	return data, nil
}

// valueFile is -f FILE, or Docker's positional FILE after the name.
func valueFile(cmd *cobra.Command, args []string) (string, error) {
	file, _ := cmd.Flags().GetString("file")
	if len(args) == 2 {
		if file != "" {
			return "", &exitError{code: 2, err: fmt.Errorf("give the value once: -f %s or %s, not both", file, args[1])}
		}
		file = args[1]
	}
	return file, nil
}

func addObjectKind(root *cobra.Command, kind string) {
	parent := findOrAdd(root, &cobra.Command{Use: kind, Short: "Create, list, inspect, update and remove " + kind + "s"})

	parent.AddCommand(newObjectCreateCmd(kind), newObjectLsCmd(kind), newObjectInspectCmd(kind), newObjectUpdateCmd(kind), newObjectRmCmd(kind))
}

func newObjectCreateCmd(kind string) *cobra.Command {
	createCmd := &cobra.Command{
		Use:   "create NAME -f FILE|- (or: create NAME FILE|-)",
		Short: "Create a " + kind + " from a file or stdin (at most 500 KiB)",
		Example: fmt.Sprintf("  printf %%s \"$PASS\" | warren %s create dbpass -f -\n  warren %s create app.conf -f ./app.conf --label env=prod",
			kind, kind),
		Args: cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			file, err := valueFile(cmd, args)
			if err != nil {
				return err
			}
			data, err := readValue(cmd, kind, file)
			if err != nil {
				return err
			}
			labelArgs, _ := cmd.Flags().GetStringArray("label")
			labels, err := parseLabels(labelArgs)
			if err != nil {
				return err
			}
			federated, _ := cmd.Flags().GetBool("federated")
			v, err := apiClient(cmd).CreateObject(cmdContext(cmd), kind, api.ObjectSpec{Name: args[0], Labels: labels, Data: data, Federated: federated})
			if err != nil {
				return err
			}
			if asJSON(cmd) {
				return printJSON(cmd.OutOrStdout(), v)
			}
			fmt.Fprintln(cmd.OutOrStdout(), v.ID)
			return nil
		},
	}
	createCmd.Flags().StringP("file", "f", "", "read the value from FILE (- for stdin)")
	createCmd.Flags().Bool("federated", false, "replicate it to every peered cluster (`warren cluster peer`), where services read it by the same name")
	createCmd.Flags().StringArrayP("label", "l", nil, "label KEY=VALUE (repeatable)")
	addJSONFlag(createCmd)
	return createCmd
}

func newObjectUpdateCmd(kind string) *cobra.Command {
	updateCmd := &cobra.Command{
		Use:   "update NAME -f FILE|- (or: update NAME FILE|-)",
		Short: "Give a " + kind + " a new value: running tasks see it in place within seconds",
		Args:  cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			file, err := valueFile(cmd, args)
			if err != nil {
				return err
			}
			data, err := readValue(cmd, kind, file)
			if err != nil {
				return err
			}
			v, err := apiClient(cmd).UpdateObject(cmdContext(cmd), kind, args[0], data)
			if err != nil {
				return err
			}
			if asJSON(cmd) {
				return printJSON(cmd.OutOrStdout(), v)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s: version %d\n", v.Name, v.Version)
			return nil
		},
	}
	updateCmd.Flags().StringP("file", "f", "", "read the new value from FILE (- for stdin)")
	addJSONFlag(updateCmd)
	return updateCmd
}

func newObjectLsCmd(kind string) *cobra.Command {
	lsCmd := &cobra.Command{
		Use:     "ls",
		Aliases: []string{"list"},
		Short:   "List " + kind + "s (never their values)",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			list, err := apiClient(cmd).Objects(cmdContext(cmd), kind)
			if err != nil {
				return err
			}
			if asJSON(cmd) {
				return printJSON(cmd.OutOrStdout(), list)
			}
			tw := newTable(cmd.OutOrStdout())
			fmt.Fprintln(tw, "ID\tNAME\tVERSION\tCREATED\tUPDATED\tSERVICES")
			for _, o := range list {
				fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\n", o.ID, o.Name, o.Version, o.CreatedAt.Format(time.RFC3339),
					o.UpdatedAt.Format(time.RFC3339), orDash(strings.Join(o.Services, ",")))
			}
			return tw.Flush()
		},
	}
	addJSONFlag(lsCmd)
	return lsCmd
}

func newObjectInspectCmd(kind string) *cobra.Command {
	inspectCmd := &cobra.Command{
		Use:   "inspect NAME",
		Short: "Show a " + kind + "'s metadata: ID, version, dates, labels, the services using it",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			pretty := false
			if kind == api.KindConfig {
				pretty, _ = cmd.Flags().GetBool("pretty")
			}
			o, err := apiClient(cmd).Object(cmdContext(cmd), kind, args[0], pretty)
			if err != nil {
				return err
			}
			if asJSON(cmd) {
				return printJSON(cmd.OutOrStdout(), o)
			}
			tw := newTable(cmd.OutOrStdout())
			row := func(k string, v any) { fmt.Fprintf(tw, "%s:\t%v\n", k, v) }
			row("ID", o.ID)
			row("Name", o.Name)
			row("Version", o.Version)
			row("Size", fmt.Sprintf("%d bytes", o.Size))
			row("Labels", formatLabels(o.Labels))
			row("Created", o.CreatedAt.Format(time.RFC3339))
			row("Updated", o.UpdatedAt.Format(time.RFC3339))
			row("Services", orDash(strings.Join(o.Services, ", ")))
			if err := tw.Flush(); err != nil {
				return err
			}
			if o.Data != nil {
				fmt.Fprintf(cmd.OutOrStdout(), "Data:\n%s", *o.Data)
				if !strings.HasSuffix(*o.Data, "\n") {
					fmt.Fprintln(cmd.OutOrStdout())
				}
			}
			return nil
		},
	}
	if kind == api.KindConfig {
		inspectCmd.Flags().Bool("pretty", false, "human-readable, with the config's value")
	} else {
		// Docker's flag; the output is human-readable anyway and never
		// holds the secret's value.
		inspectCmd.Flags().Bool("pretty", false, "human-readable (the default; a secret's value is never shown)")
	}
	addJSONFlag(inspectCmd)
	return inspectCmd
}

func newObjectRmCmd(kind string) *cobra.Command {
	rmCmd := &cobra.Command{
		Use:     "rm NAME...",
		Aliases: []string{"remove"},
		Short:   "Remove " + kind + "s (refused while a service uses one)",
		Args:    cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c := apiClient(cmd)
			for _, name := range args {
				if err := c.RemoveObject(cmdContext(cmd), kind, name); err != nil {
					return err
				}
				fmt.Fprintln(cmd.OutOrStdout(), name)
			}
			return nil
		},
	}
	return rmCmd
}

package main

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/warren-appliance/warren/cluster/api"
	"github.com/warren-appliance/warren/cluster/client"
	"github.com/warren-appliance/warren/cluster/clustermap"
	"github.com/warren-appliance/warren/internal/dockerflags"
	"github.com/warren-appliance/warren/netpolicy"
)

// addServiceCommands adds `warren service create|ls|inspect|scale|update|rm|ps`.
func addServiceCommands(root *cobra.Command) {
	svcCmd := findOrAdd(root, &cobra.Command{Use: "service", Short: "Create, scale, update and remove services"})

	svcCmd.AddCommand(newServiceCreateCmd(), newServiceLsCmd(), newServiceInspectCmd(), newServicePsCmd(), newServiceScaleCmd(), newServiceUpdateCmd(), newServiceRmCmd(), newServiceLogsCmd())
	addRollbackCommand(svcCmd)
}

// newServiceCreateCmd is `warren service create`.
func newServiceCreateCmd() *cobra.Command {
	createCmd := &cobra.Command{
		Use:   "create NAME --image IMAGE [flags] [-- COMMAND ARGS...]",
		Short: "Create a replicated service with a stable VIP",
		Example: "  warren service create web --image nginx:alpine --replicas 3 --publish 8080:80\n" +
			"  warren service create files --image busybox --env ZONE=a --constraint node.labels.zone==a -- httpd -f -p 80",
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var command []string
			if dash := cmd.ArgsLenAtDash(); dash >= 0 {
				if dash != 1 {
					return &exitError{code: 2, err: fmt.Errorf("want exactly one service name before --, got %q", args[:dash])}
				}
				command = args[1:]
			} else if len(args) > 1 {
				return &exitError{code: 2, err: fmt.Errorf("unexpected arguments %q: put the container's command after --, e.g. `-- httpd -f -p 80`", args[1:])}
			}
			f := cmd.Flags()
			image, _ := f.GetString("image")
			replicas, _ := f.GetInt("replicas")
			env, _ := f.GetStringArray("env")
			constraints, _ := f.GetStringArray("constraint")
			ports, _ := f.GetStringArray("publish")
			affinity, _ := f.GetBool("affinity")
			labelArgs, _ := f.GetStringArray("label")
			labels, err := parseLabels(labelArgs)
			if err != nil {
				return err
			}
			capAdd, capDrop, err := capabilityFlags(cmd)
			if err != nil {
				return err
			}
			envFiles, _ := f.GetStringArray("env-file")
			fileEnv, err := readEnvFiles(envFiles)
			if err != nil {
				return err
			}
			env = append(fileEnv, env...) // as Docker: --env wins over --env-file
			workload, err := workloadFromFlags(f)
			if err != nil {
				return err
			}
			spec := api.ServiceSpec{Name: args[0], Image: image, Replicas: &replicas, Env: env,
				Constraints: constraints, Ports: ports, Command: command, Affinity: affinity, Labels: labels,
				CapAdd: capAdd, CapDrop: capDrop, Workload: workload}
			if workload.IsGlobal() && !f.Changed("replicas") {
				spec.Replicas = nil
			}
			if err := secretFlags(cmd, &spec); err != nil {
				return err
			}
			if spec.HealthSpec, err = healthSpecFromFlags(cmd, api.HealthSpec{}); err != nil {
				return err
			}
			c := apiClient(cmd)
			v, err := c.CreateService(cmdContext(cmd), spec)
			if err != nil {
				return err
			}
			if !asJSON(cmd) {
				fmt.Fprintf(cmd.OutOrStdout(), "%s created: VIP %s, %d replica(s)\n", v.Name, v.VIP, v.Replicas)
				if v.Unplaced != "" && detached(cmd) {
					fmt.Fprintf(cmd.OutOrStdout(), "warning: %s\n", v.Unplaced)
				}
			}
			if !detached(cmd) {
				if v, err = waitService(cmd, v.Name); err != nil {
					return err
				}
			}
			if asJSON(cmd) {
				return printJSON(cmd.OutOrStdout(), v)
			}
			if !detached(cmd) {
				fmt.Fprintf(cmd.OutOrStdout(), "%s: %d/%d running\n", v.Name, v.Running, v.Replicas)
			}
			return nil
		},
	}
	cf := createCmd.Flags()
	cf.String("image", "", "container image, e.g. nginx:alpine (required)")
	cf.Int("replicas", 1, "number of tasks (0 or more)")
	cf.StringArrayP("env", "e", nil, "environment variable KEY=VALUE (repeatable)")
	cf.StringArray("constraint", nil, "placement rule: node.name==X, node.id!=X, node.labels.KEY==VALUE (repeatable)")
	cf.StringArrayP("publish", "p", nil, "publish a port on every node: HOST:CONTAINER[/udp] (repeatable)")
	cf.Bool("affinity", false, "send a client's connections to the same task (session affinity)")
	cf.StringArrayP("label", "l", nil, "label KEY=VALUE carried by every task; network policies select by labels (repeatable)")
	addCapabilityFlags(createCmd)
	addWorkloadFlags(cf)
	addSecretFlags(createCmd)
	addHealthFlags(createCmd)
	_ = createCmd.MarkFlagRequired("image")
	addJSONFlag(createCmd)
	addWaitFlags(createCmd)
	return createCmd
}

// newServiceLsCmd is `warren service ls`.
func newServiceLsCmd() *cobra.Command {
	lsCmd := &cobra.Command{
		Use:     "ls",
		Aliases: []string{"list"},
		Short:   "List services",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			list, err := apiClient(cmd).Services(cmdContext(cmd))
			if err != nil {
				return err
			}
			if asJSON(cmd) {
				return printJSON(cmd.OutOrStdout(), list)
			}
			tw := newTable(cmd.OutOrStdout())
			fmt.Fprintln(tw, "NAME\tIMAGE\tREPLICAS\tVIP\tPORTS")
			for _, s := range list {
				replicas := fmt.Sprintf("%d/%d", s.Running, s.Replicas)
				if s.Updating {
					replicas += " (updating)"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", s.Name, s.Image, replicas, s.VIP, formatPorts(s.Ports))
			}
			return tw.Flush()
		},
	}
	addJSONFlag(lsCmd)
	return lsCmd
}

// newServiceInspectCmd is `warren service inspect`.
func newServiceInspectCmd() *cobra.Command {
	inspectCmd := &cobra.Command{
		Use:   "inspect NAME",
		Short: "Show a service and its tasks",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := apiClient(cmd).Service(cmdContext(cmd), args[0])
			if err != nil {
				return err
			}
			if asJSON(cmd) {
				return printJSON(cmd.OutOrStdout(), s)
			}
			out := cmd.OutOrStdout()
			tw := newTable(out)
			row := func(k string, v any) { fmt.Fprintf(tw, "%s:\t%v\n", k, v) }
			row("Name", s.Name)
			row("Image", s.Image)
			row("Replicas", fmt.Sprintf("%d running of %d", s.Running, s.Replicas))
			row("VIP", s.VIP)
			row("Ports", formatPorts(s.Ports))
			if len(s.Env) > 0 {
				row("Env", strings.Join(s.Env, " "))
			}
			if len(s.Command) > 0 {
				row("Command", strings.Join(s.Command, " "))
			}
			if len(s.Constraints) > 0 {
				row("Constraints", strings.Join(s.Constraints, " && "))
			}
			row("Affinity", s.Affinity)
			if len(s.CapAdd) > 0 || len(s.CapDrop) > 0 {
				row("Capabilities", fmt.Sprintf("added %s, dropped %s", formatCaps(s.CapAdd), formatCaps(s.CapDrop)))
			}
			printHealthSettings(row, s)
			if s.IsGlobal() {
				row("Mode", "global (one task on every eligible node)")
			}
			row("Restart policy", formatRestart(s.Restart))
			limits, reservations := formatResources(s.Resources)
			row("Limits", limits)
			row("Reservations", reservations)
			for _, m := range s.Mounts {
				row("Mount", dockerflags.FormatMount(m))
			}
			if p := s.Process; p != nil {
				for _, kv := range [][2]string{{"User", p.User}, {"Workdir", p.Workdir}, {"Entrypoint", strings.Join(p.Entrypoint, " ")},
					{"Hostname", p.Hostname}, {"Stop signal", p.StopSignal}} {
					if kv[1] != "" {
						row(kv[0], kv[1])
					}
				}
				if p.StopGracePeriod > 0 {
					row("Stop grace period", p.StopGracePeriod.D())
				}
				if p.ReadOnly {
					row("Read-only root", true)
				}
			}
			row("Labels", formatLabels(s.Labels))
			if len(s.Secrets) > 0 || len(s.Configs) > 0 {
				row("Secrets", formatRefs(s.Secrets))
				row("Configs", formatRefs(s.Configs))
				row("Secret rotation", map[bool]string{true: "restart (one task at a time)", false: "in place"}[s.SecretRotation == "restart"])
			}
			row("Created", s.CreatedAt.Format(time.RFC3339))
			row("Updated", s.UpdatedAt.Format(time.RFC3339))
			if s.Updating {
				row("Rolling update", "in progress")
			}
			if err := tw.Flush(); err != nil {
				return err
			}
			fmt.Fprintln(out)
			return printTasks(out, s)
		},
	}
	addJSONFlag(inspectCmd)
	return inspectCmd
}

// newServicePsCmd is `warren service ps`.
func newServicePsCmd() *cobra.Command {
	psCmd := &cobra.Command{
		Use:   "ps NAME",
		Short: "List a service's tasks, with errors and why replicas are unplaced",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := apiClient(cmd).Service(cmdContext(cmd), args[0])
			if err != nil {
				return err
			}
			if asJSON(cmd) {
				return printJSON(cmd.OutOrStdout(), s.Tasks)
			}
			return printTasks(cmd.OutOrStdout(), s)
		},
	}
	addJSONFlag(psCmd)
	return psCmd
}

// newServiceScaleCmd is `warren service scale`.
func newServiceScaleCmd() *cobra.Command {
	scaleCmd := &cobra.Command{
		Use:   "scale NAME=REPLICAS...",
		Short: "Set the number of tasks of services",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			type change struct {
				name string
				n    int
			}
			var changes []change
			for _, a := range args {
				name, num, ok := strings.Cut(a, "=")
				n, err := strconv.Atoi(num)
				if !ok || name == "" || err != nil {
					return &exitError{code: 2, err: fmt.Errorf("%q: want NAME=REPLICAS, e.g. web=3", a)}
				}
				changes = append(changes, change{name, n})
			}
			c := apiClient(cmd)
			for _, ch := range changes {
				v, err := c.ScaleService(cmdContext(cmd), ch.name, ch.n)
				if err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "%s scaled to %d\n", v.Name, v.Replicas)
				if v.Unplaced != "" && detached(cmd) {
					fmt.Fprintf(cmd.OutOrStdout(), "warning: %s\n", v.Unplaced)
				}
			}
			if detached(cmd) {
				return nil
			}
			for _, ch := range changes {
				v, err := waitService(cmd, ch.name)
				if err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "%s: %d/%d running\n", v.Name, v.Running, v.Replicas)
			}
			return nil
		},
	}
	addWaitFlags(scaleCmd)
	return scaleCmd
}

// newServiceUpdateCmd is `warren service update`.
func newServiceUpdateCmd() *cobra.Command {
	updateCmd := &cobra.Command{
		Use:   "update NAME [--image IMAGE] [SPEC FLAGS] [--label-add KEY=VALUE]... [--label-rm KEY]... [--cap-add CAP]... [--cap-drop CAP]... [-- COMMAND ARGS...]",
		Short: "Change a service: image, env, mounts, limits, restart policy, ports, command... rolled out by health-gated rolling update; labels, capabilities",
		Example: "  warren service update web --image nginx:1.27\n" +
			"  warren service update db --env-add LOG_LEVEL=debug --limit-memory 256M --mount-add type=volume,source=db2,target=/backup\n" +
			"  warren service update api --label-add tier=backend --label-rm debug\n" +
			"  warren service update probe --cap-add NET_RAW",
		Args: cobra.MinimumNArgs(1),
		RunE: runServiceUpdate,
	}
	updateCmd.Flags().String("image", "", "new container image (rolling update)")
	updateCmd.Flags().StringArray("label-add", nil, "add or change a label KEY=VALUE (repeatable)")
	updateCmd.Flags().StringArray("label-rm", nil, "remove the label KEY (repeatable)")
	addCapabilityFlags(updateCmd)
	addUpdateFlags(updateCmd.Flags())
	addSecretUpdateFlags(updateCmd)
	addHealthFlags(updateCmd)
	addWaitFlags(updateCmd)
	return updateCmd
}

// serviceUpdate is what one `warren service update` asks to change.
type serviceUpdate struct {
	command          []string // the new command after --, nil to keep it
	image            string
	labelAdd         map[string]string
	labelRm          []string
	capAdd, capDrop  []string
	refs             api.ServiceRefsUpdate
	hasRefs          bool
	specChange       bool // a spec flag or a new command: a rolling update
	healthChange     bool // --health-*, --update-* or --rollback-*
	wantsSpecRollout bool // image, spec or health settings change
}

// runServiceUpdate applies the labels, capabilities and secret/config
// references first, then the spec change (a rolling update), and waits for
// the service unless --detach.
func runServiceUpdate(cmd *cobra.Command, args []string) error {
	command, err := updateCommandArg(cmd, args)
	if err != nil {
		return err
	}
	u, err := serviceUpdateFromFlags(cmd, command)
	if err != nil {
		return err
	}
	name := args[0]
	c := apiClient(cmd)
	if err := updateServiceMetadata(cmd, c, name, u); err != nil {
		return err
	}
	var started time.Time // the rolling update this command started
	if u.wantsSpecRollout {
		if started, err = updateServiceSpec(cmd, c, name, u.command); err != nil {
			return err
		}
	}
	if detached(cmd) {
		return nil
	}
	var v api.ServiceView
	if !started.IsZero() {
		v, err = waitUpdate(cmd, name, started, false)
	} else {
		v, err = waitService(cmd, name)
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(cmd.OutOrStdout(), "%s: %d/%d running %s\n", v.Name, v.Running, v.Replicas, v.Image)
	return nil
}

// updateCommandArg is the new command given after -- (nil when there is
// no --); only the service name may stand before it.
func updateCommandArg(cmd *cobra.Command, args []string) ([]string, error) {
	dash := cmd.ArgsLenAtDash()
	if dash < 0 {
		if len(args) > 1 {
			return nil, &exitError{code: 2, err: fmt.Errorf("unexpected arguments %q: put a new command after --", args[1:])}
		}
		return nil, nil
	}
	if dash != 1 {
		return nil, &exitError{code: 2, err: fmt.Errorf("want exactly one service name before --, got %q", args[:dash])}
	}
	command := args[1:]
	if len(command) == 0 {
		return nil, &exitError{code: 2, err: fmt.Errorf("no command after --")}
	}
	return command, nil
}

// serviceUpdateFromFlags reads and checks the update's flags; an update
// that changes nothing is a usage error.
func serviceUpdateFromFlags(cmd *cobra.Command, command []string) (serviceUpdate, error) {
	f := cmd.Flags()
	u := serviceUpdate{command: command}
	u.image, _ = f.GetString("image")
	addArgs, _ := f.GetStringArray("label-add")
	u.labelRm, _ = f.GetStringArray("label-rm")
	var err error
	if u.capAdd, u.capDrop, err = capabilityFlags(cmd); err != nil {
		return u, err
	}
	u.specChange = specFlagsChanged(f) || command != nil
	u.healthChange = healthFlagsChanged(cmd)
	u.refs, u.hasRefs = refsUpdate(cmd)
	u.wantsSpecRollout = u.image != "" || u.specChange || u.healthChange
	if !u.wantsSpecRollout && len(addArgs) == 0 && len(u.labelRm) == 0 && !u.hasRefs && len(u.capAdd) == 0 && len(u.capDrop) == 0 {
		return u, &exitError{code: 2, err: fmt.Errorf("nothing to update: give --image, a spec flag (see --help), --label-add, --label-rm, --secret-add, --secret-rm, --config-add, --config-rm, --secret-rotation, --cap-add, --cap-drop, --health-*, --update-* or --rollback-*")}
	}
	if u.labelAdd, err = parseLabels(addArgs); err != nil {
		return u, err
	}
	for _, k := range u.labelRm {
		if err := netpolicy.CheckLabelKey(k); err != nil {
			return u, &exitError{code: 2, err: fmt.Errorf("--label-rm: %w", err)}
		}
	}
	return u, nil
}

// updateServiceMetadata applies the update's label, capability and
// secret/config reference changes, each through its own API call.
func updateServiceMetadata(cmd *cobra.Command, c *client.Client, name string, u serviceUpdate) error {
	ctx, out := cmdContext(cmd), cmd.OutOrStdout()
	if len(u.labelAdd) > 0 || len(u.labelRm) > 0 {
		v, err := c.UpdateServiceLabels(ctx, name, u.labelAdd, u.labelRm)
		if err != nil {
			return err
		}
		fmt.Fprintf(out, "%s: labels %s\n", v.Name, formatLabels(v.Labels))
	}
	if len(u.capAdd) > 0 || len(u.capDrop) > 0 {
		v, err := c.UpdateServiceCapabilities(ctx, name, u.capAdd, u.capDrop)
		if err != nil {
			return err
		}
		fmt.Fprintf(out, "%s: capabilities added %s, dropped %s (besides the default drop of NET_RAW); its tasks are recreated\n",
			v.Name, formatCaps(v.CapAdd), formatCaps(v.CapDrop))
	}
	if u.hasRefs {
		v, err := c.UpdateServiceRefs(ctx, name, u.refs)
		if err != nil {
			return err
		}
		fmt.Fprintf(out, "%s: secrets %s, configs %s\n", v.Name, formatRefs(v.Secrets), formatRefs(v.Configs))
	}
	return nil
}

// updateServiceSpec sends the service's spec changed by the flags (image,
// spec flags, command, health, update and rollback settings; capabilities
// kept as they are). It returns the start of the rolling update this call
// began, zero when none began.
func updateServiceSpec(cmd *cobra.Command, c *client.Client, name string, command []string) (time.Time, error) {
	cur, err := c.Service(cmdContext(cmd), name)
	if err != nil {
		return time.Time{}, err
	}
	spec, err := updatedSpec(cmd.Flags(), cur, command)
	if err != nil {
		return time.Time{}, err
	}
	spec.CapAdd, spec.CapDrop = cur.CapAdd, cur.CapDrop
	change, err := healthSpecFromFlags(cmd, cur.HealthSpec)
	if err != nil {
		return time.Time{}, err
	}
	spec.HealthSpec = cur.HealthSpec
	if change.HealthCheck != nil {
		spec.HealthCheck = change.HealthCheck
	}
	if change.UpdateConfig != nil {
		spec.UpdateConfig = change.UpdateConfig
	}
	if change.RollbackConfig != nil {
		spec.RollbackConfig = change.RollbackConfig
	}
	v, err := c.UpdateService(cmdContext(cmd), name, spec)
	if err != nil {
		return time.Time{}, err
	}
	us := v.UpdateStatus
	if us == nil || us.State != api.UpdateUpdating || (cur.UpdateStatus != nil && us.StartedAt.Equal(cur.UpdateStatus.StartedAt)) {
		return time.Time{}, nil
	}
	how := "one task at a time, each next one once the previous serves (running and healthy)"
	if detached(cmd) {
		how += "; follow with `warren service inspect " + v.Name + "`"
	}
	fmt.Fprintf(cmd.OutOrStdout(), "%s: updating to %s, %s\n", v.Name, v.Image, how)
	return us.StartedAt, nil
}

// newServiceRmCmd is `warren service rm`.
func newServiceRmCmd() *cobra.Command {
	rmCmd := &cobra.Command{
		Use:     "rm NAME...",
		Aliases: []string{"remove"},
		Short:   "Remove services (their tasks stop, their VIPs are released)",
		Args:    cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c := apiClient(cmd)
			for _, name := range args {
				if err := c.RemoveService(cmdContext(cmd), name); err != nil {
					return err
				}
				fmt.Fprintln(cmd.OutOrStdout(), name)
			}
			if detached(cmd) {
				return nil
			}
			for _, name := range args {
				err := waitConverged(cmdContext(cmd), cmd, "removing "+name, func(ctx context.Context) (progress, error) {
					tasks, err := c.Tasks(ctx, name)
					return removalProgress(tasks), err
				})
				if err != nil {
					return err
				}
			}
			return nil
		},
	}
	addWaitFlags(rmCmd)
	return rmCmd
}

// waitService waits until service name has converged and returns its
// final view.
func waitService(cmd *cobra.Command, name string) (api.ServiceView, error) {
	c := apiClient(cmd)
	var v api.ServiceView
	err := waitConverged(cmdContext(cmd), cmd, name, func(ctx context.Context) (progress, error) {
		var err error
		if v, err = c.Service(ctx, name); err != nil {
			return progress{}, err
		}
		return serviceProgress(v), nil
	})
	return v, err
}

func printTasks(w io.Writer, s api.ServiceView) error {
	tw := newTable(w)
	fmt.Fprintln(tw, "TASK\tNODE\tIP\tIMAGE\tDESIRED\tSTATE\tEXIT\tRESTARTS\tNEXT RESTART\tERROR")
	now := time.Now()
	for _, t := range s.Tasks {
		node := t.Node
		if node == "" {
			node = t.NodeID + " (removed)"
		}
		exit := "-"
		if t.ExitCode != nil {
			exit = strconv.Itoa(*t.ExitCode)
		}
		next := untilText(t.NextRestart, now)
		if next == "" {
			next = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\n", t.Name, node, t.IP, t.Image, t.DesiredState, taskStateText(t),
			exit, t.Restarts, next, taskErrorText(t))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if s.Unplaced != "" {
		fmt.Fprintf(w, "\nunplaced: %s\n", s.Unplaced)
	}
	return nil
}

// parseLabels parses repeated KEY=VALUE flags; bad ones exit 2.
func parseLabels(args []string) (map[string]string, error) {
	if len(args) == 0 {
		return nil, nil
	}
	out := map[string]string{}
	for _, a := range args {
		k, v, err := netpolicy.ParseLabel(a)
		if err != nil {
			return nil, &exitError{code: 2, err: err}
		}
		out[k] = v
	}
	return out, nil
}

func formatPorts(ports []clustermap.Port) string {
	if len(ports) == 0 {
		return "-"
	}
	parts := make([]string, len(ports))
	for i, p := range ports {
		parts[i] = fmt.Sprintf("%d:%d/%s", p.Published, p.Target, p.Protocol)
	}
	return strings.Join(parts, ",")
}

// addCapabilityFlags adds Docker's --cap-add and --cap-drop to c.
func addCapabilityFlags(c *cobra.Command) {
	c.Flags().StringSlice("cap-add", nil, "add a Linux capability to the tasks, e.g. NET_RAW (dropped by default: raw sockets can forge packets) (repeatable, or comma-separated)")
	c.Flags().StringSlice("cap-drop", nil, "drop a Linux capability from the tasks, e.g. CHOWN, or ALL (repeatable, or comma-separated)")
}

// capabilityFlags reads --cap-add and --cap-drop, normalized (CAP_NET_RAW).
func capabilityFlags(cmd *cobra.Command) (add, drop []string, err error) {
	addArgs, _ := cmd.Flags().GetStringSlice("cap-add")
	dropArgs, _ := cmd.Flags().GetStringSlice("cap-drop")
	if add, err = api.NormalizeCapabilities("--cap-add", addArgs); err != nil {
		return nil, nil, &exitError{code: 2, err: err}
	}
	if drop, err = api.NormalizeCapabilities("--cap-drop", dropArgs); err != nil {
		return nil, nil, &exitError{code: 2, err: err}
	}
	for _, c := range add {
		if slices.Contains(drop, c) {
			return nil, nil, &exitError{code: 2, err: fmt.Errorf("capability %s is given to both --cap-add and --cap-drop", c)}
		}
	}
	return add, drop, nil
}

func formatCaps(caps []string) string {
	if len(caps) == 0 {
		return "none"
	}
	return strings.Join(caps, ",")
}

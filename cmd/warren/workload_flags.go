package main

import (
	"bufio"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/warren-appliance/warren/cluster/api"
	"github.com/warren-appliance/warren/cluster/clustermap"
	"github.com/warren-appliance/warren/internal/dockerflags"
)

// The workload flags of `service create` (Docker's names and syntax):
// mode, restart policy, resources, mounts and process settings.

func addWorkloadFlags(f *pflag.FlagSet) {
	f.String("mode", "replicated", "replicated (--replicas tasks) or global (one task on every eligible node)")
	f.String("restart-condition", "any", "restart a task whose process exits: none, on-failure or any")
	f.Int("restart-max-attempts", 0, "give up after this many restarts (within --restart-window when set; 0: never)")
	f.Duration("restart-delay", 0, "least wait before a restart (the node's back-off may wait longer)")
	f.Duration("restart-window", 0, "only restarts this recent count toward --restart-max-attempts")
	f.String("limit-memory", "", "memory limit, e.g. 32M or 1.5G (the kernel OOM-kills the task above it)")
	f.String("limit-cpu", "", "CPU limit in CPUs, e.g. 0.5")
	f.String("reserve-memory", "", "memory the scheduler sets aside on the task's node, e.g. 64M")
	f.String("reserve-cpu", "", "CPUs the scheduler sets aside on the task's node, e.g. 0.25")
	f.StringArray("mount", nil, "type=volume,source=NAME,target=PATH[,readonly] | type=bind,source=HOSTPATH,target=PATH[,readonly] | type=tmpfs,target=PATH[,tmpfs-size=BYTES] (repeatable)")
	f.StringP("user", "u", "", "user the process runs as: NAME, UID, NAME:GROUP or UID:GID")
	f.StringP("workdir", "w", "", "working directory inside the container")
	f.String("entrypoint", "", "replace the image's entrypoint (words split at white space); the command after -- follows it")
	f.String("hostname", "", "container hostname (default: the task name)")
	f.String("stop-signal", "", "signal that stops the task (default SIGTERM)")
	f.Duration("stop-grace-period", 0, "wait after the stop signal before SIGKILL (default 10s)")
	f.StringArray("env-file", nil, "read KEY=VALUE lines from a file (repeatable; --env wins)")
	f.Bool("read-only", false, "mount the container's root file system read-only")
}

// workloadFromFlags reads the workload flags; a bad value is a usage error
// naming the flag.
func workloadFromFlags(f *pflag.FlagSet) (clustermap.Workload, error) {
	var w clustermap.Workload
	usage := func(format string, a ...any) error {
		return &exitError{code: 2, err: fmt.Errorf(format, a...)}
	}
	if mode, _ := f.GetString("mode"); mode != clustermap.ModeReplicated {
		w.Mode = mode
	}
	if f.Changed("restart-condition") || f.Changed("restart-max-attempts") || f.Changed("restart-delay") || f.Changed("restart-window") {
		cond, _ := f.GetString("restart-condition")
		n, _ := f.GetInt("restart-max-attempts")
		delay, _ := f.GetDuration("restart-delay")
		window, _ := f.GetDuration("restart-window")
		w.Restart = &clustermap.RestartPolicy{Condition: cond, MaxAttempts: n, Delay: clustermap.Duration(delay), Window: clustermap.Duration(window)}
	}
	var res clustermap.Resources
	for _, a := range []struct {
		flag string
		dst  *int64
		cpu  bool
	}{{"limit-memory", &res.Limits.MemoryBytes, false}, {"limit-cpu", &res.Limits.NanoCPUs, true},
		{"reserve-memory", &res.Reservations.MemoryBytes, false}, {"reserve-cpu", &res.Reservations.NanoCPUs, true}} {
		v, _ := f.GetString(a.flag)
		if v == "" {
			continue
		}
		var err error
		if a.cpu {
			*a.dst, err = dockerflags.ParseCPUs(v)
		} else {
			*a.dst, err = dockerflags.ParseMemory(v)
		}
		if err != nil {
			return w, usage("--%s: %v", a.flag, err)
		}
	}
	if res != (clustermap.Resources{}) {
		w.Resources = &res
	}
	mounts, _ := f.GetStringArray("mount")
	for _, s := range mounts {
		m, err := dockerflags.ParseMount(s)
		if err != nil {
			return w, usage("--mount: %v", err)
		}
		w.Mounts = append(w.Mounts, m)
	}
	var p clustermap.Process
	p.User, _ = f.GetString("user")
	p.Workdir, _ = f.GetString("workdir")
	entry, _ := f.GetString("entrypoint")
	p.Entrypoint = strings.Fields(entry)
	p.Hostname, _ = f.GetString("hostname")
	p.StopSignal, _ = f.GetString("stop-signal")
	if p.StopSignal != "" {
		if _, err := dockerflags.ParseSignal(p.StopSignal); err != nil {
			return w, usage("--stop-signal: %v", err)
		}
	}
	grace, _ := f.GetDuration("stop-grace-period")
	p.StopGracePeriod = clustermap.Duration(grace)
	p.ReadOnly, _ = f.GetBool("read-only")
	if p.User != "" || p.Workdir != "" || len(p.Entrypoint) > 0 || p.Hostname != "" || p.StopSignal != "" || grace != 0 || p.ReadOnly {
		w.Process = &p
	}
	return w, nil
}

// readEnvFiles reads Docker-style env files: KEY=VALUE lines, blank lines
// and lines starting with # skipped, a bare KEY taking this shell's value.
func readEnvFiles(paths []string) ([]string, error) {
	var out []string
	for _, p := range paths {
		fh, err := os.Open(p)
		if err != nil {
			return nil, &exitError{code: 2, err: fmt.Errorf("--env-file: %w", err)}
		}
		sc := bufio.NewScanner(fh)
		line := 0
		for sc.Scan() {
			line++
			l := strings.TrimLeft(sc.Text(), " \t")
			if l == "" || strings.HasPrefix(l, "#") {
				continue
			}
			if !strings.Contains(l, "=") {
				v, ok := os.LookupEnv(l)
				if !ok {
					continue // as Docker: an unset variable is left out
				}
				l += "=" + v
			}
			out = append(out, l)
		}
		err = sc.Err()
		fh.Close()
		if err != nil {
			return nil, &exitError{code: 2, err: fmt.Errorf("--env-file %s line %d: %w", p, line, err)}
		}
	}
	return out, nil
}

// formatRestart is the restart policy as `service inspect` shows it.
func formatRestart(p *clustermap.RestartPolicy) string {
	if p == nil {
		return "any (default)"
	}
	cond := p.Condition
	if cond == "" {
		cond = clustermap.RestartAny
	}
	s := cond
	if p.MaxAttempts > 0 {
		s += fmt.Sprintf(", at most %d restarts", p.MaxAttempts)
		if p.Window > 0 {
			s += " within " + p.Window.D().String()
		}
	}
	if p.Delay > 0 {
		s += ", delay " + p.Delay.D().String()
	}
	return s
}

// formatResources is a service's limits and reservations for inspect.
func formatResources(r *clustermap.Resources) (limits, reservations string) {
	f := func(a clustermap.ResourceAmounts) string {
		var parts []string
		if a.MemoryBytes > 0 {
			parts = append(parts, "memory "+dockerflags.FormatBytes(a.MemoryBytes))
		}
		if a.NanoCPUs > 0 {
			parts = append(parts, "cpu "+dockerflags.FormatCPUs(a.NanoCPUs))
		}
		if len(parts) == 0 {
			return "-"
		}
		return strings.Join(parts, ", ")
	}
	if r == nil {
		return "-", "-"
	}
	return f(r.Limits), f(r.Reservations)
}

// untilText says how long until t, for `service ps`: "in 4s".
func untilText(t, now time.Time) string {
	if t.IsZero() {
		return ""
	}
	d := t.Sub(now).Round(time.Second)
	if d <= 0 {
		return "now"
	}
	return "in " + d.String()
}

// addUpdateFlags adds the spec flags `service update` takes beside
// --image and --label-add/--label-rm: Docker's names.
func addUpdateFlags(f *pflag.FlagSet) {
	f.Int("replicas", 0, "number of tasks (replicated services)")
	f.StringArray("env-add", nil, "add or change an environment variable KEY=VALUE (repeatable)")
	f.StringArray("env-rm", nil, "remove the environment variable KEY (repeatable)")
	f.StringArray("constraint-add", nil, "add a placement rule (repeatable)")
	f.StringArray("constraint-rm", nil, "remove a placement rule, as written (repeatable)")
	f.StringArray("publish-add", nil, "publish a port HOST:CONTAINER[/udp] (repeatable)")
	f.StringArray("publish-rm", nil, "stop publishing the host port HOST[/udp] (repeatable)")
	f.StringArray("mount-add", nil, "add a mount, --mount's grammar (repeatable)")
	f.StringArray("mount-rm", nil, "remove the mount at container path TARGET (repeatable)")
	f.Bool("affinity", false, "send a client's connections to the same task")
	f.String("restart-condition", "any", "none, on-failure or any")
	f.Int("restart-max-attempts", 0, "give up after this many restarts (0: never)")
	f.Duration("restart-delay", 0, "least wait before a restart")
	f.Duration("restart-window", 0, "only restarts this recent count toward --restart-max-attempts")
	f.String("limit-memory", "", "memory limit, e.g. 32M (0 removes it)")
	f.String("limit-cpu", "", "CPU limit, e.g. 0.5 (0 removes it)")
	f.String("reserve-memory", "", "memory reservation, e.g. 64M (0 removes it)")
	f.String("reserve-cpu", "", "CPU reservation, e.g. 0.25 (0 removes it)")
	f.StringP("user", "u", "", "user the process runs as")
	f.StringP("workdir", "w", "", "working directory")
	f.String("entrypoint", "", "replace the image's entrypoint (\"\" restores it)")
	f.String("hostname", "", "container hostname")
	f.String("stop-signal", "", "signal that stops the task")
	f.Duration("stop-grace-period", 0, "wait after the stop signal before SIGKILL")
	f.Bool("read-only", false, "mount the root file system read-only")
}

// specFlagsChanged reports whether any flag of addUpdateFlags was given.
func specFlagsChanged(f *pflag.FlagSet) bool {
	spec := pflag.NewFlagSet("spec", pflag.ContinueOnError)
	addUpdateFlags(spec)
	changed := false
	spec.VisitAll(func(fl *pflag.Flag) { changed = changed || f.Changed(fl.Name) })
	return changed
}

// updatedSpec applies the update flags to a service's current spec v.
func updatedSpec(f *pflag.FlagSet, v api.ServiceView, command []string) (api.ServiceSpec, error) {
	usage := func(format string, a ...any) error { return &exitError{code: 2, err: fmt.Errorf(format, a...)} }
	spec := api.ServiceSpec{Name: v.Name, Image: v.Image, Env: slices.Clone(v.Env), Constraints: slices.Clone(v.Constraints),
		Command: slices.Clone(v.Command), Affinity: v.Affinity, Labels: v.Labels, Workload: cloneWorkload(v.Workload)}
	if len(spec.Labels) == 0 {
		spec.Labels = nil
	}
	if image, _ := f.GetString("image"); image != "" {
		spec.Image = image
	}
	for _, p := range v.Ports {
		spec.Ports = append(spec.Ports, fmt.Sprintf("%d:%d/%s", p.Published, p.Target, p.Protocol))
	}
	if f.Changed("replicas") {
		n, _ := f.GetInt("replicas")
		spec.Replicas = &n
	} else if !v.IsGlobal() {
		n := v.Replicas
		spec.Replicas = &n
	}
	if command != nil {
		spec.Command = command
	}
	if f.Changed("affinity") {
		spec.Affinity, _ = f.GetBool("affinity")
	}
	// env: remove, then add (replacing a key already set).
	envRm, _ := f.GetStringArray("env-rm")
	envAdd, _ := f.GetStringArray("env-add")
	drop := map[string]bool{}
	for _, k := range envRm {
		drop[k] = true
	}
	for _, e := range envAdd {
		k, _, ok := strings.Cut(e, "=")
		if !ok {
			return spec, usage("--env-add %q: want KEY=VALUE", e)
		}
		drop[k] = true
	}
	spec.Env = slices.DeleteFunc(spec.Env, func(e string) bool { k, _, _ := strings.Cut(e, "="); return drop[k] })
	spec.Env = append(spec.Env, envAdd...)
	// constraints and ports.
	consRm, _ := f.GetStringArray("constraint-rm")
	consAdd, _ := f.GetStringArray("constraint-add")
	spec.Constraints = slices.DeleteFunc(spec.Constraints, func(c string) bool { return slices.Contains(consRm, c) })
	spec.Constraints = append(spec.Constraints, consAdd...)
	pubRm, _ := f.GetStringArray("publish-rm")
	pubAdd, _ := f.GetStringArray("publish-add")
	rmKeys := map[string]bool{}
	for _, rm := range pubRm {
		rmKeys[portKey(rm)] = true
	}
	spec.Ports = slices.DeleteFunc(spec.Ports, func(p string) bool { return rmKeys[portKey(p)] })
	spec.Ports = append(spec.Ports, pubAdd...)
	// mounts.
	mountRm, _ := f.GetStringArray("mount-rm")
	for _, target := range mountRm {
		before := len(spec.Mounts)
		spec.Mounts = slices.DeleteFunc(spec.Mounts, func(m clustermap.Mount) bool { return m.Target == target })
		if len(spec.Mounts) == before {
			return spec, usage("--mount-rm %s: the service has no mount at that target", target)
		}
	}
	mountAdd, _ := f.GetStringArray("mount-add")
	for _, s := range mountAdd {
		m, err := dockerflags.ParseMount(s)
		if err != nil {
			return spec, usage("--mount-add: %v", err)
		}
		spec.Mounts = slices.DeleteFunc(spec.Mounts, func(o clustermap.Mount) bool { return o.Target == m.Target })
		spec.Mounts = append(spec.Mounts, m)
	}
	if err := applyWorkloadUpdate(f, &spec.Workload); err != nil {
		return spec, err
	}
	return spec, nil
}

func cloneWorkload(w clustermap.Workload) clustermap.Workload {
	if w.Restart != nil {
		r := *w.Restart
		w.Restart = &r
	}
	if w.Resources != nil {
		r := *w.Resources
		w.Resources = &r
	}
	if w.Process != nil {
		p := *w.Process
		p.Entrypoint = slices.Clone(p.Entrypoint)
		w.Process = &p
	}
	w.Mounts = slices.Clone(w.Mounts)
	return w
}

// applyWorkloadUpdate sets the workload fields whose flags were given.
func applyWorkloadUpdate(f *pflag.FlagSet, w *clustermap.Workload) error {
	usage := func(format string, a ...any) error { return &exitError{code: 2, err: fmt.Errorf(format, a...)} }
	if f.Changed("restart-condition") || f.Changed("restart-max-attempts") || f.Changed("restart-delay") || f.Changed("restart-window") {
		if w.Restart == nil {
			w.Restart = &clustermap.RestartPolicy{}
		}
		if f.Changed("restart-condition") {
			w.Restart.Condition, _ = f.GetString("restart-condition")
		}
		if f.Changed("restart-max-attempts") {
			w.Restart.MaxAttempts, _ = f.GetInt("restart-max-attempts")
		}
		if f.Changed("restart-delay") {
			d, _ := f.GetDuration("restart-delay")
			w.Restart.Delay = clustermap.Duration(d)
		}
		if f.Changed("restart-window") {
			d, _ := f.GetDuration("restart-window")
			w.Restart.Window = clustermap.Duration(d)
		}
	}
	res := clustermap.Resources{}
	if w.Resources != nil {
		res = *w.Resources
	}
	for _, a := range []struct {
		flag string
		dst  *int64
		cpu  bool
	}{{"limit-memory", &res.Limits.MemoryBytes, false}, {"limit-cpu", &res.Limits.NanoCPUs, true},
		{"reserve-memory", &res.Reservations.MemoryBytes, false}, {"reserve-cpu", &res.Reservations.NanoCPUs, true}} {
		if !f.Changed(a.flag) {
			continue
		}
		v, _ := f.GetString(a.flag)
		if v == "0" || v == "" {
			*a.dst = 0
			continue
		}
		var err error
		if a.cpu {
			*a.dst, err = dockerflags.ParseCPUs(v)
		} else {
			*a.dst, err = dockerflags.ParseMemory(v)
		}
		if err != nil {
			return usage("--%s: %v", a.flag, err)
		}
	}
	if res == (clustermap.Resources{}) {
		w.Resources = nil
	} else {
		w.Resources = &res
	}
	p := clustermap.Process{}
	if w.Process != nil {
		p = *w.Process
	}
	if f.Changed("user") {
		p.User, _ = f.GetString("user")
	}
	if f.Changed("workdir") {
		p.Workdir, _ = f.GetString("workdir")
	}
	if f.Changed("entrypoint") {
		e, _ := f.GetString("entrypoint")
		p.Entrypoint = strings.Fields(e)
	}
	if f.Changed("hostname") {
		p.Hostname, _ = f.GetString("hostname")
	}
	if f.Changed("stop-signal") {
		p.StopSignal, _ = f.GetString("stop-signal")
		if p.StopSignal != "" {
			if _, err := dockerflags.ParseSignal(p.StopSignal); err != nil {
				return usage("--stop-signal: %v", err)
			}
		}
	}
	if f.Changed("stop-grace-period") {
		d, _ := f.GetDuration("stop-grace-period")
		p.StopGracePeriod = clustermap.Duration(d)
	}
	if f.Changed("read-only") {
		p.ReadOnly, _ = f.GetBool("read-only")
	}
	if p.User == "" && p.Workdir == "" && len(p.Entrypoint) == 0 && p.Hostname == "" && p.StopSignal == "" && p.StopGracePeriod == 0 && !p.ReadOnly {
		w.Process = nil
	} else {
		w.Process = &p
	}
	return nil
}

// portKey is the host port and protocol of "HOST:CONTAINER[/proto]" or
// "HOST[/proto]": "8080/tcp".
func portKey(s string) string {
	proto := "tcp"
	if i := strings.Index(s, "/"); i >= 0 {
		s, proto = s[:i], s[i+1:]
	}
	host, _, _ := strings.Cut(s, ":")
	return host + "/" + proto
}

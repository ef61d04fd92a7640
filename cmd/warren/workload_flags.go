package main

import (
	"bufio"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/spf13/pflag"

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

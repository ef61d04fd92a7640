package main

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/warren-appliance/warren/cluster/api"
	"github.com/warren-appliance/warren/cluster/clustermap"
	"github.com/warren-appliance/warren/cluster/rollout"
)

// addHealthFlags adds Docker's --health-*, --no-healthcheck, --update-*
// and --rollback-* flags to service create or update.
func addHealthFlags(c *cobra.Command) {
	f := c.Flags()
	f.String("health-cmd", "", "command run in the task to check its health (through /bin/sh -c); exit 0 is healthy")
	f.Duration("health-interval", 0, "time between health checks (default 30s, or the image's)")
	f.Duration("health-timeout", 0, "a check running longer fails (default 30s, or the image's)")
	f.Int("health-retries", 0, "consecutive failures that make a task unhealthy (default 3, or the image's)")
	f.Duration("health-start-period", 0, "failures in this time after start, before a first success, do not count (default 0)")
	f.Bool("no-healthcheck", false, "disable any health check, the image's HEALTHCHECK too")
	for _, which := range []string{"update", "rollback"} {
		def := rollout.DefaultUpdate
		if which == "rollback" {
			def = rollout.DefaultRollback
		}
		f.Int(which+"-parallelism", 0, fmt.Sprintf("tasks replaced at once during a %s (default %d)", which, def.Parallelism))
		f.Duration(which+"-delay", 0, fmt.Sprintf("wait between slots of a %s (default 0s)", which))
		f.String(which+"-order", "", fmt.Sprintf("start-first (the new task serves before the old stops) or stop-first (default %s)", def.Order))
		actions := "pause, continue or rollback"
		if which == "rollback" {
			actions = "pause or continue"
		}
		f.String(which+"-failure-action", "", fmt.Sprintf("on too many failed tasks: %s (default %s)", actions, def.FailureAction))
		f.Duration(which+"-monitor", 0, fmt.Sprintf("a new task that fails within this time after turning healthy counts as failed (default %s)", def.Monitor))
		f.Float64(which+"-max-failure-ratio", 0, fmt.Sprintf("failed tasks tolerated during a %s, as a share of the replicas (default 0)", which))
	}
}

// healthFlagsChanged reports whether any flag of addHealthFlags was given.
func healthFlagsChanged(c *cobra.Command) bool {
	changed := false
	c.Flags().Visit(func(f *pflag.Flag) {
		for _, p := range []string{"health-", "no-healthcheck", "update-", "rollback-"} {
			if strings.HasPrefix(f.Name, p) {
				changed = true
			}
		}
	})
	return changed
}

// healthSpecFromFlags applies the given flags over cur (the service's
// settings for update, empty for create). Unchanged parts stay nil.
func healthSpecFromFlags(c *cobra.Command, cur api.HealthSpec) (api.HealthSpec, error) {
	f := c.Flags()
	var out api.HealthSpec
	changed := func(names ...string) bool {
		for _, n := range names {
			if f.Changed(n) {
				return true
			}
		}
		return false
	}
	if changed("health-cmd", "health-interval", "health-timeout", "health-retries", "health-start-period", "no-healthcheck") {
		h := clustermap.HealthCheck{}
		if cur.HealthCheck != nil && !cur.HealthCheck.Disabled() {
			h = *cur.HealthCheck
		}
		noCheck, _ := f.GetBool("no-healthcheck")
		if noCheck {
			if changed("health-cmd", "health-interval", "health-timeout", "health-retries", "health-start-period") {
				return out, &exitError{code: 2, err: fmt.Errorf("--no-healthcheck conflicts with the --health-* flags")}
			}
			h = clustermap.HealthCheck{Test: []string{"NONE"}}
		}
		if f.Changed("health-cmd") {
			cmd, _ := f.GetString("health-cmd")
			if strings.TrimSpace(cmd) == "" {
				return out, &exitError{code: 2, err: fmt.Errorf("--health-cmd is empty: give a command, or --no-healthcheck")}
			}
			h.Test = []string{"CMD-SHELL", cmd}
		}
		for name, dst := range map[string]*time.Duration{"health-interval": &h.Interval, "health-timeout": &h.Timeout, "health-start-period": &h.StartPeriod} {
			if f.Changed(name) {
				*dst, _ = f.GetDuration(name)
			}
		}
		if f.Changed("health-retries") {
			h.Retries, _ = f.GetInt("health-retries")
		}
		out.HealthCheck = &h
	}
	for _, which := range []string{"update", "rollback"} {
		n := func(s string) string { return which + "-" + s }
		if !changed(n("parallelism"), n("delay"), n("order"), n("failure-action"), n("monitor"), n("max-failure-ratio")) {
			continue
		}
		base := cur.UpdateConfig
		if which == "rollback" {
			base = cur.RollbackConfig
		}
		u := clustermap.UpdateConfig{}
		if base != nil {
			u = *base
		}
		if f.Changed(n("parallelism")) {
			u.Parallelism, _ = f.GetInt(n("parallelism"))
		}
		if f.Changed(n("delay")) {
			u.Delay, _ = f.GetDuration(n("delay"))
		}
		if f.Changed(n("order")) {
			u.Order, _ = f.GetString(n("order"))
		}
		if f.Changed(n("failure-action")) {
			u.FailureAction, _ = f.GetString(n("failure-action"))
		}
		if f.Changed(n("monitor")) {
			u.Monitor, _ = f.GetDuration(n("monitor"))
		}
		if f.Changed(n("max-failure-ratio")) {
			u.MaxFailureRatio, _ = f.GetFloat64(n("max-failure-ratio"))
		}
		if err := rollout.Validate(&u, which); err != nil {
			return out, &exitError{code: 2, err: err}
		}
		if which == "update" {
			out.UpdateConfig = &u
		} else {
			out.RollbackConfig = &u
		}
	}
	return out, nil
}

// waitUpdate follows the rolling update (or rollback) of service name
// that started at started (the manager's time): nil once it completes, an
// error naming the failing task when it pauses or rolls back.
func waitUpdate(cmd *cobra.Command, name string, started time.Time, rollback bool) (api.ServiceView, error) {
	c := apiClient(cmd)
	var v api.ServiceView
	err := waitConverged(cmdContext(cmd), cmd, name, func(ctx context.Context) (progress, error) {
		var err error
		if v, err = c.Service(ctx, name); err != nil {
			return progress{}, err
		}
		p := serviceProgress(v)
		st := v.UpdateStatus
		if st == nil || st.StartedAt.Before(started) {
			return p, nil // not ours (yet)
		}
		switch st.State {
		case api.UpdateCompleted:
			if rollback {
				return p, fmt.Errorf("%s: %s", name, st.Message)
			}
		case api.UpdateRollbackCompleted:
			if !rollback {
				return p, fmt.Errorf("%s: %s", name, st.Message)
			}
		case api.UpdatePaused, api.UpdateRollbackPaused:
			return p, fmt.Errorf("%s: %s; resume with `warren service update %s --image IMAGE` or `warren service rollback %s`", name, st.Message, name, name)
		default:
			p.done = false // still moving
		}
		return p, nil
	})
	return v, err
}

// addRollbackCommand adds `warren service rollback NAME`.
func addRollbackCommand(svcCmd *cobra.Command) {
	c := &cobra.Command{
		Use:   "rollback NAME",
		Short: "Roll a service back to its image and health check before the last update",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			v, err := apiClient(cmd).RollbackService(cmdContext(cmd), args[0])
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s: rolling back to %s\n", v.Name, v.Image)
			if detached(cmd) {
				return nil
			}
			var started time.Time
			if v.UpdateStatus != nil {
				started = v.UpdateStatus.StartedAt
			}
			if v, err = waitUpdate(cmd, args[0], started, true); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s: %d/%d running %s\n", v.Name, v.Running, v.Replicas, v.Image)
			return nil
		},
	}
	addWaitFlags(c)
	svcCmd.AddCommand(c)
}

// printHealthSettings adds the health and update rows of service inspect.
func printHealthSettings(row func(string, any), s api.ServiceView) {
	switch h := s.HealthCheck; {
	case h == nil:
		row("Health check", "the image's HEALTHCHECK, if any")
	case h.Disabled():
		row("Health check", "none (--no-healthcheck)")
	default:
		row("Health check", fmt.Sprintf("%s every %s, timeout %s, %d retries, start period %s (0: default or the image's)",
			strings.Join(h.Test, " "), h.Interval, h.Timeout, h.Retries, h.StartPeriod))
	}
	for _, x := range []struct {
		name string
		c    *clustermap.UpdateConfig
		def  clustermap.UpdateConfig
	}{{"Update config", s.UpdateConfig, rollout.DefaultUpdate}, {"Rollback config", s.RollbackConfig, rollout.DefaultRollback}} {
		e := rollout.Effective(x.c, x.def)
		row(x.name, fmt.Sprintf("parallelism %d, delay %s, order %s, failure action %s, monitor %s, max failure ratio %g",
			e.Parallelism, e.Delay, e.Order, e.FailureAction, e.Monitor, e.MaxFailureRatio))
	}
	if st := s.UpdateStatus; st != nil {
		row("Update status", fmt.Sprintf("%s: %s (started %s, %s -> %s)", st.State, st.Message, st.StartedAt.Format(time.RFC3339), st.Previous, st.Target))
	}
}

// taskStateText is a task's state with its health, e.g. "running (healthy)".
func taskStateText(t api.TaskView) string {
	if t.Health == nil {
		return t.State
	}
	return t.State + " (" + t.Health.Status + ")"
}

// taskErrorText is a task's error, or the output of its last failed check.
func taskErrorText(t api.TaskView) string {
	if t.Error != "" || t.Health == nil {
		return t.Error
	}
	for i := len(t.Health.Log) - 1; i >= 0; i-- {
		if r := t.Health.Log[i]; r.ExitCode != 0 {
			return fmt.Sprintf("health check failed (exit %d): %s", r.ExitCode, strings.TrimSpace(r.Output))
		}
	}
	return ""
}

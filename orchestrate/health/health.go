// Package health is the pure half of task health checks, with Docker's
// semantics: which check applies (a service's flags over its image's
// HEALTHCHECK), the command a check runs, and the state machine that turns
// probe results into starting / healthy / unhealthy. The node's runner
// (orchestrate/healthrun.go) execs the probes and feeds results in.
package health

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/warren-appliance/warren/cluster/clustermap"
)

// Docker's defaults and limits.
const (
	DefaultInterval = 30 * time.Second
	DefaultTimeout  = 30 * time.Second
	DefaultRetries  = 3
	// MinInterval is Docker's smallest interval, timeout and start period
	// (1ms there; a board gets a saner floor).
	MinInterval = 100 * time.Millisecond
	// MaxLogEntries results are kept, each output cut at MaxOutputLen.
	MaxLogEntries = 5
	MaxOutputLen  = 4096
)

// Config is the check a task runs, every value set.
type Config struct {
	Test        []string // CMD-SHELL cmd, or CMD args...
	Interval    time.Duration
	Timeout     time.Duration
	StartPeriod time.Duration
	Retries     int
}

// Resolve merges a service's check over its image's, as Docker does: a
// service check of ["NONE"] disables both; a service check without Test
// takes the image's Test; each zero value takes the image's, then
// Docker's default. ok is false when the task has no check.
func Resolve(service, image *clustermap.HealthCheck) (Config, bool) {
	if service.Disabled() {
		return Config{}, false
	}
	var c clustermap.HealthCheck
	if image != nil && !image.Disabled() {
		c = *image
	}
	if service != nil {
		if len(service.Test) > 0 {
			c.Test = service.Test
		}
		c.Interval = firstSet(service.Interval, c.Interval)
		c.Timeout = firstSet(service.Timeout, c.Timeout)
		c.StartPeriod = firstSet(service.StartPeriod, c.StartPeriod)
		if service.Retries > 0 {
			c.Retries = service.Retries
		}
	}
	if len(c.Test) == 0 || c.Test[0] == "NONE" {
		return Config{}, false
	}
	out := Config{Test: c.Test, Interval: firstSet(c.Interval, DefaultInterval), Timeout: firstSet(c.Timeout, DefaultTimeout),
		StartPeriod: c.StartPeriod, Retries: c.Retries}
	if out.Retries <= 0 {
		out.Retries = DefaultRetries
	}
	return out, true
}

func firstSet(a, b time.Duration) time.Duration {
	if a > 0 {
		return a
	}
	return b
}

// Validate checks a service's check as given on the command line.
func Validate(h *clustermap.HealthCheck) error {
	if h == nil {
		return nil
	}
	if len(h.Test) > 0 {
		switch h.Test[0] {
		case "NONE":
			if len(h.Test) != 1 {
				return fmt.Errorf("health check test [NONE] takes no arguments")
			}
		case "CMD", "CMD-SHELL":
			if len(h.Test) < 2 || strings.TrimSpace(strings.Join(h.Test[1:], "")) == "" {
				return fmt.Errorf("health check test %s has no command: give --health-cmd", h.Test[0])
			}
		default:
			return fmt.Errorf("health check test must start with CMD, CMD-SHELL or NONE, got %q", h.Test[0])
		}
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"--health-interval", h.Interval}, {"--health-timeout", h.Timeout}, {"--health-start-period", h.StartPeriod}} {
		if d.v != 0 && d.v < MinInterval {
			return fmt.Errorf("%s %s is too short: at least %s (or 0 for the default)", d.name, d.v, MinInterval)
		}
	}
	if h.Retries < 0 {
		return fmt.Errorf("--health-retries %d is negative", h.Retries)
	}
	return nil
}

// Command is the process a check runs: CMD-SHELL through /bin/sh -c,
// CMD as given.
func Command(test []string) ([]string, error) {
	if len(test) < 2 {
		return nil, fmt.Errorf("health check test %q has no command", test)
	}
	switch test[0] {
	case "CMD-SHELL":
		return []string{"/bin/sh", "-c", strings.Join(test[1:], " ")}, nil
	case "CMD":
		return test[1:], nil
	}
	return nil, fmt.Errorf("health check test %q: want CMD or CMD-SHELL", test)
}

// FromImageConfig reads the HEALTHCHECK of a Docker image config (the
// JSON blob an image's manifest points at; OCI's image-spec has no such
// field, Docker's "config.Healthcheck" is what builders write). nil when
// the image has none.
func FromImageConfig(raw []byte) (*clustermap.HealthCheck, error) {
	var doc struct {
		Config struct {
			Healthcheck *struct {
				Test        []string      `json:"Test"`
				Interval    time.Duration `json:"Interval"`
				Timeout     time.Duration `json:"Timeout"`
				StartPeriod time.Duration `json:"StartPeriod"`
				Retries     int           `json:"Retries"`
			} `json:"Healthcheck"`
		} `json:"config"`
	}
	if err := json.Unmarshal(raw, &doc); err != nil {
		return nil, fmt.Errorf("decode image config: %w", err)
	}
	h := doc.Config.Healthcheck
	if h == nil || len(h.Test) == 0 {
		return nil, nil
	}
	return &clustermap.HealthCheck{Test: h.Test, Interval: h.Interval, Timeout: h.Timeout, StartPeriod: h.StartPeriod, Retries: h.Retries}, nil
}

// Result is one probe.
type Result struct {
	Start    time.Time `json:"start"`
	End      time.Time `json:"end"`
	ExitCode int       `json:"exit_code"` // -1: the check could not run or timed out
	Output   string    `json:"output"`
}

// State is a task's health: Docker's State.Health.
type State struct {
	Status        string   `json:"status"` // clustermap.Health*
	FailingStreak int      `json:"failing_streak"`
	Log           []Result `json:"log,omitempty"` // the last MaxLogEntries, oldest first
}

// Start is the state of a task whose process just started.
func Start() State { return State{Status: clustermap.HealthStarting} }

// Next folds one probe result into s (Docker's handleProbeResult): a
// success makes the task healthy and resets the streak; a failure during
// the start period, before any success, is not counted; otherwise it adds
// to the streak, and retries consecutive failures make the task
// unhealthy. startedAt is when the task's process started.
func Next(s State, c Config, startedAt time.Time, r Result) State {
	out := State{Status: s.Status, FailingStreak: s.FailingStreak}
	if len(r.Output) > MaxOutputLen {
		r.Output = r.Output[:MaxOutputLen]
	}
	out.Log = append(out.Log, s.Log...)
	out.Log = append(out.Log, r)
	if len(out.Log) > MaxLogEntries {
		out.Log = out.Log[len(out.Log)-MaxLogEntries:]
	}
	if r.ExitCode == 0 {
		out.Status, out.FailingStreak = clustermap.HealthHealthy, 0
		return out
	}
	if s.Status == clustermap.HealthStarting && c.StartPeriod > 0 && r.Start.Sub(startedAt) < c.StartPeriod {
		return out // not counted, the streak kept
	}
	out.FailingStreak++
	if out.FailingStreak >= c.Retries {
		out.Status = clustermap.HealthUnhealthy
	}
	return out
}

// LastFailure is the output of the newest failed probe, or "".
func (s State) LastFailure() string {
	for i := len(s.Log) - 1; i >= 0; i-- {
		if s.Log[i].ExitCode != 0 {
			return strings.TrimSpace(s.Log[i].Output)
		}
	}
	return ""
}

package clustermap

import "time"

// HealthCheck is a service's health check, with Docker's meaning: Test is
// ["CMD-SHELL", cmd], ["CMD", arg...] or ["NONE"] (checks disabled, also
// the image's HEALTHCHECK). A zero duration or retry count takes Docker's
// default (or the image's value when Test is empty). A service without a
// HealthCheck uses its image's HEALTHCHECK, if any.
type HealthCheck struct {
	Test        []string      `json:"test,omitempty"`
	Interval    time.Duration `json:"interval,omitempty"`
	Timeout     time.Duration `json:"timeout,omitempty"`
	StartPeriod time.Duration `json:"start_period,omitempty"`
	Retries     int           `json:"retries,omitempty"`
}

// Disabled reports whether the check is turned off (--no-healthcheck).
func (h *HealthCheck) Disabled() bool {
	return h != nil && len(h.Test) == 1 && h.Test[0] == "NONE"
}

// Task health, as its node reports it. A task without a health check has
// Health "".
const (
	HealthStarting  = "starting"
	HealthHealthy   = "healthy"
	HealthUnhealthy = "unhealthy"
)

// Serves reports whether t may receive traffic: it runs as desired, is
// not being drained, and is healthy or has no health check.
func (t Task) Serves() bool {
	return t.State == TaskRunning && t.DesiredState == TaskRunning && t.IP.IsValid() && !t.Draining &&
		(t.Health == "" || t.Health == HealthHealthy)
}

// UpdateConfig is how a service rolls to a new spec (or back), with
// Docker's names and meaning. Zero values take the defaults of
// DefaultUpdateConfig / DefaultRollbackConfig.
type UpdateConfig struct {
	Parallelism     int           `json:"parallelism,omitempty"`
	Delay           time.Duration `json:"delay,omitempty"`
	FailureAction   string        `json:"failure_action,omitempty"` // pause | continue | rollback
	Monitor         time.Duration `json:"monitor,omitempty"`
	MaxFailureRatio float64       `json:"max_failure_ratio,omitempty"`
	Order           string        `json:"order,omitempty"` // start-first | stop-first
}

// Update orders and failure actions.
const (
	OrderStartFirst = "start-first"
	OrderStopFirst  = "stop-first"

	ActionPause    = "pause"
	ActionContinue = "continue"
	ActionRollback = "rollback"
)

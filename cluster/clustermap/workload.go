package clustermap

import (
	"encoding/json"
	"fmt"
	"time"
)

// Workload is how a service's tasks run beyond image, command and env:
// Docker Swarm's restart policy, resources, mounts, mode and process
// settings, with Docker's meanings. It is embedded in Service and in the
// admin API's ServiceSpec and ServiceView, so a field added here reaches
// the store, the map, every node and `service inspect --json` at once.
type Workload struct {
	// Mode is "replicated" (Replicas tasks; "" means replicated) or
	// "global" (one task on every eligible node).
	Mode      string         `json:"mode,omitempty"`
	Restart   *RestartPolicy `json:"restart_policy,omitempty"`
	Resources *Resources     `json:"resources,omitempty"`
	Mounts    []Mount        `json:"mounts,omitempty"`
	Process   *Process       `json:"process,omitempty"`
}

// Service modes.
const (
	ModeReplicated = "replicated"
	ModeGlobal     = "global"
)

// IsGlobal reports whether the service runs one task per eligible node.
func (w Workload) IsGlobal() bool { return w.Mode == ModeGlobal }

// Restart conditions (Docker's --restart-condition).
const (
	RestartNone      = "none"
	RestartOnFailure = "on-failure"
	RestartAny       = "any"
)

// RestartPolicy says when a task whose process exited is started again.
type RestartPolicy struct {
	Condition string `json:"condition,omitempty"` // none | on-failure | any ("" = any)
	// MaxAttempts bounds the restarts (within Window when set); 0 means
	// no bound.
	MaxAttempts int `json:"max_attempts,omitempty"`
	// Delay is the least wait before a restart; the node's back-off may
	// make it longer.
	Delay Duration `json:"delay,omitzero"`
	// Window: only restarts this recent count toward MaxAttempts (0: all).
	Window Duration `json:"window,omitzero"`
}

// Resources are a task's limits (enforced by its cgroup) and reservations
// (what the scheduler sets aside on its node).
type Resources struct {
	Limits       ResourceAmounts `json:"limits,omitzero"`
	Reservations ResourceAmounts `json:"reservations,omitzero"`
}

// ResourceAmounts is memory in bytes and CPU in billionths of a CPU
// (Docker's NanoCPUs: 0.5 CPU is 500000000).
type ResourceAmounts struct {
	MemoryBytes int64 `json:"memory_bytes,omitempty"`
	NanoCPUs    int64 `json:"nano_cpus,omitempty"`
}

// Mount types (Docker's --mount type=).
const (
	MountVolume = "volume"
	MountBind   = "bind"
	MountTmpfs  = "tmpfs"
)

// Mount is one Docker-style --mount.
type Mount struct {
	Type     string `json:"type"`             // volume | bind | tmpfs
	Source   string `json:"source,omitempty"` // volume name or host path; empty for tmpfs
	Target   string `json:"target"`           // absolute path in the container
	ReadOnly bool   `json:"readonly,omitempty"`
	// TmpfsSize bounds a tmpfs mount, in bytes (0: the kernel's default,
	// half the node's memory).
	TmpfsSize int64 `json:"tmpfs_size,omitempty"`
}

// Process holds Docker's process settings of a task.
type Process struct {
	User       string   `json:"user,omitempty"`       // --user: name, UID, or UID:GID
	Workdir    string   `json:"workdir,omitempty"`    // --workdir
	Entrypoint []string `json:"entrypoint,omitempty"` // --entrypoint: replaces the image's
	Hostname   string   `json:"hostname,omitempty"`   // --hostname; default the task name
	StopSignal string   `json:"stop_signal,omitempty"`
	// StopGracePeriod is the wait between the stop signal and SIGKILL
	// (0: the node's default, 10s).
	StopGracePeriod Duration `json:"stop_grace_period,omitzero"`
	ReadOnly        bool     `json:"read_only,omitempty"` // --read-only root filesystem
}

// PreviousSpec is what a service's tasks ran before its last update of
// env, command or workload: the tasks not yet rolled to the new version
// keep running it.
type PreviousSpec struct {
	Env     []string `json:"env,omitempty"`
	Command []string `json:"command,omitempty"`
	Workload
}

// TaskSpecOf gives the env, command and workload a task at specVersion
// runs: the service's own, or Previous for a task not yet rolled.
func (s Service) TaskSpecOf(specVersion uint64) (env, command []string, w Workload) {
	if specVersion != s.SpecVersion && s.Previous != nil {
		return s.Previous.Env, s.Previous.Command, s.Previous.Workload
	}
	return s.Env, s.Command, s.Workload
}

// Duration is a time.Duration written as Go text in JSON ("5s", "1m30s"),
// so `service inspect --json` reads like the flags that set it.
type Duration time.Duration

// D returns the time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// MarshalJSON implements json.Marshaler.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// UnmarshalJSON accepts Go duration text or a number of nanoseconds.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		var n int64
		if err2 := json.Unmarshal(b, &n); err2 != nil {
			return fmt.Errorf("duration %s: want text such as \"5s\" or nanoseconds", b)
		}
		*d = Duration(n)
		return nil
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("duration %q: %w", s, err)
	}
	*d = Duration(v)
	return nil
}

// TaskRun is what a node reports of a task's process beyond its state: the
// admin API shows it (manager only, like Task.Error; never in a published
// map).
type TaskRun struct {
	Exited      bool      `json:"exited,omitempty"` // ExitCode is meaningful
	ExitCode    int       `json:"exit_code,omitempty"`
	Restarts    int       `json:"restarts,omitempty"`
	NextRestart time.Time `json:"next_restart,omitzero"`
	OOMKilled   bool      `json:"oom_killed,omitempty"`
	// PullDone of PullTotal bytes of the task's image are pulled, while
	// its node pulls it (both 0 otherwise).
	PullDone  int64 `json:"pull_done,omitempty"`
	PullTotal int64 `json:"pull_total,omitempty"`
}

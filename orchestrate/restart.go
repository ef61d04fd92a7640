package orchestrate

import (
	"context"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/containerd/containerd/v2/client"

	"github.com/warren-appliance/warren/cluster/clustermap"
	"github.com/warren-appliance/warren/internal/dockerflags"
)

// exitInfo is what the node knows of a process exit.
type exitInfo struct {
	status      uint32
	oomKilled   bool  // the task's cgroup counted an OOM kill in this run
	memoryLimit int64 // the task's memory limit, for the message (0: none)
	// unhealthy: the node stopped the run as unhealthy; the last probe's
	// output. Such an exit is a failure whatever its status.
	unhealthy string
}

// restartDecision is what to do after a task's process exited.
type restartDecision struct {
	restart bool
	at      time.Time // restart: not before
	state   string    // the reported state until then: failed or complete
	err     string    // the reported error text
}

// decideRestart applies a service's restart policy (Docker's meanings) to
// one exit: condition none never restarts; on-failure restarts a non-zero
// exit (an OOM kill is one); any always does. MaxAttempts bounds the
// restarts counted in restarts (the times of this task's earlier restarts)
// that fall within Window (all of them when Window is 0). A restart waits
// for the longer of the policy's Delay and the node's back-off, which
// doubles from firstBackoff per consecutive failure up to backoffCap.
// It is a pure function of its arguments.
func decideRestart(p clustermap.RestartPolicy, exit exitInfo, failures int, restarts []time.Time, now time.Time, backoffCap time.Duration) restartDecision {
	what := fmt.Sprintf("exited with status %d", exit.status)
	if exit.oomKilled {
		what = "OOM killed"
		if exit.memoryLimit > 0 {
			what += fmt.Sprintf(" (limit %s)", dockerflags.FormatBytes(exit.memoryLimit))
		}
	}
	if exit.unhealthy != "" {
		what = fmt.Sprintf("stopped as unhealthy (last check: %q)", exit.unhealthy)
	}
	failed := exit.status != 0 || exit.oomKilled || exit.unhealthy != ""
	stay := func(why string) restartDecision {
		d := restartDecision{state: clustermap.TaskComplete}
		if failed {
			d.state = clustermap.TaskFailed
		}
		if failed || why != "" {
			d.err = what + "; " + why
		}
		return d
	}
	cond := p.Condition
	if cond == "" {
		cond = clustermap.RestartAny
	}
	switch {
	case cond == clustermap.RestartNone:
		return stay("not restarted (restart condition none)")
	case cond == clustermap.RestartOnFailure && !failed:
		return restartDecision{state: clustermap.TaskComplete}
	}
	if p.MaxAttempts > 0 {
		counted := 0
		for _, t := range restarts {
			if p.Window <= 0 || now.Sub(t) < p.Window.D() {
				counted++
			}
		}
		if counted >= p.MaxAttempts {
			in := ""
			if p.Window > 0 {
				in = " within " + p.Window.D().String()
			}
			return stay(fmt.Sprintf("not restarted: gave up after %d restarts%s (restart max attempts %d)", counted, in, p.MaxAttempts))
		}
	}
	wait := max(p.Delay.D(), backoff(failures, backoffCap))
	return restartDecision{restart: true, at: now.Add(wait), state: clustermap.TaskFailed,
		err: fmt.Sprintf("%s; restarting in %s", what, wait)}
}

// backoff is the wait before the failures-th consecutive retry: from
// firstBackoff, doubling, at most limit.
func backoff(failures int, limit time.Duration) time.Duration {
	if limit <= 0 {
		limit = DefaultRestartBackoffMax
	}
	d := firstBackoff
	for i := 1; i < failures && d < limit; i++ {
		d *= 2
	}
	return min(d, limit)
}

// oomKilled reports whether the cgroup of task name counted an OOM kill
// (cgroup v2 memory.events, v1 memory.oom_control). Each run of a task has
// a fresh cgroup (runc removes it with the runtime task), so a count means
// this run. A missing file (no memory controller) means no.
func (r *Reconciler) oomKilled(name string) bool {
	cg := path.Join(r.cfg.CgroupParent, name)
	if n, ok := readCounter(filepath.Join(cgroupRoot, cg, "memory.events"), "oom_kill"); ok {
		return n > 0
	}
	n, _ := readCounter(filepath.Join(cgroupRoot, "memory", cg, "memory.oom_control"), "oom_kill")
	return n > 0
}

// cgroupRoot is where the cgroup file systems are mounted.
const cgroupRoot = "/sys/fs/cgroup"

// readCounter reads "key N" out of a flat-keyed file (cgroup, /proc/meminfo).
func readCounter(file, key string) (int64, bool) {
	b, err := os.ReadFile(file)
	if err != nil {
		return 0, false
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && f[0] == key {
			n, err := strconv.ParseInt(f[1], 10, 64)
			return n, err == nil
		}
	}
	return 0, false
}

// labelRestarts records a task's recent restart times on its container
// (Unix seconds, comma-separated), for the restart policy's max attempts.
const labelRestarts = "warren.restarts"

func formatRestarts(ts []time.Time) string {
	parts := make([]string, len(ts))
	for i, t := range ts {
		parts[i] = strconv.FormatInt(t.Unix(), 10)
	}
	return strings.Join(parts, ",")
}

// parseRestarts reads labelRestarts; bad entries are skipped.
func parseRestarts(v string) []time.Time {
	var out []time.Time
	for _, p := range strings.Split(v, ",") {
		if n, err := strconv.ParseInt(p, 10, 64); err == nil && n > 0 {
			out = append(out, time.Unix(n, 0))
		}
	}
	return out
}

func setRestartsLabel(ctx context.Context, c client.Container, ts []time.Time) error {
	_, err := c.SetLabels(ctx, map[string]string{labelRestarts: formatRestarts(ts)})
	return err
}

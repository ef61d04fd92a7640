package cluster

import (
	"net/http"
	"path"
	"regexp"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/warren-appliance/warren/cluster/clustermap"
	"github.com/warren-appliance/warren/internal/dockerflags"
)

// Bounds on a service's workload settings.
const (
	maxMounts         = 32
	maxEntrypointArgs = 64
	maxRestartWindow  = 7 * 24 * 3600 // seconds
)

// checkWorkload says what is wrong with a service's workload settings
// (400), naming the flag to fix. replicasSet: the request gave a replica
// count, which a global service does not take.
func checkWorkload(w clustermap.Workload, replicasSet bool) error {
	switch w.Mode {
	case "", clustermap.ModeReplicated:
	case clustermap.ModeGlobal:
		if replicasSet {
			return errorf(http.StatusBadRequest, "--replicas does not apply to --mode global (one task runs on every eligible node)")
		}
	default:
		return errorf(http.StatusBadRequest, "--mode %q: want replicated or global", w.Mode)
	}
	if p := w.Restart; p != nil {
		switch p.Condition {
		case "", clustermap.RestartNone, clustermap.RestartOnFailure, clustermap.RestartAny:
		default:
			return errorf(http.StatusBadRequest, "--restart-condition %q: want none, on-failure or any", p.Condition)
		}
		if p.MaxAttempts < 0 {
			return errorf(http.StatusBadRequest, "--restart-max-attempts %d: must not be negative (0: no bound)", p.MaxAttempts)
		}
		if p.Delay < 0 || p.Window < 0 {
			return errorf(http.StatusBadRequest, "--restart-delay and --restart-window must not be negative")
		}
		if p.Window.D().Seconds() > maxRestartWindow {
			return errorf(http.StatusBadRequest, "--restart-window %s: at most 168h", p.Window.D())
		}
	}
	if r := w.Resources; r != nil {
		for _, a := range []struct {
			flag string
			v    int64
		}{{"--limit-memory", r.Limits.MemoryBytes}, {"--limit-cpu", r.Limits.NanoCPUs},
			{"--reserve-memory", r.Reservations.MemoryBytes}, {"--reserve-cpu", r.Reservations.NanoCPUs}} {
			if a.v < 0 {
				return errorf(http.StatusBadRequest, "%s must not be negative", a.flag)
			}
		}
		if l := r.Limits.MemoryBytes; l > 0 && l < minMemoryLimit {
			return errorf(http.StatusBadRequest, "--limit-memory %d bytes: at least 6M (runc refuses less)", l)
		}
		if l, v := r.Limits.MemoryBytes, r.Reservations.MemoryBytes; l > 0 && v > l {
			return errorf(http.StatusBadRequest, "--reserve-memory (%d bytes) is more than --limit-memory (%d bytes)", v, l)
		}
		if l, v := r.Limits.NanoCPUs, r.Reservations.NanoCPUs; l > 0 && v > l {
			return errorf(http.StatusBadRequest, "--reserve-cpu (%s) is more than --limit-cpu (%s)", dockerflags.FormatCPUs(v), dockerflags.FormatCPUs(l))
		}
	}
	if len(w.Mounts) > maxMounts {
		return errorf(http.StatusBadRequest, "%d mounts: at most %d", len(w.Mounts), maxMounts)
	}
	targets := map[string]bool{}
	for _, m := range w.Mounts {
		if err := dockerflags.CheckMount(m); err != nil {
			return errorf(http.StatusBadRequest, "--mount %s: %v", dockerflags.FormatMount(m), err)
		}
		if targets[m.Target] {
			return errorf(http.StatusBadRequest, "--mount: target %s is mounted twice", m.Target)
		}
		if m.Target == "/etc/hosts" || m.Target == "/etc/resolv.conf" {
			return errorf(http.StatusBadRequest, "--mount: target %s is written by warren (service discovery)", m.Target)
		}
		targets[m.Target] = true
	}
	if p := w.Process; p != nil {
		if p.Workdir != "" && !path.IsAbs(p.Workdir) {
			return errorf(http.StatusBadRequest, "--workdir %q: want an absolute path", p.Workdir)
		}
		if strings.ContainsAny(p.User, " \t\n") {
			return errorf(http.StatusBadRequest, "--user %q: want NAME, UID, NAME:GROUP or UID:GID", p.User)
		}
		if p.Hostname != "" && !hostnameRE.MatchString(p.Hostname) {
			return errorf(http.StatusBadRequest, "--hostname %q: want 1-63 letters, digits and '-'", p.Hostname)
		}
		if p.StopSignal != "" {
			if _, err := ParseSignal(p.StopSignal); err != nil {
				return errorf(http.StatusBadRequest, "--stop-signal: %v", err)
			}
		}
		if p.StopGracePeriod < 0 {
			return errorf(http.StatusBadRequest, "--stop-grace-period must not be negative")
		}
		if len(p.Entrypoint) > maxEntrypointArgs {
			return errorf(http.StatusBadRequest, "--entrypoint has %d words: at most %d", len(p.Entrypoint), maxEntrypointArgs)
		}
	}
	return nil
}

var hostnameRE = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$`)

// minMemoryLimit is the least memory limit runc accepts.
const minMemoryLimit = 6 << 20

// ParseSignal parses a signal name ("SIGTERM", "TERM", "sigint") or
// number as Docker's --stop-signal does.
func ParseSignal(s string) (unix.Signal, error) {
	return dockerflags.ParseSignal(s)
}

package orchestrate

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"syscall"
	"time"

	"github.com/containerd/containerd/v2/pkg/oci"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/warren-appliance/warren/cluster/clustermap"
	"github.com/warren-appliance/warren/internal/dockerflags"
)

// Container labels carrying how to stop a task (removal has only the
// container).
const (
	labelStopSignal = "warren.stop-signal"
	labelStopGrace  = "warren.stop-grace"
)

// cpuPeriod is the CFS period of a CPU limit (the kernel's default, 100 ms).
const cpuPeriod = 100_000

// workloadSpecOpts are the OCI options for a task's limits, mounts and
// process settings. Volumes are directories under volumesDir, made on
// first use; a bind source must exist on the node.
func workloadSpecOpts(s TaskSpec, volumesDir, node string) ([]oci.SpecOpts, error) {
	var opts []oci.SpecOpts
	if m := s.Limits.MemoryBytes; m > 0 {
		// No swap beyond the limit, as Docker's --memory with
		// --memory-swap equal to it.
		opts = append(opts, oci.WithMemoryLimit(uint64(m)), oci.WithMemorySwap(m))
	}
	if c := s.Limits.NanoCPUs; c > 0 {
		opts = append(opts, oci.WithCPUCFS(c*cpuPeriod/1e9, cpuPeriod))
	}
	var mounts []specs.Mount
	for _, m := range s.Mounts {
		mode := "rw"
		if m.ReadOnly {
			mode = "ro"
		}
		switch m.Type {
		case clustermap.MountVolume:
			dir := filepath.Join(volumesDir, m.Source)
			if err := os.MkdirAll(dir, 0o755); err != nil {
				return nil, fmt.Errorf("volume %s on node %s: %w", m.Source, node, err)
			}
			mounts = append(mounts, specs.Mount{Destination: m.Target, Type: "bind", Source: dir, Options: []string{"rbind", mode}})
		case clustermap.MountBind:
			if _, err := os.Stat(m.Source); err != nil {
				return nil, fmt.Errorf("bind mount source %s does not exist on node %s (create it there, or constrain the service to nodes that have it): %w", m.Source, node, err)
			}
			mounts = append(mounts, specs.Mount{Destination: m.Target, Type: "bind", Source: m.Source, Options: []string{"rbind", mode}})
		case clustermap.MountTmpfs:
			o := []string{"nosuid", "nodev", mode}
			if m.TmpfsSize > 0 {
				o = append(o, "size="+strconv.FormatInt(m.TmpfsSize, 10))
			}
			mounts = append(mounts, specs.Mount{Destination: m.Target, Type: "tmpfs", Source: "tmpfs", Options: o})
		default:
			return nil, fmt.Errorf("mount %s: type %q is not supported", dockerflags.FormatMount(m), m.Type)
		}
	}
	if len(mounts) > 0 {
		opts = append(opts, oci.WithMounts(mounts))
	}
	p := s.Process
	if p.User != "" {
		opts = append(opts, oci.WithUser(p.User))
	}
	if p.Workdir != "" {
		opts = append(opts, oci.WithProcessCwd(p.Workdir))
	}
	if p.ReadOnly {
		opts = append(opts, oci.WithRootFSReadonly())
	}
	return opts, nil
}

// processArgs is the container's command line when the service sets one:
// --entrypoint replaces the image's entrypoint and drops its cmd (as
// Docker), the command after -- follows it.
func processArgs(s TaskSpec) []string {
	if len(s.Process.Entrypoint) > 0 {
		return append(append([]string{}, s.Process.Entrypoint...), s.Command...)
	}
	return s.Command
}

// hostname is the task's container hostname: --hostname or its name.
func hostname(s TaskSpec) string {
	if s.Process.Hostname != "" {
		return s.Process.Hostname
	}
	return s.Name
}

// stopLabels record how the task is stopped.
func stopLabels(s TaskSpec) map[string]string {
	out := map[string]string{}
	if s.Process.StopSignal != "" {
		out[labelStopSignal] = s.Process.StopSignal
	}
	if g := s.Process.StopGracePeriod; g > 0 {
		out[labelStopGrace] = g.D().String()
	}
	return out
}

// stopSettings reads a container's stop signal and grace from its labels,
// with the node's defaults.
func stopSettings(labels map[string]string, defGrace time.Duration) (syscall.Signal, time.Duration) {
	sig, grace := syscall.SIGTERM, defGrace
	if v := labels[labelStopSignal]; v != "" {
		if s, err := dockerflags.ParseSignal(v); err == nil {
			sig = syscall.Signal(s)
		}
	}
	if v := labels[labelStopGrace]; v != "" {
		if d, err := time.ParseDuration(v); err == nil && d > 0 {
			grace = d
		}
	}
	return sig, grace
}

// Capacity is what this node offers tasks: its memory (MemTotal) and its
// CPUs, in the units of reservations.
func Capacity() (clustermap.ResourceAmounts, error) {
	mem, ok := readCounter("/proc/meminfo", "MemTotal:")
	if !ok {
		return clustermap.ResourceAmounts{}, fmt.Errorf("no MemTotal in /proc/meminfo")
	}
	return clustermap.ResourceAmounts{MemoryBytes: mem * 1024, NanoCPUs: int64(runtime.NumCPU()) * 1e9}, nil
}

// TaskLogDir is the directory of task's rotated log files; false when
// task is not a task name.
func (r *Reconciler) TaskLogDir(task string) (string, bool) {
	if !validTaskName.MatchString(task) || len(task) > 63 {
		return "", false
	}
	return r.files(task).logDir(), true
}

// Package orchestrate runs this node's share of the cluster's tasks on
// containerd: one container per task, each in its own network namespace
// with its own IP on the node's bridge. A level-triggered loop converges
// containerd and the kernel to the desired task list, restarts exited
// tasks with backoff, adopts the tasks it finds after a restart and
// removes what it owns but no longer wants.
//
// Each pass observes (containerd's containers and processes, the task
// namespaces), plans with a pure function of (desired tasks, observed
// state, the loop's records, now) in plan.go, whose table tests need
// neither containerd nor namespaces, and executes the plan's actions.
package orchestrate

import (
	"github.com/warren-appliance/warren/hostfw"

	"fmt"
	"log/slog"
	"net/netip"
	"path/filepath"
	"strings"
	"time"

	"github.com/warren-appliance/warren/cluster/clustermap"
	"github.com/warren-appliance/warren/configs"
	"github.com/warren-appliance/warren/orchestrate/health"
)

// TaskSpec is one task this node must run.
type TaskSpec struct {
	Name    string // <service>-<slot>; container ID and hostname
	Service string
	Image   string // registry ref ("nginx" means docker.io/library/nginx:latest)
	Env     []string
	Command []string // replaces the image's entrypoint and cmd when set
	IP      netip.Addr
	// CapAdd and CapDrop change the container's capabilities from the
	// default set (containerd's, without CAP_NET_RAW): CAP_* names or ALL.
	CapAdd, CapDrop []string
	// Health is the service's health check (nil: the image's HEALTHCHECK,
	// if any). A change does not recreate the container.
	Health *clustermap.HealthCheck
	// SpecVersion is the service spec's version this task runs (reported
	// back, so the manager knows when an update reached it).
	SpecVersion uint64

	// Workload settings of the service (clustermap.Workload).
	Restart clustermap.RestartPolicy // restart policy; not part of the container
	Limits  clustermap.ResourceAmounts
	Mounts  []clustermap.Mount
	Process clustermap.Process

	// SecretMounts are the task's secrets directory and config files,
	// kept on a tmpfs outside the state dir (package secretfs) and
	// bind-mounted read-only; their content changes in place.
	SecretMounts []FileMount
	// Revision, when set, is part of the spec: a new one recreates the
	// container (a service with --secret-rotation restart).
	Revision string
}

// FileMount is a host file or directory bind-mounted read-only at Target.
type FileMount struct {
	Source string
	Target string
}

// TaskStatus is what the node reports about one task.
type TaskStatus struct {
	Name     string
	State    string        // clustermap.Task* states
	Error    string        // last error, empty when healthy
	Restarts int           // restarts after the task exited on its own
	Image    string        // image of the spec this status is about, as given in TaskSpec
	Revision string        // revision of that spec, as given in TaskSpec
	Health   *health.State // nil when the task has no health check
	// PullDone and PullTotal: bytes of the task's image pulled so far, of
	// the blobs known so far, while its pull runs (0 otherwise).
	PullDone, PullTotal int64
	// SpecVersion of the spec this status is about (service updates roll
	// out one task at a time by it).
	SpecVersion uint64

	// The last exit of the task's process, while it is not running again.
	Exited      bool
	ExitCode    int
	OOMKilled   bool
	NextRestart time.Time // zero: no restart planned
}

// Config is what the reconciler needs to know about this node.
type Config struct {
	ContainerdAddress string        // "/run/containerd/containerd.sock"
	Namespace         string        // containerd namespace, "warren"
	ImagesDir         string        // image tarballs imported at start and when new ones appear
	Bridge            string        // "warren-br0"
	Block             netip.Prefix  // this node's container block; the bridge takes its first address
	ResolvConf        []byte        // every task's /etc/resolv.conf
	StopGrace         time.Duration // SIGTERM to SIGKILL
	StateDir          string        // netns files, per-task files, logs
	Logger            *slog.Logger
	// Firewall is the node's one firewall owner, which writes the task
	// network's chains, hooks and bridge chain with everybody else's
	// rules; nil: the task network makes a Syncer of its own (tests).
	Firewall *hostfw.Syncer

	// OverlayInterface is the WireGuard interface ("warren0"): traffic
	// from tasks to it keeps its source address, other egress is masqueraded.
	OverlayInterface string
	// ContainerSubnet is the cluster's container range: tasks of other
	// nodes (these sources on the overlay) reach no port of this node.
	// Unset: that rule is left out.
	ContainerSubnet netip.Prefix
	// NodeSubnet is the cluster's WireGuard range, the nodes' own overlay
	// addresses: it lies inside ContainerSubnet (blocks skip it), and
	// nodes, unlike tasks, may reach this node's ports over the overlay.
	NodeSubnet netip.Prefix
	// CgroupParent holds every task's cgroup. The default,
	// /<Namespace>/<block>, e.g. /warren/10.0.1.0_24, is unique per node of
	// a cluster, so simulated nodes sharing one kernel never share a
	// task's cgroup when a task moves between them.
	CgroupParent string
	// VolumesDir holds the named volumes, one directory each
	// (<state_dir>/volumes); NodeName names this node in errors.
	VolumesDir string
	NodeName   string
	// LoggerBinary is the warren binary under tasklog.LoggerName, run by
	// containerd's shim as each task's logger (rotated files of at most
	// LogMaxSize bytes, LogMaxFiles of them). Empty: one plain file per
	// task, truncated at each start.
	LoggerBinary string
	LogMaxSize   int64
	LogMaxFiles  int
	// TasksMemoryMax is the memory ceiling of the tasks' parent cgroup
	// (0: the node's memory less DefaultSystemReserve, at least half).
	TasksMemoryMax int64
	// RestartBackoffMax caps the back-off between consecutive failed
	// attempts at a task (DefaultRestartBackoffMax when 0).
	RestartBackoffMax time.Duration
}

// Defaults filled in by New.
const (
	DefaultContainerdAddress = configs.DefaultContainerdAddress
	DefaultNamespace         = configs.DefaultNamespace
	DefaultBridge            = configs.DefaultBridge
	DefaultOverlayInterface  = configs.DefaultInterface
	DefaultStopGrace         = 10 * time.Second
	DefaultRestartBackoffMax = configs.DefaultRestartBackoffMax
)

func (c *Config) setDefaults() {
	if c.ContainerdAddress == "" {
		c.ContainerdAddress = DefaultContainerdAddress
	}
	if c.Namespace == "" {
		c.Namespace = DefaultNamespace
	}
	if c.Bridge == "" {
		c.Bridge = DefaultBridge
	}
	if c.OverlayInterface == "" {
		c.OverlayInterface = DefaultOverlayInterface
	}
	if c.StopGrace <= 0 {
		c.StopGrace = DefaultStopGrace
	}
	if c.CgroupParent == "" {
		c.CgroupParent = "/" + c.Namespace + "/" + strings.ReplaceAll(c.Block.String(), "/", "_")
	}
	if c.VolumesDir == "" {
		c.VolumesDir = filepath.Join(filepath.Dir(c.StateDir), "volumes")
	}
	if c.RestartBackoffMax <= 0 {
		c.RestartBackoffMax = DefaultRestartBackoffMax
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

func (c *Config) validate() error {
	if c.StateDir == "" {
		return fmt.Errorf("orchestrate: StateDir is required")
	}
	if !filepath.IsAbs(c.StateDir) {
		return fmt.Errorf("orchestrate: StateDir %q must be absolute", c.StateDir)
	}
	if !c.Block.IsValid() || !c.Block.Addr().Is4() {
		return fmt.Errorf("orchestrate: Block %v must be an IPv4 prefix", c.Block)
	}
	if c.Block != c.Block.Masked() {
		return fmt.Errorf("orchestrate: Block %v has host bits set", c.Block)
	}
	if c.Block.Bits() > 30 {
		return fmt.Errorf("orchestrate: Block %v leaves no task addresses", c.Block)
	}
	if len(c.Bridge) > 15 {
		return fmt.Errorf("orchestrate: bridge name %q longer than 15 bytes", c.Bridge)
	}
	return nil
}

// about makes st name the spec s it is about.
func (st *TaskStatus) about(s TaskSpec) {
	st.Image, st.SpecVersion, st.Revision = s.Image, s.SpecVersion, s.Revision
}

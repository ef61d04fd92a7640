package orchestrate

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"path"
	"path/filepath"
	"slices"
	"syscall"
	"time"

	tasks "github.com/containerd/containerd/api/services/tasks/v1"
	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/warren-appliance/warren/orchestrate/tasklog"
)

// Thin wrappers over containerd: create a task's container, start its
// process, stop and delete it.

// taskFiles are the per-task files bind-mounted into the container.
type taskFiles struct {
	dir string
}

func (f taskFiles) hosts() string      { return filepath.Join(f.dir, "hosts") }
func (f taskFiles) resolvConf() string { return filepath.Join(f.dir, "resolv.conf") }
func (f taskFiles) log() string        { return filepath.Join(f.dir, "log") }

// LogDir is where a task's rotated log files are (removed with the task).
func (f taskFiles) logDir() string { return filepath.Join(f.dir, "logs") }

// maxLogSize bounds a task's log file on the node's (SD card) disk.
const maxLogSize = 4 << 20

// trimLog empties the task's log once it outgrows maxLogSize. The shim
// appends with O_APPEND, so it carries on at the new end of the file.
func (f taskFiles) trimLog() error {
	st, err := os.Stat(f.log())
	if err != nil || st.Size() <= maxLogSize {
		return nil
	}
	if err := os.Truncate(f.log(), 0); err != nil {
		return fmt.Errorf("truncate %s: %w", f.log(), err)
	}
	return nil
}

// write puts the files in place. They are written in place rather than
// renamed over, so a running container's bind mount sees new content.
func (f taskFiles) write(name string, s TaskSpec, resolvConf []byte) error {
	if err := os.MkdirAll(f.dir, 0o755); err != nil {
		return fmt.Errorf("create task dir: %w", err)
	}
	if err := writeIfChanged(f.hosts(), hostsFile(name, s.IP)); err != nil {
		return err
	}
	return writeIfChanged(f.resolvConf(), resolvConf)
}

func writeIfChanged(path string, data []byte) error {
	if cur, err := os.ReadFile(path); err == nil && string(cur) == string(data) {
		return nil
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// createContainer makes the container of s from img, in the network
// namespace at nsPath, labelled as ours.
func (r *Reconciler) createContainer(ctx context.Context, s TaskSpec, img client.Image, hash, nsPath string, files taskFiles) (client.Container, error) {
	// A snapshot left by a crash between snapshot and container creation
	// would make WithNewSnapshot fail forever.
	if sn := r.client.SnapshotService(""); sn != nil {
		if _, err := sn.Stat(ctx, s.Name); err == nil {
			if err := sn.Remove(ctx, s.Name); err != nil {
				return nil, fmt.Errorf("remove stale snapshot %s: %w", s.Name, err)
			}
		}
	}
	workload, err := workloadSpecOpts(s, r.cfg.VolumesDir, r.cfg.NodeName)
	if err != nil {
		return nil, err
	}
	specOpts := []oci.SpecOpts{
		oci.WithImageConfig(img),
		oci.WithHostname(hostname(s)),
		oci.WithLinuxNamespace(specs.LinuxNamespace{Type: specs.NetworkNamespace, Path: nsPath}),
		oci.WithMounts([]specs.Mount{
			{Destination: "/etc/hosts", Type: "bind", Source: files.hosts(), Options: []string{"rbind", "ro"}},
			{Destination: "/etc/resolv.conf", Type: "bind", Source: files.resolvConf(), Options: []string{"rbind", "ro"}},
		}),
		oci.WithCgroup(path.Join(r.cfg.CgroupParent, s.Name)),
		withSysctl("net.ipv4.ping_group_range", pingGroupRange),
	}
	specOpts = append(specOpts, capabilityOpts(s)...)
	if len(s.SecretMounts) > 0 {
		var mounts []specs.Mount
		for _, fm := range s.SecretMounts {
			mounts = append(mounts, specs.Mount{Destination: fm.Target, Type: "bind", Source: fm.Source,
				Options: []string{"rbind", "ro", "nosuid", "nodev", "noexec"}})
		}
		specOpts = append(specOpts, oci.WithMounts(mounts))
	}
	if len(s.Env) > 0 {
		specOpts = append(specOpts, oci.WithEnv(s.Env))
	}
	if args := processArgs(s); len(args) > 0 {
		specOpts = append(specOpts, oci.WithProcessArgs(args...))
	}
	specOpts = append(specOpts, workload...)
	labels := map[string]string{
		labelTask:    s.Name,
		labelService: s.Service,
		labelSpec:    hash,
		labelIP:      s.IP.String(),
	}
	maps.Copy(labels, stopLabels(s))
	c, err := r.client.NewContainer(ctx, s.Name,
		client.WithImage(img),
		client.WithNewSnapshot(s.Name, img),
		client.WithNewSpec(specOpts...),
		client.WithContainerLabels(labels),
	)
	if errdefs.IsAlreadyExists(err) {
		return nil, fmt.Errorf("create container %s: a container of that name exists and is not managed by warren: %w", s.Name, err)
	}
	if err != nil {
		return nil, fmt.Errorf("create container %s: %w", s.Name, err)
	}
	return c, nil
}

// capabilityOpts change containerd's default capability set as s asks:
// without CAP_NET_RAW unless added back (see capabilities). As Docker's
// ALL: dropping ALL keeps only what is added; adding ALL gives every
// known capability but those dropped by name.
func capabilityOpts(s TaskSpec) []oci.SpecOpts {
	add, drop := capabilities(s)
	switch {
	case slices.Contains(drop, capAll):
		return []oci.SpecOpts{oci.WithCapabilities(add)}
	case slices.Contains(add, capAll):
		return []oci.SpecOpts{oci.WithAllKnownCapabilities, oci.WithDroppedCapabilities(drop)}
	default:
		return []oci.SpecOpts{oci.WithDroppedCapabilities(drop), oci.WithAddedCapabilities(add)}
	}
}

// withSysctl sets a sysctl of the container's namespaces (runc writes it
// in the task's network namespace, not the host's).
func withSysctl(key, value string) oci.SpecOpts {
	return func(_ context.Context, _ oci.Client, _ *containers.Container, s *oci.Spec) error {
		if s.Linux == nil {
			s.Linux = &specs.Linux{}
		}
		if s.Linux.Sysctl == nil {
			s.Linux.Sysctl = map[string]string{}
		}
		s.Linux.Sysctl[key] = value
		return nil
	}
}

// taskIO is where a task's output goes: with a logger binary, to its
// rotated log files (kept across restarts of the task and of the daemon);
// without, to one file truncated at each start.
func (r *Reconciler) taskIO(files taskFiles) (cio.Creator, error) {
	if r.cfg.LoggerBinary != "" {
		return cio.BinaryIO(r.cfg.LoggerBinary, tasklog.LoggerArgs(files.logDir(), r.cfg.LogMaxSize, r.cfg.LogMaxFiles)), nil
	}
	if err := os.WriteFile(files.log(), nil, 0o640); err != nil {
		return nil, fmt.Errorf("truncate task log: %w", err)
	}
	return cio.LogFile(files.log()), nil
}

// startTask starts the container's process with its output going where
// taskIO says.
func (r *Reconciler) startTask(ctx context.Context, c client.Container, files taskFiles) (client.Task, <-chan client.ExitStatus, error) {
	ioc, err := r.taskIO(files)
	if err != nil {
		return nil, nil, err
	}
	task, err := c.NewTask(ctx, ioc)
	if errdefs.IsAlreadyExists(err) {
		// A runtime task outlived its container (a crash while the task
		// was being recreated): its shim is alive but runc has nothing, so
		// it cannot be loaded through the container. Deleting it through
		// the task service removes it from containerd's list and stops the
		// shim; containerd 1.6 then reports the shim's NotFound.
		_, derr := r.client.TaskService().Delete(ctx, &tasks.DeleteTaskRequest{ContainerID: c.ID()})
		if derr != nil && !errdefs.IsNotFound(errgrpc.ToNative(derr)) {
			return nil, nil, fmt.Errorf("remove stale task %s: %w", c.ID(), derr)
		}
		r.log.Warn("removed a stale runtime task left by a crash", "task", c.ID())
		task, err = c.NewTask(ctx, ioc)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("create task %s: %w", c.ID(), err)
	}
	// Wait before Start, so an instant exit is not missed.
	exitCh, err := task.Wait(r.runCtx)
	if err != nil {
		task.Delete(ctx, client.WithProcessKill)
		return nil, nil, fmt.Errorf("wait on task %s: %w", c.ID(), err)
	}
	if err := task.Start(ctx); err != nil {
		task.Delete(ctx, client.WithProcessKill)
		return nil, nil, fmt.Errorf("start task %s: %w", c.ID(), err)
	}
	return task, exitCh, nil
}

// stopTask stops the container's process, SIGTERM first, SIGKILL after the
// grace period, and deletes the task.
func (r *Reconciler) stopTask(ctx context.Context, c client.Container) error {
	task, err := c.Task(ctx, nil)
	if errdefs.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("load task %s: %w", c.ID(), err)
	}
	st, err := task.Status(ctx)
	if err != nil && !errdefs.IsNotFound(err) {
		return fmt.Errorf("task %s status: %w", c.ID(), err)
	}
	if st.Status == client.Running || st.Status == client.Paused {
		labels, _ := c.Labels(ctx) // without them: SIGTERM and the node's grace
		sig, grace := stopSettings(labels, r.cfg.StopGrace)
		exitCh, err := task.Wait(ctx)
		if err != nil {
			return fmt.Errorf("wait on task %s: %w", c.ID(), err)
		}
		if err := task.Kill(ctx, sig); err != nil && !errdefs.IsNotFound(err) {
			return fmt.Errorf("signal %s to task %s: %w", sig, c.ID(), err)
		}
		select {
		case <-exitCh:
		case <-time.After(grace):
			if err := task.Kill(ctx, syscall.SIGKILL, client.WithKillAll); err != nil && !errdefs.IsNotFound(err) {
				return fmt.Errorf("SIGKILL task %s: %w", c.ID(), err)
			}
			select {
			case <-exitCh:
			case <-time.After(killWait):
				return fmt.Errorf("task %s did not exit %s after SIGKILL", c.ID(), killWait)
			}
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if _, err := task.Delete(ctx, client.WithProcessKill); err != nil && !errdefs.IsNotFound(err) {
		return fmt.Errorf("delete task %s: %w", c.ID(), err)
	}
	return nil
}

// killWait bounds the wait for a SIGKILLed process to be reaped.
const killWait = 30 * time.Second

// removeContainer stops and deletes the container with its snapshot, then
// its network and files.
func (r *Reconciler) removeContainer(ctx context.Context, c client.Container) error {
	name := c.ID()
	if err := r.stopTask(ctx, c); err != nil {
		return err
	}
	if err := c.Delete(ctx, client.WithSnapshotCleanup); err != nil && !errdefs.IsNotFound(err) {
		return fmt.Errorf("delete container %s: %w", name, err)
	}
	return r.removeTaskLeftovers(name)
}

// removeTaskLeftovers deletes what a task had besides its container.
func (r *Reconciler) removeTaskLeftovers(name string) error {
	var errs []error
	if err := r.net.removeTask(name); err != nil {
		errs = append(errs, err)
	}
	if err := os.RemoveAll(r.files(name).dir); err != nil {
		errs = append(errs, fmt.Errorf("remove files of %s: %w", name, err))
	}
	return errors.Join(errs...)
}

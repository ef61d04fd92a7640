package orchestrate

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/errdefs"
	"github.com/warren-appliance/warren/cluster/clustermap"
	"github.com/warren-appliance/warren/orchestrate/health"
)

// healthConcurrency bounds the health probes running at once on a node:
// a board with 20 tasks probes them in turn instead of forking 20 shells
// together. Each probe also runs inside its task's cgroup, so the task's
// CPU and memory limits apply to it.
const healthConcurrency = 3

var probeSeq atomic.Uint64

// imageHealth returns the HEALTHCHECK of img's config, nil when it has none.
func imageHealth(ctx context.Context, img client.Image) (*clustermap.HealthCheck, error) {
	desc, err := img.Config(ctx)
	if err != nil {
		return nil, fmt.Errorf("config of image %s: %w", img.Name(), err)
	}
	raw, err := content.ReadBlob(ctx, img.ContentStore(), desc)
	if err != nil {
		return nil, fmt.Errorf("read config of image %s: %w", img.Name(), err)
	}
	h, err := health.FromImageConfig(raw)
	if err != nil {
		return nil, fmt.Errorf("image %s: %w", img.Name(), err)
	}
	return h, nil
}

// taskHealthConfig is the check task s runs in container c: the service's
// over the image's HEALTHCHECK. ok is false without a check.
func (r *Reconciler) taskHealthConfig(ctx context.Context, s TaskSpec, c client.Container) (health.Config, bool, error) {
	if s.Health.Disabled() {
		return health.Config{}, false, nil
	}
	var fromImage *clustermap.HealthCheck
	img, err := c.Image(ctx)
	if err != nil {
		return health.Config{}, false, fmt.Errorf("image of %s: %w", s.Name, err)
	}
	if fromImage, err = imageHealth(ctx, img); err != nil {
		return health.Config{}, false, err
	}
	cfg, ok := health.Resolve(s.Health, fromImage)
	return cfg, ok, nil
}

// startHealth sets the health of a task whose process (watch generation
// gen) just started or was adopted, and starts its prober. It returns
// the health to report with the running state (nil without a check), so
// a new task never shows as running without its health. adopted tasks
// (running before this appliance started) are probed at once and report
// no health until that probe: a restarted appliance must not take its
// healthy tasks out of their endpoints.
func (r *Reconciler) startHealth(ctx context.Context, s TaskSpec, c client.Container, task client.Task, startedAt time.Time, adopted bool) (*health.State, func(gen int)) {
	cfg, ok, err := r.taskHealthConfig(ctx, s, c)
	if err != nil {
		// Probing blindly would be worse than not probing: say why.
		r.log.Warn("health check not set up", "task", s.Name, "err", err)
		return nil, func(int) {}
	}
	if !ok {
		return nil, func(int) {}
	}
	st := health.Start()
	initial := &st
	if adopted {
		initial = nil
	}
	return initial, func(gen int) {
		go r.probeLoop(s, cfg, c, task, gen, startedAt, adopted)
	}
}

// probeLoop probes one run of a task every interval until the run ends
// (its watch generation changes) or the task's check changes. A task
// that turns unhealthy is killed: the loop restarts it (with backoff) as
// after any exit, Swarm's replacement of an unhealthy task.
func (r *Reconciler) probeLoop(s TaskSpec, cfg health.Config, c client.Container, task client.Task, gen int, startedAt time.Time, adopted bool) {
	ctx := r.runCtx
	wait := cfg.Interval
	if adopted {
		wait = 0
	}
	timer := time.NewTimer(wait)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
		if !r.probeCurrent(s.Name, gen, s.Health) {
			return
		}
		res := r.probe(ctx, s.Name, cfg, task)
		if ctx.Err() != nil {
			return // the appliance is stopping: not the task's failure
		}
		r.mu.Lock()
		rec := r.records[s.Name]
		if rec == nil || rec.watchGen != gen {
			r.mu.Unlock()
			return
		}
		prev, cur := "", health.Start()
		if rec.status.Health != nil {
			prev, cur = rec.status.Health.Status, *rec.status.Health
		}
		next := health.Next(cur, cfg, startedAt, res)
		rec.status.Health = &next
		if next.Status == clustermap.HealthUnhealthy {
			rec.unhealthy = next.LastFailure()
		}
		r.mu.Unlock()
		if next.Status != prev {
			r.notify() // leaving or entering the endpoints: report at once
			r.log.Info("task health changed", "task", s.Name, "from", prev, "to", next.Status, "output", next.LastFailure())
		}
		if next.Status == clustermap.HealthUnhealthy {
			if err := task.Kill(ctx, syscall.SIGTERM); err != nil && !errdefs.IsNotFound(err) {
				r.log.Warn("stop unhealthy task", "task", s.Name, "err", err)
			}
			go r.killAfterGrace(ctx, s.Name, gen, task)
			return
		}
		timer.Reset(cfg.Interval)
	}
}

// probeCurrent reports whether the run of gen is still the task's and its
// service check is still check.
func (r *Reconciler) probeCurrent(name string, gen int, check *clustermap.HealthCheck) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	rec := r.records[name]
	spec, want := r.desired[name]
	return want && rec != nil && rec.watchGen == gen && sameCheck(spec.Health, check)
}

func sameCheck(a, b *clustermap.HealthCheck) bool {
	if a == nil || b == nil {
		return a == b
	}
	return fmt.Sprint(*a) == fmt.Sprint(*b)
}

// killAfterGrace SIGKILLs an unhealthy task that ignores SIGTERM.
func (r *Reconciler) killAfterGrace(ctx context.Context, name string, gen int, task client.Task) {
	select {
	case <-ctx.Done():
		return
	case <-time.After(r.cfg.StopGrace):
	}
	r.mu.Lock()
	rec := r.records[name]
	alive := rec != nil && rec.watchGen == gen
	r.mu.Unlock()
	if alive {
		if err := task.Kill(ctx, syscall.SIGKILL, client.WithKillAll); err != nil && !errdefs.IsNotFound(err) {
			r.log.Warn("kill unhealthy task", "task", name, "err", err)
		}
	}
}

// probe runs one check as an exec in the task, holding a slot of the
// node's probe semaphore, and kills it at the timeout.
func (r *Reconciler) probe(ctx context.Context, name string, cfg health.Config, task client.Task) health.Result {
	select {
	case r.probeSem <- struct{}{}:
	case <-ctx.Done():
		return health.Result{ExitCode: -1, Output: "cancelled"}
	}
	defer func() { <-r.probeSem }()
	start := time.Now()
	code, out, err := r.execProbe(ctx, name, cfg, task)
	res := health.Result{Start: start, End: time.Now(), ExitCode: code, Output: out}
	if err != nil {
		res.ExitCode, res.Output = -1, err.Error()
	}
	return res
}

var errProbeTimeout = errors.New("timeout")

func (r *Reconciler) execProbe(ctx context.Context, name string, cfg health.Config, task client.Task) (int, string, error) {
	args, err := health.Command(cfg.Test)
	if err != nil {
		return -1, "", err
	}
	c, err := r.client.LoadContainer(ctx, name)
	if err != nil {
		return -1, "", fmt.Errorf("load container: %w", err)
	}
	spec, err := c.Spec(ctx)
	if err != nil {
		return -1, "", fmt.Errorf("container spec: %w", err)
	}
	proc := *spec.Process
	proc.Args, proc.Terminal = args, false
	id := fmt.Sprintf("health-%d", probeSeq.Add(1))
	outPath := filepath.Join(r.files(name).dir, id+".out")
	defer os.Remove(outPath)
	p, err := task.Exec(ctx, id, &proc, cio.LogFile(outPath))
	if err != nil {
		return -1, "", fmt.Errorf("exec health check: %w", err)
	}
	defer func() {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if _, err := p.Delete(dctx, client.WithProcessKill); err != nil && !errdefs.IsNotFound(err) {
			r.log.Debug("delete health check process", "task", name, "err", err)
		}
	}()
	exitCh, err := p.Wait(ctx)
	if err != nil {
		return -1, "", fmt.Errorf("wait on health check: %w", err)
	}
	if err := p.Start(ctx); err != nil {
		return -1, "", fmt.Errorf("start health check: %w", err)
	}
	code := -1
	var runErr error
	select {
	case st := <-exitCh:
		code = int(st.ExitCode())
	case <-time.After(cfg.Timeout):
		_ = p.Kill(ctx, syscall.SIGKILL)
		<-exitCh
		runErr = fmt.Errorf("health check exceeded timeout (%s): %w", cfg.Timeout, errProbeTimeout)
	case <-ctx.Done():
		return -1, "", ctx.Err()
	}
	out := readHead(outPath, health.MaxOutputLen)
	if runErr != nil {
		return -1, out, runErr
	}
	return code, out, nil
}

// readHead returns up to n bytes of the file at path.
func readHead(path string, n int64) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	b, _ := io.ReadAll(io.LimitReader(f, n))
	return string(b)
}

package orchestrate

import (
	"context"
	"errors"
	"fmt"
	"github.com/warren-appliance/warren/orchestrate/registry"
	"log/slog"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/leases"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	"github.com/warren-appliance/warren/cluster/clustermap"
	"github.com/warren-appliance/warren/orchestrate/health"
)

// Loop timing.
const (
	imageScanInterval = 2 * time.Second  // airgap dir poll
	resyncInterval    = 10 * time.Second // full pass even without events
	failedPassRetry   = time.Second      // a failed pass (containerd down) is retried after this
	firstBackoff      = 500 * time.Millisecond
	healthyAfter      = 30 * time.Second // a run this long resets the backoff
	shutdownKept      = 5 * time.Minute  // how long removed tasks stay in Status
	parallelism       = 4                // tasks converged at once
)

// Reconciler converges containerd and the task network to the desired tasks.
type Reconciler struct {
	cfg    Config
	log    *slog.Logger
	client *client.Client
	net    *network
	images *imageStore
	runCtx context.Context // Run's context: task watchers live as long as it

	wake          chan struct{}
	changed       chan struct{} // a task's reported status changed (buffer 1)
	hostCheckedAt time.Time     // last good ensureHost; only the loop touches it

	removeSem chan struct{} // bounds background removals
	probeSem  chan struct{} // bounds health probes running at once

	mu       sync.Mutex
	applied  bool // Apply was called: until then, nothing is removed
	synced   bool // a pass after Apply completed: Status reflects the node
	desired  map[string]TaskSpec
	records  map[string]*taskRecord
	removing map[string]netip.Addr // tasks being removed, with the IP they hold
}

// taskRecord is what the loop knows about one task between passes.
type taskRecord struct {
	status      TaskStatus
	failures    int       // consecutive failures, for the backoff
	retryAt     time.Time // no new attempt before this
	startedAt   time.Time
	exitNoted   bool        // the process exited; restart once retryAt passes
	noRestart   bool        // exitNoted, and the restart policy leaves it stopped
	restarts    []time.Time // when the task was restarted after exits (restart policy)
	watchGen    int         // generation of the current exit watcher, 0 when none
	nextGen     int
	removedAt   time.Time
	imageFailed bool
	unhealthy   string // the run was stopped as unhealthy: the last probe's output
}

// New connects to containerd (lazily: the daemon may come up later) and
// prepares the state directories. It changes nothing on the node.
func New(ctx context.Context, cfg Config) (*Reconciler, error) {
	cfg.setDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	for _, d := range []string{cfg.StateDir, filepath.Join(cfg.StateDir, "netns"), filepath.Join(cfg.StateDir, "files")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, fmt.Errorf("orchestrate: create state dir: %w", err)
		}
	}
	c, err := client.New(cfg.ContainerdAddress, client.WithDefaultNamespace(cfg.Namespace))
	if err != nil {
		return nil, fmt.Errorf("orchestrate: containerd client for %s: %w", cfg.ContainerdAddress, err)
	}
	log := cfg.Logger.With("component", "orchestrate")
	r := &Reconciler{
		cfg:    cfg,
		log:    log,
		client: c,
		net: &network{
			bridge: cfg.Bridge, overlay: cfg.OverlayInterface, block: cfg.Block,
			containerSubnet: cfg.ContainerSubnet,
			nodeSubnet:      cfg.NodeSubnet,
			nsDir:           filepath.Join(cfg.StateDir, "netns"),
			forwardOrig:     filepath.Join(cfg.StateDir, "ip_forward.orig"),
			fw:              cfg.Firewall,
		},
		images:    newImageStore(c, cfg.ImagesDir, log),
		runCtx:    namespaces.WithNamespace(ctx, cfg.Namespace),
		wake:      make(chan struct{}, 1),
		changed:   make(chan struct{}, 1),
		desired:   map[string]TaskSpec{},
		records:   map[string]*taskRecord{},
		removing:  map[string]netip.Addr{},
		removeSem: make(chan struct{}, parallelism),
		probeSem:  make(chan struct{}, healthConcurrency),
	}
	r.images.onPulled = r.poke
	r.images.namespace = cfg.Namespace
	return r, nil
}

// Close releases the containerd connection.
func (r *Reconciler) Close() error { return r.client.Close() }

// Apply replaces the desired task list and wakes the loop. Tasks not in
// the list are stopped and removed on the next pass.
func (r *Reconciler) Apply(desired []TaskSpec) {
	r.mu.Lock()
	r.applied = true
	old := r.desired
	r.desired = make(map[string]TaskSpec, len(desired))
	for _, s := range desired {
		r.desired[s.Name] = s
		rec := r.records[s.Name]
		prev, had := old[s.Name]
		// A new or changed spec starts over: pending, no backoff, and the
		// status names the new image until a pass reports on it.
		if rec == nil || !rec.removedAt.IsZero() || !had || !reflect.DeepEqual(prev, s) {
			r.records[s.Name] = &taskRecord{status: TaskStatus{Name: s.Name, State: clustermap.TaskPending, Image: s.Image, SpecVersion: s.SpecVersion, Revision: s.Revision}}
		}
	}
	r.mu.Unlock()
	r.poke()
}

// Changed receives a value after a task's status changed in a way others
// act on (running, failed, exited, shut down; not "starting"), coalesced:
// one value may stand for many changes. The node then reports at once
// instead of at its next heartbeat.
func (r *Reconciler) Changed() <-chan struct{} { return r.changed }

func (r *Reconciler) notify() {
	select {
	case r.changed <- struct{}{}:
	default:
	}
}

func (r *Reconciler) poke() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// Synced reports whether a pass over the desired tasks has completed
// since the first Apply. Until then Status holds only what Apply assumed
// (pending), not what runs: a restarted daemon has not adopted its
// running tasks yet.
func (r *Reconciler) Synced() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.synced
}

// Status reports every desired task, and tasks removed in the last few
// minutes as shut down, sorted by name.
func (r *Reconciler) Status() []TaskStatus {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]TaskStatus, 0, len(r.records))
	for name, rec := range r.records {
		if !rec.removedAt.IsZero() && time.Since(rec.removedAt) > shutdownKept {
			delete(r.records, name)
			continue
		}
		st := rec.status
		if st.State == clustermap.TaskStarting || st.State == clustermap.TaskPending {
			if ref, err := normalizeRef(st.Image); err == nil {
				st.PullDone, st.PullTotal = r.images.pullProgress(ref)
			}
		}
		out = append(out, st)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Run is the loop: it sets up the bridge and rules, imports image
// tarballs, converges on every Apply, task exit and retry deadline, and
// resyncs periodically. Nothing is created or removed for tasks before the
// first Apply. It returns when ctx ends, leaving the tasks running (a
// restarted daemon adopts them).
func (r *Reconciler) Run(ctx context.Context) error {
	ctx = namespaces.WithNamespace(ctx, r.cfg.Namespace)
	r.runCtx = ctx
	if c, err := Capacity(); err != nil {
		r.log.Warn("tasks' memory ceiling not set", "err", err)
	} else {
		limit := tasksMemoryMax(r.cfg.TasksMemoryMax, c.MemoryBytes)
		if err := applyParentMemoryMax(cgroupRoot, r.cfg.CgroupParent, limit); err != nil {
			r.log.Warn("tasks' memory ceiling not set", "cgroup", r.cfg.CgroupParent, "err", err)
		} else {
			r.log.Info("tasks' memory ceiling", "cgroup", r.cfg.CgroupParent, "bytes", limit)
		}
	}
	if _, err := r.images.importNew(ctx); err != nil {
		r.log.Warn("image import", "err", err)
	}
	// Later tarballs are imported beside the loop: a big one on a slow
	// board must not hold up restarts.
	go r.watchImages(ctx)
	resync := time.NewTicker(resyncInterval)
	defer resync.Stop()
	retry := time.NewTimer(time.Hour)
	defer retry.Stop()
	lastPass := time.Time{}
	dirty := true
	for {
		r.mu.Lock()
		applied := r.applied
		r.mu.Unlock()
		if !applied && r.hostCheckedAt.IsZero() {
			// The bridge comes up before the first map, so services bound
			// to its address (DNS) can start; tasks wait for Apply.
			if err := r.net.ensureHost(); err != nil {
				r.log.Warn("host network", "err", err)
			} else {
				r.hostCheckedAt = time.Now()
			}
		}
		if applied && dirty {
			if err := r.converge(ctx); err != nil {
				r.log.Warn("converge", "err", err)
			} else {
				dirty = false
				r.mu.Lock()
				first := !r.synced
				r.synced = true
				r.mu.Unlock()
				if first {
					r.notify() // the node's states are known from now on
				}
			}
			lastPass = time.Now()
		}
		wait := r.untilNextRetry()
		if applied && dirty {
			wait = failedPassRetry // the pass failed (containerd down?): retry, without spinning
		}
		retry.Reset(wait)
		select {
		case <-ctx.Done():
			return nil
		case <-r.wake:
			dirty = true
		case <-retry.C:
			dirty = true
		case <-resync.C:
			if time.Since(lastPass) >= resyncInterval || !applied {
				dirty = true
			}
		}
	}
}

// watchImages polls the images dir for new tarballs and lets tasks waiting
// for an image retry once one is imported.
func (r *Reconciler) watchImages(ctx context.Context) {
	scan := time.NewTicker(imageScanInterval)
	defer scan.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-scan.C:
		}
		n, err := r.images.importNew(ctx)
		if err != nil {
			r.log.Warn("image import", "err", err)
		}
		if n > 0 {
			r.retryImageFailures()
			r.poke()
		}
	}
}

// untilNextRetry is the time to the earliest pending retry or restart.
func (r *Reconciler) untilNextRetry() time.Duration {
	r.mu.Lock()
	defer r.mu.Unlock()
	next := time.Hour
	for name, rec := range r.records {
		if _, ok := r.desired[name]; !ok || rec.retryAt.IsZero() {
			continue
		}
		next = min(next, max(time.Until(rec.retryAt), time.Millisecond))
	}
	return next
}

// retryImageFailures lets tasks that failed on a missing image try again
// at once: a tarball just arrived.
func (r *Reconciler) retryImageFailures() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, rec := range r.records {
		if rec.imageFailed {
			rec.retryAt = time.Time{}
		}
	}
}

func (r *Reconciler) files(name string) taskFiles {
	return taskFiles{dir: filepath.Join(r.cfg.StateDir, "files", name)}
}

// converge runs one pass: observe containerd and the node, plan (pure:
// plan.go), and carry the plan out.
func (r *Reconciler) converge(ctx context.Context) error {
	// The host part rarely changes; check it once per resync interval
	// (iptables costs an exec per check) and whenever it last failed.
	if time.Since(r.hostCheckedAt) >= resyncInterval {
		if err := r.net.ensureHost(); err != nil {
			return fmt.Errorf("host network: %w", err)
		}
		r.hostCheckedAt = time.Now()
	}
	in, handles, err := r.observe(ctx)
	if err != nil {
		return err
	}
	p := planPass(in)

	var mu sync.Mutex
	var errs []error
	var wg sync.WaitGroup
	sem := make(chan struct{}, parallelism)
	for _, a := range p.actions {
		h := handles[a.task]
		switch a.kind {
		case actRemove:
			// Beside the loop: a process that ignores SIGTERM holds up
			// nothing else for its grace.
			r.startRemoval(ctx, a.task, a.ip, h.container)
			continue
		case actMarkShutdown:
			r.markShutdown(a.task)
			continue
		case actWaitIP:
			r.log.Info("waiting for the task that holds the IP to be removed", "task", a.task, "ip", a.spec.IP, "holder", a.holder)
			continue
		}
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if err := r.execute(ctx, a, h); err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if err := r.net.removeStrayVeths(p.keepVeths); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// handle is the containerd side of an observed task container.
type handle struct {
	container client.Container
	task      client.Task // nil without a runtime task
}

// observe gathers a pass's input: our containers with their labels and
// processes, the task namespaces, and copies of the loop's own state.
func (r *Reconciler) observe(ctx context.Context) (planInput, map[string]handle, error) {
	in := planInput{block: r.cfg.Block, observed: map[string]observed{}}
	containers, err := r.client.Containers(ctx, fmt.Sprintf("labels.%q", labelTask))
	if err != nil {
		return in, nil, fmt.Errorf("list containers: %w", err)
	}
	handles := make(map[string]handle, len(containers))
	var mu sync.Mutex
	var errs []error
	var wg sync.WaitGroup
	sem := make(chan struct{}, parallelism)
	for _, c := range containers {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			o, h, err := observeContainer(ctx, c)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, err)
				return
			}
			in.observed[c.ID()], handles[c.ID()] = o, h
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return in, nil, err
	}
	if in.netns, err = r.net.taskNamespaces(); err != nil {
		return in, nil, err
	}
	r.mu.Lock()
	in.desired = maps.Clone(r.desired)
	in.removing = maps.Clone(r.removing)
	in.records = make(map[string]taskRecord, len(r.records))
	for name, rec := range r.records {
		in.records[name] = *rec
	}
	r.mu.Unlock()
	in.now = time.Now()
	in.backoffCap = r.cfg.RestartBackoffMax
	for name, o := range in.observed {
		if o.proc == procStopped {
			o.oomKilled = r.oomKilled(name)
			in.observed[name] = o
		}
	}
	return in, handles, nil
}

func observeContainer(ctx context.Context, c client.Container) (observed, handle, error) {
	h := handle{container: c}
	labels, err := c.Labels(ctx)
	if err != nil {
		return observed{}, h, fmt.Errorf("labels of %s: %w", c.ID(), err)
	}
	o := observed{specHash: labels[labelSpec], restarts: parseRestarts(labels[labelRestarts])}
	o.ip, _ = netip.ParseAddr(labels[labelIP])
	task, err := c.Task(ctx, nil)
	if errdefs.IsNotFound(err) {
		return o, h, nil
	}
	if err != nil {
		return o, h, fmt.Errorf("load task %s: %w", c.ID(), err)
	}
	st, err := task.Status(ctx)
	if err != nil {
		return o, h, fmt.Errorf("task %s status: %w", c.ID(), err)
	}
	h.task = task
	switch st.Status {
	case client.Running, client.Paused, client.Pausing:
		o.proc = procRunning
	case client.Stopped:
		o.proc, o.exitStatus = procStopped, st.ExitStatus
	default:
		o.proc = procCreated
	}
	return o, h, nil
}

// execute carries out one action on a desired task.
func (r *Reconciler) execute(ctx context.Context, a action, h handle) error {
	s := a.spec
	files := r.files(s.Name)
	if a.repair {
		// Adopted or existing: repair the network and files if needed.
		if _, err := r.net.ensureTask(s.Name, s.IP); err != nil {
			r.fail(s, err, false)
			return nil
		}
		if err := files.write(s.Name, s, r.cfg.ResolvConf); err != nil {
			r.fail(s, err, false)
			return nil
		}
	}
	switch a.kind {
	case actFail:
		if a.removeFirst {
			if err := r.removeContainer(ctx, h.container); err != nil {
				return err
			}
		}
		r.recordFailure(a)
	case actWait:
	case actCreate:
		return r.create(ctx, a)
	case actRecreate:
		r.log.Info("task spec changed, recreating", "task", s.Name)
		if err := r.removeContainer(ctx, h.container); err != nil {
			return err
		}
		if a.create {
			return r.create(ctx, a)
		}
	case actKeep:
		r.noteRunning(ctx, a, h)
		if r.cfg.LoggerBinary == "" { // the logger bounds its own files
			if err := files.trimLog(); err != nil {
				r.log.Warn("trim task log", "task", s.Name, "err", err)
			}
		}
	case actNoteExit:
		r.recordExit(a)
	case actRestart:
		if _, err := h.task.Delete(ctx, client.WithProcessKill); err != nil && !errdefs.IsNotFound(err) {
			return fmt.Errorf("delete old task %s: %w", s.Name, err)
		}
		return r.start(ctx, s, h.container, files)
	case actStart:
		return r.start(ctx, s, h.container, files)
	case actRemoveLeftovers:
		return r.removeTaskLeftovers(a.task)
	}
	return nil
}

// create makes the task's network, files and container, then starts it.
func (r *Reconciler) create(ctx context.Context, a action) error {
	s := a.spec
	files := r.files(s.Name)
	r.setState(s, clustermap.TaskStarting, "")
	img, err := r.images.ensure(ctx, a.ref)
	if errors.Is(err, errPulling) {
		return nil // the pull's end wakes the loop
	}
	if err != nil {
		r.fail(s, err, true)
		return nil
	}
	nsPath, err := r.net.ensureTask(s.Name, s.IP)
	if err == nil {
		err = files.write(s.Name, s, r.cfg.ResolvConf)
	}
	var c client.Container
	if err == nil {
		c, err = r.createContainer(ctx, s, img, a.hash, nsPath, files)
	}
	if err != nil {
		// Nothing half-made stays behind.
		if cleanErr := r.removeTaskLeftovers(s.Name); cleanErr != nil {
			r.log.Warn("clean up after failed create", "task", s.Name, "err", cleanErr)
		}
		r.fail(s, err, false)
		return nil
	}
	r.log.Info("created task", "task", s.Name, "ip", s.IP, "image", a.ref)
	return r.start(ctx, s, c, files)
}

// startRemoval removes container c of task name, which holds ip, in the
// background. Its end wakes the loop; a failure is retried by the next
// resync.
func (r *Reconciler) startRemoval(ctx context.Context, name string, ip netip.Addr, c client.Container) {
	r.mu.Lock()
	if _, busy := r.removing[name]; busy {
		r.mu.Unlock()
		return
	}
	r.removing[name] = ip
	r.mu.Unlock()
	go func() {
		r.removeSem <- struct{}{}
		defer func() { <-r.removeSem }()
		r.log.Info("removing task", "task", name)
		err := r.removeContainer(ctx, c)
		r.mu.Lock()
		delete(r.removing, name)
		r.mu.Unlock()
		if err != nil {
			r.log.Warn("remove task", "task", name, "err", err)
			return
		}
		r.markRemoved(name)
		r.poke()
	}()
}

// markShutdown records a task dropped before it had a container as shut
// down, unless an Apply since wants it again.
func (r *Reconciler) markShutdown(name string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, want := r.desired[name]; want {
		return
	}
	if rec := r.records[name]; rec != nil && rec.removedAt.IsZero() {
		rec.status.State, rec.status.Error = clustermap.TaskShutdown, ""
		rec.removedAt = time.Now()
		r.notify()
	}
}

// recordLocked returns name's record, making one if needed; r.mu is held.
func (r *Reconciler) recordLocked(name string) *taskRecord {
	rec := r.records[name]
	if rec == nil {
		rec = &taskRecord{status: TaskStatus{Name: name, State: clustermap.TaskPending}}
		r.records[name] = rec
	}
	return rec
}

// setState records the state of task s; the status names s's image, so a
// report about a spec that Apply has since replaced says so.
func (r *Reconciler) setState(s TaskSpec, state, errText string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if rec := r.records[s.Name]; rec != nil {
		rec.status.State, rec.status.Error = state, errText
		rec.status.about(s)
		// Not a change anyone acts on (only "starting" comes here): it
		// waits for the next report, so a burst of starts sends fewer.
	}
}

// fail records a failed attempt and schedules the next one.
func (r *Reconciler) fail(s TaskSpec, err error, imageFailure bool) {
	name := s.Name
	r.mu.Lock()
	rec := r.recordLocked(name)
	rec.failures++
	rec.retryAt = time.Now().Add(backoff(rec.failures, r.cfg.RestartBackoffMax))
	rec.imageFailed = imageFailure
	rec.status.State, rec.status.Error = clustermap.TaskFailed, err.Error()
	rec.status.about(s)
	r.mu.Unlock()
	r.notify()
	r.log.Warn("task failed", "task", name, "err", err)
}

func (r *Reconciler) markRemoved(name string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, wanted := r.desired[name]; wanted {
		return // an Apply during the removal wants it back: its record is fresh
	}
	r.records[name] = &taskRecord{
		status:    TaskStatus{Name: name, State: clustermap.TaskShutdown},
		removedAt: time.Now(),
	}
	r.notify()
}

// start starts the container's process and watches it for exit.
func (r *Reconciler) start(ctx context.Context, s TaskSpec, c client.Container, files taskFiles) error {
	name := s.Name
	r.setState(s, clustermap.TaskStarting, "")
	task, exitCh, err := r.startTask(ctx, c, files)
	if err != nil {
		r.fail(s, err, false)
		return nil
	}
	r.mu.Lock()
	rec := r.recordLocked(name)
	if rec.exitNoted {
		rec.status.Restarts++
		// Only the last MaxAttempts restarts can matter to the policy.
		if keep := s.Restart.MaxAttempts; keep > 0 {
			rec.restarts = append(rec.restarts, time.Now())
			if len(rec.restarts) > keep {
				rec.restarts = slices.Clone(rec.restarts[len(rec.restarts)-keep:])
			}
		}
		rec.exitNoted, rec.noRestart = false, false
	}
	restarts := slices.Clone(rec.restarts)
	r.mu.Unlock()
	startedAt := time.Now()
	// The health goes with the running state in one report: a task with a
	// check enters its endpoints only once a probe passes.
	hs, probe := r.startHealth(ctx, s, c, task, startedAt, false)
	r.mu.Lock()
	rec = r.recordLocked(name)
	rec.status.ExitCode, rec.status.Exited, rec.status.OOMKilled, rec.status.NextRestart = 0, false, false, time.Time{}
	rec.startedAt = startedAt
	rec.retryAt = time.Time{}
	rec.unhealthy = ""
	rec.status.State, rec.status.Error = clustermap.TaskRunning, ""
	rec.status.Health = hs
	rec.status.about(s)
	gen := r.newWatch(rec)
	r.mu.Unlock()
	r.notify()
	if len(restarts) > 0 {
		// On the container too, so a restarted daemon still counts them.
		if err := setRestartsLabel(ctx, c, restarts); err != nil {
			r.log.Warn("record restarts on the container", "task", name, "err", err)
		}
	}
	go r.watch(name, gen, exitCh)
	probe(gen)
	r.log.Info("started task", "task", name, "pid", task.Pid())
	return nil
}

// noteRunning records a running task (a.startedAt, a.failures) and makes
// sure an exit watcher is on it.
func (r *Reconciler) noteRunning(ctx context.Context, a action, h handle) {
	task := h.task
	r.mu.Lock()
	needWatch := r.recordLocked(a.task).watchGen == 0
	r.mu.Unlock()
	var hs *health.State
	probe := func(int) {}
	if needWatch {
		// Adopted, or its watch broke: probe at once, so a restarted
		// appliance puts its healthy tasks back without a full interval.
		hs, probe = r.startHealth(ctx, a.spec, h.container, task, a.startedAt, true)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	rec := r.recordLocked(a.task)
	rec.startedAt, rec.failures, rec.retryAt = a.startedAt, a.failures, time.Time{}
	if rec.status.State != clustermap.TaskRunning || rec.status.Image != a.spec.Image || rec.status.SpecVersion != a.spec.SpecVersion || rec.status.Revision != a.spec.Revision || rec.status.Error != "" || needWatch {
		r.notify()
	}
	rec.status.State, rec.status.Error = clustermap.TaskRunning, ""
	rec.status.about(a.spec)
	if rec.watchGen != 0 {
		return
	}
	rec.status.Health = hs
	exitCh, err := task.Wait(r.runCtx)
	if err != nil {
		r.log.Warn("watch task", "task", a.task, "err", err)
		return
	}
	gen := r.newWatch(rec)
	go r.watch(a.task, gen, exitCh)
	probe(gen)
}

// recordExit records that a task's process exited, and when it restarts.
func (r *Reconciler) recordExit(a action) {
	r.mu.Lock()
	rec := r.recordLocked(a.task)
	rec.exitNoted, rec.noRestart = true, a.noRestart
	rec.unhealthy = ""
	if len(rec.restarts) == 0 && len(a.restarts) > 0 {
		rec.restarts = a.restarts // counted before a daemon restart (container label)
		rec.status.Restarts = max(rec.status.Restarts, len(a.restarts))
	}
	rec.failures, rec.retryAt = a.failures, a.retryAt
	rec.status.State, rec.status.Error = a.state, a.err
	rec.status.about(a.spec)
	rec.status.Exited, rec.status.ExitCode, rec.status.OOMKilled = true, int(a.exitStatus), a.oomKilled
	rec.status.NextRestart = a.retryAt
	r.mu.Unlock()
	r.notify()
	r.log.Warn("task exited", "task", a.task, "status", a.exitStatus, "oom_killed", a.oomKilled, "restart", !a.noRestart)
}

// recordFailure records a failure the planner found, with its backoff.
func (r *Reconciler) recordFailure(a action) {
	r.mu.Lock()
	rec := r.recordLocked(a.task)
	rec.failures, rec.retryAt, rec.imageFailed = a.failures, a.retryAt, a.imageFailure
	rec.status.State, rec.status.Error = clustermap.TaskFailed, a.err
	rec.status.about(a.spec)
	r.mu.Unlock()
	r.notify()
	r.log.Warn("task failed", "task", a.task, "err", a.err)
}

func (r *Reconciler) newWatch(rec *taskRecord) int {
	rec.nextGen++
	rec.watchGen = rec.nextGen
	return rec.watchGen
}

// watch wakes the loop when the task's process exits (or the watch breaks,
// e.g. containerd restarted): the next pass looks at it again.
func (r *Reconciler) watch(name string, gen int, exitCh <-chan client.ExitStatus) {
	select {
	case <-exitCh:
	case <-r.runCtx.Done():
		return
	}
	r.mu.Lock()
	if rec := r.records[name]; rec != nil && rec.watchGen == gen {
		rec.watchGen = 0
	}
	r.mu.Unlock()
	r.poke()
}

// Cleanup removes everything this package made on the node: our
// containers (with their tasks and snapshots), the task namespaces and
// veths, the bridge and the iptables chains. Containers of other
// containerd users and unlabelled ones are left alone.
func (r *Reconciler) Cleanup(ctx context.Context) error {
	return r.cleanup(ctx)
}

// removeImagesAndNamespace deletes every image and lease of our containerd
// namespace (their content and snapshots are then garbage-collected) and
// the namespace itself, so a purged package leaves nothing in containerd.
// Other namespaces are not touched.
func (r *Reconciler) removeImagesAndNamespace(ctx context.Context) []error {
	if _, err := os.Stat(r.cfg.ContainerdAddress); err != nil {
		return nil // containerd not running: said above
	}
	var errs []error
	imgs, err := r.client.ImageService().List(ctx)
	if err != nil {
		return []error{fmt.Errorf("list images: %w", err)}
	}
	for _, img := range imgs {
		if err := r.client.ImageService().Delete(ctx, img.Name, images.SynchronousDelete()); err != nil && !errdefs.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("remove image %s: %w", img.Name, err))
		}
	}
	// An import or pull cut short (the daemon stopped mid-way) can leave
	// its lease behind, holding blobs and snapshots for a day.
	ls, err := r.client.LeasesService().List(ctx)
	if err != nil {
		errs = append(errs, fmt.Errorf("list leases: %w", err))
	}
	for _, l := range ls {
		if err := r.client.LeasesService().Delete(ctx, l, leases.SynchronousDelete); err != nil && !errdefs.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("remove lease %s: %w", l.ID, err))
		}
	}
	if len(errs) > 0 {
		return errs
	}
	if err := r.client.NamespaceService().Delete(ctx, r.cfg.Namespace); err != nil && !errdefs.IsNotFound(err) {
		// Content still referenced by a lease (a pull cut short) keeps the
		// namespace; containerd's GC frees it later.
		r.log.Warn("containerd namespace not removed", "namespace", r.cfg.Namespace, "err", err)
	} else if err == nil {
		r.log.Info("removed containerd namespace and its images", "namespace", r.cfg.Namespace, "images", len(imgs))
	}
	return nil
}

func (r *Reconciler) cleanup(ctx context.Context) error {
	ctx = namespaces.WithNamespace(ctx, r.cfg.Namespace)
	var errs []error
	var containers []client.Container
	// Without containerd there are no containers to list; the task
	// networks, rules and bridge are still ours to remove.
	if _, statErr := os.Stat(r.cfg.ContainerdAddress); statErr != nil {
		r.log.Warn("containerd is not running: containers not removed, task networks are", "socket", r.cfg.ContainerdAddress)
	} else {
		var err error
		containers, err = r.client.Containers(ctx, fmt.Sprintf("labels.%q", labelTask))
		if err != nil {
			errs = append(errs, fmt.Errorf("list containers: %w", err))
		}
	}
	for _, c := range containers {
		if err := r.removeContainer(ctx, c); err != nil {
			errs = append(errs, err)
		}
	}
	errs = append(errs, r.removeImagesAndNamespace(ctx)...)
	names, err := r.net.taskNamespaces()
	if err != nil {
		errs = append(errs, err)
	}
	for _, name := range names {
		if err := r.removeTaskLeftovers(name); err != nil {
			errs = append(errs, err)
		}
	}
	if err := r.net.removeStrayVeths(nil); err != nil {
		errs = append(errs, err)
	}
	if err := r.net.removeHost(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// SetRegistries gives pulls the cluster's registries: TLS, credentials
// (kept in memory only) and mirrors.
func (r *Reconciler) SetRegistries(regs []registry.Config) { r.images.setRegistries(regs) }

package orchestrate

import (
	"fmt"
	"net/netip"
	"sort"
	"time"
)

// The pure half of a pass: plan turns what is wanted (desired tasks), what
// runs (containerd's containers and processes, the task namespaces), what
// the loop remembers (records: failures, backoff, exits) and the time into
// actions. The executor (converge) only observes and carries them out.

// procState is what containerd shows of a task container's process.
type procState int

const (
	procNone    procState = iota // no runtime task
	procCreated                  // created but never started (a crash between create and start)
	procRunning                  // running or paused
	procStopped                  // exited
)

// observed is one of our containers as containerd shows it.
type observed struct {
	specHash   string     // labelSpec
	ip         netip.Addr // labelIP
	proc       procState
	exitStatus uint32 // procStopped only
	oomKilled  bool   // procStopped only: the task's cgroup counted an OOM kill
	// restarts are the restart times recorded on the container (they
	// outlive a daemon restart; the loop's record has them otherwise).
	restarts []time.Time
}

// planInput is everything a pass decides on. Maps are the planner's own
// copies; it changes none of them.
type planInput struct {
	block    netip.Prefix          // the node's container block
	desired  map[string]TaskSpec   // by task name
	observed map[string]observed   // our containers, by task name
	netns    []string              // task network namespaces present on the node
	records  map[string]taskRecord // the loop's memory, by task name
	removing map[string]netip.Addr // removals under way, with the IP each holds
	now      time.Time
	// backoffCap bounds the wait between consecutive failed attempts.
	backoffCap time.Duration
}

type actionKind int

const (
	// actRemove stops and deletes a container no longer desired (in the
	// background), then its network and files.
	actRemove actionKind = iota + 1
	// actMarkShutdown records a task dropped before it had a container.
	actMarkShutdown
	// actFail records a failed attempt (bad spec, IP given twice) and its
	// backoff; removeFirst: its container must go first.
	actFail
	// actWaitIP: the task's IP is still held by a task being removed.
	actWaitIP
	// actWait: backing off after a failure or an exit; nothing to do yet.
	actWait
	// actCreate makes network, files and container, then starts it.
	actCreate
	// actRecreate removes a container whose spec changed, then creates
	// it again unless backing off (create).
	actRecreate
	// actKeep: running as wanted (adopted after an appliance restart, or
	// ours); make sure an exit watcher is on it.
	actKeep
	// actNoteExit records a process exit and, as the restart policy says,
	// schedules its restart or leaves it stopped.
	actNoteExit
	// actRestart replaces an exited (or never started) process.
	actRestart
	// actStart starts a container that has no process.
	actStart
	// actRemoveLeftovers deletes the network and files of a task without
	// container that is not desired (a crash mid-create or mid-remove).
	actRemoveLeftovers
)

var actionNames = map[actionKind]string{
	actRemove: "remove", actMarkShutdown: "mark-shutdown", actFail: "fail", actWaitIP: "wait-ip", actWait: "wait",
	actCreate: "create", actRecreate: "recreate", actKeep: "keep", actNoteExit: "note-exit", actRestart: "restart",
	actStart: "start", actRemoveLeftovers: "remove-leftovers",
}

func (k actionKind) String() string { return actionNames[k] }

// action is one step of a plan.
type action struct {
	kind actionKind
	task string
	spec TaskSpec // desired tasks
	ref  string   // normalised image reference (create, recreate)
	hash string   // spec hash to label the container with (create, recreate)
	// repair: an existing container of a desired task; its network and
	// files are checked first.
	repair bool
	create bool // actRecreate: create right after the removal

	// Record updates (fail, note-exit, keep).
	failures     int
	retryAt      time.Time
	startedAt    time.Time // keep: when the run began (now for an adopted one)
	err          string    // fail, note-exit: the status error
	imageFailure bool
	removeFirst  bool        // fail: the container goes first
	exitStatus   uint32      // note-exit
	oomKilled    bool        // note-exit
	noRestart    bool        // note-exit: the restart policy leaves it stopped
	state        string      // note-exit: the reported state (failed, complete)
	restarts     []time.Time // note-exit: the restart history the decision counted
	holder       string      // wait-ip: the task being removed that holds the IP
	ip           netip.Addr  // remove: the IP the container held
}

// plan is a pass's actions, in task-name order, and the veths to keep.
type plan struct {
	actions   []action
	keepVeths map[string]bool
}

// planPass decides one pass. It has no side effects.
func planPass(in planInput) plan {
	var p plan
	removing := make(map[string]netip.Addr, len(in.removing))
	for name, ip := range in.removing {
		removing[name] = ip
	}
	// Containers no longer desired go, beside the loop.
	for _, name := range sortedKeys(in.observed) {
		if _, want := in.desired[name]; want {
			continue
		}
		if _, busy := removing[name]; busy {
			continue
		}
		p.actions = append(p.actions, action{kind: actRemove, task: name, ip: in.observed[name].ip})
		removing[name] = in.observed[name].ip
	}
	// Tasks dropped before they had a container are shut down.
	for _, name := range sortedKeys(in.records) {
		_, want := in.desired[name]
		_, has := in.observed[name]
		if !want && !has && in.records[name].removedAt.IsZero() {
			p.actions = append(p.actions, action{kind: actMarkShutdown, task: name})
		}
	}

	ipOwner := map[netip.Addr]string{}
	for _, name := range sortedKeys(in.desired) {
		s := in.desired[name]
		if other, dup := ipOwner[s.IP]; dup {
			p.actions = append(p.actions, in.fail(s, fmt.Sprintf("IP %s is also given to task %s", s.IP, other), false))
			continue
		}
		ipOwner[s.IP] = name
		if _, busy := removing[name]; busy {
			continue // wanted back while being removed: the removal's end wakes the loop
		}
		if holder, held := ipHeldBy(removing, s.IP); held {
			p.actions = append(p.actions, action{kind: actWaitIP, task: name, spec: s, holder: holder})
			continue
		}
		p.actions = append(p.actions, in.planTask(s))
	}

	// Network leftovers of tasks without a container.
	for _, name := range in.netns {
		_, want := in.desired[name]
		_, busy := removing[name]
		_, has := in.observed[name]
		if !want && !busy && !has {
			p.actions = append(p.actions, action{kind: actRemoveLeftovers, task: name})
		}
	}
	p.keepVeths = map[string]bool{}
	for name := range in.desired {
		p.keepVeths[name] = true
	}
	for name := range removing {
		p.keepVeths[name] = true
	}
	return p
}

// planTask decides for one desired task whose IP is free.
func (in planInput) planTask(s TaskSpec) action {
	rec := in.records[s.Name]
	c, has := in.observed[s.Name]
	ref, err := normalizeRef(s.Image)
	if err == nil {
		err = checkSpec(s, in.block)
	}
	if err != nil {
		a := in.fail(s, err.Error(), false)
		a.removeFirst = has
		return a
	}
	hash := specHash(s, ref)
	backingOff := in.now.Before(rec.retryAt)
	switch {
	case !has && backingOff:
		return action{kind: actWait, task: s.Name, spec: s}
	case !has:
		return action{kind: actCreate, task: s.Name, spec: s, ref: ref, hash: hash}
	case c.specHash != hash:
		return action{kind: actRecreate, task: s.Name, spec: s, ref: ref, hash: hash, create: !backingOff}
	}
	a := action{task: s.Name, spec: s, repair: true}
	switch c.proc {
	case procRunning:
		a.kind = actKeep
		a.startedAt = rec.startedAt
		if a.startedAt.IsZero() {
			a.startedAt = in.now // adopted: running since before this appliance
		}
		a.failures = rec.failures
		if in.now.Sub(a.startedAt) >= healthyAfter {
			a.failures = 0 // a long enough run forgives earlier failures
		}
	case procStopped:
		switch {
		case !rec.exitNoted:
			a.kind = actNoteExit
			a.failures = rec.failures + 1
			a.exitStatus, a.oomKilled = c.exitStatus, c.oomKilled
			a.restarts = rec.restarts
			if len(a.restarts) == 0 {
				a.restarts = c.restarts // a restarted daemon: the container's label
			}
			d := decideRestart(s.Restart, exitInfo{status: c.exitStatus, oomKilled: c.oomKilled, memoryLimit: s.Limits.MemoryBytes, unhealthy: rec.unhealthy},
				a.failures, a.restarts, in.now, in.backoffCap)
			a.retryAt, a.noRestart, a.state, a.err = d.at, !d.restart, d.state, d.err
		case rec.noRestart:
			a.kind = actWait // its restart policy leaves it stopped
		case backingOff:
			a.kind = actWait
		default:
			a.kind = actRestart
		}
	case procCreated:
		a.kind = actRestart // never started: replace the process at once
	default:
		if backingOff {
			a.kind = actWait
		} else {
			a.kind = actStart
		}
	}
	return a
}

// fail is the action recording a failed attempt at s, with its backoff.
func (in planInput) fail(s TaskSpec, msg string, imageFailure bool) action {
	failures := in.records[s.Name].failures + 1
	return action{kind: actFail, task: s.Name, spec: s, err: msg, imageFailure: imageFailure,
		failures: failures, retryAt: in.now.Add(backoff(failures, in.backoffCap))}
}

// ipHeldBy reports which task being removed still holds ip.
func ipHeldBy(removing map[string]netip.Addr, ip netip.Addr) (string, bool) {
	names := sortedKeys(removing)
	for _, name := range names {
		if removing[name] == ip {
			return name, true
		}
	}
	return "", false
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

package appliance

import (
	"context"
	"log/slog"
	"maps"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/warren-appliance/warren/cluster"
	"github.com/warren-appliance/warren/cluster/api"
	"github.com/warren-appliance/warren/cluster/clustermap"
	"github.com/warren-appliance/warren/orchestrate"
	"github.com/warren-appliance/warren/orchestrate/secretfs"
)

// valueSource fetches secret and config values over mTLS (the agent, or
// the manager for its own node).
type valueSource interface {
	FetchValues(ctx context.Context, refs []api.ValueRef) ([]api.Value, error)
}

// taskSecrets gives this node's tasks their secrets and configs: it
// fetches the values the map's references name (only while a task here
// uses them), keeps them in memory, writes them to the tasks' tmpfs
// (secretfs) and adds the mounts to the task specs.
type taskSecrets struct {
	fs    *secretfs.Store
	src   valueSource
	log   *slog.Logger
	mu    sync.Mutex
	cache map[api.ValueRef]api.Value
	// waiting are the tasks left out for want of values, as the node
	// reports them (pending, with the reason).
	waiting map[string]api.TaskStatus
}

// valuesBatch bounds the values asked in one call (the answer is at most
// valuesBatch × 500 KiB).
const valuesBatch = 16

func newTaskSecrets(src valueSource, root string, log *slog.Logger) *taskSecrets {
	return &taskSecrets{fs: secretfs.New(root), src: src, log: log, cache: map[api.ValueRef]api.Value{}}
}

// neededRefs returns the values the tasks need at the versions the map
// names (pure).
func neededRefs(m *clustermap.Map, specs []orchestrate.TaskSpec) map[api.ValueRef]uint64 {
	svcs := servicesByName(m)
	out := map[api.ValueRef]uint64{}
	for _, s := range specs {
		svc := svcs[s.Service]
		for _, f := range svc.Secrets {
			out[api.ValueRef{Kind: api.KindSecret, Name: f.Source}] = f.Version
		}
		for _, f := range svc.Configs {
			out[api.ValueRef{Kind: api.KindConfig, Name: f.Source}] = f.Version
		}
	}
	return out
}

func servicesByName(m *clustermap.Map) map[string]clustermap.Service {
	out := make(map[string]clustermap.Service, len(m.Services))
	for _, s := range m.Services {
		out[s.Name] = s
	}
	return out
}

// taskFiles renders a task's files from the values (pure); ok is false if
// a value is missing.
func taskFiles(svc clustermap.Service, vals map[api.ValueRef]api.Value) (t secretfs.Task, ok bool) {
	file := func(kind string, f clustermap.FileRef) (secretfs.File, bool) {
		v, ok := vals[api.ValueRef{Kind: kind, Name: f.Source}]
		uid, _ := strconv.Atoi(f.UID)
		gid, _ := strconv.Atoi(f.GID)
		return secretfs.File{Name: f.Target, Data: v.Data, UID: uid, GID: gid, Mode: fsMode(f.Mode)}, ok
	}
	for _, f := range svc.Secrets {
		sf, ok := file(api.KindSecret, f)
		if !ok {
			return t, false
		}
		t.Secrets = append(t.Secrets, sf)
	}
	for _, f := range svc.Configs {
		cf, ok := file(api.KindConfig, f)
		if !ok {
			return t, false
		}
		t.Configs = append(t.Configs, cf)
	}
	return t, true
}

func fsMode(m uint32) os.FileMode { return os.FileMode(m & 0o777) }

// prepare fetches what is missing, writes the tasks' files and returns the
// specs with their mounts. A task whose values cannot be had (manager
// unreachable) keeps the files it has from before, if any; otherwise it
// is left out until a retry (retry true) brings them.
func (ts *taskSecrets) prepare(ctx context.Context, m *clustermap.Map, specs []orchestrate.TaskSpec) (out []orchestrate.TaskSpec, retry bool) {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	need := neededRefs(m, specs)
	// Forget values no task here uses any more.
	for ref := range ts.cache {
		if _, ok := need[ref]; !ok {
			delete(ts.cache, ref)
		}
	}
	var missing []api.ValueRef
	for ref, version := range need {
		if v, ok := ts.cache[ref]; !ok || v.Version < version {
			missing = append(missing, ref)
		}
	}
	slices.SortFunc(missing, func(a, b api.ValueRef) int { return strings.Compare(a.Kind+"/"+a.Name, b.Kind+"/"+b.Name) })
	var fetchErr error
	// In batches: an answer holds at most valuesBatch values of 500 KiB.
	for batch := range slices.Chunk(missing, valuesBatch) {
		vals, err := ts.src.FetchValues(ctx, batch)
		if err != nil {
			fetchErr = err
			retry = true
			ts.log.Warn("cannot fetch secret and config values; tasks using them wait (or keep the files they have)", "count", len(missing), "err", err)
			break
		}
		for _, v := range vals {
			ts.cache[api.ValueRef{Kind: v.Kind, Name: v.Name}] = v
		}
	}
	svcs := servicesByName(m)
	ts.waiting = map[string]api.TaskStatus{}
	wait := func(s orchestrate.TaskSpec, why string) {
		ts.waiting[s.Name] = api.TaskStatus{Name: s.Name, State: clustermap.TaskPending, Image: s.Image, SpecVersion: s.SpecVersion, Revision: s.Revision,
			Error: "waiting for its secrets and configs: " + why}
	}
	want := map[string]secretfs.Task{}
	var keep []string
	for _, s := range specs {
		svc := svcs[s.Service]
		if len(svc.Secrets) == 0 && len(svc.Configs) == 0 {
			out = append(out, s)
			continue
		}
		files, ok := taskFiles(svc, ts.cache)
		switch {
		case ok:
			want[s.Name] = files
		case ts.fs.Has(s.Name):
			keep = append(keep, s.Name) // the files of before, until the values come
		default:
			why := "a value is missing"
			if fetchErr != nil {
				why = fetchErr.Error()
			} else {
				ts.log.Warn("a task's secret or config value is missing; it waits", "task", s.Name)
				retry = true
			}
			wait(s, why)
			continue
		}
		s.SecretMounts = taskMounts(ts.fs, s.Name, svc)
		out = append(out, s)
	}
	if err := ts.fs.Sync(want, keep); err != nil {
		ts.log.Error("writing tasks' secrets and configs", "err", err)
		retry = true
		// Tasks whose files failed are left out (their mount would be empty).
		out = slices.DeleteFunc(out, func(s orchestrate.TaskSpec) bool {
			if len(s.SecretMounts) > 0 && !ts.fs.Has(s.Name) {
				wait(s, "its files could not be written: "+err.Error())
				return true
			}
			return false
		})
	}
	return out, retry
}

func taskMounts(fs *secretfs.Store, task string, svc clustermap.Service) []orchestrate.FileMount {
	var out []orchestrate.FileMount
	if len(svc.Secrets) > 0 {
		out = append(out, orchestrate.FileMount{Source: fs.SecretsDir(task), Target: cluster.SecretsDir})
	}
	for i, f := range svc.Configs {
		out = append(out, orchestrate.FileMount{Source: fs.ConfigPath(task, i), Target: f.Target})
	}
	return out
}

// waitingTasks returns the tasks left out for want of values, with the
// reason (for the node's status report).
func (ts *taskSecrets) waitingTasks() []api.TaskStatus {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	out := slices.Collect(maps.Values(ts.waiting))
	slices.SortFunc(out, func(a, b api.TaskStatus) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// heldValues says how many values this node holds (for tests and logs:
// never the values).
func (ts *taskSecrets) heldValues() []api.ValueRef {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	return slices.Collect(maps.Keys(ts.cache))
}

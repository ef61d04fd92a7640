package appliance

import (
	"context"
	"encoding/json"
	"log/slog"
	"sync"

	"github.com/warren-appliance/warren/cluster"
	"github.com/warren-appliance/warren/cluster/api"
	"github.com/warren-appliance/warren/cluster/clustermap"
	"github.com/warren-appliance/warren/orchestrate"
	"github.com/warren-appliance/warren/orchestrate/registry"
)

// registryCreds gives this node's pulls the cluster's registries: the map
// says how to reach each; the credentials of those this node's tasks pull
// from (and their mirrors) are fetched from the manager and kept in
// memory only, never on disk.
type registryCreds struct {
	src   valueSource
	log   *slog.Logger
	mu    sync.Mutex
	cache map[string]api.Value // by host
}

func newRegistryCreds(src valueSource, log *slog.Logger) *registryCreds {
	return &registryCreds{src: src, log: log, cache: map[string]api.Value{}}
}

// neededRegistryCreds returns the logged-in registries the tasks pull
// from, directly or through a mirror, at their auth versions (pure).
func neededRegistryCreds(m *clustermap.Map, specs []orchestrate.TaskSpec) map[string]uint64 {
	from := map[string]bool{}
	for _, s := range specs {
		if d := cluster.ImageRegistry(s.Image); d != "" {
			from[d] = true
		}
	}
	out := map[string]uint64{}
	for _, r := range m.Registries {
		if r.Auth && (from[r.Host] || r.MirrorOf != "" && from[r.MirrorOf]) {
			out[r.Host] = r.AuthVersion
		}
	}
	return out
}

// configs returns every registry of the map, with the credentials the
// tasks need; ok is false when some could not be fetched (retry soon).
func (rc *registryCreds) configs(ctx context.Context, m *clustermap.Map, specs []orchestrate.TaskSpec) (out []registry.Config, ok bool) {
	need := neededRegistryCreds(m, specs)
	rc.mu.Lock()
	defer rc.mu.Unlock()
	for host := range rc.cache {
		if _, keep := need[host]; !keep {
			delete(rc.cache, host) // no task here pulls from it any more
		}
	}
	var refs []api.ValueRef
	for host, v := range need {
		if c, have := rc.cache[host]; !have || c.Version != v {
			refs = append(refs, api.ValueRef{Kind: api.KindRegistry, Name: host})
		}
	}
	ok = true
	if len(refs) > 0 {
		vals, err := rc.src.FetchValues(ctx, refs)
		if err != nil {
			rc.log.Warn("could not fetch registry credentials; pulls from these registries wait", "registries", len(refs), "err", err)
			ok = false
		}
		for _, v := range vals {
			rc.cache[v.Name] = v
		}
	}
	for _, r := range m.Registries {
		c := registry.Config{Host: r.Host, CA: []byte(r.CA), Insecure: r.Insecure, MirrorOf: r.MirrorOf}
		if r.CA == "" {
			c.CA = nil
		}
		if v, have := rc.cache[r.Host]; have {
			var creds api.RegistryCredentials
			if err := json.Unmarshal(v.Data, &creds); err == nil {
				c.Username, c.Password = creds.Username, creds.Password
			}
		}
		out = append(out, c)
	}
	return out, ok
}

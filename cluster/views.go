package cluster

import (
	"encoding/json"
	"slices"
	"strings"

	"github.com/warren-appliance/warren/cluster/clustermap"
)

// Per-node views of the map: a service's env (today the way to pass a
// secret) goes only to the nodes that run one of its tasks. Nodes whose
// views are equal (they run the same env-carrying services) share one
// encoding, cached until the next version.

// envServicesOn lists the services with env that node id runs a task of
// (desired running), sorted.
func envServicesOn(m *clustermap.Map, id string) []string {
	withEnv := map[string]bool{}
	for _, s := range m.Services {
		if len(s.Env) > 0 {
			withEnv[s.Name] = true
		}
	}
	var out []string
	for _, t := range m.Tasks {
		if t.NodeID == id && t.DesiredState == clustermap.TaskRunning && withEnv[t.Service] && !slices.Contains(out, t.Service) {
			out = append(out, t.Service)
		}
	}
	slices.Sort(out)
	return out
}

// viewFor returns the map as node id may see it: services' env only where
// keep lists them. The result shares everything else with m.
func viewFor(m *clustermap.Map, keep []string) *clustermap.Map {
	v := *m
	v.Services = slices.Clone(m.Services)
	for i, s := range v.Services {
		if len(s.Env) > 0 && !slices.Contains(keep, s.Name) {
			v.Services[i].Env = nil
		}
	}
	return &v
}

// mapViewLocked returns the current version and node id's view of the
// map, encoded. m.mu is held.
func (m *Manager) mapViewLocked(id string) (uint64, []byte) {
	cur := m.current
	keep := envServicesOn(cur, id)
	hasEnv := false
	for _, s := range cur.Services {
		hasEnv = hasEnv || len(s.Env) > 0
	}
	if !hasEnv {
		return cur.Version, m.mapJSON
	}
	if m.viewsVersion != cur.Version {
		m.views, m.viewsVersion = map[string][]byte{}, cur.Version
	}
	key := strings.Join(keep, "\x00")
	if b, ok := m.views[key]; ok {
		return cur.Version, b
	}
	b, err := json.Marshal(viewFor(cur, keep))
	if err != nil {
		// Plain data: cannot fail. Never fall back to the full map.
		m.log.Error("encode a node's view of the map", "err", err)
		b = []byte("{}")
	}
	m.views[key] = b
	return cur.Version, b
}

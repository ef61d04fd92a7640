package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/warren-appliance/warren/cluster/api"
	"github.com/warren-appliance/warren/cluster/clustermap"
	"github.com/warren-appliance/warren/internal/dockerflags"
)

// volumeCallTimeout bounds one call to a node about its volumes.
const volumeCallTimeout = 30 * time.Second

type volumeNode struct {
	id, name, addr string
}

// volumeNodesLocked are the ready nodes (all, or the one named node).
// m.mu is held.
func (m *Manager) volumeNodesLocked(node string) ([]volumeNode, error) {
	var out []volumeNode
	for _, n := range m.st.sortedNodes() {
		if node != "" && n.Name != node {
			continue
		}
		if n.Status != clustermap.NodeReady || !n.OverlayIP.IsValid() {
			if node != "" {
				return nil, errorf(http.StatusConflict, "node %s is %s: its volumes cannot be reached now", node, n.Status)
			}
			continue
		}
		out = append(out, volumeNode{n.ID, n.Name, net.JoinHostPort(n.OverlayIP.String(), strconv.Itoa(api.NodeLogsPort))})
	}
	if node != "" && len(out) == 0 {
		return nil, errorf(http.StatusNotFound, "no node named %q (list them with `warren node ls`)", node)
	}
	return out, nil
}

// volumeUsersLocked maps node ID -> volume name -> services with a task
// on that node (desired running) mounting it. m.mu is held.
func (m *Manager) volumeUsersLocked() map[string]map[string][]string {
	mounts := map[string][]string{} // service -> volume names
	for _, s := range m.st.services {
		for _, mt := range s.Mounts {
			if mt.Type == clustermap.MountVolume {
				mounts[s.Name] = append(mounts[s.Name], mt.Source)
			}
		}
		if s.Previous != nil {
			for _, mt := range s.Previous.Mounts {
				if mt.Type == clustermap.MountVolume {
					mounts[s.Name] = append(mounts[s.Name], mt.Source)
				}
			}
		}
	}
	out := map[string]map[string][]string{}
	for _, t := range m.st.tasks {
		if t.DesiredState != clustermap.TaskRunning {
			continue
		}
		for _, v := range mounts[t.Service] {
			if out[t.NodeID] == nil {
				out[t.NodeID] = map[string][]string{}
			}
			if !slices.Contains(out[t.NodeID][v], t.Service) {
				out[t.NodeID][v] = append(out[t.NodeID][v], t.Service)
			}
		}
	}
	return out
}

// Volumes lists every ready node's named volumes with their size and the
// services using them there. A node that does not answer is skipped and
// named in the error list.
func (m *Manager) Volumes(ctx context.Context) ([]api.VolumeView, []string) {
	m.mu.Lock()
	nodes, _ := m.volumeNodesLocked("")
	users := m.volumeUsersLocked()
	m.mu.Unlock()
	var mu sync.Mutex
	var wg sync.WaitGroup
	out := []api.VolumeView{}
	var errs []string
	for _, n := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var vols []api.VolumeView
			err := m.callNode(ctx, n, http.MethodGet, api.PathNodeVolumes, &vols)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, fmt.Sprintf("node %s: %v", n.name, err))
				return
			}
			for _, v := range vols {
				v.Node = n.name
				v.Services = users[n.id][v.Name]
				if v.Services == nil {
					v.Services = []string{}
				}
				sort.Strings(v.Services)
				out = append(out, v)
			}
		}()
	}
	wg.Wait()
	sort.Slice(out, func(i, j int) bool {
		if out[i].Name != out[j].Name {
			return out[i].Name < out[j].Name
		}
		return out[i].Node < out[j].Node
	})
	sort.Strings(errs)
	return out, errs
}

// RemoveVolume deletes volume name and its data on node (every ready node
// when empty). It is refused (409) while a service with a task on that
// node mounts it, naming the service; nothing is removed then.
func (m *Manager) RemoveVolume(ctx context.Context, name, node string) (api.VolumeRemoved, error) {
	res := api.VolumeRemoved{Name: name, Nodes: []string{}}
	if !dockerflags.VolumeNameOK(name) {
		return res, errorf(http.StatusBadRequest, "volume name %q is not valid", name)
	}
	m.mu.Lock()
	nodes, err := m.volumeNodesLocked(node)
	users := m.volumeUsersLocked()
	m.mu.Unlock()
	if err != nil {
		return res, err
	}
	for _, n := range nodes {
		if svcs := users[n.id][name]; len(svcs) > 0 {
			return res, errorf(http.StatusConflict, "volume %s is in use on node %s by service %s: remove the service, or update it with --mount-rm, first",
				name, n.name, strings.Join(svcs, ", "))
		}
	}
	var errs []string
	for _, n := range nodes {
		var vols []api.VolumeView
		if err := m.callNode(ctx, n, http.MethodGet, api.PathNodeVolumes, &vols); err != nil {
			errs = append(errs, fmt.Sprintf("node %s: %v", n.name, err))
			continue
		}
		if !slices.ContainsFunc(vols, func(v api.VolumeView) bool { return v.Name == name }) {
			continue
		}
		if err := m.callNode(ctx, n, http.MethodDelete, api.PathNodeVolumes+"/"+url.PathEscape(name), nil); err != nil {
			errs = append(errs, fmt.Sprintf("node %s: %v", n.name, err))
			continue
		}
		res.Nodes = append(res.Nodes, n.name)
	}
	if len(errs) > 0 {
		return res, errorf(http.StatusBadGateway, "volume %s: %s", name, strings.Join(errs, "; "))
	}
	if len(res.Nodes) == 0 {
		where := "any node"
		if node != "" {
			where = "node " + node
		}
		return res, errorf(http.StatusNotFound, "no volume %s on %s (list them with `warren volume ls`)", name, where)
	}
	m.log.Info("volume removed", "volume", name, "nodes", res.Nodes)
	return res, nil
}

// callNode makes one call to node n's server and decodes its JSON answer.
func (m *Manager) callNode(ctx context.Context, n volumeNode, method, path string, out any) error {
	c := m.nodeClient(n.id, n.addr, volumeCallTimeout)
	defer c.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, method, "https://"+n.addr+path, nil)
	if err != nil {
		return err
	}
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if resp.StatusCode/100 != 2 {
		var e api.Error
		if json.Unmarshal(b, &e) == nil && e.Error != "" {
			return fmt.Errorf("%s", e.Error)
		}
		return fmt.Errorf("%s", resp.Status)
	}
	if out == nil || resp.StatusCode == http.StatusNoContent {
		return nil
	}
	return json.Unmarshal(b, out)
}

package appliance

import (
	"strings"

	"github.com/warren-appliance/warren/cluster/api"
	"github.com/warren-appliance/warren/cluster/clustermap"
	"github.com/warren-appliance/warren/metrics"
	"github.com/warren-appliance/warren/tunnel"
	"github.com/warren-appliance/warren/tunnel/paths"
)

// keyNames maps m's nodes' public keys to their names.
func keyNames(m *clustermap.Map) map[string]string {
	names := map[string]string{}
	if m != nil {
		for _, n := range m.Nodes {
			names[n.PublicKey] = n.Name
		}
	}
	return names
}

func (n *node) peerNames() map[string]string { return keyNames(n.lastMap()) }

// peerMetrics reads the tunnel's peers for a scrape, naming each by the
// node that holds its key in m (nil or unknown: no name).
func peerMetrics(dev *tunnel.Device, m func() *clustermap.Map, e *paths.Engine) []metrics.Peer {
	names := keyNames(m())
	known := pathsByKey(e)
	var out []metrics.Peer
	for _, h := range dev.Health() {
		ips := make([]string, len(h.AllowedIPs))
		for i, a := range h.AllowedIPs {
			ips[i] = a.String()
		}
		key := h.PublicKey.String()
		path, _ := peerPath(h.Endpoint, known[h.PublicKey])
		out = append(out, metrics.Peer{Path: path,
			Interface: dev.Interface(), PublicKey: key, AllowedIPs: strings.Join(ips, ","), Name: names[key],
			SentBytes: h.TxBytes, ReceivedBytes: h.RxBytes, LatestHandshake: h.LastHandshake,
		})
	}
	return out
}

// nodeCounts counts m's nodes by role and status.
func nodeCounts(m *clustermap.Map) map[metrics.NodeKey]int {
	out := map[metrics.NodeKey]int{}
	if m == nil {
		return out
	}
	for _, n := range m.Nodes {
		out[metrics.NodeKey{Role: n.Role, Status: n.Status}]++
	}
	return out
}

// serviceCounts gives each service of m its desired and running replicas
// (running: reported running on the service's current image, as desired).
func serviceCounts(m *clustermap.Map) []metrics.Service {
	if m == nil {
		return nil
	}
	out := make([]metrics.Service, 0, len(m.Services))
	idx := map[string]int{}
	for _, s := range m.Services {
		idx[s.Name] = len(out)
		out = append(out, metrics.Service{Name: s.Name, Desired: s.Replicas})
	}
	for _, t := range m.Tasks {
		i, ok := idx[t.Service]
		if !ok || t.DesiredState != clustermap.TaskRunning {
			continue
		}
		svc := m.Services[i]
		if t.Image != "" && (t.Image != svc.Image || t.SpecVersion != svc.SpecVersion) {
			out[i].Updating = true
		}
		if t.State == clustermap.TaskRunning {
			out[i].Running++
		}
	}
	return out
}

// taskCounts counts this node's tasks by state.
func (n *node) taskCounts() map[string]int {
	out := map[string]int{}
	if n.orch == nil {
		return out
	}
	for _, t := range n.orch.Status() {
		out[t.State]++
	}
	return out
}

// newNodeMetrics builds the metrics of a cluster node; managers also
// export the cluster's node and service counts from their map, their
// Raft state (raft, nil on workers) and their links to peered clusters
// (peers).
func (n *node) newNodeMetrics(manager bool, raft func() metrics.Raft, peers func() []metrics.ClusterPeer) *metrics.Metrics {
	src := metrics.Sources{
		Peers: func() []metrics.Peer { return peerMetrics(n.dev, n.lastMap, n.paths) },
		Tasks: n.taskCounts,
	}
	if manager {
		src.Nodes = func() map[metrics.NodeKey]int { return nodeCounts(n.lastMap()) }
		src.Services = func() []metrics.Service { return serviceCounts(n.lastMap()) }
		src.Raft = raft
		src.ClusterPeers = peers
	}
	if n.relaySrv != nil {
		src.Relay = relayMetrics(n.relaySrv)
	}
	return metrics.New(src)
}

// clusterPeerMetrics reads a manager's peer views for a scrape.
func clusterPeerMetrics(views []api.PeerView) []metrics.ClusterPeer {
	out := make([]metrics.ClusterPeer, 0, len(views))
	for _, v := range views {
		out = append(out, metrics.ClusterPeer{Name: v.Name, Connected: v.Status == api.PeerConnected, Imports: len(v.Imports)})
	}
	return out
}

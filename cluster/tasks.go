package cluster

import (
	"github.com/warren-appliance/warren/cluster/api"
	"github.com/warren-appliance/warren/cluster/clustermap"
)

// Tasks lists the tasks of service (every task when empty) as the map
// has them, including those of a removed service until their nodes report
// them stopped: `warren service rm` waits on this.
func (m *Manager) Tasks(service string) []api.TaskView {
	m.mu.Lock()
	defer m.mu.Unlock()
	stored := map[[2]string]clustermap.Task{}
	for _, t := range m.st.tasks {
		stored[[2]string{t.Name, t.NodeID}] = t
	}
	out := []api.TaskView{}
	for _, t := range m.current.Tasks {
		if service != "" && t.Service != service {
			continue
		}
		v := taskView(t, stored[[2]string{t.Name, t.NodeID}], m.st.nodes[t.NodeID].Name, nil)
		v.Service = t.Service
		out = append(out, v)
	}
	return out
}

// taskView shows task t of the published map with what only the state
// holds of it (st: error text, process facts) on node.
func taskView(t, st clustermap.Task, node string, labels map[string]string) api.TaskView {
	v := api.TaskView{Name: t.Name, Node: node, NodeID: t.NodeID, IP: t.IP, Image: t.Image,
		DesiredState: t.DesiredState, State: t.State, Error: st.Error, Labels: labels,
		Restarts: st.Run.Restarts, NextRestart: st.Run.NextRestart, OOMKilled: st.Run.OOMKilled,
		PullDone: st.Run.PullDone, PullTotal: st.Run.PullTotal}
	if st.Run.Exited {
		code := st.Run.ExitCode
		v.ExitCode = &code
	}
	return v
}

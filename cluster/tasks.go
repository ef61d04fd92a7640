package cluster

import "github.com/warren-appliance/warren/cluster/api"

// Tasks lists the tasks of service (every task when empty) as the map
// has them, including those of a removed service until their nodes report
// them stopped: `warren service rm` waits on this.
func (m *Manager) Tasks(service string) []api.TaskView {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := []api.TaskView{}
	for _, t := range m.current.Tasks {
		if service != "" && t.Service != service {
			continue
		}
		out = append(out, api.TaskView{Name: t.Name, Service: t.Service, Node: m.st.nodes[t.NodeID].Name, NodeID: t.NodeID,
			IP: t.IP, Image: t.Image, DesiredState: t.DesiredState, State: t.State, Error: t.Error})
	}
	return out
}

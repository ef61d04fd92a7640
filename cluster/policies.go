package cluster

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"

	"github.com/warren-appliance/warren/cluster/api"
	"github.com/warren-appliance/warren/cluster/clustermap"
	"github.com/warren-appliance/warren/netpolicy"
)

// MaxPolicies bounds the number of network policies (each costs rules on
// every node).
const MaxPolicies = 1000

// ApplyPolicies creates or replaces each policy by name, all or none.
// Applying the same policies again changes nothing (and no map version).
func (m *Manager) ApplyPolicies(in []clustermap.Policy) ([]api.PolicyApplied, error) {
	if len(in) == 0 {
		return nil, errorf(http.StatusBadRequest, "no policies to apply")
	}
	seen := map[string]bool{}
	for i := range in {
		if err := netpolicy.Validate(&in[i]); err != nil {
			return nil, errorf(http.StatusBadRequest, "%v", err)
		}
		if seen[in[i].Name] {
			return nil, errorf(http.StatusBadRequest, "policy %q is given twice", in[i].Name)
		}
		seen[in[i].Name] = true
	}
	var out []api.PolicyApplied
	err := m.update(func(s *state) error {
		out = out[:0]
		now := m.now().UTC()
		for _, p := range in {
			old, exists := s.policies[p.Name]
			switch {
			case !exists:
				if len(s.policies) >= MaxPolicies {
					return errorf(http.StatusConflict, "there are already %d policies (the limit)", MaxPolicies)
				}
				s.policies[p.Name] = policyRecord{Policy: p, CreatedAt: now, UpdatedAt: now}
				out = append(out, api.PolicyApplied{Name: p.Name, Result: "created"})
			case samePolicy(old.Policy, p):
				out = append(out, api.PolicyApplied{Name: p.Name, Result: "unchanged"})
			default:
				s.policies[p.Name] = policyRecord{Policy: p, CreatedAt: old.CreatedAt, UpdatedAt: now}
				out = append(out, api.PolicyApplied{Name: p.Name, Result: "configured"})
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	for _, a := range out {
		if a.Result != "unchanged" {
			m.log.Info("network policy applied", "policy", a.Name, "result", a.Result)
		}
	}
	return out, nil
}

// samePolicy compares the JSON forms (what the map publishes), so nil
// and empty slices are the same policy.
func samePolicy(a, b clustermap.Policy) bool {
	ja, err1 := json.Marshal(a)
	jb, err2 := json.Marshal(b)
	return err1 == nil && err2 == nil && bytes.Equal(ja, jb)
}

// RemovePolicy deletes a policy; its tasks are unrestricted again unless
// other policies select them.
func (m *Manager) RemovePolicy(name string) error {
	err := m.update(func(s *state) error {
		if _, ok := s.policies[name]; !ok {
			return errNoPolicy(name)
		}
		delete(s.policies, name)
		return nil
	})
	if err == nil {
		m.log.Info("network policy removed", "policy", name)
	}
	return err
}

func errNoPolicy(name string) error {
	return errorf(http.StatusNotFound, "no network policy named %q (list them with `warren policy ls`)", name)
}

// Policies lists every policy with the tasks it matches now.
func (m *Manager) Policies() []api.PolicyView {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := []api.PolicyView{}
	names := make([]string, 0, len(m.st.policies))
	for n := range m.st.policies {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		out = append(out, m.policyViewLocked(n))
	}
	return out
}

// Policy shows one policy with the tasks each selector matches now.
func (m *Manager) Policy(name string) (api.PolicyView, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.st.policies[name]; !ok {
		return api.PolicyView{}, errNoPolicy(name)
	}
	return m.policyViewLocked(name), nil
}

func (m *Manager) policyViewLocked(name string) api.PolicyView {
	r := m.st.policies[name]
	v := api.PolicyView{Policy: r.Policy, CreatedAt: r.CreatedAt, UpdatedAt: r.UpdatedAt,
		Selected: m.matchTasksLocked(r.PodSelector), Peers: []api.PolicyPeerView{}}
	for dir, rules := range map[string][]clustermap.PolicyRule{"ingress": r.Ingress, "egress": r.Egress} {
		field := "from"
		if dir == "egress" {
			field = "to"
		}
		for i, rule := range rules {
			for j, peer := range rule.Peers {
				pv := api.PolicyPeerView{Rule: fmt.Sprintf("%s[%d].%s[%d]", dir, i, field, j)}
				if peer.PodSelector != nil {
					pv.Selector = netpolicy.SelectorString(*peer.PodSelector)
					pv.Tasks = m.matchTasksLocked(*peer.PodSelector)
				}
				if peer.IPBlock != nil {
					pv.IPBlock = peer.IPBlock.CIDR
					if len(peer.IPBlock.Except) > 0 {
						pv.IPBlock += " except " + strings.Join(peer.IPBlock.Except, ",")
					}
				}
				v.Peers = append(v.Peers, pv)
			}
		}
	}
	slices.SortFunc(v.Peers, func(a, b api.PolicyPeerView) int { return strings.Compare(a.Rule, b.Rule) })
	return v
}

// matchTasksLocked lists the tasks of the published map that sel selects.
func (m *Manager) matchTasksLocked(sel clustermap.LabelSelector) []api.PolicyTask {
	out := []api.PolicyTask{}
	for _, t := range m.current.Tasks {
		if t.DesiredState != clustermap.TaskRunning || !netpolicy.Matches(sel, m.st.services[t.Service].Labels) {
			continue
		}
		out = append(out, api.PolicyTask{Name: t.Name, Service: t.Service, Node: m.st.nodes[t.NodeID].Name, IP: t.IP, State: t.State})
	}
	return out
}

package agent

import (
	"context"
	"fmt"
	"net/http"
	"slices"

	"github.com/warren-appliance/warren/cluster/api"
	"github.com/warren-appliance/warren/cluster/clustermap"
	"github.com/warren-appliance/warren/cluster/pki"
)

// ManagerJoin returns what a node that joined with a manager token needs
// to run its own Manager (cluster.ManagerConfig.Join): its ID, its manager
// certificate and the pinned CA. A certificate issued before managers were
// replicated (no manager unit) is renewed first, which needs a manager.
func (a *Agent) ManagerJoin(ctx context.Context) (*api.ManagerJoin, error) {
	a.mu.Lock()
	role, leaf := a.id.Node.Role, a.cert.Leaf
	a.mu.Unlock()
	if role != clustermap.RoleManager {
		return nil, fmt.Errorf("this node joined as a %s: a manager needs a manager token (clear the state dir and run `warren manager join`)", role)
	}
	if leaf == nil || !slices.Contains(leaf.Subject.OrganizationalUnit, pki.ManagerUnit) {
		csr, err := pki.NewCSR(a.key, a.cfg.Node.Name)
		if err != nil {
			return nil, err
		}
		var out api.RenewResponse
		if err := a.call(ctx, http.MethodPost, api.PathRenew, api.RenewRequest{CSR: csr}, &out); err != nil {
			return nil, fmt.Errorf("get a manager certificate from %s: %w", a.managerAddr(), err)
		}
		if err := a.saveCert(out.Certificate); err != nil {
			return nil, err
		}
		a.log.Info("manager certificate issued")
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	cert := a.cert
	cert.Certificate = append(slices.Clone(cert.Certificate[:1]), a.trust[0].Raw)
	// CACert is the whole bundle: during a CA rotation the managers'
	// certificates may be of either CA.
	return &api.ManagerJoin{ID: a.id.Node.ID, Cert: cert, CACert: encodeBundle(a.trust), Leader: a.id.Manager}, nil
}

// noteManagers remembers the managers' API addresses from a map: when the
// manager in use dies, the agent moves to the next one (nextManager).
func (a *Agent) noteManagers(m *clustermap.Map) {
	var addrs []string
	for _, n := range m.Nodes {
		if n.Role == clustermap.RoleManager && n.API != "" {
			addrs = append(addrs, n.API)
		}
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.home == "" {
		a.home = a.id.Manager
	}
	if !slices.Contains(addrs, a.home) {
		addrs = append(addrs, a.home) // the configured address stays a candidate
	}
	a.managers = addrs
}

// nextManager switches to the next manager of the last map after a
// failure (round robin; with one known manager it stays). It is not
// persisted: the stored address and the cached map survive restarts.
func (a *Agent) nextManager() {
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.managers) == 0 {
		return
	}
	cur := a.id.Manager
	i := slices.Index(a.managers, cur)
	next := a.managers[(i+1)%len(a.managers)]
	if next != cur {
		a.log.Info("switching to another manager", "from", cur, "to", next)
		a.id.Manager = next
	}
}

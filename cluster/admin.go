package cluster

import (
	"net"
	"net/http"
	"sort"
	"strings"
	"time"

	"github.com/hashicorp/raft"

	"github.com/warren-appliance/warren/cluster/api"
	"github.com/warren-appliance/warren/cluster/clustermap"
)

// AdminHandler serves the admin API (JSON) that the CLI uses. Mount it only
// on the root-only local unix socket: it has no authentication of its own.
//
//	GET    /v1/cluster                      cluster info
//	GET    /v1/cluster/ca                   api.CAStatus
//	POST   /v1/cluster/ca/rotate            api.CARotateRequest: start (or --finish) a CA rotation
//	GET    /v1/join-tokens/{role}           current token (worker|manager)
//	POST   /v1/join-tokens/{role}/rotate    new secret; the old token stops working
//	GET    /v1/nodes                        list
//	GET    /v1/nodes/{node}                 by name or ID
//	DELETE /v1/nodes/{node}[?force=1]       remove (force: even if ready; a manager also leaves Raft)
//	POST   /v1/nodes/{node}/drain           move its tasks away, place nothing new there
//	POST   /v1/nodes/{node}/activate        undo a drain
//	POST   /v1/nodes/{node}/promote         a manager votes in Raft
//	POST   /v1/nodes/{node}/demote          a manager keeps a copy but does not vote
//	GET    /v1/backup                       consistent copy of the state (JSON)
//	GET    /v1/services                     list with tasks
//	POST   /v1/services                     create (api.ServiceSpec)
//	GET    /v1/services/{name}              inspect / ps
//	POST   /v1/services/{name}/scale        api.Scale
//	POST   /v1/services/{name}/update       api.ImageUpdate (rolling)
//	POST   /v1/services/{name}/labels       api.LabelUpdate
//	POST   /v1/services/{name}/capabilities api.CapabilityUpdate
//	DELETE /v1/services/{name}              remove
//	GET    /v1/tasks[?service=NAME]         tasks, also of removed services until stopped
//	GET    /v1/policies                     list with matched tasks
//	POST   /v1/policies                     api.PolicyApply (create or replace)
//	GET    /v1/policies/{name}              inspect
//	DELETE /v1/policies/{name}              remove
//	GET    /v1/secrets | /v1/configs        list (metadata only)
//	POST   /v1/secrets | /v1/configs        create (api.ObjectSpec)
//	GET    /v1/secrets/{name}               inspect (never the value); configs: ?pretty=1 adds it
//	POST   /v1/secrets/{name}/update        new value and version (api.ObjectSpec)
//	DELETE /v1/secrets/{name}               remove, refused while a service uses it
//	POST   /v1/services/{name}/refs         api.ServiceRefsUpdate (--secret-add/-rm, --config-add/-rm)
//	GET    /v1/backup/data-key              the data key a backup's secrets need
//	GET    /v1/registries                   added registries (never a password)
//	POST   /v1/registries                   add or change (api.RegistrySpec)
//	GET    /v1/registries/{host}            inspect
//	POST   /v1/registries/{host}/login      api.RegistryLogin, checked against the registry
//	POST   /v1/registries/{host}/logout     forget the credentials
//	DELETE /v1/registries/{host}            remove
//	POST   /v1/peer-token                   api.PeerToken (this cluster's peer token)
//	GET    /v1/peers                        peers with link state
//	POST   /v1/peers                        api.PeerAdd (peer with another cluster)
//	DELETE /v1/peers/{name}                 unpeer (both sides)
//	POST   /v1/services/{name}/export       peers may reach the service; /unexport: not
//
// Reads are answered from this manager's copy of the state (on a follower
// it lags the leader by the replication delay, normally milliseconds);
// writes on a follower are forwarded to the leader over manager mTLS and
// return the leader's answer.
func (m *Manager) AdminHandler() http.Handler {
	mux := m.adminMux()
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead && !m.isLeader() {
			m.forward(w, r, pathInternalAdmin, "")
			return
		}
		mux.ServeHTTP(w, r)
	})
}

func (m *Manager) adminMux() http.Handler {
	mux := http.NewServeMux()
	m.clusterRoutes(mux)
	m.nodeRoutes(mux)
	m.serviceRoutes(mux)
	m.policyRoutes(mux)
	m.peerRoutes(mux)
	m.objectRoutes(mux)
	m.registryRoutes(mux)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, errorf(http.StatusNotFound, "no admin API call %s %s (is the CLI newer than the daemon?)", r.Method, r.URL.Path))
	})
	return mux
}

// clusterRoutes: the cluster's identity, join tokens, CA, backup, and the
// logs and volumes gathered from the nodes.
func (m *Manager) clusterRoutes(mux *http.ServeMux) {
	mux.HandleFunc("GET "+api.PathCluster, answer(http.StatusOK, func(*http.Request) (api.ClusterInfo, error) {
		return m.Info(), nil
	}))
	mux.HandleFunc("GET "+api.PathJoinTokens+"/{role}", answer(http.StatusOK, func(r *http.Request) (api.JoinToken, error) {
		role := r.PathValue("role")
		worker, manager := m.JoinTokens()
		switch role {
		case clustermap.RoleWorker:
			return api.JoinToken{Role: role, Token: worker, Manager: m.joinAddress()}, nil
		case clustermap.RoleManager:
			return api.JoinToken{Role: role, Token: manager, Manager: m.joinAddress()}, nil
		}
		return api.JoinToken{}, errorf(http.StatusBadRequest, "unknown role %q: want worker or manager", role)
	}))
	mux.HandleFunc("POST "+api.PathJoinTokens+"/{role}"+api.ActionRotate, answer(http.StatusOK, func(r *http.Request) (api.JoinToken, error) {
		role := r.PathValue("role")
		tok, err := m.RotateJoinToken(role)
		return api.JoinToken{Role: role, Token: tok, Manager: m.joinAddress()}, err
	}))
	mux.HandleFunc("GET "+api.PathCA, answer(http.StatusOK, func(*http.Request) (api.CAStatus, error) {
		return m.CAStatus(), nil
	}))
	mux.HandleFunc("POST "+api.PathCA+api.ActionRotate, answerBody(http.StatusOK, func(_ *http.Request, req api.CARotateRequest) (api.CAStatus, error) {
		return m.RotateCA(req)
	}))
	mux.HandleFunc("GET "+api.PathBackup, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		if err := m.Backup(w); err != nil {
			m.log.Error("backup", "err", err)
		}
	})
	mux.HandleFunc("GET "+api.PathLogs, m.handleLogs)
	mux.HandleFunc("GET "+api.PathVolumes, func(w http.ResponseWriter, r *http.Request) {
		vols, errs := m.Volumes(r.Context())
		if len(errs) > 0 {
			w.Header().Set("X-Warren-Unreachable", strings.Join(errs, "; "))
		}
		writeJSON(w, http.StatusOK, vols)
	})
	mux.HandleFunc("DELETE "+api.PathVolumes+"/{name}", answer(http.StatusOK, func(r *http.Request) (any, error) {
		return m.RemoveVolume(r.Context(), r.PathValue("name"), r.URL.Query().Get("node"))
	}))
}

// nodeRoutes: list, inspect, remove, promote/demote, drain/activate.
func (m *Manager) nodeRoutes(mux *http.ServeMux) {
	node := func(r *http.Request) string { return r.PathValue("node") }
	mux.HandleFunc("GET "+api.PathNodes, answer(http.StatusOK, func(*http.Request) (any, error) {
		return m.Nodes(), nil
	}))
	mux.HandleFunc("GET "+api.PathNodes+"/{node}", answer(http.StatusOK, func(r *http.Request) (any, error) {
		return m.Node(node(r))
	}))
	mux.HandleFunc("DELETE "+api.PathNodes+"/{node}", noContent(func(r *http.Request) error {
		force := r.URL.Query().Get("force") == "1" || r.URL.Query().Get("force") == "true"
		return m.RemoveNode(node(r), force)
	}))
	mux.HandleFunc("POST "+api.PathNodes+"/{node}"+api.ActionPromote, noContent(func(r *http.Request) error {
		return m.SetManagerVoter(node(r), true)
	}))
	mux.HandleFunc("POST "+api.PathNodes+"/{node}"+api.ActionDemote, noContent(func(r *http.Request) error {
		return m.SetManagerVoter(node(r), false)
	}))
	mux.HandleFunc("POST "+api.PathNodes+"/{node}"+api.ActionDrain, answer(http.StatusOK, func(r *http.Request) (any, error) {
		return m.SetNodeAvailability(node(r), clustermap.NodeDrain)
	}))
	mux.HandleFunc("POST "+api.PathNodes+"/{node}"+api.ActionActivate, answer(http.StatusOK, func(r *http.Request) (any, error) {
		return m.SetNodeAvailability(node(r), "")
	}))
}

// serviceRoutes: services and their tasks.
func (m *Manager) serviceRoutes(mux *http.ServeMux) {
	name := func(r *http.Request) string { return r.PathValue("name") }
	mux.HandleFunc("GET "+api.PathTasks, answer(http.StatusOK, func(r *http.Request) (any, error) {
		return m.Tasks(r.URL.Query().Get("service")), nil
	}))
	mux.HandleFunc("GET "+api.PathServices, answer(http.StatusOK, func(*http.Request) (any, error) {
		return m.Services(), nil
	}))
	mux.HandleFunc("POST "+api.PathServices, answerBody(http.StatusCreated, func(_ *http.Request, spec api.ServiceSpec) (any, error) {
		return m.CreateService(spec)
	}))
	mux.HandleFunc("GET "+api.PathServices+"/{name}", answer(http.StatusOK, func(r *http.Request) (any, error) {
		return m.Service(name(r))
	}))
	mux.HandleFunc("PUT "+api.PathServices+"/{name}", answerBody(http.StatusOK, func(r *http.Request, spec api.ServiceSpec) (any, error) {
		return m.UpdateService(name(r), spec)
	}))
	mux.HandleFunc("DELETE "+api.PathServices+"/{name}", noContent(func(r *http.Request) error {
		return m.RemoveService(name(r))
	}))
	mux.HandleFunc("POST "+api.PathServices+"/{name}"+api.ActionScale, answerBody(http.StatusOK, func(r *http.Request, req api.Scale) (any, error) {
		return m.ScaleService(name(r), req.Replicas)
	}))
	mux.HandleFunc("POST "+api.PathServices+"/{name}"+api.ActionUpdate, answerBody(http.StatusOK, func(r *http.Request, req api.ImageUpdate) (any, error) {
		return m.UpdateServiceSettings(name(r), req)
	}))
	mux.HandleFunc("POST "+api.PathServices+"/{name}"+api.ActionRollback, answer(http.StatusOK, func(r *http.Request) (any, error) {
		return m.RollbackService(name(r))
	}))
	mux.HandleFunc("POST "+api.PathServices+"/{name}"+api.ActionLabels, answerBody(http.StatusOK, func(r *http.Request, req api.LabelUpdate) (any, error) {
		return m.UpdateServiceLabels(name(r), req.Add, req.Remove)
	}))
	mux.HandleFunc("POST "+api.PathServices+"/{name}"+api.ActionCapabilities, answerBody(http.StatusOK, func(r *http.Request, req api.CapabilityUpdate) (any, error) {
		return m.UpdateServiceCapabilities(name(r), req.Add, req.Drop)
	}))
}

// policyRoutes: network policies.
func (m *Manager) policyRoutes(mux *http.ServeMux) {
	mux.HandleFunc("GET "+api.PathPolicies, answer(http.StatusOK, func(*http.Request) (any, error) {
		return m.Policies(), nil
	}))
	mux.HandleFunc("POST "+api.PathPolicies, answerBody(http.StatusOK, func(_ *http.Request, req api.PolicyApply) (any, error) {
		return m.ApplyPolicies(req.Policies)
	}))
	mux.HandleFunc("GET "+api.PathPolicies+"/{name}", answer(http.StatusOK, func(r *http.Request) (any, error) {
		return m.Policy(r.PathValue("name"))
	}))
	mux.HandleFunc("DELETE "+api.PathPolicies+"/{name}", noContent(func(r *http.Request) error {
		return m.RemovePolicy(r.PathValue("name"))
	}))
}

// answer calls f and writes its value as JSON with status, or its error
// through writeError (the error's status and message).
func answer[T any](status int, f func(r *http.Request) (T, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		v, err := f(r)
		if err != nil {
			writeError(w, err)
			return
		}
		writeJSON(w, status, v)
	}
}

// answerBody decodes the request's JSON body into a Req (a 400 naming the
// problem when it does not fit) and answers as answer does.
func answerBody[Req, T any](status int, f func(r *http.Request, req Req) (T, error)) http.HandlerFunc {
	return answer(status, func(r *http.Request) (T, error) {
		var req Req
		if err := readJSON(r, &req); err != nil {
			var zero T
			return zero, err
		}
		return f(r, req)
	})
}

// noContent calls f and answers 204, or its error through writeError.
func noContent(f func(r *http.Request) error) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if err := f(r); err != nil {
			writeError(w, err)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	}
}

// joinAddress is where other nodes reach this manager's API: its advertise
// IP with the API port.
func (m *Manager) joinAddress() string {
	_, port, err := net.SplitHostPort(m.cfg.APIListen)
	if err != nil {
		return m.cfg.APIListen
	}
	return net.JoinHostPort(m.Self().Endpoint.Addr().String(), port)
}

// Info summarises the cluster.
func (m *Manager) Info() api.ClusterInfo {
	join := m.joinAddress()
	m.mu.Lock()
	defer m.mu.Unlock()
	mt := m.st.meta
	info := api.ClusterInfo{
		ID: mt.ClusterID, Domain: mt.Domain, CAHash: m.ca.Hash(), CAExpires: m.ca.Cert.NotAfter.UTC(), CreatedAt: mt.CreatedAt,
		MapVersion: m.current.Version, WireGuardSubnet: mt.WireGuardSubnet, ContainerSubnet: mt.ContainerSubnet,
		ContainerBlock: mt.ContainerBlockBits, VIPSubnet: mt.VIPSubnet, Manager: m.st.nodes[m.selfID].Name,
		APIListen: m.cfg.APIListen, JoinAddress: join, Nodes: len(m.st.nodes), Services: len(m.st.services), Tasks: len(m.st.tasks),
	}
	names := map[string]string{}
	for _, n := range m.st.nodes {
		names[n.ID] = n.Name
		if n.Status == clustermap.NodeReady {
			info.NodesReady++
		}
	}
	m.raftInfo(&info, names)
	return info
}

// Nodes lists the members, managers (low addresses) first.
func (m *Manager) Nodes() []api.NodeView {
	statuses := m.managerStatuses(m.managerAPIs())
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]api.NodeView, 0, len(m.st.nodes))
	for _, n := range m.st.nodes {
		v := m.nodeViewLocked(n)
		v.ManagerStatus = statuses[n.ID]
		out = append(out, v)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].OverlayIP.Less(out[j].OverlayIP) })
	return out
}

// Node shows one member, found by name or ID.
func (m *Manager) Node(ref string) (api.NodeView, error) {
	statuses := m.managerStatuses(m.managerAPIs())
	m.mu.Lock()
	defer m.mu.Unlock()
	n, ok := m.findNodeLocked(ref)
	if !ok {
		return api.NodeView{}, errNoNode(ref)
	}
	v := m.nodeViewLocked(n)
	v.ManagerStatus = statuses[n.ID]
	return v, nil
}

// managerAPIs maps every manager's ID to its API address.
func (m *Manager) managerAPIs() map[string]string {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := map[string]string{}
	for id, n := range m.st.nodes {
		if n.Role == clustermap.RoleManager {
			out[id] = n.API
		}
	}
	return out
}

func (m *Manager) findNodeLocked(ref string) (nodeRecord, bool) {
	if n, ok := m.st.nodes[ref]; ok {
		return n, true
	}
	return m.st.nodeByName(ref)
}

func errNoNode(ref string) error {
	return errorf(http.StatusNotFound, "no node named %q (list them with `warren node ls`)", ref)
}

func (m *Manager) nodeViewLocked(n nodeRecord) api.NodeView {
	v := api.NodeView{
		ID: n.ID, Name: n.Name, Role: n.Role, Status: n.Status, Availability: availability(n.Availability), OverlayIP: n.OverlayIP, ContainerBlock: n.ContainerBlock,
		Endpoint: n.Endpoint, PublicKey: n.PublicKey, Labels: n.Labels, JoinedAt: n.JoinedAt, CertExpires: n.CertNotAfter,
		LastSeen: m.lastSeen[n.ID], Tunnel: m.health[n.ID], Self: n.ID == m.selfID,
		ClockOffsetSeconds: m.skew[n.ID].Round(time.Millisecond).Seconds(),
	}
	for _, t := range m.st.tasks {
		if t.NodeID == n.ID && t.DesiredState == clustermap.TaskRunning {
			v.Tasks++
		}
	}
	return v
}

// availability names a node's availability for the admin API.
func availability(a string) string {
	if a == "" {
		return "active"
	}
	return a
}

// SetNodeAvailability drains a node (its tasks move to other nodes and it
// gets no new ones: the first step of retiring a board) or makes it active
// again ("").
func (m *Manager) SetNodeAvailability(ref, a string) (api.NodeView, error) {
	var id string
	err := m.update(func(s *state) error {
		n, ok := s.nodes[ref]
		if !ok {
			if n, ok = s.nodeByName(ref); !ok {
				return errNoNode(ref)
			}
		}
		n.Availability = a
		s.nodes[n.ID] = n
		id = n.ID
		return nil
	})
	if err != nil {
		return api.NodeView{}, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.log.Info("node availability changed", "node", m.st.nodes[id].Name, "availability", availability(a))
	return m.nodeViewLocked(m.st.nodes[id]), nil
}

// RemoveNode takes a member out of the cluster: it leaves the map, its
// certificates are revoked (the manager refuses their serials until they
// would have expired), its tasks are rescheduled, and its IP and block are
// free for the next node at once.
// A ready node is removed only with force (it is probably still running).
func (m *Manager) RemoveNode(ref string, force bool) error {
	var name, id string
	var manager bool
	err := m.update(func(s *state) error {
		n, ok := s.nodes[ref]
		if !ok {
			if n, ok = s.nodeByName(ref); !ok {
				return errNoNode(ref)
			}
		}
		if n.ID == m.selfID {
			return errorf(http.StatusConflict, "node %q is this manager: a manager cannot remove itself", n.Name)
		}
		if n.Status == clustermap.NodeReady && !force {
			return errorf(http.StatusConflict, "node %q is ready (it reported %s ago): stop warren-appliance on it first, or remove it anyway with --force",
				n.Name, strings.TrimSpace(m.now().Sub(m.lastSeen[n.ID]).Round(1e9).String()))
		}
		until := n.CertNotAfter
		if until.IsZero() {
			until = m.now()
		}
		var serials []string
		for _, sn := range []string{n.CertSerial, n.PrevSerial} {
			if sn != "" {
				serials = append(serials, sn)
			}
		}
		s.removed[n.ID] = tombstone{Name: n.Name, OverlayIP: n.OverlayIP, Block: n.ContainerBlock, Until: until, Serials: serials}
		delete(s.nodes, n.ID)
		name, id, manager = n.Name, n.ID, n.Role == clustermap.RoleManager
		if manager {
			// Its copy of the data key must stop opening the state: the
			// leader replaces the key (rekey.go).
			s.meta.RekeyNeeded = true
		}
		return nil
	})
	if err != nil {
		return err
	}
	if member, _ := m.raftSuffrage(id); manager && member {
		// A dead manager leaves the Raft configuration too, so it no
		// longer counts towards the quorum.
		if err := m.replica.Raft.RemoveServer(raft.ServerID(id), 0, 10*time.Second).Error(); err != nil {
			return m.noLeaderError(err)
		}
		m.log.Info("manager removed from Raft", "node", name)
	}
	m.mu.Lock()
	for id := range m.lastSeen {
		if _, ok := m.st.nodes[id]; !ok {
			delete(m.lastSeen, id)
			delete(m.health, id)
			delete(m.skew, id)
		}
	}
	m.mu.Unlock()
	m.log.Info("node removed", "node", name)
	return nil
}

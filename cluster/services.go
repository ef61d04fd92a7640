package cluster

import (
	"fmt"
	"maps"
	"net/http"
	"net/netip"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"unicode"

	"github.com/warren-appliance/warren/cluster/api"
	"github.com/warren-appliance/warren/cluster/clustermap"
	"github.com/warren-appliance/warren/cluster/ipam"
	"github.com/warren-appliance/warren/cluster/rollout"
	"github.com/warren-appliance/warren/cluster/scheduler"
	"github.com/warren-appliance/warren/netpolicy"
	"github.com/warren-appliance/warren/orchestrate/health"
)

// MaxReplicas bounds a service's replica count: a typo such as 1000000
// should be an error, not a scheduling storm.
const MaxReplicas = 1000

// Service names are DNS labels short enough that "<name>-<slot>" still is.
var (
	serviceNameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,48}[a-z0-9])?$`)
	envKeyRE      = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
)

// parseServiceSpec validates a create request into a service (without VIP).
func parseServiceSpec(spec api.ServiceSpec) (clustermap.Service, error) {
	svc := clustermap.Service{Name: spec.Name, Image: spec.Image, Replicas: 1, Env: spec.Env,
		Command: spec.Command, Constraints: spec.Constraints, Affinity: spec.Affinity, Workload: spec.Workload}
	if len(spec.Labels) > 0 {
		if err := netpolicy.CheckLabels(spec.Labels); err != nil {
			return svc, errorf(http.StatusBadRequest, "%v", err)
		}
		if err := checkServiceLabelCount(spec.Name, len(spec.Labels)); err != nil {
			return svc, err
		}
		svc.Labels = maps.Clone(spec.Labels)
	}
	var err error
	if svc.CapAdd, err = api.NormalizeCapabilities("cap_add", spec.CapAdd); err != nil {
		return svc, errorf(http.StatusBadRequest, "%v", err)
	}
	if svc.CapDrop, err = api.NormalizeCapabilities("cap_drop", spec.CapDrop); err != nil {
		return svc, errorf(http.StatusBadRequest, "%v", err)
	}
	if c := firstCommon(svc.CapAdd, svc.CapDrop); c != "" {
		return svc, errorf(http.StatusBadRequest, "capability %s is both added and dropped", c)
	}
	if err := checkRotation(spec.SecretRotation); err != nil {
		return svc, err
	}
	svc.SecretRotation = spec.SecretRotation
	if !serviceNameRE.MatchString(spec.Name) {
		return svc, errorf(http.StatusBadRequest, "service name %q is not valid: use 1-50 lowercase letters, digits and '-', starting and ending with a letter or digit (it becomes a DNS name)", spec.Name)
	}
	if err := validateImage(spec.Image); err != nil {
		return svc, err
	}
	if err := checkWorkload(spec.Workload, spec.Replicas != nil); err != nil {
		return svc, err
	}
	if spec.Workload.IsGlobal() {
		svc.Replicas = 0 // the scheduler runs one task per eligible node
	}
	if spec.Replicas != nil {
		if err := validateReplicas(*spec.Replicas); err != nil {
			return svc, err
		}
		svc.Replicas = *spec.Replicas
	}
	for _, e := range spec.Env {
		k, _, ok := strings.Cut(e, "=")
		if !ok || !envKeyRE.MatchString(k) {
			return svc, errorf(http.StatusBadRequest, "environment entry %q is not valid: want KEY=VALUE with KEY made of letters, digits and '_'", e)
		}
	}
	if err := checkHealthSpec(spec.HealthSpec); err != nil {
		return svc, err
	}
	svc.HealthCheck, svc.UpdateConfig, svc.RollbackConfig = spec.HealthCheck, spec.UpdateConfig, spec.RollbackConfig
	for _, c := range spec.Constraints {
		if _, err := scheduler.ParseConstraint(c); err != nil {
			return svc, errorf(http.StatusBadRequest, "constraint %v", err) // the error starts with the expression
		}
	}
	seen := map[string]bool{}
	for _, p := range spec.Ports {
		port, err := ParsePort(p)
		if err != nil {
			return svc, errorf(http.StatusBadRequest, "%v", err)
		}
		key := fmt.Sprintf("%d/%s", port.Published, port.Protocol)
		if seen[key] {
			return svc, errorf(http.StatusBadRequest, "host port %s is published twice", key)
		}
		seen[key] = true
		svc.Ports = append(svc.Ports, port)
	}
	return svc, nil
}

// checkNodeIDs refuses a node.id constraint naming an ID no node has (it
// could never match: IDs are random hex), suggesting node.name when a node
// has that name, as the seed's `node.id==worker-1` means.
func checkNodeIDs(s *state, exprs []string) error {
	for _, e := range exprs {
		c, err := scheduler.ParseConstraint(e)
		if err != nil || c.Field != "node.id" {
			continue
		}
		if _, ok := s.nodes[c.Value]; ok {
			continue
		}
		for _, n := range s.nodes {
			if n.Name == c.Value {
				op := strings.TrimPrefix(c.String(), "node.id")
				return errorf(http.StatusBadRequest, "constraint %s: no node has the ID %q, but node %s is named so (ID %s): did you mean node.name%s?", e, c.Value, n.Name, n.ID, op)
			}
		}
		return errorf(http.StatusBadRequest, "constraint %s: no node has the ID %q (`warren node ls` lists IDs and names; node.name== matches a name)", e, c.Value)
	}
	return nil
}

// ParsePort parses "HOST:CONTAINER[/tcp|/udp]".
func ParsePort(s string) (clustermap.Port, error) {
	spec, proto, hasProto := strings.Cut(s, "/")
	if !hasProto {
		proto = "tcp"
	}
	if proto != "tcp" && proto != "udp" {
		return clustermap.Port{}, fmt.Errorf("port %q: protocol %q is not supported: want tcp or udp", s, proto)
	}
	host, target, ok := strings.Cut(spec, ":")
	if !ok {
		return clustermap.Port{}, fmt.Errorf("port %q: want HOST:CONTAINER[/udp], e.g. 8080:80", s)
	}
	hp, err1 := strconv.ParseUint(host, 10, 16)
	tp, err2 := strconv.ParseUint(target, 10, 16)
	if err1 != nil || err2 != nil || hp == 0 || tp == 0 {
		return clustermap.Port{}, fmt.Errorf("port %q: ports must be numbers from 1 to 65535", s)
	}
	return clustermap.Port{Protocol: proto, Target: uint16(tp), Published: uint16(hp)}, nil
}

func validateImage(image string) error {
	if image == "" {
		return errorf(http.StatusBadRequest, "image is empty: pass --image, e.g. --image nginx:alpine")
	}
	if strings.ContainsFunc(image, unicode.IsSpace) {
		return errorf(http.StatusBadRequest, "image %q contains white space", image)
	}
	return nil
}

func validateReplicas(n int) error {
	if n < 0 || n > MaxReplicas {
		return errorf(http.StatusBadRequest, "replicas %d is out of range: want 0 to %d", n, MaxReplicas)
	}
	return nil
}

// CreateService validates spec, allocates the lowest free VIP and adds the
// service; on any error nothing is created.
func (m *Manager) CreateService(spec api.ServiceSpec) (api.ServiceView, error) {
	svc, err := parseServiceSpec(spec)
	if err != nil {
		return api.ServiceView{}, err
	}
	err = m.update(func(s *state) error {
		if old, ok := s.services[svc.Name]; ok {
			return errorf(http.StatusConflict, "service %q already exists (VIP %s, image %s): pick another name, or `warren service rm %s` first", svc.Name, old.VIP, old.Image, svc.Name)
		}
		if err := m.checkReservedPortsLocked(s, svc.Ports); err != nil {
			return err
		}
		if err := checkNodeIDs(s, svc.Constraints); err != nil {
			return err
		}
		var err error
		if svc.Secrets, err = parseFileRefs(s, api.KindSecret, spec.Secrets); err != nil {
			return err
		}
		if svc.Configs, err = parseFileRefs(s, api.KindConfig, spec.Configs); err != nil {
			return err
		}
		for _, other := range s.services {
			for _, op := range other.Ports {
				for _, p := range svc.Ports {
					if op.Published == p.Published && op.Protocol == p.Protocol {
						return errorf(http.StatusConflict, "host port %d/%s is already published by service %q", p.Published, p.Protocol, other.Name)
					}
				}
			}
		}
		vip, err := ipam.NextAddr(s.meta.VIPSubnet, func(a netip.Addr) bool {
			for _, o := range s.services {
				if o.VIP == a {
					return true
				}
			}
			for _, i := range s.imports {
				if i.VIP == a {
					return true // a peer's imported service
				}
			}
			return false
		})
		if err != nil {
			return errorf(http.StatusConflict, "no VIP left: %v", err)
		}
		svc.VIP = vip
		now := m.now().UTC()
		s.services[svc.Name] = serviceRecord{Service: svc, CreatedAt: now, UpdatedAt: now}
		return nil
	})
	if err != nil {
		return api.ServiceView{}, err
	}
	m.log.Info("service created", "service", svc.Name, "image", svc.Image, "replicas", svc.Replicas, "vip", svc.VIP)
	return m.Service(svc.Name)
}

// ScaleService sets the replica count.
func (m *Manager) ScaleService(name string, replicas int) (api.ServiceView, error) {
	if err := validateReplicas(replicas); err != nil {
		return api.ServiceView{}, err
	}
	err := m.changeService(name, func(r *serviceRecord) error {
		if r.IsGlobal() {
			return errorf(http.StatusBadRequest, "service %s is global (one task on every eligible node): it cannot be scaled; choose its nodes with constraints, or recreate it with --mode replicated", name)
		}
		r.Replicas = replicas
		return nil
	})
	if err != nil {
		return api.ServiceView{}, err
	}
	m.log.Info("service scaled", "service", name, "replicas", replicas)
	return m.Service(name)
}

// UpdateServiceImage starts a rolling update to image
// (UpdateServiceSettings).
func (m *Manager) UpdateServiceImage(name, image string) (api.ServiceView, error) {
	return m.UpdateServiceSettings(name, api.ImageUpdate{Image: image})
}

// UpdateServiceSettings sets the health check and update settings given
// in req and, when req names another image, starts a rolling update to it
// (rollout.Plan moves the slots). On any error nothing changes.
func (m *Manager) UpdateServiceSettings(name string, req api.ImageUpdate) (api.ServiceView, error) {
	if req.Image != "" {
		if err := validateImage(req.Image); err != nil {
			return api.ServiceView{}, err
		}
	}
	if err := checkHealthSpec(req.HealthSpec); err != nil {
		return api.ServiceView{}, err
	}
	started := false
	err := m.changeService(name, func(r *serviceRecord) error {
		prevImage, prevHealth := r.Image, r.HealthCheck
		if req.HealthCheck != nil {
			r.HealthCheck = req.HealthCheck
		}
		if req.UpdateConfig != nil {
			r.UpdateConfig = req.UpdateConfig
		}
		if req.RollbackConfig != nil {
			r.RollbackConfig = req.RollbackConfig
		}
		if req.Image != "" && req.Image != prevImage {
			r.Image = req.Image
			r.Update = rollout.Begin(r.Service, prevImage, prevHealth, r.SpecVersion, m.now().UTC())
			started = true
		}
		return nil
	})
	if err != nil {
		return api.ServiceView{}, err
	}
	if started {
		m.log.Info("service image update started", "service", name, "image", req.Image)
	}
	return m.Service(name)
}

// RollbackService rolls a service back to the image and health check it
// had before its last update (Docker's `service rollback`), with its
// rollback settings.
func (m *Manager) RollbackService(name string) (api.ServiceView, error) {
	err := m.changeService(name, func(r *serviceRecord) error {
		if r.Update == nil || r.Update.Previous == "" {
			return errorf(http.StatusConflict, "service %s has no previous image to roll back to (it was never updated)", name)
		}
		r.Update = rollBack(r, r.Update, "manual rollback", m.now().UTC())
		return nil
	})
	if err != nil {
		return api.ServiceView{}, err
	}
	m.log.Info("service rollback started", "service", name)
	return m.Service(name)
}

// checkHealthSpec validates the health check and update settings.
func checkHealthSpec(h api.HealthSpec) error {
	if err := health.Validate(h.HealthCheck); err != nil {
		return errorf(http.StatusBadRequest, "%v", err)
	}
	if err := rollout.Validate(h.UpdateConfig, "update"); err != nil {
		return errorf(http.StatusBadRequest, "%v", err)
	}
	if err := rollout.Validate(h.RollbackConfig, "rollback"); err != nil {
		return errorf(http.StatusBadRequest, "%v", err)
	}
	return nil
}

// advanceUpdates replans while a rolling update waits on time (drain,
// delay, monitor window); reports move it otherwise.
func (m *Manager) advanceUpdates() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.leader || m.st == nil {
		return
	}
	active := false
	for _, r := range m.st.services {
		active = active || r.Update.Active()
	}
	if !active {
		return
	}
	if err := m.updateLocked(func(*state) error { return nil }); err != nil {
		m.log.Warn("advance rolling updates", "err", err)
	}
}

// UpdateServiceLabels sets (add) and removes (rm) labels of a service;
// its tasks carry them in the next map, so policies follow at once.
func (m *Manager) UpdateServiceLabels(name string, add map[string]string, rm []string) (api.ServiceView, error) {
	if err := netpolicy.CheckLabels(add); err != nil {
		return api.ServiceView{}, errorf(http.StatusBadRequest, "%v", err)
	}
	for _, k := range rm {
		if err := netpolicy.CheckLabelKey(k); err != nil {
			return api.ServiceView{}, errorf(http.StatusBadRequest, "%v", err)
		}
		if _, ok := add[k]; ok {
			return api.ServiceView{}, errorf(http.StatusBadRequest, "label %s is both added and removed", k)
		}
	}
	err := m.changeService(name, func(r *serviceRecord) error {
		labels := maps.Clone(r.Labels) // records are shared with the previous state
		if labels == nil {
			labels = map[string]string{}
		}
		maps.Copy(labels, add)
		for _, k := range rm {
			delete(labels, k)
		}
		if err := checkServiceLabelCount(name, len(labels)); err != nil {
			return err
		}
		if len(labels) == 0 {
			labels = nil
		}
		r.Labels = labels
		return nil
	})
	if err != nil {
		return api.ServiceView{}, err
	}
	m.log.Info("service labels updated", "service", name, "added", len(add), "removed", len(rm))
	return m.Service(name)
}

// UpdateServiceCapabilities adds and drops capabilities of a service
// (Docker's `service update --cap-add/--cap-drop`); its tasks are
// recreated with them.
func (m *Manager) UpdateServiceCapabilities(name string, add, drop []string) (api.ServiceView, error) {
	add, err := api.NormalizeCapabilities("add", add)
	if err != nil {
		return api.ServiceView{}, errorf(http.StatusBadRequest, "%v", err)
	}
	if drop, err = api.NormalizeCapabilities("drop", drop); err != nil {
		return api.ServiceView{}, errorf(http.StatusBadRequest, "%v", err)
	}
	if c := firstCommon(add, drop); c != "" {
		return api.ServiceView{}, errorf(http.StatusBadRequest, "capability %s is both added and dropped", c)
	}
	if len(add) == 0 && len(drop) == 0 {
		return api.ServiceView{}, errorf(http.StatusBadRequest, "no capability to add or drop")
	}
	err = m.changeService(name, func(r *serviceRecord) error {
		r.CapAdd, r.CapDrop = api.UpdateCapabilities(r.CapAdd, r.CapDrop, add, drop)
		return nil
	})
	if err != nil {
		return api.ServiceView{}, err
	}
	m.log.Info("service capabilities updated", "service", name, "added", add, "dropped", drop)
	return m.Service(name)
}

// firstCommon returns the first name in both sorted lists, or "".
func firstCommon(a, b []string) string {
	for _, x := range a {
		if slices.Contains(b, x) {
			return x
		}
	}
	return ""
}

func (m *Manager) changeService(name string, change func(*serviceRecord) error) error {
	return m.update(func(s *state) error {
		r, ok := s.services[name]
		if !ok {
			return errNoService(name)
		}
		if err := change(&r); err != nil {
			return err
		}
		r.UpdatedAt = m.now().UTC()
		s.services[name] = r
		return nil
	})
}

// RemoveService deletes the service and frees its VIP; its tasks are told
// to shut down.
func (m *Manager) RemoveService(name string) error {
	err := m.update(func(s *state) error {
		if _, ok := s.services[name]; !ok {
			return errNoService(name)
		}
		delete(s.services, name)
		return nil
	})
	if err == nil {
		m.log.Info("service removed", "service", name)
	}
	return err
}

func errNoService(name string) error {
	return errorf(http.StatusNotFound, "no service named %q (list them with `warren service ls`)", name)
}

// Services lists every service with its tasks.
func (m *Manager) Services() []api.ServiceView {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := []api.ServiceView{}
	for _, svc := range m.st.sortedServices() {
		out = append(out, m.serviceViewLocked(svc.Name))
	}
	return out
}

// Service shows one service with its tasks and why replicas are unplaced.
func (m *Manager) Service(name string) (api.ServiceView, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.st.services[name]; !ok {
		return api.ServiceView{}, errNoService(name)
	}
	return m.serviceViewLocked(name), nil
}

func (m *Manager) serviceViewLocked(name string) api.ServiceView {
	r := m.st.services[name]
	v := api.ServiceView{
		Name: r.Name, Image: r.Image, Replicas: r.Replicas, VIP: r.VIP, Ports: r.Ports, Env: r.Env,
		Command: r.Command, Constraints: r.Constraints, Affinity: r.Affinity, CapAdd: r.CapAdd, CapDrop: r.CapDrop, CreatedAt: r.CreatedAt,
		UpdatedAt: r.UpdatedAt, Unplaced: m.unplaced[name], Tasks: []api.TaskView{}, Labels: maps.Clone(r.Labels),
		HealthSpec: api.HealthSpec{HealthCheck: r.HealthCheck, UpdateConfig: r.UpdateConfig, RollbackConfig: r.RollbackConfig},
		Workload:   r.Workload, Exported: r.Exported,
	}
	if r.Update != nil {
		us := r.Update.UpdateStatus
		v.UpdateStatus = &us
		v.Updating = r.Update.Active()
	}
	if v.Labels == nil {
		v.Labels = map[string]string{}
	}
	v.Secrets, v.Configs, v.SecretRotation = r.Secrets, r.Configs, r.SecretRotation
	if v.Ports == nil {
		v.Ports = []clustermap.Port{}
	}
	// Error texts and process facts are not in the published map: take
	// them from the state.
	errs := map[[2]string]clustermap.Task{}
	for _, t := range m.st.tasks {
		if t.Service == name {
			errs[[2]string{t.Name, t.NodeID}] = t
		}
	}
	for _, t := range m.current.Tasks {
		if t.Service != name {
			continue
		}
		node := m.st.nodes[t.NodeID].Name
		st := errs[[2]string{t.Name, t.NodeID}]
		tv := taskView(t, st, node, r.Labels)
		if t.Health != "" {
			h := m.taskHealth[taskKey{t.Name, t.NodeID}]
			h.Status = t.Health // the map's is the one endpoints follow
			tv.Health = &h
		}
		v.Tasks = append(v.Tasks, tv)
		if t.DesiredState == clustermap.TaskRunning && (r.IsGlobal() || t.Slot <= r.Replicas) {
			if r.IsGlobal() {
				v.Replicas++ // one per eligible node
			}
			if t.Serves() {
				v.Running++
			}
			if t.Image != r.Image || t.SpecVersion != r.SpecVersion {
				v.Updating = true
			}
		}
	}
	return v
}

// checkServiceLabelCount refuses a service with more than
// maxServiceLabels labels (every label is carried by each of its tasks in
// the map every node holds).
func checkServiceLabelCount(service string, n int) error {
	if n > maxServiceLabels {
		return errorf(http.StatusBadRequest, "service %s would have %d labels: at most %d labels per service", service, n, maxServiceLabels)
	}
	return nil
}

// UpdateService replaces what service name runs with spec (every field of
// a create but the name and mode, secrets and configs). Image, env,
// command and workload changes start a rolling update (rollout.Plan:
// health-gated, with the service's update order, monitor window and
// failure action; a new spec version for env, command and workload);
// constraints, ports, labels, capabilities, health and update settings
// and replicas apply at once. On any error nothing changes.
func (m *Manager) UpdateService(name string, spec api.ServiceSpec) (api.ServiceView, error) {
	if spec.Name == "" {
		spec.Name = name
	}
	if spec.Name != name {
		return api.ServiceView{}, errorf(http.StatusBadRequest, "a service cannot be renamed (%s to %s): create the new one and remove the old", name, spec.Name)
	}
	next, err := parseServiceSpec(spec)
	if err != nil {
		return api.ServiceView{}, err
	}
	err = m.update(func(s *state) error {
		r, ok := s.services[name]
		if !ok {
			return errNoService(name)
		}
		if r.IsGlobal() != next.IsGlobal() {
			return errorf(http.StatusBadRequest, "the mode of service %s cannot change (%s): create a new service", name, modeName(r.Workload))
		}
		if err := m.checkReservedPortsLocked(s, next.Ports); err != nil {
			return err
		}
		for _, other := range s.services {
			if other.Name == name {
				continue
			}
			for _, op := range other.Ports {
				for _, p := range next.Ports {
					if op.Published == p.Published && op.Protocol == p.Protocol {
						return errorf(http.StatusConflict, "host port %d/%s is already published by service %q", p.Published, p.Protocol, other.Name)
					}
				}
			}
		}
		if spec.Replicas == nil {
			next.Replicas = r.Replicas
		}
		next.VIP = r.VIP
		// Secrets and configs change through their own update (refs).
		next.Secrets, next.Configs, next.SecretRotation = r.Secrets, r.Configs, r.SecretRotation
		next.SpecVersion, next.Previous = r.SpecVersion, r.Previous
		if !slices.Equal(r.Env, next.Env) || !slices.Equal(r.Command, next.Command) || !reflect.DeepEqual(r.Workload, next.Workload) {
			// Past every version a task still has and the one a
			// rollback left (it goes back to an older one), so no task
			// or report names a stale spec by number.
			v := r.SpecVersion
			if r.Update != nil {
				v = max(v, r.Update.PreviousSpecVersion)
			}
			for _, t := range s.tasks {
				if t.Service == name {
					v = max(v, t.SpecVersion)
				}
			}
			next.SpecVersion = v + 1
			next.Previous = &clustermap.PreviousSpec{Env: r.Env, Command: r.Command, Workload: r.Workload}
		}
		now := m.now().UTC()
		if next.Image != r.Image || next.SpecVersion != r.SpecVersion {
			r.Update = rollout.Begin(next, r.Image, r.HealthCheck, r.SpecVersion, now)
		}
		r.Service = next
		r.UpdatedAt = now
		s.services[name] = r
		return nil
	})
	if err != nil {
		return api.ServiceView{}, err
	}
	m.log.Info("service updated", "service", name, "image", next.Image, "spec_version", next.SpecVersion)
	return m.Service(name)
}

func modeName(w clustermap.Workload) string {
	if w.IsGlobal() {
		return clustermap.ModeGlobal
	}
	return clustermap.ModeReplicated
}

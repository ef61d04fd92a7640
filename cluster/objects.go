package cluster

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"os"
	"path"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/warren-appliance/warren/cluster/api"
	"github.com/warren-appliance/warren/cluster/clustermap"
	"github.com/warren-appliance/warren/cluster/secretbox"
	"github.com/warren-appliance/warren/netpolicy"
)

// Secrets and configs: named values that services' tasks see as files.
// Their values enter the store sealed with the cluster's data key
// (secretbox), so the Raft log, its snapshots and backups hold ciphertext
// only; the key is a file of each manager's state dir, never replicated
// through Raft (a joining manager gets it in the answer to its Raft join,
// over manager mTLS).

// objectRecord is a stored secret or config.
type objectRecord struct {
	ID        string            `json:"id"`
	Name      string            `json:"name"`
	Labels    map[string]string `json:"labels,omitempty"`
	Version   uint64            `json:"version"`
	Size      int               `json:"size"`
	CreatedAt time.Time         `json:"created_at"`
	UpdatedAt time.Time         `json:"updated_at"`
	Sealed    []byte            `json:"sealed"` // secretbox: nonce || ciphertext
	// Federated: peers get it (`--federated`); From: the peer it came
	// from (updated and removed by that peer only).
	Federated bool   `json:"federated,omitempty"`
	From      string `json:"from,omitempty"`
}

// Object names as Docker's: a letter or digit, then letters, digits, '_',
// '.' or '-', at most 64.
var objectNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$`)

// maxObjectLabels bounds an object's labels.
const maxObjectLabels = 32

func (s *state) objects(kind string) map[string]objectRecord {
	if kind == api.KindConfig {
		return s.configs
	}
	return s.secrets
}

func checkKind(kind string) error {
	if kind != api.KindSecret && kind != api.KindConfig {
		return errorf(http.StatusBadRequest, "kind %q is not valid: want secret or config", kind)
	}
	return nil
}

func errNoObject(kind, name string) error {
	return errorf(http.StatusNotFound, "no %s named %q (list them with `warren %s ls`)", kind, name, kind)
}

func checkObjectValue(kind string, data []byte) error {
	if len(data) == 0 {
		return errorf(http.StatusBadRequest, "%s value is empty: give a file with -f FILE, or - for stdin", kind)
	}
	if len(data) > api.MaxObjectSize {
		return errorf(http.StatusBadRequest, "%s value is %d bytes: at most %d (500 KiB)", kind, len(data), api.MaxObjectSize)
	}
	return nil
}

// dataKeyLocked returns the cluster's data key. A leader without one (a
// cluster created before secrets existed) makes it, as long as nothing is
// sealed yet; a key made now must reach the other managers (see
// handleRaftJoin and pathInternalDataKey).
func (m *Manager) dataKeyLocked(s *state) (secretbox.Key, error) {
	if m.dataKey != nil {
		return m.dataKey, nil
	}
	if len(s.secrets) > 0 || len(s.configs) > 0 || slices.ContainsFunc(slices.Collect(maps.Values(s.registries)), func(r registryRecord) bool { return r.Sealed != nil }) {
		return nil, errorf(http.StatusServiceUnavailable, "this manager has no data key (%s) yet: it asks the other managers for it every few seconds, retry; if none has it, restore it from a backup's FILE.key (same path, mode 0600)",
			m.dataKeyPath())
	}
	k, err := secretbox.NewKey()
	if err != nil {
		return nil, err
	}
	if err := secretbox.Save(m.cfg.StateDir, k); err != nil {
		return nil, err
	}
	m.dataKey = k
	m.log.Info("created the cluster's data key for secrets and configs", "file", m.dataKeyPath())
	return k, nil
}

func (m *Manager) dataKeyPath() string { return path.Join(m.cfg.StateDir, secretbox.KeyFile) }

// loadDataKey reads this manager's data key, if it has one.
func (m *Manager) loadDataKey() error {
	k, err := secretbox.Load(m.cfg.StateDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	m.mu.Lock()
	m.dataKey = k
	m.mu.Unlock()
	return nil
}

// DataKey returns a copy of the cluster's data key (for `cluster backup`),
// nil if this manager has none.
func (m *Manager) DataKey() []byte {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.dataKey)
}

// CreateObject creates a secret or config; on any error nothing is stored.
func (m *Manager) CreateObject(kind string, spec api.ObjectSpec) (api.ObjectView, error) {
	if err := checkKind(kind); err != nil {
		return api.ObjectView{}, err
	}
	if !objectNameRE.MatchString(spec.Name) {
		return api.ObjectView{}, errorf(http.StatusBadRequest, "%s name %q is not valid: use 1-64 letters, digits, '_', '.' and '-', starting with a letter or digit", kind, spec.Name)
	}
	if err := checkObjectValue(kind, spec.Data); err != nil {
		return api.ObjectView{}, err
	}
	if len(spec.Labels) > maxObjectLabels {
		return api.ObjectView{}, errorf(http.StatusBadRequest, "%d labels: at most %d per %s", len(spec.Labels), maxObjectLabels, kind)
	}
	if err := netpolicy.CheckLabels(spec.Labels); err != nil {
		return api.ObjectView{}, errorf(http.StatusBadRequest, "%v", err)
	}
	err := m.update(func(s *state) error {
		objs := s.objects(kind)
		if _, ok := objs[spec.Name]; ok {
			return errorf(http.StatusConflict, "%s %q already exists: give it a new value with `warren %s update %s -f FILE`, or pick another name", kind, spec.Name, kind, spec.Name)
		}
		key, err := m.dataKeyLocked(s)
		if err != nil {
			return err
		}
		sealed, err := key.Seal(kind, spec.Name, 1, spec.Data)
		if err != nil {
			return err
		}
		now := m.now().UTC()
		objs = cloneObjects(objs)
		objs[spec.Name] = objectRecord{ID: randomID(), Name: spec.Name, Labels: maps.Clone(spec.Labels), Version: 1,
			Size: len(spec.Data), CreatedAt: now, UpdatedAt: now, Sealed: sealed, Federated: spec.Federated}
		s.setObjects(kind, objs)
		return nil
	})
	if err != nil {
		return api.ObjectView{}, err
	}
	m.log.Info(kind+" created", "name", spec.Name) // never the value
	return m.Object(kind, spec.Name, false)
}

func (s *state) setObjects(kind string, objs map[string]objectRecord) {
	if kind == api.KindConfig {
		s.configs = objs
	} else {
		s.secrets = objs
	}
}

// UpdateObject gives a secret or config a new value and version; running
// tasks see it in place (or are restarted one by one: --secret-rotation).
func (m *Manager) UpdateObject(kind, name string, data []byte) (api.ObjectView, error) {
	if err := checkKind(kind); err != nil {
		return api.ObjectView{}, err
	}
	if err := checkObjectValue(kind, data); err != nil {
		return api.ObjectView{}, err
	}
	err := m.update(func(s *state) error {
		rec, ok := s.objects(kind)[name]
		if !ok {
			return errNoObject(kind, name)
		}
		if rec.From != "" {
			return errFromPeer(kind, name, rec.From)
		}
		key, err := m.dataKeyLocked(s)
		if err != nil {
			return err
		}
		rec.Version++
		if rec.Sealed, err = key.Seal(kind, name, rec.Version, data); err != nil {
			return err
		}
		rec.Size, rec.UpdatedAt = len(data), m.now().UTC()
		objs := cloneObjects(s.objects(kind))
		objs[name] = rec
		s.setObjects(kind, objs)
		return nil
	})
	if err != nil {
		return api.ObjectView{}, err
	}
	v, err := m.Object(kind, name, false)
	if err == nil {
		m.log.Info(kind+" updated", "name", name, "version", v.Version)
	}
	return v, err
}

// RemoveObject deletes a secret or config no service uses.
func (m *Manager) RemoveObject(kind, name string) error {
	if err := checkKind(kind); err != nil {
		return err
	}
	err := m.update(func(s *state) error {
		rec, ok := s.objects(kind)[name]
		if !ok {
			return errNoObject(kind, name)
		}
		if rec.From != "" {
			return errFromPeer(kind, name, rec.From)
		}
		if users := s.servicesUsing(kind, name); len(users) > 0 {
			return errorf(http.StatusConflict, "%s %q is in use by service(s) %s: remove it from them first (`warren service update SERVICE --%s-rm %s`) or remove the services",
				kind, name, strings.Join(users, ", "), kind, name)
		}
		objs := cloneObjects(s.objects(kind))
		delete(objs, name)
		s.setObjects(kind, objs)
		return nil
	})
	if err == nil {
		m.log.Info(kind+" removed", "name", name)
	}
	return err
}

func errFromPeer(kind, name, peer string) error {
	return errorf(http.StatusConflict, "%s %q is federated from peer %s: update or remove it there", kind, name, peer)
}

// servicesUsing names the services that reference kind/name, sorted.
func (s *state) servicesUsing(kind, name string) []string {
	var out []string
	for _, r := range s.services {
		refs := r.Secrets
		if kind == api.KindConfig {
			refs = r.Configs
		}
		if slices.ContainsFunc(refs, func(f clustermap.FileRef) bool { return f.Source == name }) {
			out = append(out, r.Name)
		}
	}
	slices.Sort(out)
	return out
}

// Objects lists the secrets or configs (metadata only).
func (m *Manager) Objects(kind string) ([]api.ObjectView, error) {
	if err := checkKind(kind); err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	out := []api.ObjectView{}
	objs := m.st.objects(kind)
	for _, name := range slices.Sorted(maps.Keys(objs)) {
		out = append(out, objectView(m.st, kind, objs[name]))
	}
	return out, nil
}

// Object shows one secret or config: metadata, and for a config asked
// with pretty its value. A secret's value is never shown.
func (m *Manager) Object(kind, name string, pretty bool) (api.ObjectView, error) {
	if err := checkKind(kind); err != nil {
		return api.ObjectView{}, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	rec, ok := m.st.objects(kind)[name]
	if !ok {
		return api.ObjectView{}, errNoObject(kind, name)
	}
	v := objectView(m.st, kind, rec)
	if pretty && kind == api.KindConfig {
		if m.dataKey == nil {
			return api.ObjectView{}, errorf(http.StatusServiceUnavailable, "this manager has no data key (%s) to open the config with yet: it asks the other managers for it; retry", m.dataKeyPath())
		}
		data, err := m.dataKey.Open(kind, name, rec.Version, rec.Sealed)
		if err != nil {
			return api.ObjectView{}, fmt.Errorf("config %s: %w", name, err)
		}
		str := string(data)
		v.Data = &str
	}
	return v, nil
}

func objectView(s *state, kind string, r objectRecord) api.ObjectView {
	v := api.ObjectView{ID: r.ID, Name: r.Name, Version: r.Version, Size: r.Size, Labels: maps.Clone(r.Labels),
		CreatedAt: r.CreatedAt, UpdatedAt: r.UpdatedAt, Services: s.servicesUsing(kind, r.Name), Federated: r.Federated, From: r.From}
	if v.Labels == nil {
		v.Labels = map[string]string{}
	}
	if v.Services == nil {
		v.Services = []string{}
	}
	return v
}

// withVersions returns svc with each reference's current version (what
// the published map carries).
func (s *state) withVersions(svc clustermap.Service) clustermap.Service {
	fill := func(refs []clustermap.FileRef, objs map[string]objectRecord) []clustermap.FileRef {
		if refs == nil {
			return nil
		}
		out := slices.Clone(refs)
		for i := range out {
			out[i].Version = objs[out[i].Source].Version
		}
		return out
	}
	svc.Secrets = fill(svc.Secrets, s.secrets)
	svc.Configs = fill(svc.Configs, s.configs)
	return svc
}

// Default file modes, as the contract: secrets 0400, configs 0444.
const (
	DefaultSecretMode = 0o400
	DefaultConfigMode = 0o444
	// SecretsDir is where a task sees its secrets.
	SecretsDir = "/run/secrets"
)

// ParseFileRef parses Docker's --secret / --config value: NAME, or
// source=NAME[,target=T][,uid=U][,gid=G][,mode=0400]. A secret's target is
// a file name under /run/secrets (default: NAME); a config's an absolute
// path (default: /NAME).
func ParseFileRef(kind, s string) (clustermap.FileRef, error) {
	ref := clustermap.FileRef{UID: "0", GID: "0", Mode: DefaultSecretMode}
	if kind == api.KindConfig {
		ref.Mode = DefaultConfigMode
	}
	if !strings.Contains(s, "=") {
		ref.Source = s
	} else {
		for _, field := range strings.Split(s, ",") {
			k, v, ok := strings.Cut(field, "=")
			if !ok {
				return ref, fmt.Errorf("--%s %q: field %q is not KEY=VALUE", kind, s, field)
			}
			switch strings.ToLower(strings.TrimSpace(k)) {
			case "source", "src":
				ref.Source = v
			case "target":
				ref.Target = v
			case "uid":
				ref.UID = v
			case "gid":
				ref.GID = v
			case "mode":
				mode, err := strconv.ParseUint(v, 8, 32)
				if err != nil || mode > 0o777 {
					return ref, fmt.Errorf("--%s %q: mode %q is not an octal file mode such as 0400", kind, s, v)
				}
				ref.Mode = uint32(mode)
			default:
				return ref, fmt.Errorf("--%s %q: unknown field %q: want source, target, uid, gid or mode", kind, s, k)
			}
		}
	}
	if !objectNameRE.MatchString(ref.Source) {
		return ref, fmt.Errorf("--%s %q: source %q is not a valid %s name", kind, s, ref.Source, kind)
	}
	for _, id := range []struct{ name, v string }{{"uid", ref.UID}, {"gid", ref.GID}} {
		if n, err := strconv.ParseUint(id.v, 10, 32); err != nil || n > 1<<31 {
			return ref, fmt.Errorf("--%s %q: %s %q is not a numeric ID", kind, s, id.name, id.v)
		}
	}
	if strings.ContainsFunc(ref.Target, unicode.IsControl) {
		return ref, fmt.Errorf("--%s %q: target %q holds a control character", kind, s, ref.Target)
	}
	if kind == api.KindSecret {
		if ref.Target == "" {
			ref.Target = ref.Source
		}
		t := strings.TrimPrefix(ref.Target, SecretsDir+"/")
		if t == "" || t == "." || t == ".." || strings.Contains(t, "/") || strings.HasPrefix(t, "..") {
			return ref, fmt.Errorf("--secret %q: target %q must be a file name (the task sees it at %s/NAME)", s, ref.Target, SecretsDir)
		}
		ref.Target = t
		return ref, nil
	}
	if ref.Target == "" {
		ref.Target = "/" + ref.Source
	}
	if !path.IsAbs(ref.Target) || path.Clean(ref.Target) != ref.Target || ref.Target == "/" {
		return ref, fmt.Errorf("--config %q: target %q must be a clean absolute file path such as /etc/app.conf", s, ref.Target)
	}
	switch {
	case ref.Target == "/etc/hosts" || ref.Target == "/etc/resolv.conf":
		return ref, fmt.Errorf("--config %q: target %s is the task's own file (warren writes it)", s, ref.Target)
	case ref.Target == SecretsDir || strings.HasPrefix(ref.Target, SecretsDir+"/"):
		return ref, fmt.Errorf("--config %q: target %s is under %s, where the secrets are", s, ref.Target, SecretsDir)
	}
	return ref, nil
}

// parseFileRefs parses a service's --secret or --config values and checks
// that the objects exist and no two share a target.
func parseFileRefs(s *state, kind string, raw []string) ([]clustermap.FileRef, error) {
	var out []clustermap.FileRef
	for _, r := range raw {
		ref, err := ParseFileRef(kind, r)
		if err != nil {
			return nil, errorf(http.StatusBadRequest, "%v", err)
		}
		out = append(out, ref)
	}
	return out, checkFileRefs(s, kind, out)
}

func checkFileRefs(s *state, kind string, refs []clustermap.FileRef) error {
	if len(refs) > maxRefsPerService {
		return errorf(http.StatusBadRequest, "%d %ss: at most %d per service", len(refs), kind, maxRefsPerService)
	}
	targets := map[string]string{}
	for _, ref := range refs {
		if _, ok := s.objects(kind)[ref.Source]; !ok {
			return errorf(http.StatusNotFound, "no %s named %q: create it first with `warren %s create %s -f FILE`", kind, ref.Source, kind, ref.Source)
		}
		if other, ok := targets[ref.Target]; ok {
			return errorf(http.StatusBadRequest, "%ss %q and %q have the same target %s", kind, other, ref.Source, ref.Target)
		}
		targets[ref.Target] = ref.Source
	}
	return nil
}

// maxRefsPerService bounds a service's secrets (and its configs).
const maxRefsPerService = 64

func checkRotation(r string) error {
	if r != clustermap.RotationInPlace && r != clustermap.RotationRestart {
		return errorf(http.StatusBadRequest, "--secret-rotation %q is not valid: want restart, or leave it out (new versions replace the files in place)", r)
	}
	return nil
}

// UpdateServiceRefs adds and removes a service's secrets and configs.
// Removal is by source name (as Docker's --secret-rm); an added source
// already referenced replaces that reference.
func (m *Manager) UpdateServiceRefs(name string, req api.ServiceRefsUpdate) (api.ServiceView, error) {
	if req.SecretRotation != nil {
		if err := checkRotation(*req.SecretRotation); err != nil {
			return api.ServiceView{}, err
		}
	}
	err := m.update(func(s *state) error {
		r, ok := s.services[name]
		if !ok {
			return errNoService(name)
		}
		apply := func(kind string, have []clustermap.FileRef, add, rm []string) ([]clustermap.FileRef, error) {
			added, err := parseFileRefs(s, kind, add)
			if err != nil {
				return nil, err
			}
			gone := map[string]bool{}
			for _, n := range rm {
				if !slices.ContainsFunc(have, func(f clustermap.FileRef) bool { return f.Source == n }) {
					return nil, errorf(http.StatusBadRequest, "--%s-rm %s: service %s does not use that %s", kind, n, name, kind)
				}
				gone[n] = true
			}
			for _, a := range added {
				gone[a.Source] = true
			}
			var out []clustermap.FileRef
			for _, f := range have {
				if !gone[f.Source] {
					out = append(out, f)
				}
			}
			out = append(out, added...)
			return out, checkFileRefs(s, kind, out)
		}
		var err error
		if r.Secrets, err = apply(api.KindSecret, r.Secrets, req.SecretAdd, req.SecretRemove); err != nil {
			return err
		}
		if r.Configs, err = apply(api.KindConfig, r.Configs, req.ConfigAdd, req.ConfigRemove); err != nil {
			return err
		}
		if req.SecretRotation != nil {
			r.SecretRotation = *req.SecretRotation
		}
		r.UpdatedAt = m.now().UTC()
		s.services[name] = r
		return nil
	})
	if err != nil {
		return api.ServiceView{}, err
	}
	m.log.Info("service secrets/configs updated", "service", name)
	return m.Service(name)
}

// Values returns the current values of refs for node nodeID, which must
// run (be assigned, desired running) a task of a service that uses each.
func (m *Manager) Values(nodeID string, refs []api.ValueRef) ([]api.Value, error) {
	if len(refs) > api.MaxValueRefs {
		return nil, errorf(http.StatusBadRequest, "%d values asked: at most %d per call", len(refs), api.MaxValueRefs)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	s := m.st
	allowed := map[api.ValueRef]bool{}
	for _, t := range s.tasks {
		if t.NodeID != nodeID || t.DesiredState != clustermap.TaskRunning {
			continue
		}
		svc := s.services[t.Service]
		for _, f := range svc.Secrets {
			allowed[api.ValueRef{Kind: api.KindSecret, Name: f.Source}] = true
		}
		for _, f := range svc.Configs {
			allowed[api.ValueRef{Kind: api.KindConfig, Name: f.Source}] = true
		}
	}
	out := []api.Value{}
	var regs map[string]bool
	for _, ref := range refs {
		if ref.Kind == api.KindRegistry {
			if regs == nil {
				regs = s.registriesOfNode(nodeID)
			}
			if !regs[ref.Name] {
				return nil, errorf(http.StatusForbidden, "registry %q: no task assigned to this node pulls from it", ref.Name)
			}
			v, err := m.registryValueLocked(ref.Name)
			if err != nil {
				return nil, err
			}
			out = append(out, v)
			continue
		}
		if err := checkKind(ref.Kind); err != nil {
			return nil, err
		}
		if !allowed[ref] {
			return nil, errorf(http.StatusForbidden, "%s %q: no task assigned to this node uses it", ref.Kind, ref.Name)
		}
		rec, ok := s.objects(ref.Kind)[ref.Name]
		if !ok {
			return nil, errNoObject(ref.Kind, ref.Name)
		}
		if m.dataKey == nil {
			return nil, errorf(http.StatusServiceUnavailable, "this manager has no data key (%s) yet: it asks the other managers for it; retry", m.dataKeyPath())
		}
		data, err := m.dataKey.Open(ref.Kind, ref.Name, rec.Version, rec.Sealed)
		if err != nil {
			return nil, fmt.Errorf("%s %s: %w", ref.Kind, ref.Name, err)
		}
		out = append(out, api.Value{Kind: ref.Kind, Name: ref.Name, Version: rec.Version, Data: data})
	}
	return out, nil
}

func cloneObjects(m map[string]objectRecord) map[string]objectRecord {
	out := maps.Clone(m)
	if out == nil {
		out = map[string]objectRecord{}
	}
	return out
}

// takeDataKey keeps the data key a joining manager got from the leader,
// unless it has one already.
func (m *Manager) takeDataKey(k secretbox.Key) error {
	if len(k) == 0 {
		return nil // the leader has none yet (no secret was ever created)
	}
	if err := k.Check(); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.dataKey != nil {
		return nil
	}
	if err := secretbox.Save(m.cfg.StateDir, k); err != nil {
		return err
	}
	m.dataKey = slices.Clone(k)
	m.poke()
	return nil
}

// FetchValues gives this manager's own node the values of its tasks'
// secrets and configs, from its copy of the state (as any node, only
// those of tasks assigned to it).
func (m *Manager) FetchValues(_ context.Context, refs []api.ValueRef) ([]api.Value, error) {
	return m.Values(m.selfID, refs)
}

// dataKeyLoop gets the data key from another manager when this one has
// none, or one that does not open the sealed values of the state (a
// cluster whose key its leader made after this manager joined, a key file
// lost or replaced): every few seconds it asks the other managers in turn,
// over manager mTLS, and keeps the first key that opens them.
func (m *Manager) dataKeyLoop() {
	defer m.loops.Done()
	t := time.NewTicker(3 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-m.stop:
			return
		case <-t.C:
		}
		m.mu.Lock()
		need := m.st != nil && (m.needKey || !keyOpensState(m.dataKey, m.st))
		m.mu.Unlock()
		m.rekeyIfNeeded()
		if !need {
			continue
		}
		var errs []error
		for id, addr := range m.managerAPIs() {
			if id == m.selfID || addr == "" {
				continue
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			var out api.DataKey
			err := m.fwd.Do(ctx, http.MethodGet, addr, pathInternalDataKey, nil, nil, &out)
			cancel()
			if err == nil {
				err = m.replaceDataKey(out.Key)
			}
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", addr, err))
				continue
			}
			m.log.Info("got the cluster's data key from another manager", "from", addr, "file", m.dataKeyPath())
			errs = nil
			break
		}
		if len(errs) > 0 {
			m.log.Warn("this manager's data key does not open the cluster's secrets and configs, and no other manager gave one that does; retrying", "err", errors.Join(errs...))
		}
	}
}

// keyOpensState reports whether k opens the state's sealed values (true
// when there are none). Every value is sealed with the one data key: the
// smallest one is tried (this runs every few seconds on boards).
func keyOpensState(k secretbox.Key, s *state) bool {
	kind, name, rec, found := "", "", objectRecord{}, false
	for kd, objs := range map[string]map[string]objectRecord{api.KindSecret: s.secrets, api.KindConfig: s.configs} {
		for n, r := range objs {
			if !found || r.Size < rec.Size {
				kind, name, rec, found = kd, n, r, true
			}
		}
	}
	if sm := s.meta.Sealed; sm != nil {
		if k == nil {
			return false
		}
		if _, err := k.Open(stateSealKind, "ca_key@"+s.meta.ClusterID, sm.KeyGen, sm.CAKey); err != nil {
			return false
		}
	}
	if !found {
		for h, r := range s.registries {
			if r.Sealed != nil {
				kind, name, rec, found = api.KindRegistry, h, objectRecord{Version: r.AuthVersion, Sealed: r.Sealed}, true
				break
			}
		}
	}
	if !found {
		return true
	}
	if k == nil {
		return false
	}
	_, err := k.Open(kind, name, rec.Version, rec.Sealed)
	return err == nil
}

// replaceDataKey keeps k if it opens the state's sealed values.
func (m *Manager) replaceDataKey(k secretbox.Key) error {
	if err := k.Check(); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	target := m.st
	if m.needKey && m.unopened != nil {
		target = m.unopened // the newest state, which the current key does not open
	}
	if target != nil && !keyOpensState(k, target) {
		return errors.New("its data key does not open this cluster's secrets and configs either")
	}
	if err := secretbox.Save(m.cfg.StateDir, k); err != nil {
		return err
	}
	m.dataKey = slices.Clone(k)
	m.poke()
	return nil
}

// poke makes the follow loop read the replicated state again (one that
// did not open before the data key came).
func (m *Manager) poke() {
	select {
	case m.notify <- struct{}{}:
	default:
	}
}

// serviceRevision is the revision a --secret-rotation restart service's
// tasks must run: a digest of its secrets' and configs' versions ("" for
// in-place rotation, or a service without any).
func (s *state) serviceRevision(svc clustermap.Service) string {
	if svc.SecretRotation != clustermap.RotationRestart || len(svc.Secrets)+len(svc.Configs) == 0 {
		return ""
	}
	h := sha256.New()
	for _, set := range []struct {
		kind string
		refs []clustermap.FileRef
	}{{api.KindSecret, svc.Secrets}, {api.KindConfig, svc.Configs}} {
		for _, f := range set.refs {
			fmt.Fprintf(h, "%s %s %d\n", set.kind, f.Source, s.objects(set.kind)[f.Source].Version)
		}
	}
	return hex.EncodeToString(h.Sum(nil)[:8])
}

// rollRevisions moves the tasks of --secret-rotation restart services to
// their service's current revision one at a time, as rollOut does for
// images: the lowest slot on another revision moves once every task
// already on it serves (runs, reported by its node with that revision,
// and is healthy when it has a health check). New tasks
// start on the current revision; in-place services have none.
func rollRevisions(tasks []clustermap.Task, s *state) {
	want := map[string]string{}
	for name, r := range s.services {
		want[name] = s.serviceRevision(r.Service)
	}
	inFlight := map[string]bool{}
	next := map[string]int{}
	for i := range tasks {
		t := &tasks[i]
		rev, ok := want[t.Service]
		if !ok || t.DesiredState != clustermap.TaskRunning {
			continue
		}
		switch {
		case rev == "" || t.State == clustermap.TaskPending && t.Revision == "":
			t.Revision = rev // in place, or a new task: no restart to stagger
			continue
		case t.Revision == rev:
			// Running and healthy (issue 26), or completed (exit 0, not
			// restarted): settled.
			if !t.Serves() && t.State != clustermap.TaskComplete {
				inFlight[t.Service] = true
			}
			continue
		}
		if j, ok := next[t.Service]; !ok || t.Slot < tasks[j].Slot {
			next[t.Service] = i
		}
	}
	for name, i := range next {
		if inFlight[name] {
			continue
		}
		t := &tasks[i]
		t.Revision = want[name]
		t.State = clustermap.TaskPending
		t.Error = ""
		t.Run = clustermap.TaskRun{}
	}
}

package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/distribution/reference"

	"github.com/warren-appliance/warren/cluster/api"
	"github.com/warren-appliance/warren/cluster/clustermap"
	"github.com/warren-appliance/warren/orchestrate/registry"
)

// Registries: image registries added cluster-wide, with their TLS (a
// private CA, or plain HTTP), the registry they mirror, and credentials.
// The credentials are sealed with the cluster's data key as secrets are
// and reach only nodes that run a task whose image comes from that
// registry (or one it mirrors), which keep them in memory.

// registryRecord is a stored registry.
type registryRecord struct {
	Host     string `json:"host"`
	CA       string `json:"ca,omitempty"`
	Insecure bool   `json:"insecure,omitempty"`
	MirrorOf string `json:"mirror_of,omitempty"`
	Username string `json:"username,omitempty"`
	// Sealed is the api.RegistryCredentials JSON, sealed (secretbox) as
	// kind registry, name Host, version AuthVersion; nil: logged out.
	Sealed      []byte    `json:"sealed,omitempty"`
	AuthVersion uint64    `json:"auth_version,omitempty"`
	CreatedAt   time.Time `json:"created_at"`
	UpdatedAt   time.Time `json:"updated_at"`
}

// maxRegistries bounds the added registries.
const maxRegistries = 64

// canonicalRegistry spells Docker Hub's aliases as image references do.
func canonicalRegistry(h string) string {
	switch strings.ToLower(h) {
	case "index.docker.io", "registry-1.docker.io", "docker.io":
		return "docker.io"
	}
	return h
}

func errNoRegistry(host string) error {
	return errorf(http.StatusNotFound, "no registry %q: add it first with `warren registry add %s` (list them with `warren registry ls`)", host, host)
}

// checkRegistrySpec validates a spec (pure).
func checkRegistrySpec(spec *api.RegistrySpec) error {
	spec.Host = canonicalRegistry(strings.TrimSpace(spec.Host))
	if err := registry.CheckHost(spec.Host); err != nil {
		return errorf(http.StatusBadRequest, "%v", err)
	}
	if spec.MirrorOf != "" {
		spec.MirrorOf = canonicalRegistry(strings.TrimSpace(spec.MirrorOf))
		if err := registry.CheckHost(spec.MirrorOf); err != nil {
			return errorf(http.StatusBadRequest, "--mirror-of: %v", err)
		}
		if spec.MirrorOf == spec.Host {
			return errorf(http.StatusBadRequest, "registry %s cannot mirror itself", spec.Host)
		}
	}
	if spec.CA != "" {
		if spec.Insecure {
			return errorf(http.StatusBadRequest, "registry %s: --insecure (plain HTTP) and --ca-file (TLS) exclude each other: give one", spec.Host)
		}
		if _, err := registry.CheckCA([]byte(spec.CA)); err != nil {
			return errorf(http.StatusBadRequest, "--ca-file: %v", err)
		}
	}
	return nil
}

// AddRegistry adds a registry, or changes an added one's TLS and mirror
// settings (its login stays).
func (m *Manager) AddRegistry(spec api.RegistrySpec) (api.RegistryView, error) {
	if err := checkRegistrySpec(&spec); err != nil {
		return api.RegistryView{}, err
	}
	err := m.update(func(s *state) error {
		regs := cloneRegistries(s.registries)
		rec, ok := regs[spec.Host]
		now := m.now().UTC()
		if !ok {
			if len(regs) >= maxRegistries {
				return errorf(http.StatusBadRequest, "%d registries added: at most %d (remove one with `warren registry rm HOST`)", len(regs), maxRegistries)
			}
			rec = registryRecord{Host: spec.Host, CreatedAt: now}
		}
		if spec.MirrorOf != "" {
			if other, ok := regs[spec.MirrorOf]; ok && other.MirrorOf == spec.Host {
				return errorf(http.StatusBadRequest, "registry %s is a mirror of %s already: two registries cannot mirror each other", spec.MirrorOf, spec.Host)
			}
		}
		rec.CA, rec.Insecure, rec.MirrorOf, rec.UpdatedAt = spec.CA, spec.Insecure, spec.MirrorOf, now
		regs[spec.Host] = rec
		s.registries = regs
		return nil
	})
	if err != nil {
		return api.RegistryView{}, err
	}
	m.log.Info("registry added", "host", spec.Host, "mirror_of", spec.MirrorOf, "insecure", spec.Insecure, "ca", spec.CA != "")
	return m.Registry(spec.Host)
}

// LoginRegistry checks the credentials against the registry as `docker
// login` does and, when it takes them, stores them sealed.
func (m *Manager) LoginRegistry(ctx context.Context, host string, login api.RegistryLogin) (api.RegistryView, error) {
	host = canonicalRegistry(host)
	if login.Username == "" {
		return api.RegistryView{}, errorf(http.StatusBadRequest, "--username is empty")
	}
	if login.Password == "" {
		return api.RegistryView{}, errorf(http.StatusBadRequest, "the password is empty: pipe it to --password-stdin")
	}
	if len(login.Username)+len(login.Password) > api.MaxObjectSize {
		return api.RegistryView{}, errorf(http.StatusBadRequest, "credentials too long")
	}
	m.mu.Lock()
	rec, ok := m.st.registries[host]
	m.mu.Unlock()
	if !ok {
		return api.RegistryView{}, errNoRegistry(host)
	}
	cfg := registry.Config{Host: rec.Host, CA: []byte(rec.CA), Insecure: rec.Insecure, Username: login.Username, Password: login.Password}
	if err := registry.CheckLogin(ctx, cfg); err != nil {
		return api.RegistryView{}, errorf(http.StatusBadRequest, "login refused: %v", err)
	}
	creds, err := json.Marshal(api.RegistryCredentials(login))
	if err != nil {
		return api.RegistryView{}, err
	}
	err = m.update(func(s *state) error {
		rec, ok := s.registries[host]
		if !ok {
			return errNoRegistry(host)
		}
		key, err := m.dataKeyLocked(s)
		if err != nil {
			return err
		}
		rec.AuthVersion++
		if rec.Sealed, err = key.Seal(api.KindRegistry, host, rec.AuthVersion, creds); err != nil {
			return err
		}
		rec.Username, rec.UpdatedAt = login.Username, m.now().UTC()
		regs := cloneRegistries(s.registries)
		regs[host] = rec
		s.registries = regs
		return nil
	})
	if err != nil {
		return api.RegistryView{}, err
	}
	m.log.Info("registry login", "host", host, "username", login.Username) // never the password
	return m.Registry(host)
}

// LogoutRegistry forgets a registry's credentials.
func (m *Manager) LogoutRegistry(host string) (api.RegistryView, error) {
	host = canonicalRegistry(host)
	err := m.update(func(s *state) error {
		rec, ok := s.registries[host]
		if !ok {
			return errNoRegistry(host)
		}
		if rec.Sealed == nil {
			return errorf(http.StatusBadRequest, "not logged in to registry %s", host)
		}
		rec.AuthVersion++
		rec.Username, rec.Sealed, rec.UpdatedAt = "", nil, m.now().UTC()
		regs := cloneRegistries(s.registries)
		regs[host] = rec
		s.registries = regs
		return nil
	})
	if err != nil {
		return api.RegistryView{}, err
	}
	m.log.Info("registry logout", "host", host)
	return m.Registry(host)
}

// RemoveRegistry forgets a registry and its credentials.
func (m *Manager) RemoveRegistry(host string) error {
	host = canonicalRegistry(host)
	err := m.update(func(s *state) error {
		if _, ok := s.registries[host]; !ok {
			return errNoRegistry(host)
		}
		regs := cloneRegistries(s.registries)
		delete(regs, host)
		s.registries = regs
		return nil
	})
	if err == nil {
		m.log.Info("registry removed", "host", host)
	}
	return err
}

// Registries lists the added registries in the order they were added.
func (m *Manager) Registries() []api.RegistryView {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := []api.RegistryView{}
	for _, r := range sortedRegistries(m.st.registries) {
		out = append(out, registryView(r))
	}
	return out
}

// Registry shows one added registry.
func (m *Manager) Registry(host string) (api.RegistryView, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	r, ok := m.st.registries[canonicalRegistry(host)]
	if !ok {
		return api.RegistryView{}, errNoRegistry(host)
	}
	return registryView(r), nil
}

func registryView(r registryRecord) api.RegistryView {
	return api.RegistryView{Host: r.Host, MirrorOf: r.MirrorOf, Insecure: r.Insecure, CA: r.CA != "",
		Username: r.Username, LoggedIn: r.Sealed != nil, CreatedAt: r.CreatedAt, UpdatedAt: r.UpdatedAt}
}

func sortedRegistries(regs map[string]registryRecord) []registryRecord {
	out := slices.Collect(maps.Values(regs))
	slices.SortFunc(out, func(a, b registryRecord) int {
		if c := a.CreatedAt.Compare(b.CreatedAt); c != 0 {
			return c
		}
		return strings.Compare(a.Host, b.Host)
	})
	return out
}

// mapRegistries is what the map carries: no credentials.
func (s *state) mapRegistries() []clustermap.Registry {
	var out []clustermap.Registry
	for _, r := range sortedRegistries(s.registries) {
		out = append(out, clustermap.Registry{Host: r.Host, CA: r.CA, Insecure: r.Insecure, MirrorOf: r.MirrorOf,
			Auth: r.Sealed != nil, AuthVersion: r.AuthVersion})
	}
	return out
}

func cloneRegistries(m map[string]registryRecord) map[string]registryRecord {
	out := maps.Clone(m)
	if out == nil {
		out = map[string]registryRecord{}
	}
	return out
}

// ImageRegistry is the registry an image reference pulls from
// ("nginx" -> "docker.io"), "" when the reference is not valid.
func ImageRegistry(image string) string {
	named, err := reference.ParseDockerRef(strings.TrimSpace(image))
	if err != nil {
		return ""
	}
	return reference.Domain(named)
}

// registriesOfNode are the registries whose credentials node may have:
// those its assigned running tasks' images come from, and their mirrors.
func (s *state) registriesOfNode(nodeID string) map[string]bool {
	from := map[string]bool{}
	for _, t := range s.tasks {
		if t.NodeID != nodeID || t.DesiredState != clustermap.TaskRunning {
			continue
		}
		img := t.Image
		if img == "" {
			img = s.services[t.Service].Image
		}
		if d := ImageRegistry(img); d != "" {
			from[d] = true
		}
	}
	out := maps.Clone(from)
	for _, r := range s.registries {
		if r.MirrorOf != "" && from[r.MirrorOf] {
			out[r.Host] = true
		}
	}
	return out
}

// registryValue opens a registry's credentials for a node's values call.
// The caller holds m.mu and has checked that the node may have them.
func (m *Manager) registryValueLocked(host string) (api.Value, error) {
	rec, ok := m.st.registries[host]
	if !ok {
		return api.Value{}, errNoRegistry(host)
	}
	if rec.Sealed == nil {
		return api.Value{}, errorf(http.StatusNotFound, "registry %s has no credentials: `warren registry login %s`", host, host)
	}
	if m.dataKey == nil {
		return api.Value{}, errorf(http.StatusServiceUnavailable, "this manager has no data key (%s) yet: it asks the other managers for it; retry", m.dataKeyPath())
	}
	data, err := m.dataKey.Open(api.KindRegistry, host, rec.AuthVersion, rec.Sealed)
	if err != nil {
		return api.Value{}, fmt.Errorf("registry %s credentials: %w", host, err)
	}
	return api.Value{Kind: api.KindRegistry, Name: host, Version: rec.AuthVersion, Data: data}, nil
}

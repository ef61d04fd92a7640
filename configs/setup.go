package configs

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"

	"github.com/warren-appliance/warren/internal/atomicfile"
)

// SetupFile, in the state dir, remembers how this node was set up (by
// `warren cluster init`, `warren worker start`, `warren manager join` or a
// config that joined), so `warren-appliance --config /etc/warren/warren.toml`
// resumes in the same role with the same identity, as Docker's swarm
// state does. A key the TOML (or a flag) sets overrides what is remembered.
const SetupFile = "setup.json"

// Files that show a node joined a cluster before setup.json existed.
var joinedMarkers = []string{"node.json", "manager.db"}

// Setup is what the state dir remembers.
type Setup struct {
	Role string `json:"role"`
	Name string `json:"name"`
	// Managers are the manager API addresses this node joins through
	// (empty for the manager that created the cluster).
	Managers []string `json:"managers,omitempty"`
	// Keys given as flags to the command that set the node up: the service
	// has no other way to know them.
	AdvertiseAddress string `json:"advertise_address,omitempty"`
	ListenPort       int    `json:"listen_port,omitempty"`
	Mode             string `json:"mode,omitempty"`
	APIListen        string `json:"api_listen,omitempty"`
}

// LoadSetup reads the state dir's setup record; nil if there is none.
func LoadSetup(stateDir string) (*Setup, error) {
	b, err := os.ReadFile(filepath.Join(stateDir, SetupFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read the remembered setup: %w", err)
	}
	var s Setup
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("%s is damaged (%v): delete it and run the setup command again (`warren cluster init` or `warren worker start ...`)", filepath.Join(stateDir, SetupFile), err)
	}
	return &s, nil
}

// SaveSetup records s in the state dir atomically, writing only on change.
func SaveSetup(stateDir string, s Setup) error {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return fmt.Errorf("encode setup: %w", err)
	}
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return fmt.Errorf("remember setup: %w", err)
	}
	if err := atomicfile.Write(filepath.Join(stateDir, SetupFile), append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("remember setup: %w", err)
	}
	return nil
}

// RememberedSetup returns the setup this node runs with, for SaveSetup:
// its role, the name it holds in the cluster, the managers it joins through,
// and the keys that came from flags (the TOML keeps its own).
func (l *Loaded) RememberedSetup(name string, managers []string) Setup {
	s := Setup{Role: l.Node.Role, Name: name, Managers: slices.Clone(managers)}
	if l.flags["node.advertise_address"] {
		s.AdvertiseAddress = l.Node.AdvertiseAddress
	}
	if l.flags["wireguard.listen_port"] {
		s.ListenPort = l.WireGuard.ListenPort
	}
	if l.flags["wireguard.mode"] {
		s.Mode = l.WireGuard.Mode
	}
	if l.flags["cluster.api_listen"] {
		s.APIListen = l.Cluster.APIListen
	}
	// Keep what an earlier setup command remembered and no flag replaced.
	if old := l.Setup; old != nil {
		if s.AdvertiseAddress == "" && !l.set("node.advertise_address") {
			s.AdvertiseAddress = old.AdvertiseAddress
		}
		if s.ListenPort == 0 && !l.set("wireguard.listen_port") {
			s.ListenPort = old.ListenPort
		}
		if s.Mode == "" && !l.set("wireguard.mode") {
			s.Mode = old.Mode
		}
		if s.APIListen == "" && !l.set("cluster.api_listen") {
			s.APIListen = old.APIListen
		}
	}
	return s
}

// set reports whether the TOML or a flag gave key a value.
func (l *Loaded) set(key string) bool { return l.defined[key] || l.flags[key] }

// applySetup fills the keys neither the TOML nor a flag set from what the
// state dir remembers, and notes whether this node already joined.
func (l *Loaded) applySetup() error {
	c := &l.Config
	s, err := LoadSetup(c.Node.StateDir)
	if err != nil {
		return err
	}
	l.Setup = s
	for _, f := range joinedMarkers {
		if _, err := os.Stat(filepath.Join(c.Node.StateDir, f)); err == nil {
			l.Joined = true
		}
	}
	if s == nil {
		return nil
	}
	l.Joined = true
	if !l.set("node.role") && s.Role != "" {
		c.Node.Role = s.Role
		l.remembered = append(l.remembered, "node.role")
	}
	if !l.set("node.name") && s.Name != "" {
		c.Node.Name = s.Name
		l.remembered = append(l.remembered, "node.name")
	}
	if !l.set("cluster.manager") && len(s.Managers) > 0 {
		c.Cluster.Manager = s.Managers[0]
		l.remembered = append(l.remembered, "cluster.manager")
	}
	if !l.set("node.advertise_address") && s.AdvertiseAddress != "" {
		c.Node.AdvertiseAddress = s.AdvertiseAddress
		l.remembered = append(l.remembered, "node.advertise_address")
	}
	if !l.set("wireguard.listen_port") && s.ListenPort != 0 {
		c.WireGuard.ListenPort = s.ListenPort
		l.remembered = append(l.remembered, "wireguard.listen_port")
	}
	if !l.set("wireguard.mode") && s.Mode != "" {
		c.WireGuard.Mode = s.Mode
		l.remembered = append(l.remembered, "wireguard.mode")
	}
	if !l.set("cluster.api_listen") && s.APIListen != "" {
		c.Cluster.APIListen = s.APIListen
		l.remembered = append(l.remembered, "cluster.api_listen")
	}
	return nil
}

// Remembered lists the keys whose value came from the state dir's setup
// record (for --check's output).
func (l *Loaded) Remembered() []string { return slices.Clone(l.remembered) }

// NameFromHostname reports whether node.name was derived from the host
// name (nothing set it): such a name may be made unique at join.
func (l *Loaded) NameFromHostname() bool { return l.nameFromHost }

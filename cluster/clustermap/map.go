// Package clustermap defines the versioned cluster map the manager publishes
// and every node's reconcilers consume. It is plain data: no I/O, no deps, so
// every reconciler can take it (or a translation of it) without pulling in
// the manager.
package clustermap

import (
	"net/netip"
	"sort"
)

// MaxVersion bounds map versions. The manager moves the version by one per
// change (2^48 changes is thousands of years at one change per
// millisecond), so a version above it is absurd: written by a bug or an
// attack, never by a change. A node never applies such a map and treats a
// cached one as holding no version at all; a manager whose version is
// above it starts again from 1 on its next change.
const MaxVersion uint64 = 1 << 48

// Map is one consistent snapshot of the cluster's desired state. Version
// increases by one on every change; nodes apply only a newer map than they
// hold.
type Map struct {
	Version   uint64 `json:"version"`
	ClusterID string `json:"cluster_id"`
	// The cluster-wide values, as Network() returns them.
	Domain             string       `json:"domain"`
	WireGuardSubnet    netip.Prefix `json:"wireguard_subnet"`
	ContainerSubnet    netip.Prefix `json:"container_subnet"`
	ContainerBlockBits int          `json:"container_block_bits,omitempty"`
	VIPSubnet          netip.Prefix `json:"vip_subnet"`
	Nodes              []Node       `json:"nodes"`
	Services           []Service    `json:"services"`
	Tasks              []Task       `json:"tasks"`
	// Policies are the network policies every node enforces for its tasks.
	Policies []Policy `json:"policies,omitempty"`
	// TrustBundle is the PEM of the CAs nodes trust: the cluster CA, and
	// during a CA rotation the previous one after it. A node whose
	// certificate is not signed by the first renews it at once.
	TrustBundle []byte `json:"trust_bundle,omitempty"`
	// Registries are the added registries, in the order they were added
	// (mirrors of one registry are tried in this order). Credentials are
	// not in the map: a node asks for them (values of kind registry).
	Registries []Registry `json:"registries,omitempty"`
	// Imports are peered clusters' services (federation.go); Federation
	// the gateway links to the peers.
	Imports    []Import    `json:"imports,omitempty"`
	Federation *Federation `json:"federation,omitempty"`
}

// Registry is an added image registry as nodes pull from it.
type Registry struct {
	Host     string `json:"host"`
	CA       string `json:"ca,omitempty"` // PEM
	Insecure bool   `json:"insecure,omitempty"`
	MirrorOf string `json:"mirror_of,omitempty"`
	// AuthVersion counts logins and logouts (0: never logged in); Auth
	// says whether it has credentials now.
	Auth        bool   `json:"auth,omitempty"`
	AuthVersion uint64 `json:"auth_version,omitempty"`
}

// Network returns the map's cluster-wide values.
func (m *Map) Network() Network {
	return Network{Domain: m.Domain, WireGuardSubnet: m.WireGuardSubnet, ContainerSubnet: m.ContainerSubnet,
		ContainerBlockBits: m.ContainerBlockBits, VIPSubnet: m.VIPSubnet}
}

// SetNetwork sets the map's cluster-wide values.
func (m *Map) SetNetwork(n Network) {
	m.Domain, m.WireGuardSubnet, m.ContainerSubnet, m.ContainerBlockBits, m.VIPSubnet =
		n.Domain, n.WireGuardSubnet, n.ContainerSubnet, n.ContainerBlockBits, n.VIPSubnet
}

// Network is the cluster-wide address plan and DNS domain. It is decided
// when the cluster is created and reaches every other node only through
// the join answer and the map: a node's own config never overrides it.
type Network struct {
	Domain             string       `json:"domain"`
	WireGuardSubnet    netip.Prefix `json:"wireguard_subnet"`
	ContainerSubnet    netip.Prefix `json:"container_subnet"`
	ContainerBlockBits int          `json:"container_block_bits,omitempty"`
	VIPSubnet          netip.Prefix `json:"vip_subnet"`
}

// Complete reports whether every range and the domain are set (a map from
// an older manager may lack some).
func (n Network) Complete() bool {
	return n.Domain != "" && n.WireGuardSubnet.IsValid() && n.ContainerSubnet.IsValid() && n.VIPSubnet.IsValid()
}

// Node roles.
const (
	RoleManager = "manager"
	RoleWorker  = "worker"
)

// Node statuses.
const (
	NodeReady = "ready"
	NodeDown  = "down"

	// NodeDrain is the Availability of a node being retired.
	NodeDrain = "drain"
)

// Node is one member of the mesh.
type Node struct {
	ID        string         `json:"id"`
	Name      string         `json:"name"`
	Role      string         `json:"role"`
	PublicKey string         `json:"public_key"` // WireGuard, base64
	Endpoint  netip.AddrPort `json:"endpoint"`   // underlay advertise address:listen port
	// Candidates are the underlay addresses the node's WireGuard socket may
	// be reached on, most preferred first (its LAN addresses, a configured
	// public endpoint, what STUN saw through its NAT): peers probe them to
	// find a direct path (tunnel/paths).
	Candidates     []netip.AddrPort  `json:"candidates,omitempty"`
	OverlayIP      netip.Addr        `json:"overlay_ip"`
	ContainerBlock netip.Prefix      `json:"container_block"`
	Labels         map[string]string `json:"labels,omitempty"`
	Status         string            `json:"status"`
	// Availability is "" (active) or "drain": a drained node's tasks move
	// away and the scheduler places nothing new there.
	Availability string `json:"availability,omitempty"`
	// API is a manager's API address (host:port): agents watch and report
	// to any manager listed here. Empty for workers.
	API string `json:"api,omitempty"`
	// Capacity is the memory and CPU the node offers tasks, as it last
	// reported them (zero: not reported; no reservation check).
	Capacity ResourceAmounts `json:"capacity,omitzero"`
	// Relay is set on nodes that relay WireGuard packets for members that
	// cannot reach each other directly (package relay): IP:port of its TLS
	// leg (TCP) and its UDP leg, one port number for both.
	Relay string `json:"relay,omitempty"`
}

// Port is one service port; Published is the host port of the routing
// mesh, or 0 when the port is reachable only through the VIP.
type Port struct {
	Protocol  string `json:"protocol"` // "tcp" | "udp"
	Target    uint16 `json:"target"`
	Published uint16 `json:"published,omitempty"`
}

// Service is a replicated workload with a stable VIP.
type Service struct {
	Name        string     `json:"name"`
	Image       string     `json:"image"`
	Replicas    int        `json:"replicas"`
	VIP         netip.Addr `json:"vip"`
	Ports       []Port     `json:"ports,omitempty"`
	Env         []string   `json:"env,omitempty"`
	Command     []string   `json:"command,omitempty"`
	Constraints []string   `json:"constraints,omitempty"`
	Affinity    bool       `json:"affinity,omitempty"`
	// Labels are carried by every task of the service; network policies
	// select tasks by them.
	Labels map[string]string `json:"labels,omitempty"`
	// CapAdd and CapDrop change the tasks' capabilities from the default
	// set (containerd's, without CAP_NET_RAW): CAP_* names or ALL.
	CapAdd  []string `json:"cap_add,omitempty"`
	CapDrop []string `json:"cap_drop,omitempty"`
	// HealthCheck overrides the image's HEALTHCHECK (nil: the image's).
	HealthCheck *HealthCheck `json:"health_check,omitempty"`
	// UpdateConfig and RollbackConfig say how the service rolls to a new
	// image and back (nil: the defaults).
	UpdateConfig   *UpdateConfig `json:"update_config,omitempty"`
	RollbackConfig *UpdateConfig `json:"rollback_config,omitempty"`

	// Workload: restart policy, resources, mounts, mode, process settings.
	Workload
	// SpecVersion counts updates of what runs in a task (env, command,
	// workload); tasks move to a new version one at a time, and those not
	// yet moved run Previous.
	SpecVersion uint64        `json:"spec_version,omitempty"`
	Previous    *PreviousSpec `json:"previous,omitempty"`
	// Secrets and configs the service's tasks get as files: references
	// with the version each task must see, never a value (nodes fetch
	// values from a manager while they run a task that uses them).
	Secrets []FileRef `json:"secrets,omitempty"`
	Configs []FileRef `json:"configs,omitempty"`
	// SecretRotation is "" (a new version replaces the files in place) or
	// "restart" (tasks are restarted one at a time instead).
	SecretRotation string `json:"secret_rotation,omitempty"`
}

// FileRef is one secret or config a service's tasks see as a file:
// Docker's --secret / --config fields. Target is a file name under
// /run/secrets for a secret, an absolute path for a config.
type FileRef struct {
	Source string `json:"source"`
	Target string `json:"target"`
	UID    string `json:"uid,omitempty"`
	GID    string `json:"gid,omitempty"`
	Mode   uint32 `json:"mode"`
	// Version is the object's current version, filled in by the manager
	// in the published map (0 in the service's stored spec).
	Version uint64 `json:"version,omitempty"`
}

// Secret rotation modes.
const (
	RotationInPlace = ""
	RotationRestart = "restart"
)

// Task states.
const (
	TaskPending  = "pending"
	TaskStarting = "starting"
	TaskRunning  = "running"
	TaskFailed   = "failed"
	// TaskComplete: the process exited with status 0 and its restart
	// policy does not start it again.
	TaskComplete = "complete"
	TaskShutdown = "shutdown"
)

// Task is one replica of a service, placed on a node, named <service>-<slot>.
type Task struct {
	Name    string     `json:"name"`
	Service string     `json:"service"`
	Slot    int        `json:"slot"`
	NodeID  string     `json:"node_id"`
	IP      netip.Addr `json:"ip"`
	// Image is what this task runs. It equals the service's image except
	// during a rolling update, when slots move to the new image one by one.
	Image string `json:"image,omitempty"`
	// SpecVersion is the service spec version the task runs (see
	// Service.SpecVersion).
	SpecVersion  uint64 `json:"spec_version,omitempty"`
	DesiredState string `json:"desired_state"` // running | shutdown
	State        string `json:"state"`         // as last reported by the node
	// Revision is set for a service with --secret-rotation restart: a digest
	// of the versions of its secrets and configs the task runs with. A new
	// one recreates the task; the manager moves tasks to a new revision one
	// at a time.
	Revision string `json:"revision,omitempty"`
	// Error is the node's last error text for the task, on the manager
	// only (the admin API shows it); always empty in published maps.
	Error string `json:"error,omitempty"`
	// Health is the task's health as its node reports it: "" (no health
	// check), starting, healthy or unhealthy.
	Health string `json:"health,omitempty"`
	// Draining: the task is taken out of its service's endpoints before
	// it stops (a rolling update replaces it next).
	Draining bool `json:"draining,omitempty"`
	// Run is what the node reports of the task's process (exit code,
	// restarts, next restart, OOM); on the manager only, like Error.
	Run TaskRun `json:"run,omitzero"`
}

// Node returns the node with the given ID.
func (m *Map) Node(id string) (Node, bool) {
	for _, n := range m.Nodes {
		if n.ID == id {
			return n, true
		}
	}
	return Node{}, false
}

// TasksOn returns the tasks assigned to node id, sorted by name.
func (m *Map) TasksOn(id string) []Task {
	var out []Task
	for _, t := range m.Tasks {
		if t.NodeID == id {
			out = append(out, t)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Endpoints returns the tasks of service name that serve (Task.Serves:
// running and healthy, or running without a health check, and not
// draining): the backends of its VIP, published ports and DNS name,
// sorted by name so renderers are deterministic.
func (m *Map) Endpoints(name string) []Task {
	var out []Task
	for _, t := range m.Tasks {
		if t.Service == name && t.Serves() {
			out = append(out, t)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// ServiceLabels maps each service name to its labels: a task carries the
// labels of its service (network policies select tasks by them).
func (m *Map) ServiceLabels() map[string]map[string]string {
	out := make(map[string]map[string]string, len(m.Services))
	for _, s := range m.Services {
		out[s.Name] = s.Labels
	}
	return out
}

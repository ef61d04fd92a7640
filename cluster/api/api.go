// Package api holds the JSON shapes exchanged with the manager: the node
// API (join, watch, status over mTLS) and the admin API (the CLI over the
// local unix socket), their routes, and the bounds of what a node says
// about itself (node.go). Plain data and checks, so the CLI client and the
// agent need no manager code.
package api

import (
	"net/netip"
	"time"

	"github.com/warren-appliance/warren/cluster/clustermap"
)

// SocketPath is where the daemon serves the local API (root only) and the
// CLI finds it.
const SocketPath = "/run/warren/warren.sock"

// Admin API paths (the CLI, over the local unix socket of a manager). Item
// paths add "/" + the escaped name; actions add their suffix after that.
const (
	PathCluster    = "/v1/cluster"     // GET ClusterInfo
	PathJoinTokens = "/v1/join-tokens" // /{role}: GET JoinToken; /{role}/rotate: POST
	PathNodes      = "/v1/nodes"       // GET []NodeView; /{node}: GET NodeView, DELETE (?force=1); /{node}/promote|demote|drain|activate: POST
	PathTasks      = "/v1/tasks"       // GET ?service=NAME
	PathServices   = "/v1/services"    // GET, POST ServiceSpec; /{name}: GET, PUT ServiceSpec (update), DELETE; /{name}/scale|update|labels|capabilities|rollback: POST
	PathPolicies   = "/v1/policies"    // GET, POST PolicyApply; /{name}: GET, DELETE
	PathBackup     = "/v1/backup"      // GET: the state at one applied index (JSON; holds the CA key)

	ActionRotate = "/rotate"
	// PathCA: GET CAStatus; PathCA+ActionRotate: POST CARotateRequest.
	PathCA       = "/v1/cluster/ca"
	ActionScale  = "/scale"
	ActionUpdate = "/update"
	ActionLabels = "/labels"
	// ActionCapabilities updates a service's added and dropped capabilities.
	ActionCapabilities = "/capabilities"
	// ActionRollback on PathServices/{name}: POST, roll back to the image
	// and health check before the last update.
	ActionRollback = "/rollback"
	// On PathNodes/{node}: POST, a manager votes in Raft / stops voting.
	ActionPromote = "/promote"
	ActionDemote  = "/demote"
	// On PathNodes/{node}: POST, move its tasks away and place nothing
	// there / undo it.
	ActionDrain    = "/drain"
	ActionActivate = "/activate"
)

// ALPNRelay is the TLS application protocol of the relay's TLS leg (package
// relay): on a manager it shares the API port with the node API and Raft.
const ALPNRelay = "warren-relay/1"

// Node API paths (mTLS, on the manager's api_listen).
const (
	PathJoin   = "/v1/join"   // POST JoinRequest -> JoinResponse; needs the token, no client cert
	PathSelf   = "/v1/self"   // PUT SelfUpdate -> clustermap.Node; the caller's own record
	PathRenew  = "/v1/renew"  // POST RenewRequest -> RenewResponse
	PathWatch  = "/v1/watch"  // GET ?after=VERSION -> newline-delimited maps, pushed on change
	PathStatus = "/v1/status" // POST NodeStatus
)

// NodeRemoved is in the manager's refusal (403) of a removed node's calls;
// the agent recognises it (its ErrRemoved).
const NodeRemoved = "was removed from the cluster"

// NameTaken is in the manager's refusal (409) of a join under a name
// another node (another key) holds; the node then may pick a unique name.
const NameTaken = "is already taken by another node"

// JoinRequest is what a joining node sends once it has pinned the CA.
type JoinRequest struct {
	Secret    string            `json:"secret"`
	Name      string            `json:"name"`
	Role      string            `json:"role"`
	Labels    map[string]string `json:"labels,omitempty"`
	Endpoint  netip.AddrPort    `json:"endpoint"`
	PublicKey string            `json:"public_key"` // WireGuard, base64
	CSR       []byte            `json:"csr"`        // DER; the node's TLS key stays on the node
	Relay     string            `json:"relay,omitempty"`
}

// JoinResponse carries the node's record, its signed certificate and the
// cluster-wide network settings the node must use instead of its own config.
type JoinResponse struct {
	ClusterID   string             `json:"cluster_id"`
	Node        clustermap.Node    `json:"node"`
	Certificate []byte             `json:"certificate"` // DER
	Network     clustermap.Network `json:"network"`
	// TrustBundle is the PEM of the CAs the node trusts from now on (the
	// cluster CA, then during a CA rotation the previous one).
	TrustBundle []byte `json:"trust_bundle,omitempty"`
}

// SelfUpdate refreshes what a node may change about itself on restart.
type SelfUpdate struct {
	Labels    map[string]string `json:"labels,omitempty"`
	Endpoint  netip.AddrPort    `json:"endpoint"`
	PublicKey string            `json:"public_key"`
	// Relay is where the node relays ("" if it does not): it may change
	// with its config.
	Relay string `json:"relay,omitempty"`
}

// RenewRequest asks for a fresh certificate for the caller's key.
type RenewRequest struct {
	CSR []byte `json:"csr"`
}

// RenewResponse carries the renewed certificate (DER).
type RenewResponse struct {
	Certificate []byte `json:"certificate"`
}

// NodeStatus is a node's heartbeat: tunnel health and its tasks' states.
type NodeStatus struct {
	Tunnel []PeerHealth `json:"tunnel,omitempty"`
	// Tasks is every task the node runs; nil (null) means the node does not
	// know yet (its task reconciler has not looked since it started), and
	// the manager then keeps the states it has.
	Tasks []TaskStatus `json:"tasks"`
	Time  time.Time    `json:"time"` // the node's clock, to spot boards without RTC
	// Capacity is the memory and CPU the node offers tasks (the
	// scheduler fits reservations into it); nil: not said.
	Capacity *clustermap.ResourceAmounts `json:"capacity,omitempty"`
	// Candidates are the node's path candidates (see clustermap.Node); nil
	// means not known yet and keeps what the manager has.
	Candidates []netip.AddrPort `json:"candidates,omitempty"`
}

// PeerHealth is one WireGuard peer as this node sees it.
type PeerHealth struct {
	PublicKey     string    `json:"public_key"`
	LastHandshake time.Time `json:"last_handshake"`
	RxBytes       uint64    `json:"rx_bytes"`
	TxBytes       uint64    `json:"tx_bytes"`
	// Path is "direct", "relay" (the endpoint is a relay's local proxy) or
	// "" (no endpoint).
	Path string `json:"path,omitempty"`
}

// TaskStatus is one task's state as its node reports it.
type TaskStatus struct {
	Name  string `json:"name"`
	State string `json:"state"` // clustermap.Task* states
	Error string `json:"error,omitempty"`
	// Image the task's container runs. During a rolling update the manager
	// counts a slot as updated only once it reports running the new image.
	Image string `json:"image,omitempty"`
	// SpecVersion of the service spec the status is about (as Image).
	SpecVersion uint64 `json:"spec_version,omitempty"`
	// Run: exit code, restarts, next restart, OOM.
	Run clustermap.TaskRun `json:"run,omitzero"`
	// Revision of the task's secrets and configs the container runs with
	// (--secret-rotation restart), as the map gave it.
	Revision string `json:"revision,omitempty"`
	// Health is the task's health check state; nil without a check.
	Health *TaskHealth `json:"health,omitempty"`
}

// TaskHealth is a task's health (Docker's State.Health): its status
// (starting, healthy, unhealthy), consecutive failed probes and the last
// probes (at most MaxHealthLog, outputs cut at MaxHealthOutput bytes).
type TaskHealth struct {
	Status        string         `json:"status"`
	FailingStreak int            `json:"failing_streak"`
	Log           []HealthResult `json:"log,omitempty"`
}

// HealthResult is one probe of a task's health check.
type HealthResult struct {
	Start    time.Time `json:"start"`
	End      time.Time `json:"end"`
	ExitCode int       `json:"exit_code"` // -1: did not run, or timed out
	Output   string    `json:"output"`
}

// Bounds of a reported TaskHealth.
const (
	MaxHealthLog    = 5
	MaxHealthOutput = 512
)

// Error is the body of every non-2xx answer: what went wrong and what to do.
type Error struct {
	Error string `json:"error"`
}

// ClusterInfo answers `warren cluster info`.
type ClusterInfo struct {
	ID              string       `json:"id"`
	Domain          string       `json:"domain"`
	CAHash          string       `json:"ca_hash"`
	CAExpires       time.Time    `json:"ca_expires"`
	CreatedAt       time.Time    `json:"created_at"`
	MapVersion      uint64       `json:"map_version"`
	WireGuardSubnet netip.Prefix `json:"wireguard_subnet"`
	ContainerSubnet netip.Prefix `json:"container_subnet"`
	ContainerBlock  int          `json:"container_block"`
	VIPSubnet       netip.Prefix `json:"vip_subnet"`
	Manager         string       `json:"manager"` // this manager's node name
	APIListen       string       `json:"api_listen"`
	JoinAddress     string       `json:"join_address"` // advertise IP : API port, for --manager
	Nodes           int          `json:"nodes"`
	NodesReady      int          `json:"nodes_ready"`
	Services        int          `json:"services"`
	Tasks           int          `json:"tasks"`
	// Raft: the leader's name, term, last log index, this manager's
	// applied index and role, and the managers that vote or only follow.
	Leader        string   `json:"leader"`
	RaftTerm      uint64   `json:"raft_term"`
	RaftLastIndex uint64   `json:"raft_last_index"`
	RaftApplied   uint64   `json:"raft_applied"`
	RaftState     string   `json:"raft_state"` // leader | follower | candidate
	Voters        []string `json:"voters"`
	NonVoters     []string `json:"non_voters"`
}

// CARotateRequest starts (or with Finish ends) a CA rotation.
type CARotateRequest struct {
	Force  bool          `json:"force,omitempty"`  // start another while one is in progress
	Finish bool          `json:"finish,omitempty"` // retire the previous CA now
	Grace  time.Duration `json:"grace,omitempty"`  // 0: 24h
}

// CAStatus is `warren cluster ca status`.
type CAStatus struct {
	Fingerprint string    `json:"fingerprint"` // sha256 of the current CA's DER
	Subject     string    `json:"subject"`
	Expires     time.Time `json:"expires"`
	Generation  int       `json:"generation"` // rotations so far
	Rotating    bool      `json:"rotating"`
	// Previous is the CA being retired (during a rotation only).
	Previous   string         `json:"previous,omitempty"`
	Started    time.Time      `json:"started,omitzero"`
	GraceUntil time.Time      `json:"grace_until,omitzero"`
	Action     string         `json:"action"` // none, wait, finish, expired
	Nodes      []CANodeStatus `json:"nodes"`
}

// CANodeStatus says which CA signed a node's current certificate.
type CANodeStatus struct {
	Name   string `json:"name"`
	ID     string `json:"id"`
	Role   string `json:"role"`
	Issuer string `json:"issuer,omitempty"` // CA fingerprint ("": the cluster's first CA, recorded before rotation)
	// NewCA: the node's certificate is the current CA's (a worker's
	// recorded one; a manager's session certificate, re-issued from the
	// current CA as the manager applies the rotation).
	NewCA bool `json:"new_ca"`
}

// JoinToken answers join-token show/rotate.
type JoinToken struct {
	Role    string `json:"role"`
	Token   string `json:"token"`
	Manager string `json:"manager"` // host:port joining nodes pass as --manager
}

// NodeView is a node as the admin API shows it.
type NodeView struct {
	ID             string            `json:"id"`
	Name           string            `json:"name"`
	Role           string            `json:"role"`
	Status         string            `json:"status"`
	Availability   string            `json:"availability"` // "active" or "drain"
	OverlayIP      netip.Addr        `json:"overlay_ip"`
	ContainerBlock netip.Prefix      `json:"container_block"`
	Endpoint       netip.AddrPort    `json:"endpoint"`
	PublicKey      string            `json:"public_key"`
	Labels         map[string]string `json:"labels,omitempty"`
	JoinedAt       time.Time         `json:"joined_at"`
	LastSeen       time.Time         `json:"last_seen,omitzero"`
	CertExpires    time.Time         `json:"cert_expires,omitzero"` // zero for the manager itself
	Tasks          int               `json:"tasks"`
	Tunnel         []PeerHealth      `json:"tunnel,omitempty"`
	Self           bool              `json:"self,omitempty"` // the manager answering
	// ManagerStatus is leader | reachable | unreachable for managers, ""
	// for workers, as seen by the manager answering.
	ManagerStatus string `json:"manager_status"`
	// ClockOffsetSeconds is the node's clock minus the manager's at its
	// last report (boards without an RTC are far off until NTP syncs).
	ClockOffsetSeconds float64 `json:"clock_offset_seconds"`
}

// ServiceSpec creates a service. Ports are "HOST:CONTAINER[/tcp|/udp]".
type ServiceSpec struct {
	Name        string   `json:"name"`
	Image       string   `json:"image"`
	Replicas    *int     `json:"replicas,omitempty"` // default 1
	Env         []string `json:"env,omitempty"`
	Constraints []string `json:"constraints,omitempty"`
	Ports       []string `json:"ports,omitempty"`
	Command     []string `json:"command,omitempty"`
	Affinity    bool     `json:"affinity,omitempty"`
	// Labels are carried by the service's tasks (policies select by them).
	Labels map[string]string `json:"labels,omitempty"`

	// Workload: --mode, --restart-*, --limit-*/--reserve-*, --mount and
	// the process settings (clustermap.Workload).
	clustermap.Workload
	// Secrets and configs, in Docker's --secret / --config syntax
	// (NAME or source=NAME,target=...,uid=,gid=,mode=0400).
	Secrets        []string `json:"secrets,omitempty"`
	Configs        []string `json:"configs,omitempty"`
	SecretRotation string   `json:"secret_rotation,omitempty"` // "" or "restart"
	// CapAdd and CapDrop change the tasks' Linux capabilities from the
	// default set, which lacks NET_RAW (Docker's --cap-add/--cap-drop).
	CapAdd  []string `json:"cap_add,omitempty"`
	CapDrop []string `json:"cap_drop,omitempty"`
	HealthSpec
}

// CapabilityUpdate adds and drops capabilities of a service.
type CapabilityUpdate struct {
	Add  []string `json:"add,omitempty"`
	Drop []string `json:"drop,omitempty"`
}

// HealthSpec is the health check and rolling-update part of a service's
// spec (Docker's --health-*, --update-* and --rollback-* flags). nil
// fields keep what the service has (update) or take the defaults
// (create).
type HealthSpec struct {
	HealthCheck    *clustermap.HealthCheck  `json:"health_check,omitempty"`
	UpdateConfig   *clustermap.UpdateConfig `json:"update_config,omitempty"`
	RollbackConfig *clustermap.UpdateConfig `json:"rollback_config,omitempty"`
}

// LabelUpdate adds (or overwrites) and removes labels of a service.
type LabelUpdate struct {
	Add    map[string]string `json:"add,omitempty"`
	Remove []string          `json:"remove,omitempty"`
}

// Scale sets a service's replica count.
type Scale struct {
	Replicas int `json:"replicas"`
}

// ImageUpdate starts a rolling update to a new image (Image empty: keep
// the image) and sets the health check and update settings given.
type ImageUpdate struct {
	Image string `json:"image"`
	HealthSpec
}

// ServiceView is a service with its tasks.
type ServiceView struct {
	Name        string            `json:"name"`
	Image       string            `json:"image"`
	Replicas    int               `json:"replicas"`
	Running     int               `json:"running"`
	VIP         netip.Addr        `json:"vip"`
	Ports       []clustermap.Port `json:"ports"`
	Env         []string          `json:"env,omitempty"`
	Command     []string          `json:"command,omitempty"`
	Constraints []string          `json:"constraints,omitempty"`
	Affinity    bool              `json:"affinity,omitempty"`
	CapAdd      []string          `json:"cap_add,omitempty"`
	CapDrop     []string          `json:"cap_drop,omitempty"`
	CreatedAt   time.Time         `json:"created_at"`
	UpdatedAt   time.Time         `json:"updated_at"`
	Updating    bool              `json:"updating,omitempty"` // a rolling image update is in progress
	// Exported: peered clusters reach it (`warren service export`).
	Exported bool `json:"exported,omitempty"`
	// HealthCheck, UpdateConfig and RollbackConfig as set on the service
	// (nil: the image's check; the defaults).
	HealthSpec
	// UpdateStatus is the last rolling update (Docker's UpdateStatus);
	// nil before the first.
	UpdateStatus *UpdateStatus     `json:"update_status,omitempty"`
	Unplaced     string            `json:"unplaced,omitempty"` // why some replicas have no node
	Labels       map[string]string `json:"labels"`
	Tasks        []TaskView        `json:"tasks"`

	// Workload: mode, restart policy, resources, mounts, process settings.
	clustermap.Workload
	// Secrets and configs the tasks see (references, never values).
	Secrets        []clustermap.FileRef `json:"secrets,omitempty"`
	Configs        []clustermap.FileRef `json:"configs,omitempty"`
	SecretRotation string               `json:"secret_rotation,omitempty"`
}

// TaskView is one task of a service.
type TaskView struct {
	Name         string     `json:"name"`
	Service      string     `json:"service,omitempty"` // set by GET /v1/tasks
	Node         string     `json:"node"`
	NodeID       string     `json:"node_id"`
	IP           netip.Addr `json:"ip"`
	Image        string     `json:"image"`
	DesiredState string     `json:"desired_state"`
	State        string     `json:"state"`
	Error        string     `json:"error,omitempty"`
	// Health is the task's health check state, nil without a check.
	Health *TaskHealth `json:"health,omitempty"`
	// ExitCode of the task's last process exit; absent while it has not
	// exited.
	ExitCode    *int      `json:"exit_code,omitempty"`
	Restarts    int       `json:"restarts"`
	NextRestart time.Time `json:"next_restart,omitzero"`
	OOMKilled   bool      `json:"oom_killed"`
	// PullDone of PullTotal bytes of the task's image are pulled, while
	// its node pulls it (absent otherwise).
	PullDone  int64 `json:"pull_done,omitempty"`
	PullTotal int64 `json:"pull_total,omitempty"`
	// Labels are the service's labels, which the task carries.
	Labels map[string]string `json:"labels,omitempty"`
}

// PolicyView is a network policy with the tasks its selectors match now.
type PolicyView struct {
	clustermap.Policy
	CreatedAt time.Time `json:"created_at"`
	UpdatedAt time.Time `json:"updated_at"`
	// Selected are the tasks the policy applies to (podSelector).
	Selected []PolicyTask `json:"selected"`
	// Peers lists, per rule peer with a podSelector, the tasks it matches.
	Peers []PolicyPeerView `json:"peers"`
}

// PolicyTask is one task a selector matches.
type PolicyTask struct {
	Name    string     `json:"name"`
	Service string     `json:"service"`
	Node    string     `json:"node"`
	IP      netip.Addr `json:"ip"`
	State   string     `json:"state"`
}

// PolicyPeerView is one peer of a rule ("ingress[0].from[1]") and what it
// stands for now.
type PolicyPeerView struct {
	Rule     string       `json:"rule"`
	Selector string       `json:"selector,omitempty"`
	IPBlock  string       `json:"ip_block,omitempty"`
	Tasks    []PolicyTask `json:"tasks,omitempty"`
}

// PolicyApply creates or replaces policies, all or none.
type PolicyApply struct {
	Policies []clustermap.Policy `json:"policies"`
}

// PolicyApplied says what applying did to each policy.
type PolicyApplied struct {
	Name   string `json:"name"`
	Result string `json:"result"` // created | configured | unchanged
}

// Rolling update states (Docker's UpdateStatus.State).
const (
	UpdateUpdating          = "updating"
	UpdatePaused            = "paused"
	UpdateCompleted         = "completed"
	UpdateRollbackStarted   = "rollback_started"
	UpdateRollbackPaused    = "rollback_paused"
	UpdateRollbackCompleted = "rollback_completed"
)

// UpdateStatus is where a service's rolling update stands.
type UpdateStatus struct {
	State       string    `json:"state"`
	Message     string    `json:"message,omitempty"` // the reason, e.g. the failing task
	StartedAt   time.Time `json:"started_at"`
	CompletedAt time.Time `json:"completed_at,omitzero"`
	// Target is the image being rolled to; Previous the one before.
	Target   string `json:"target"`
	Previous string `json:"previous,omitempty"`
	// Failures names the tasks that failed during the update.
	Failures []string `json:"failures,omitempty"`
}

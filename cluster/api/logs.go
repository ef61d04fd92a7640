package api

import "time"

// Logs: `warren service logs` asks a manager (admin API, PathLogs), which
// gathers the lines from the nodes running the tasks: it calls each node's
// log server (NodeLogsPort on the node's overlay IP, mTLS: the node shows
// its node certificate, the manager its manager certificate) over the
// mesh, and merges what they stream.
const (
	// PathLogs on the admin API: GET ?target=SERVICE|TASK&follow=1&tail=N&since=DURATION,
	// newline-delimited LogEntry values.
	PathLogs = "/v1/logs"
	// PathNodeLogs on a node's log server: GET ?task=NAME (repeatable)&follow=1&tail=N&since=RFC3339,
	// newline-delimited LogEntry values; a LogEntry with Synced marks the
	// end of what was stored (followed lines come after it).
	PathNodeLogs = "/v1/task-logs"
	// NodeLogsPort is the TCP port of every node's log server, on its
	// overlay address only.
	NodeLogsPort = 7947
	// NodeBlobsPort is the TCP port of every node's blob server, on its
	// overlay address only (mTLS, the cluster's nodes): image blobs by
	// digest for the other nodes (one pull per cluster).
	NodeBlobsPort = 7948
)

// LogEntry is one line of a task's output.
type LogEntry struct {
	Task   string    `json:"task,omitempty"`
	Node   string    `json:"node,omitempty"`
	Time   time.Time `json:"time,omitzero"`
	Stream string    `json:"stream,omitempty"` // stdout | stderr
	Text   string    `json:"text"`
	// Synced (node to manager) ends the stored lines.
	Synced bool `json:"synced,omitempty"`
	// Error says a node's lines could not be read (Task and Node say whose).
	Error string `json:"error,omitempty"`
}

// Volumes: `warren volume ls|rm` ask a manager (PathVolumes), which asks
// the nodes' servers (PathNodeVolumes, as for logs).
const (
	// PathVolumes on the admin API: GET []VolumeView; /{name}: DELETE (?node=NAME).
	PathVolumes = "/v1/volumes"
	// PathNodeVolumes on a node's server: GET []VolumeView (Name, SizeBytes);
	// /{name}: DELETE (409 when a task of the node mounts it).
	PathNodeVolumes = "/v1/node-volumes"
)

// VolumeView is one named volume on one node.
type VolumeView struct {
	Node      string   `json:"node"`
	Name      string   `json:"name"`
	SizeBytes int64    `json:"size_bytes"`
	Services  []string `json:"services"` // services with a task on that node mounting it
}

// VolumeRemoved says where a volume was removed.
type VolumeRemoved struct {
	Name  string   `json:"name"`
	Nodes []string `json:"nodes"`
}

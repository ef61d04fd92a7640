package api

import "time"

// Admin API paths of secrets and configs: GET list, POST ObjectSpec;
// /{name}: GET ObjectView (?pretty=1: a config's value too), DELETE;
// /{name}/update: POST ObjectSpec (new value).
const (
	PathSecrets = "/v1/secrets"
	PathConfigs = "/v1/configs"
	// PathBackupDataKey is GET: the cluster's data key (32 bytes), which a
	// backup needs to be restored with its secrets and configs.
	PathBackupDataKey = "/v1/backup/data-key"
	// ActionRefs on PathServices/{name}: POST ServiceRefsUpdate.
	ActionRefs = "/refs"
)

// PathValues is the node API's route for secret and config values (mTLS):
// POST ValuesRequest -> ValuesResponse. A node gets only the values of
// the tasks the map assigns to it.
const PathValues = "/v1/values"

// Object kinds.
const (
	KindSecret = "secret"
	KindConfig = "config"
)

// MaxObjectSize bounds a secret's or config's value (as Swarm: 500 KiB).
const MaxObjectSize = 500 << 10

// ObjectSpec creates a secret or config, or gives it a new value (update:
// Name and Labels are ignored).
type ObjectSpec struct {
	Name   string            `json:"name"`
	Labels map[string]string `json:"labels,omitempty"`
	Data   []byte            `json:"data"`
	// Federated: replicated to every peered cluster (`--federated`).
	Federated bool `json:"federated,omitempty"`
}

// ObjectView is a secret's or config's metadata. Data is set only for a
// config asked with pretty (never for a secret).
type ObjectView struct {
	ID        string            `json:"id"`
	Name      string            `json:"name"`
	Version   uint64            `json:"version"`
	Size      int               `json:"size"`
	Labels    map[string]string `json:"labels"`
	CreatedAt time.Time         `json:"created_at"`
	UpdatedAt time.Time         `json:"updated_at"`
	Services  []string          `json:"services"`
	Data      *string           `json:"data,omitempty"`
	// Federated: made here with --federated (peers get it); From: the
	// peer it was replicated from (read-only here).
	Federated bool   `json:"federated,omitempty"`
	From      string `json:"from,omitempty"`
}

// ServiceRefsUpdate adds and removes a service's secrets and configs
// (Docker's --secret-add/--secret-rm/--config-add/--config-rm) and sets
// its rotation mode.
type ServiceRefsUpdate struct {
	SecretAdd      []string `json:"secret_add,omitempty"`
	SecretRemove   []string `json:"secret_rm,omitempty"`
	ConfigAdd      []string `json:"config_add,omitempty"`
	ConfigRemove   []string `json:"config_rm,omitempty"`
	SecretRotation *string  `json:"secret_rotation,omitempty"`
}

// ValueRef names one value a node asks for.
type ValueRef struct {
	Kind string `json:"kind"`
	Name string `json:"name"`
}

// ValuesRequest asks for the current values of refs.
type ValuesRequest struct {
	Refs []ValueRef `json:"refs"`
}

// Value is one secret's or config's current value.
type Value struct {
	Kind    string `json:"kind"`
	Name    string `json:"name"`
	Version uint64 `json:"version"`
	Data    []byte `json:"data"`
}

// ValuesResponse carries the values asked for.
type ValuesResponse struct {
	Values []Value `json:"values"`
}

// MaxValueRefs bounds one values request.
const MaxValueRefs = 256

// DataKey is the answer of PathBackupDataKey.
type DataKey struct {
	Key []byte `json:"key"`
}

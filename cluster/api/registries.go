package api

import "time"

// Admin API paths of registries: GET list, POST RegistrySpec (add, or
// change an added one's settings; its login stays); /{host}: DELETE;
// /{host}/login: POST RegistryLogin (checked against the registry first);
// /{host}/logout: POST.
const (
	PathRegistries = "/v1/registries"
	ActionLogin    = "/login"
	ActionLogout   = "/logout"
)

// KindRegistry is the value kind of a registry's credentials in a node's
// ValuesRequest (Name: the registry's host): the value is
// RegistryCredentials as JSON.
const KindRegistry = "registry"

// RegistrySpec adds a registry: HOST[:PORT] as image references name it.
type RegistrySpec struct {
	Host     string `json:"host"`
	CA       string `json:"ca,omitempty"` // PEM; empty: the system's CAs
	Insecure bool   `json:"insecure,omitempty"`
	MirrorOf string `json:"mirror_of,omitempty"`
}

// RegistryLogin is `registry login`'s credentials.
type RegistryLogin struct {
	Username string `json:"username"`
	Password string `json:"password"`
}

// RegistryCredentials is the value a node gets for a registry it pulls from.
type RegistryCredentials struct {
	Username string `json:"username"`
	Password string `json:"password"`
}

// RegistryView is an added registry (never its password).
type RegistryView struct {
	Host      string    `json:"host"`
	MirrorOf  string    `json:"mirror_of"`
	Insecure  bool      `json:"insecure"`
	CA        bool      `json:"ca"`
	Username  string    `json:"username"`
	LoggedIn  bool      `json:"logged_in"`
	CreatedAt time.Time `json:"created_at"`
	UpdatedAt time.Time `json:"updated_at"`
}

package api

import "time"

// Node-local paths, served by every node's daemon on its unix socket (not
// by the manager): what this node's tunnel, rules and resolver look like.
const (
	PathLocalNetworkStatus = "/v1/local/network/status"
	PathLocalNetworkVIPs   = "/v1/local/network/vips" // ?render=1 adds the iptables-restore text
	PathLocalNetworkDNS    = "/v1/local/network/dns"  // ?name=NAME
)

// LocalPeer is one WireGuard peer as `warren network status` shows it.
type LocalPeer struct {
	PublicKey       string    `json:"public_key"`
	Node            string    `json:"node,omitempty"` // the node holding this key in the cluster map
	Endpoint        string    `json:"endpoint,omitempty"`
	AllowedIPs      []string  `json:"allowed_ips"`
	LatestHandshake time.Time `json:"latest_handshake,omitzero"`
	HandshakeAge    string    `json:"handshake_age,omitempty"`
	RxBytes         int64     `json:"rx_bytes"`
	TxBytes         int64     `json:"tx_bytes"`
	Healthy         bool      `json:"healthy"`
	// Path is "direct" or "relay" ("" while the peer has no endpoint);
	// Relay names the relay node of a relayed peer.
	Path  string `json:"path"`
	Relay string `json:"relay,omitempty"`
	// RelayTransport is how a relayed peer's packets reach the relay now:
	// "udp", or "tls" (TCP) when UDP to the relay gets no answer.
	RelayTransport string `json:"relay_transport,omitempty"`
}

// LocalTunnel answers `warren network status`.
type LocalTunnel struct {
	Interface string      `json:"interface"`
	Mode      string      `json:"mode"`
	PublicKey string      `json:"public_key"`
	Peers     []LocalPeer `json:"peers"`
}

// LocalVIPs answers `warren network vips`.
type LocalVIPs struct {
	MapVersion uint64 `json:"map_version"`
	Summary    string `json:"summary"`
	Rules      string `json:"rules,omitempty"`
}

// LocalDNS answers `warren network dns NAME`.
type LocalDNS struct {
	Name      string   `json:"name"`
	Server    string   `json:"server"`
	Addresses []string `json:"addresses"`
}

package api

import (
	"net/netip"
	"time"

	"github.com/warren-appliance/warren/cluster/clustermap"
	"github.com/warren-appliance/warren/cluster/federation"
)

// Admin API of cluster peering (federation).
const (
	// PathPeers: GET []PeerView, POST PeerAdd; /{name}: DELETE.
	PathPeers = "/v1/peers"
	// PathPeerToken: POST -> PeerToken (creates the peer secret the first
	// time, so it is a write).
	PathPeerToken = "/v1/peer-token"
	// ActionExport and ActionUnexport on PathServices/{name}: POST.
	ActionExport   = "/export"
	ActionUnexport = "/unexport"
)

// Peer API: the managers of two peered clusters call each other on the
// node API port over mTLS, each pinning the other's CA (from the token on
// one side, from the registration on the other).
const (
	// PathPeerRegister: POST PeerRegister -> PeerHello; needs the peer
	// token's secret and a client certificate of the caller's CA.
	PathPeerRegister = "/v1/peer/register"
	// PathPeerSync: POST -> PeerSync; the caller must be a recorded peer.
	PathPeerSync = "/v1/peer/sync"
	// PathPeerUnregister: POST; the caller is removed as a peer.
	PathPeerUnregister = "/v1/peer/unregister"
)

// Peer link states in PeerView.Status.
const (
	PeerConnected  = "connected"
	PeerConnecting = "connecting"
	PeerFailed     = "failed"
)

// PeerAdd is `warren cluster peer add NAME --token T [--as LOCAL]`.
type PeerAdd struct {
	Name  string `json:"name"`
	Token string `json:"token"`
	// As is how the peer names this cluster (its tasks resolve
	// SERVICE.AS.DOMAIN); default "cluster-" and 8 hex digits of this
	// cluster's ID.
	As string `json:"as,omitempty"`
}

// PeerToken is `warren cluster peer token`.
type PeerToken struct {
	Token string `json:"token"`
}

// PeerHello is what a cluster tells a peer about itself.
type PeerHello struct {
	ClusterID string             `json:"cluster_id"`
	CACert    string             `json:"ca_cert"` // PEM
	Managers  []string           `json:"managers"`
	Network   clustermap.Network `json:"network"`
}

// PeerRegister is the reciprocal half of `peer add`: cluster A, holding
// B's token, registers itself with B under the name B should use.
type PeerRegister struct {
	Secret string `json:"secret"`
	Name   string `json:"name"`
	PeerHello
}

// PeerSync is a cluster's answer to a peer's periodic sync: its managers
// now and its exported services' serving endpoints.
type PeerSync struct {
	Managers []string            `json:"managers"`
	Exports  []federation.Export `json:"exports"`
	// Gateway is the node that holds the cluster's gateway links (its
	// leader), nil while it has none.
	Gateway *PeerGateway `json:"gateway,omitempty"`
	// Objects are the federated secrets and configs with their values
	// (the peer link is mTLS; the receiver seals them with its own key).
	Objects []PeerObject `json:"objects,omitempty"`
}

// PeerObject is a federated secret or config.
type PeerObject struct {
	Kind    string `json:"kind"` // secret | config
	Name    string `json:"name"`
	Version uint64 `json:"version"`
	Data    []byte `json:"data"`
}

// PeerGateway is a cluster's gateway node as its peers dial it.
type PeerGateway struct {
	PublicKey string         `json:"public_key"`
	Endpoint  netip.AddrPort `json:"endpoint"`
	OverlayIP netip.Addr     `json:"overlay_ip"`
}

// PeerView is one peer in `warren cluster peer ls --json`.
type PeerView struct {
	Name      string             `json:"name"`
	ClusterID string             `json:"cluster_id"`
	CAHash    string             `json:"ca_hash"`
	Status    string             `json:"status"` // connected | connecting | failed
	Reason    string             `json:"reason,omitempty"`
	Managers  []string           `json:"managers"`
	Network   clustermap.Network `json:"network"`
	// Exports are the services the peer exports to this cluster, as of
	// LastContact; Imports the VIPs this cluster gives them.
	Exports     []federation.Export `json:"exports"`
	Imports     []federation.Import `json:"imports"`
	LastContact *time.Time          `json:"last_contact,omitempty"`
	CreatedAt   time.Time           `json:"created_at"`
	// Gateway is the peer's gateway node as it last said; GatewayNode the
	// ID of this cluster's gateway node, which holds the link to it.
	Gateway     *PeerGateway `json:"gateway,omitempty"`
	GatewayNode string       `json:"gateway_node,omitempty"`
}

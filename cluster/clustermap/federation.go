package clustermap

import "net/netip"

// GlobalPeer is the Peer of the imports behind SERVICE.global names.
const GlobalPeer = "global"

// Import is a service of a peered cluster (federation) as this cluster
// serves it: SERVICE.PEER.<domain> resolves to VIP, a VIP of this
// cluster's VIP range that balances over Endpoints (the peer's serving
// task IPs). Peer GlobalPeer is SERVICE.global: this cluster's serving
// tasks of SERVICE while it has any, else the peers'.
type Import struct {
	Peer      string       `json:"peer"`
	Service   string       `json:"service"`
	VIP       netip.Addr   `json:"vip"`
	Ports     []Port       `json:"ports,omitempty"`
	Endpoints []netip.Addr `json:"endpoints"`
}

// Gateway is the link of this cluster's gateway to a peer's gateway:
// WireGuard to the peer's gateway node, which routes into the peer's
// container subnet.
type Gateway struct {
	Peer string `json:"peer"`
	// PublicKey, Endpoint and OverlayIP are the peer's gateway node's.
	PublicKey string         `json:"public_key"`
	Endpoint  netip.AddrPort `json:"endpoint"`
	OverlayIP netip.Addr     `json:"overlay_ip"`
	// ContainerSubnet is the peer's: routed through the gateways.
	ContainerSubnet netip.Prefix `json:"container_subnet"`
	// Exposed are this cluster's task IPs the peer may reach (the
	// serving tasks of what this cluster exports): the gateway drops the
	// peer's traffic to any other address.
	Exposed []netip.Addr `json:"exposed,omitempty"`
}

// Federation is the map's part for peered clusters.
type Federation struct {
	// GatewayID is the node of this cluster that holds the links to the
	// peers' gateways (the Raft leader); every node routes the peers'
	// container subnets to it.
	GatewayID string    `json:"gateway_id,omitempty"`
	Gateways  []Gateway `json:"gateways,omitempty"`
}

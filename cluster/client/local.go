package client

import (
	"context"
	"net/http"
	"net/url"

	"github.com/warren-appliance/warren/cluster/api"
)

// NetworkStatus asks the local daemon about its WireGuard device and peers.
func (c *Client) NetworkStatus(ctx context.Context) (api.LocalTunnel, error) {
	var out api.LocalTunnel
	err := c.do(ctx, http.MethodGet, api.PathLocalNetworkStatus, nil, nil, &out)
	return out, err
}

// NetworkVIPs asks the local daemon for its VIPs and, with render, the
// iptables-restore text it applies.
func (c *Client) NetworkVIPs(ctx context.Context, render bool) (api.LocalVIPs, error) {
	var q url.Values
	if render {
		q = url.Values{"render": {"1"}}
	}
	var out api.LocalVIPs
	err := c.do(ctx, http.MethodGet, api.PathLocalNetworkVIPs, q, nil, &out)
	return out, err
}

// NetworkDNS resolves name through the node's resolver, as a task would.
func (c *Client) NetworkDNS(ctx context.Context, name string) (api.LocalDNS, error) {
	var out api.LocalDNS
	err := c.do(ctx, http.MethodGet, api.PathLocalNetworkDNS, url.Values{"name": {name}}, nil, &out)
	return out, err
}

package client

import (
	"context"
	"net/http"
	"net/url"

	"github.com/warren-appliance/warren/cluster/api"
)

// PeerToken returns this cluster's peer token.
func (c *Client) PeerToken(ctx context.Context) (api.PeerToken, error) {
	var out api.PeerToken
	return out, c.do(ctx, http.MethodPost, api.PathPeerToken, nil, struct{}{}, &out)
}

// AddPeer peers this cluster with another (both sides record each other).
func (c *Client) AddPeer(ctx context.Context, req api.PeerAdd) (api.PeerView, error) {
	var out api.PeerView
	return out, c.do(ctx, http.MethodPost, api.PathPeers, nil, req, &out)
}

// Peers lists the peers with their link state.
func (c *Client) Peers(ctx context.Context) ([]api.PeerView, error) {
	var out []api.PeerView
	return out, c.do(ctx, http.MethodGet, api.PathPeers, nil, nil, &out)
}

// RemovePeer unpeers.
func (c *Client) RemovePeer(ctx context.Context, name string) error {
	return c.do(ctx, http.MethodDelete, api.PathPeers+"/"+url.PathEscape(name), nil, nil, nil)
}

// SetExported exports a service to the peers (or stops).
func (c *Client) SetExported(ctx context.Context, name string, exported bool) error {
	action := api.ActionUnexport
	if exported {
		action = api.ActionExport
	}
	return c.do(ctx, http.MethodPost, api.PathServices+"/"+url.PathEscape(name)+action, nil, struct{}{}, nil)
}

package client

import (
	"context"
	"net/http"
	"net/url"

	"github.com/warren-appliance/warren/cluster/api"
)

func objectPath(kind string) string {
	if kind == api.KindConfig {
		return api.PathConfigs
	}
	return api.PathSecrets
}

// Objects lists the secrets or configs (kind api.KindSecret|KindConfig).
func (c *Client) Objects(ctx context.Context, kind string) ([]api.ObjectView, error) {
	var out []api.ObjectView
	return out, c.do(ctx, http.MethodGet, objectPath(kind), nil, nil, &out)
}

// Object shows one secret or config; pretty adds a config's value.
func (c *Client) Object(ctx context.Context, kind, name string, pretty bool) (api.ObjectView, error) {
	var q url.Values
	if pretty {
		q = url.Values{"pretty": {"1"}}
	}
	var out api.ObjectView
	return out, c.do(ctx, http.MethodGet, objectPath(kind)+"/"+url.PathEscape(name), q, nil, &out)
}

// CreateObject creates a secret or config.
func (c *Client) CreateObject(ctx context.Context, kind string, spec api.ObjectSpec) (api.ObjectView, error) {
	var out api.ObjectView
	return out, c.do(ctx, http.MethodPost, objectPath(kind), nil, spec, &out)
}

// UpdateObject gives a secret or config a new value (and version).
func (c *Client) UpdateObject(ctx context.Context, kind, name string, data []byte) (api.ObjectView, error) {
	var out api.ObjectView
	return out, c.do(ctx, http.MethodPost, objectPath(kind)+"/"+url.PathEscape(name)+api.ActionUpdate, nil, api.ObjectSpec{Data: data}, &out)
}

// RemoveObject removes a secret or config no service uses.
func (c *Client) RemoveObject(ctx context.Context, kind, name string) error {
	return c.do(ctx, http.MethodDelete, objectPath(kind)+"/"+url.PathEscape(name), nil, nil, nil)
}

// UpdateServiceRefs adds and removes a service's secrets and configs.
func (c *Client) UpdateServiceRefs(ctx context.Context, name string, req api.ServiceRefsUpdate) (api.ServiceView, error) {
	var out api.ServiceView
	return out, c.do(ctx, http.MethodPost, api.PathServices+"/"+url.PathEscape(name)+api.ActionRefs, nil, req, &out)
}

// DataKey returns the cluster's data key (for a backup); a 404 if the
// cluster has none yet.
func (c *Client) DataKey(ctx context.Context) ([]byte, error) {
	var out api.DataKey
	return out.Key, c.do(ctx, http.MethodGet, api.PathBackupDataKey, nil, nil, &out)
}

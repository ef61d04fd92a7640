package client

import (
	"context"
	"net/http"
	"net/url"

	"github.com/warren-appliance/warren/cluster/api"
)

func registryPath(host string) string { return api.PathRegistries + "/" + url.PathEscape(host) }

// Registries lists the added registries.
func (c *Client) Registries(ctx context.Context) ([]api.RegistryView, error) {
	var out []api.RegistryView
	return out, c.do(ctx, http.MethodGet, api.PathRegistries, nil, nil, &out)
}

// AddRegistry adds a registry or changes an added one's settings.
func (c *Client) AddRegistry(ctx context.Context, spec api.RegistrySpec) (api.RegistryView, error) {
	var out api.RegistryView
	return out, c.do(ctx, http.MethodPost, api.PathRegistries, nil, spec, &out)
}

// LoginRegistry stores credentials for a registry once it takes them.
func (c *Client) LoginRegistry(ctx context.Context, host string, login api.RegistryLogin) (api.RegistryView, error) {
	var out api.RegistryView
	return out, c.do(ctx, http.MethodPost, registryPath(host)+api.ActionLogin, nil, login, &out)
}

// LogoutRegistry forgets a registry's credentials.
func (c *Client) LogoutRegistry(ctx context.Context, host string) (api.RegistryView, error) {
	var out api.RegistryView
	return out, c.do(ctx, http.MethodPost, registryPath(host)+api.ActionLogout, nil, nil, &out)
}

// RemoveRegistry removes a registry.
func (c *Client) RemoveRegistry(ctx context.Context, host string) error {
	return c.do(ctx, http.MethodDelete, registryPath(host), nil, nil, nil)
}

package cluster

import (
	"net/http"

	"github.com/warren-appliance/warren/cluster/api"
)

// registryRoutes mounts the admin API of registries.
func (m *Manager) registryRoutes(mux *http.ServeMux) {
	host := func(r *http.Request) string { return r.PathValue("host") }
	mux.HandleFunc("GET "+api.PathRegistries, answer(http.StatusOK, func(*http.Request) (any, error) {
		return m.Registries(), nil
	}))
	mux.HandleFunc("POST "+api.PathRegistries, answerBody(http.StatusOK, func(_ *http.Request, spec api.RegistrySpec) (any, error) {
		return m.AddRegistry(spec)
	}))
	mux.HandleFunc("GET "+api.PathRegistries+"/{host}", answer(http.StatusOK, func(r *http.Request) (any, error) {
		return m.Registry(host(r))
	}))
	mux.HandleFunc("POST "+api.PathRegistries+"/{host}"+api.ActionLogin, answerBody(http.StatusOK, func(r *http.Request, login api.RegistryLogin) (any, error) {
		return m.LoginRegistry(r.Context(), host(r), login)
	}))
	mux.HandleFunc("POST "+api.PathRegistries+"/{host}"+api.ActionLogout, answer(http.StatusOK, func(r *http.Request) (any, error) {
		return m.LogoutRegistry(host(r))
	}))
	mux.HandleFunc("DELETE "+api.PathRegistries+"/{host}", noContent(func(r *http.Request) error {
		return m.RemoveRegistry(host(r))
	}))
}

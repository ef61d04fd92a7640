package cluster

import (
	"net/http"

	"github.com/warren-appliance/warren/cluster/api"
)

// registryRoutes mounts the admin API of registries.
func (m *Manager) registryRoutes(mux *http.ServeMux) {
	mux.HandleFunc("GET "+api.PathRegistries, func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, m.Registries())
	})
	mux.HandleFunc("POST "+api.PathRegistries, func(w http.ResponseWriter, r *http.Request) {
		var spec api.RegistrySpec
		if err := readJSON(r, &spec); err != nil {
			writeError(w, err)
			return
		}
		v, err := m.AddRegistry(spec)
		if err != nil {
			writeError(w, err)
			return
		}
		writeJSON(w, http.StatusOK, v)
	})
	mux.HandleFunc("GET "+api.PathRegistries+"/{host}", func(w http.ResponseWriter, r *http.Request) {
		v, err := m.Registry(r.PathValue("host"))
		if err != nil {
			writeError(w, err)
			return
		}
		writeJSON(w, http.StatusOK, v)
	})
	mux.HandleFunc("POST "+api.PathRegistries+"/{host}"+api.ActionLogin, func(w http.ResponseWriter, r *http.Request) {
		var login api.RegistryLogin
		if err := readJSON(r, &login); err != nil {
			writeError(w, err)
			return
		}
		v, err := m.LoginRegistry(r.Context(), r.PathValue("host"), login)
		if err != nil {
			writeError(w, err)
			return
		}
		writeJSON(w, http.StatusOK, v)
	})
	mux.HandleFunc("POST "+api.PathRegistries+"/{host}"+api.ActionLogout, func(w http.ResponseWriter, r *http.Request) {
		v, err := m.LogoutRegistry(r.PathValue("host"))
		if err != nil {
			writeError(w, err)
			return
		}
		writeJSON(w, http.StatusOK, v)
	})
	mux.HandleFunc("DELETE "+api.PathRegistries+"/{host}", func(w http.ResponseWriter, r *http.Request) {
		if err := m.RemoveRegistry(r.PathValue("host")); err != nil {
			writeError(w, err)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
}

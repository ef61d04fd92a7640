package cluster

import (
	"net/http"

	"github.com/warren-appliance/warren/cluster/api"
)

// objectRoutes mounts the admin API of secrets and configs.
func (m *Manager) objectRoutes(mux *http.ServeMux) {
	for kind, base := range map[string]string{api.KindSecret: api.PathSecrets, api.KindConfig: api.PathConfigs} {
		name := func(r *http.Request) string { return r.PathValue("name") }
		mux.HandleFunc("GET "+base, answer(http.StatusOK, func(*http.Request) (any, error) {
			return m.Objects(kind)
		}))
		mux.HandleFunc("POST "+base, answerBody(http.StatusCreated, func(_ *http.Request, spec api.ObjectSpec) (any, error) {
			return m.CreateObject(kind, spec)
		}))
		mux.HandleFunc("GET "+base+"/{name}", answer(http.StatusOK, func(r *http.Request) (any, error) {
			return m.Object(kind, name(r), r.URL.Query().Get("pretty") == "1")
		}))
		mux.HandleFunc("POST "+base+"/{name}"+api.ActionUpdate, answerBody(http.StatusOK, func(r *http.Request, spec api.ObjectSpec) (any, error) {
			return m.UpdateObject(kind, name(r), spec.Data)
		}))
		mux.HandleFunc("DELETE "+base+"/{name}", noContent(func(r *http.Request) error {
			return m.RemoveObject(kind, name(r))
		}))
	}
	mux.HandleFunc("POST "+api.PathServices+"/{name}"+api.ActionRefs, answerBody(http.StatusOK, func(r *http.Request, req api.ServiceRefsUpdate) (any, error) {
		return m.UpdateServiceRefs(r.PathValue("name"), req)
	}))
	mux.HandleFunc("GET "+api.PathBackupDataKey, func(w http.ResponseWriter, r *http.Request) {
		k := m.DataKey()
		if k == nil {
			writeError(w, errorf(http.StatusNotFound, "this manager has no data key: the cluster has no secrets or configs yet"))
			return
		}
		writeJSON(w, http.StatusOK, api.DataKey{Key: k})
	})
}

// handleValues answers a node's request for the values of its tasks'
// secrets and configs. The leader answers (a follower forwards the call
// with the node's certificate): it holds the newest assignment of tasks.
func (m *Manager) handleValues(w http.ResponseWriter, r *http.Request, id string) {
	if m.followerForwards(w, r) {
		return
	}
	var req api.ValuesRequest
	if err := readJSON(r, &req); err != nil {
		writeError(w, err)
		return
	}
	vals, err := m.Values(id, req.Refs)
	if err != nil {
		writeError(w, err)
		return
	}
	w.Header().Set("Cache-Control", "no-store")
	writeJSON(w, http.StatusOK, api.ValuesResponse{Values: vals})
}

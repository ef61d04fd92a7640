package cluster

import (
	"net/http"

	"github.com/warren-appliance/warren/cluster/api"
)

// objectRoutes mounts the admin API of secrets and configs.
func (m *Manager) objectRoutes(mux *http.ServeMux) {
	for kind, base := range map[string]string{api.KindSecret: api.PathSecrets, api.KindConfig: api.PathConfigs} {
		mux.HandleFunc("GET "+base, func(w http.ResponseWriter, r *http.Request) {
			list, err := m.Objects(kind)
			if err != nil {
				writeError(w, err)
				return
			}
			writeJSON(w, http.StatusOK, list)
		})
		mux.HandleFunc("POST "+base, func(w http.ResponseWriter, r *http.Request) {
			var spec api.ObjectSpec
			if err := readJSON(r, &spec); err != nil {
				writeError(w, err)
				return
			}
			v, err := m.CreateObject(kind, spec)
			if err != nil {
				writeError(w, err)
				return
			}
			writeJSON(w, http.StatusCreated, v)
		})
		mux.HandleFunc("GET "+base+"/{name}", func(w http.ResponseWriter, r *http.Request) {
			v, err := m.Object(kind, r.PathValue("name"), r.URL.Query().Get("pretty") == "1")
			if err != nil {
				writeError(w, err)
				return
			}
			writeJSON(w, http.StatusOK, v)
		})
		mux.HandleFunc("POST "+base+"/{name}"+api.ActionUpdate, func(w http.ResponseWriter, r *http.Request) {
			var spec api.ObjectSpec
			if err := readJSON(r, &spec); err != nil {
				writeError(w, err)
				return
			}
			v, err := m.UpdateObject(kind, r.PathValue("name"), spec.Data)
			if err != nil {
				writeError(w, err)
				return
			}
			writeJSON(w, http.StatusOK, v)
		})
		mux.HandleFunc("DELETE "+base+"/{name}", func(w http.ResponseWriter, r *http.Request) {
			if err := m.RemoveObject(kind, r.PathValue("name")); err != nil {
				writeError(w, err)
				return
			}
			w.WriteHeader(http.StatusNoContent)
		})
	}
	mux.HandleFunc("POST "+api.PathServices+"/{name}"+api.ActionRefs, func(w http.ResponseWriter, r *http.Request) {
		var req api.ServiceRefsUpdate
		if err := readJSON(r, &req); err != nil {
			writeError(w, err)
			return
		}
		v, err := m.UpdateServiceRefs(r.PathValue("name"), req)
		if err != nil {
			writeError(w, err)
			return
		}
		writeJSON(w, http.StatusOK, v)
	})
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

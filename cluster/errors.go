package cluster

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"

	"github.com/warren-appliance/warren/cluster/api"
)

// apiError is an error with the HTTP status the APIs answer it with. Its
// message says what to fix.
type apiError struct {
	status int
	msg    string
}

func (e *apiError) Error() string { return e.msg }

func errorf(status int, format string, args ...any) error {
	return &apiError{status, fmt.Sprintf(format, args...)}
}

func errNodeRemoved(id string) error {
	return errorf(http.StatusForbidden, "node %s "+api.NodeRemoved+": clear its state dir and join again with a token", id)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v) // the client went away; nothing to do
}

func writeError(w http.ResponseWriter, err error) {
	status := http.StatusInternalServerError
	var ae *apiError
	if errors.As(err, &ae) {
		status = ae.status
	}
	if status == http.StatusUnauthorized || status == http.StatusForbidden {
		// The connection's client certificate may be what is refused (a
		// retired CA's, a superseded one): the client must not reuse the
		// connection, its next one presents its current certificate.
		w.Header().Set("Connection", "close")
	}
	writeJSON(w, status, api.Error{Error: err.Error()})
}

// readJSON decodes a request body, refusing unknown fields so typos in
// hand-written requests surface.
func readJSON(r *http.Request, v any) error {
	dec := json.NewDecoder(http.MaxBytesReader(nil, r.Body, 1<<20))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return errorf(http.StatusBadRequest, "request body is not valid JSON for this call: %v", err)
	}
	return nil
}

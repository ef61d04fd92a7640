package appliance

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"log/slog"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/warren-appliance/warren/cluster/api"
	"github.com/warren-appliance/warren/cluster/pki"
	"github.com/warren-appliance/warren/orchestrate"
	"github.com/warren-appliance/warren/orchestrate/tasklog"
)

// serveTaskLogs runs the node's server for managers on its overlay address:
// managers (their certificate says so, chained to the cluster CA) read and
// follow the tasks' log files for `warren service logs`, and list and
// remove the node's volumes. It is not on the LAN.
func serveTaskLogs(ctx context.Context, overlay netip.Addr, ident func() (*tls.Certificate, *x509.CertPool), orch *orchestrate.Reconciler, log *slog.Logger) error {
	mux := http.NewServeMux()
	mux.Handle("GET "+api.PathNodeLogs, tasklog.Handler(orch.TaskLogDir))
	mux.HandleFunc("GET "+api.PathNodeVolumes, func(w http.ResponseWriter, r *http.Request) {
		vols, err := orch.Volumes()
		if err != nil {
			writeJSON(w, http.StatusInternalServerError, api.Error{Error: err.Error()})
			return
		}
		out := make([]api.VolumeView, len(vols))
		for i, v := range vols {
			out[i] = api.VolumeView{Name: v.Name, SizeBytes: v.SizeBytes}
		}
		writeJSON(w, http.StatusOK, out)
	})
	mux.HandleFunc("DELETE "+api.PathNodeVolumes+"/{name}", func(w http.ResponseWriter, r *http.Request) {
		err := orch.RemoveVolume(r.PathValue("name"))
		switch {
		case errors.Is(err, orchestrate.ErrVolumeInUse):
			writeJSON(w, http.StatusConflict, api.Error{Error: err.Error()})
		case err != nil:
			writeJSON(w, http.StatusBadRequest, api.Error{Error: err.Error()})
		default:
			w.WriteHeader(http.StatusNoContent)
		}
	})
	return overlayServer{name: "task log server", overlay: overlay, port: api.NodeLogsPort, ident: ident, handler: mux,
		verify: func(leaf *x509.Certificate, pool *x509.CertPool) error {
			_, err := pki.VerifyManager(leaf, pool, x509.ExtKeyUsageClientAuth, time.Now())
			return err
		}}.serve(ctx, log)
}

// taskLogger links this binary as tasklog.LoggerName in dir, for
// containerd's shim to run as each task's logger, and returns the link
// ("" when the binary cannot be found: tasks then log to a plain file).
// The link is made at every start: an upgrade moves the binary.
func taskLogger(dir string, log *slog.Logger) string {
	exe, err := os.Executable()
	if err == nil {
		exe, err = filepath.EvalSymlinks(exe)
	}
	if err != nil {
		log.Warn("task logs: cannot find this binary; each task logs to one plain file", "err", err)
		return ""
	}
	link := filepath.Join(dir, tasklog.LoggerName)
	if cur, err := os.Readlink(link); err == nil && cur == exe {
		return link
	}
	if err := os.MkdirAll(dir, 0o755); err == nil {
		os.Remove(link)
		err = os.Symlink(exe, link)
	}
	if err != nil {
		log.Warn("task logs: cannot link the logger; each task logs to one plain file", "err", err)
		return ""
	}
	return link
}

package appliance

import (
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
)

// pprofEnv names a loopback address on which the daemon serves Go's
// profiler (net/http/pprof), for measuring CPU and memory on a board
// (tunnel/BENCHMARKS.md). Unset: no profiler.
const pprofEnv = "WARREN_PPROF_LISTEN"

// servePprof starts the profiler if pprofEnv names a loopback address.
func servePprof(log *slog.Logger) {
	addr := os.Getenv(pprofEnv)
	if addr == "" {
		return
	}
	host, _, err := net.SplitHostPort(addr)
	if ip := net.ParseIP(host); err != nil || ip == nil || !ip.IsLoopback() {
		log.Warn("profiler not started: "+pprofEnv+" must be a loopback IP:port", "value", addr)
		return
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		log.Warn("profiler not started", "address", addr, "error", err)
		return
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	log.Info("serving the Go profiler", "address", ln.Addr().String())
	go http.Serve(ln, mux)
}

package appliance

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"

	"github.com/warren-appliance/warren/cluster/api"
	"github.com/warren-appliance/warren/dns"
	"github.com/warren-appliance/warren/nat"
	"github.com/warren-appliance/warren/tunnel"
	"github.com/warren-appliance/warren/tunnel/paths"
)

// localState is what the local socket reports about this node.
type localState struct {
	mu  sync.Mutex
	dev *tunnel.Device
	// peerNames maps public keys to node names (from the cluster map); nil
	// on a standalone node.
	peerNames func() map[string]string
	// paths reports the path engine's view of each peer; nil on a
	// standalone node.
	paths func() []paths.PeerPath
	// relayVia says whether a WireGuard endpoint is one of the relay
	// client's proxies, and then the relay's node name and the transport
	// ("udp", "tls"); nil on a standalone node.
	relayVia func(ep netip.AddrPort) (relay, transport string, ok bool)
	// extra node-local endpoints (VIPs, DNS) registered by the cluster roles.
	extra map[string]http.HandlerFunc
}

func (s *localState) tunnelStatus() api.LocalTunnel {
	s.mu.Lock()
	dev := s.dev
	s.mu.Unlock()
	if dev == nil {
		return api.LocalTunnel{}
	}
	st := api.LocalTunnel{Interface: dev.Interface(), Mode: dev.Mode(), PublicKey: dev.PublicKey().String(), Peers: []api.LocalPeer{}}
	now := time.Now()
	var names map[string]string
	if s.peerNames != nil {
		names = s.peerNames()
	}
	byKey := map[tunnel.Key]*paths.PeerPath{}
	if s.paths != nil {
		for _, p := range s.paths() {
			byKey[tunnel.Key(p.Key)] = &p
		}
	}
	for _, h := range dev.Health() {
		path, via := peerPath(h.Endpoint, byKey[h.PublicKey])
		p := api.LocalPeer{Path: path, Relay: via, PublicKey: h.PublicKey.String(), Node: names[h.PublicKey.String()], RxBytes: h.RxBytes, TxBytes: h.TxBytes, Healthy: h.Healthy, AllowedIPs: []string{}}
		if h.Endpoint.IsValid() {
			p.Endpoint = h.Endpoint.String()
		}
		if s.relayVia != nil && path == paths.PathRelay {
			// The endpoint may be a relay proxy the far side's choice put
			// there (WireGuard roamed to it) before this side's path machine
			// chose the relay itself: the proxy knows its relay either way.
			name, transport, _ := s.relayVia(h.Endpoint)
			p.RelayTransport = transport
			if p.Relay == "" {
				p.Relay = name
			}
		}
		for _, a := range h.AllowedIPs {
			p.AllowedIPs = append(p.AllowedIPs, a.String())
		}
		if !h.LastHandshake.IsZero() {
			p.LatestHandshake = h.LastHandshake
			p.HandshakeAge = now.Sub(h.LastHandshake).Round(time.Second).String()
		}
		st.Peers = append(st.Peers, p)
	}
	return st
}

// localAPI serves the root-only unix socket the CLI talks to.
type localAPI struct {
	srv  *http.Server
	path string
}

// startLocalAPI listens on path (mode 0600, in a 0700 directory) and serves
// the node-local endpoints plus, on managers, the cluster admin API.
func startLocalAPI(path string, st *localState, admin http.Handler, log *slog.Logger) (*localAPI, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("local socket: %w", err)
	}
	// A socket left by a crash would make Listen fail; only remove sockets.
	if fi, err := os.Lstat(path); err == nil && fi.Mode()&os.ModeSocket != 0 {
		os.Remove(path)
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("local socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("local socket: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+api.PathLocalNetworkStatus, func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, st.tunnelStatus())
	})
	st.mu.Lock()
	for pattern, h := range st.extra {
		mux.HandleFunc(pattern, h)
	}
	st.mu.Unlock()
	if admin != nil {
		mux.Handle("/", admin)
	} else {
		mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
			writeJSON(w, http.StatusNotFound, map[string]string{"error": "this node is not a manager: run cluster commands on a manager node"})
		})
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("local socket stopped", "err", err)
		}
	}()
	return &localAPI{srv: srv, path: path}, nil
}

func (a *localAPI) Close() error {
	err := a.srv.Close()
	os.Remove(a.path)
	return err
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}

// notifyReady tells systemd (Type=notify) the node is up; a no-op when
// not started by systemd.
func notifyReady(log *slog.Logger) {
	if ok, err := daemon.SdNotify(false, daemon.SdNotifyReady); err != nil {
		log.Warn("sd_notify failed", "err", err)
	} else if ok {
		log.Debug("told systemd we are ready")
	}
}

// localHandlers are the node-local endpoints of a cluster node.
func (n *node) localHandlers() map[string]http.HandlerFunc {
	return map[string]http.HandlerFunc{
		"GET " + api.PathLocalNetworkVIPs: func(w http.ResponseWriter, r *http.Request) {
			m := n.lastMap()
			if m == nil {
				writeJSON(w, http.StatusServiceUnavailable, map[string]string{"error": "no cluster map yet: is the manager reachable?"})
				return
			}
			svcs := natServices(m, n.self.ID)
			v := api.LocalVIPs{MapVersion: m.Version, Summary: nat.Summary(svcs)}
			if r.URL.Query().Get("render") != "" {
				opts := n.natOptions()
				opts.PeerGateways = natGateways(m, n.self.ID)
				v.Rules = string(nat.Render(svcs, opts))
			}
			writeJSON(w, http.StatusOK, v)
		},
		"GET " + api.PathLocalNetworkDNS: func(w http.ResponseWriter, r *http.Request) {
			name := r.URL.Query().Get("name")
			if name == "" {
				writeJSON(w, http.StatusBadRequest, map[string]string{"error": "give a name to resolve, e.g. nginx or nginx.warren.local"})
				return
			}
			server := netip.AddrPortFrom(n.bridgeIP(), 53).String()
			// As a task's resolver would with `search <domain>`: a short name
			// is tried in the cluster domain first.
			candidates := []string{name, name + "." + n.net.Domain}
			if !strings.Contains(strings.TrimSuffix(name, "."), ".") {
				candidates[0], candidates[1] = candidates[1], candidates[0]
			}
			var addrs []netip.Addr
			var err error
			for _, c := range candidates {
				if addrs, err = dns.Resolve(r.Context(), server, c); err == nil {
					name = c
					break
				}
			}
			if err != nil {
				writeJSON(w, http.StatusNotFound, map[string]string{"error": err.Error()})
				return
			}
			v := api.LocalDNS{Name: name, Server: server, Addresses: []string{}}
			for _, a := range addrs {
				v.Addresses = append(v.Addresses, a.String())
			}
			writeJSON(w, http.StatusOK, v)
		},
	}
}

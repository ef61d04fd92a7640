package appliance

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strconv"

	"github.com/warren-appliance/warren/cluster"
	"github.com/warren-appliance/warren/cluster/clustermap"
	"github.com/warren-appliance/warren/configs"
	"github.com/warren-appliance/warren/internal/wgkey"
	"github.com/warren-appliance/warren/metrics"
	"github.com/warren-appliance/warren/relay"
)

// relayAddress is where this node relays ("" if it does not): a manager on
// its API port, another relay on relay.port; TLS over TCP and UDP on the
// same number.
func relayAddress(cfg *configs.Loaded, advertise netip.Addr) string {
	if !cfg.RelayEnabled() {
		return ""
	}
	port := cfg.Relay.Port
	if cfg.Node.Role == configs.RoleManager {
		if p, err := strconv.Atoi(apiPort(cfg.Cluster.APIListen)); err == nil {
			port = p
		}
	}
	return netip.AddrPortFrom(advertise, uint16(port)).String()
}

// newRelayServer is this node's relay with the bounds of [relay].
func newRelayServer(cfg *configs.Loaded, log *slog.Logger) *relay.Server {
	return relay.NewServer(relay.ServerConfig{
		MaxSessions: cfg.Relay.MaxSessions,
		PeerRate:    float64(cfg.Relay.PeerRateMbps) * 1e6 / 8,
		Logger:      log,
	})
}

// serveManagerRelay relays on a manager's API port: the TLS leg arrives
// through the API port's listener (ALPN), the UDP leg on the same number.
func serveManagerRelay(ctx context.Context, srv *relay.Server, mgr *cluster.Manager, apiListen string, log *slog.Logger) error {
	ua, err := net.ResolveUDPAddr("udp", apiListen)
	if err != nil {
		return fmt.Errorf("relay (cluster.api_listen %q): %w", apiListen, err)
	}
	uc, err := net.ListenUDP("udp", ua)
	if err != nil {
		return fmt.Errorf("relay UDP on the API port (cluster.api_listen %q; [relay] enable = false turns the relay off): %w", apiListen, err)
	}
	mgr.SetRelayHandler(func(ctx context.Context, c net.Conn, id string) {
		if err := srv.ServeConn(ctx, c, id); err != nil && ctx.Err() == nil {
			log.Debug("relay session ended", "node", id, "err", err)
		}
	})
	go func() {
		if err := srv.ServeUDP(ctx, uc); err != nil {
			log.Error("relay UDP stopped", "err", err)
		}
	}()
	log.Info("relaying for the cluster", "tls", apiListen+"/tcp", "udp", apiListen+"/udp")
	return nil
}

// serveRelay relays on a node that is not a manager ([relay] enable = true):
// TLS and UDP on relay.port, with this node's certificate.
func serveRelay(ctx context.Context, srv *relay.Server, port int, cert func() *tls.Certificate, pool func() *x509.CertPool, log *slog.Logger) error {
	addr := ":" + strconv.Itoa(port)
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("relay (relay.port): %w", err)
	}
	uc, err := net.ListenUDP("udp", &net.UDPAddr{Port: port})
	if err != nil {
		ln.Close()
		return fmt.Errorf("relay (relay.port): %w", err)
	}
	go func() {
		if err := srv.ServeTLS(ctx, ln, cert, srv.VerifyMember(pool)); err != nil {
			log.Error("relay TLS stopped", "err", err)
		}
	}()
	go func() {
		if err := srv.ServeUDP(ctx, uc); err != nil {
			log.Error("relay UDP stopped", "err", err)
		}
	}()
	log.Info("relaying for the cluster", "port", port, "transports", "tls/tcp, udp")
	return nil
}

// relayMembers are the map's nodes as a relay serves them.
func relayMembers(m *clustermap.Map) []relay.Member {
	var out []relay.Member
	for _, n := range m.Nodes {
		k, err := wgkey.Parse(n.PublicKey)
		if err != nil {
			continue
		}
		out = append(out, relay.Member{ID: n.ID, Name: n.Name, Key: k})
	}
	return out
}

// relaysOf are the map's relays a client may use: nodes that relay and are
// not down.
func relaysOf(m *clustermap.Map) []relay.Relay {
	var out []relay.Relay
	for _, n := range m.Nodes {
		if n.Relay == "" || n.Status == clustermap.NodeDown {
			continue
		}
		out = append(out, relay.Relay{ID: n.ID, Name: n.Name, Addr: n.Relay, Manager: n.Role == clustermap.RoleManager})
	}
	return out
}

// relayMetrics is the relay's counters for /metrics.
func relayMetrics(srv *relay.Server) func() metrics.Relay {
	return func() metrics.Relay {
		st := srv.Stats()
		return metrics.Relay{Sessions: st.Sessions, Bytes: st.RelayedBytes, Packets: st.RelayedPackets, Dropped: st.Dropped}
	}
}

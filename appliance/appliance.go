// Package appliance is the node daemon: it loads the config, brings up the
// tunnel and the reconcilers for the node's role, serves the local socket,
// and tears down what must not outlive it.
package appliance

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/warren-appliance/warren/cluster/clustermap"
	"github.com/warren-appliance/warren/configs"
	"github.com/warren-appliance/warren/internal/buildinfo"
	"github.com/warren-appliance/warren/metrics"
	"github.com/warren-appliance/warren/tunnel"

	"github.com/warren-appliance/warren/cluster/api"
)

// SocketPath is where the CLI finds the daemon.
const SocketPath = api.SocketPath

// memoryLimit is the daemon's default soft Go memory limit.
const memoryLimit = 64 << 20

// NewLogger returns the daemon's logger at the configured level.
func NewLogger(level string) *slog.Logger {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		l = slog.LevelInfo
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: l}))
}

// Run runs the node until ctx is cancelled.
func Run(ctx context.Context, cfg *configs.Loaded) error {
	log := NewLogger(cfg.Log.Level)
	slog.SetDefault(log)
	// A soft heap limit keeps a busy tunnel within a 512 MB board's means
	// (tunnel/BENCHMARKS.md); GOMEMLIMIT in the environment overrides it.
	if tunnel.SetMemoryLimitUnlessSet(memoryLimit) {
		log.Debug("go memory limit set", "bytes", memoryLimit)
	}
	if err := os.MkdirAll(cfg.Node.StateDir, 0o700); err != nil {
		return fmt.Errorf("state dir: %w", err)
	}
	// Before the tunnel: handshakes and certificates need a sane clock.
	if err := WaitForSaneClock(ctx, buildinfo.BuildTime(), log, time.Now, 2*time.Second); err != nil {
		return err
	}
	switch cfg.Node.Role {
	case configs.RoleStandalone:
		// Warren's ranges must not shadow a network this host is already
		// on: routes into the overlay would cut the host off from it. (A
		// cluster node checks the cluster's ranges instead.)
		hostNets, err := configs.HostNetworks(cfg.Config)
		if err != nil {
			return err
		}
		if err := cfg.CheckHostOverlap(hostNets); err != nil {
			return err
		}
		return runStandalone(ctx, cfg, log)
	default:
		return runClusterNode(ctx, cfg, log)
	}
}

// PublicKey returns the node's WireGuard public key, creating the private
// key on first use.
func PublicKey(cfg *configs.Loaded) (string, error) {
	if err := os.MkdirAll(cfg.Node.StateDir, 0o700); err != nil {
		return "", fmt.Errorf("state dir: %w", err)
	}
	k, err := tunnel.LoadOrCreateKey(cfg.WireGuard.PrivateKeyFile)
	if err != nil {
		return "", err
	}
	return k.PublicKey().String(), nil
}

// openTunnel opens the WireGuard device for this node's overlay address.
func openTunnel(cfg *configs.Loaded, addr netip.Prefix, log *slog.Logger) (*tunnel.Device, error) {
	key, err := tunnel.LoadOrCreateKey(cfg.WireGuard.PrivateKeyFile)
	if err != nil {
		return nil, err
	}
	var fwds []tunnel.Forward
	for _, f := range cfg.Forward {
		// Validated by configs: these parse.
		fwds = append(fwds, tunnel.Forward{Proto: f.Proto, Listen: netip.MustParseAddrPort(f.Listen), Target: netip.MustParseAddrPort(f.Target)})
	}
	dev, err := tunnel.Open(tunnel.Config{
		Interface:  cfg.WireGuard.Interface,
		Mode:       cfg.WireGuard.Mode,
		ListenPort: cfg.WireGuard.ListenPort,
		MTU:        cfg.WireGuard.MTU,
		PrivateKey: key,
		Address:    addr,
		Forwards:   fwds,
		Logger:     log,
	})
	if err != nil {
		return nil, fmt.Errorf("tunnel: %w", err)
	}
	return dev, nil
}

// staticPeers turns [[wireguard.peer]] into tunnel peers.
func staticPeers(cfg *configs.Loaded) []tunnel.Peer {
	var out []tunnel.Peer
	for _, p := range cfg.WireGuard.Peers {
		k, _ := tunnel.ParseKey(p.PublicKey) // validated by configs
		peer := tunnel.Peer{PublicKey: k, Keepalive: keepalive(p.Keepalive, cfg.WireGuard.Keepalive)}
		if p.Endpoint != "" {
			peer.Endpoint = netip.MustParseAddrPort(p.Endpoint)
		}
		for _, a := range p.AllowedIPs {
			peer.AllowedIPs = append(peer.AllowedIPs, a.Prefix)
		}
		out = append(out, peer)
	}
	return out
}

// keepalive maps the config's duration to the tunnel's: "0s" written by the
// operator turns keepalive off, which the tunnel spells as negative.
func keepalive(peer, global configs.Duration) time.Duration {
	d := global.Duration
	if peer.Duration != 0 {
		d = peer.Duration
	}
	if d == 0 {
		return -1
	}
	return d
}

// runStandalone is a plain userspace WireGuard box: device and static peers
// from TOML, re-read on SIGHUP without dropping sessions.
func runStandalone(ctx context.Context, cfg *configs.Loaded, log *slog.Logger) error {
	dev, err := openTunnel(cfg, cfg.WireGuard.Address.Prefix, log)
	if err != nil {
		return err
	}
	defer dev.Close()
	if err := dev.SetPeers(staticPeers(cfg)); err != nil {
		return fmt.Errorf("tunnel peers: %w", err)
	}
	local, err := startLocalAPI(SocketPath, &localState{dev: dev}, nil, log)
	if err != nil {
		return err
	}
	defer local.Close()
	if cfg.Metrics.Listen != "" {
		// Peers only: a standalone box has no map, tasks or rules.
		met := metrics.New(metrics.Sources{Peers: func() []metrics.Peer {
			return peerMetrics(dev, func() *clustermap.Map { return nil })
		}})
		if err := met.Serve(ctx, cfg.Metrics.Listen, log); err != nil {
			return err
		}
	}
	log.Info("standalone node up", "interface", cfg.WireGuard.Interface, "mode", dev.Mode(),
		"address", cfg.WireGuard.Address.Prefix, "public_key", dev.PublicKey(), "peers", len(cfg.WireGuard.Peers))
	notifyReady(log)

	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	for {
		select {
		case <-ctx.Done():
			log.Info("shutting down")
			return nil
		case <-hup:
			reloaded, err := reload(cfg.File)
			if err != nil {
				log.Error("reload refused: keeping the running config", "err", err)
				continue
			}
			if err := dev.SetPeers(staticPeers(reloaded)); err != nil {
				log.Error("reload: applying peers", "err", err)
				continue
			}
			cfg = reloaded
			log.Info("reloaded peers", "peers", len(cfg.WireGuard.Peers))
		}
	}
}

// reload reads the config file again for SIGHUP.
func reload(path string) (*configs.Loaded, error) {
	if path == "" || path == "flags" {
		return nil, errors.New("the node was started from flags, there is no file to reload")
	}
	l, err := configs.Load(path)
	if err != nil {
		return nil, err
	}
	if err := l.Finish(); err != nil {
		return nil, err
	}
	return l, nil
}

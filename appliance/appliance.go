// Package appliance is the node daemon: it loads the config, brings up the
// tunnel and the reconcilers for the node's role, serves the local socket,
// and tears down what must not outlive it.
package appliance

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/warren-appliance/warren/cluster/agent"
	"github.com/warren-appliance/warren/cluster/clustermap"
	"github.com/warren-appliance/warren/configs"
	"github.com/warren-appliance/warren/internal/buildinfo"
	"github.com/warren-appliance/warren/metrics"
	"github.com/warren-appliance/warren/tunnel"

	"github.com/warren-appliance/warren/cluster/api"
)

// SocketPath is where the CLI finds the daemon.
const SocketPath = api.SocketPath

// memoryPlan is the daemon's memory bound, chosen from the board's memory
// at start (tunnel.PlanMemory).
var memoryPlan = tunnel.PlanMemory(0)

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
	// A soft heap limit and a packet budget sized to the board keep a busy
	// tunnel within its means (tunnel/BENCHMARKS.md); GOMEMLIMIT in the
	// environment overrides the limit.
	board, err := tunnel.BoardMemory()
	if err != nil {
		log.Warn("cannot tell the board's memory: bounding the daemon as on a large board", "error", err)
	}
	memoryPlan = tunnel.PlanMemory(board)
	limitSet := tunnel.SetMemoryLimitUnlessSet(memoryPlan.GoLimit)
	log.Info("memory bound", "board_mib", memoryPlan.Board>>20, "go_limit_mib", memoryPlan.GoLimit>>20,
		"go_limit_from", map[bool]string{true: "board", false: "GOMEMLIMIT"}[limitSet], "tunnel_queued_packets", memoryPlan.QueuedPackets)
	// One thread for Go code on a board of two cores or fewer, where
	// wireguard-go's hand-offs between threads cost more than they give
	// (tunnel.PlanGoThreads); GOMAXPROCS in the environment overrides.
	threads, planned := tunnel.SetGoThreadsUnlessSet()
	log.Info("go threads", "gomaxprocs", threads, "from", map[bool]string{true: "board", false: "GOMAXPROCS"}[planned])
	servePprof(log)
	if err := os.MkdirAll(cfg.Node.StateDir, 0o700); err != nil {
		return fmt.Errorf("state dir: %w", err)
	}
	// One daemon per state dir: the unit and a foreground `warren worker
	// start` must not both drive the same node.
	unlock, err := lockStateDir(cfg.Node.StateDir)
	if err != nil {
		return err
	}
	defer unlock()
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

// CheckHost runs the host checks start runs, so `warren-appliance --check`
// runs them too: the ranges this node will route into the overlay must not
// overlap a network the host is already on. Those are the config's ranges
// on a standalone node and on a manager about to create its cluster, and
// the cluster's ranges (from the cached map) on a node that joined; a node
// that has not joined yet learns them only at join, where start checks.
func CheckHost(cfg *configs.Loaded) error {
	hostNets, err := configs.HostNetworks(cfg.Config)
	if err != nil {
		return err
	}
	creating := cfg.Node.Role == configs.RoleManager && cfg.Cluster.Manager == "" && !cfg.Joined
	if cfg.Node.Role == configs.RoleStandalone || creating {
		return cfg.CheckHostOverlap(hostNets)
	}
	b, err := os.ReadFile(filepath.Join(cfg.Node.StateDir, agent.FileMap))
	if err != nil {
		return nil // no cached map: nothing known to check yet
	}
	var m clustermap.Map
	if json.Unmarshal(b, &m) != nil || !m.Network().Complete() {
		return nil // start ignores an unreadable cache too
	}
	return clusterOverlapError(configs.HostOverlaps(clusterRanges(m.Network()), hostNets))
}

// lockStateDir takes an exclusive lock on <state dir>/lock for the
// daemon's lifetime.
func lockStateDir(dir string) (func(), error) {
	path := filepath.Join(dir, "lock")
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("state dir lock: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		return nil, fmt.Errorf("another warren-appliance (the service, or a `warren cluster init` / `warren worker start` in a terminal) is running with state dir %s: stop it first (systemctl stop warren-appliance)", dir)
	}
	return func() { f.Close() }, nil
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
		Interface:             cfg.WireGuard.Interface,
		Mode:                  cfg.WireGuard.Mode,
		ListenPort:            cfg.WireGuard.ListenPort,
		MTU:                   cfg.WireGuard.MTU,
		UDPGSO:                cfg.WireGuard.UDPGSO,
		QueuedPackets:         memoryPlan.QueuedPackets,
		NetstackQueuedPackets: memoryPlan.NetstackQueuedPackets,
		NetstackTCPBuffer:     memoryPlan.NetstackTCPBuffer,
		PrivateKey:            key,
		Address:               addr,
		Forwards:              fwds,
		Logger:                log,
	})
	if err != nil {
		return nil, fmt.Errorf("tunnel: %w", err)
	}
	return dev, nil
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
	peers := staticPeers(ctx, cfg, lookupHost, log)
	if err := dev.SetPeers(peers); err != nil {
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
			return peerMetrics(dev, func() *clustermap.Map { return nil }, nil)
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
	tick := time.NewTicker(reresolveInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			log.Info("shutting down")
			return nil
		case <-tick.C:
			stale := staleNamedPeers(cfg.WireGuard.Peers, peers, dev.Health(), time.Now())
			if len(stale) == 0 {
				continue
			}
			next, changed := reresolve(ctx, cfg.WireGuard.Peers, peers, stale, lookupHost, log)
			if !changed {
				continue
			}
			if err := dev.SetPeers(next); err != nil {
				log.Error("applying re-resolved peer endpoints", "err", err)
				continue
			}
			peers = next
		case <-hup:
			reloaded, err := reload(cfg.File)
			if err != nil {
				log.Error("reload refused: keeping the running config", "err", err)
				continue
			}
			next := staticPeers(ctx, reloaded, lookupHost, log)
			if err := dev.SetPeers(next); err != nil {
				log.Error("reload refused: applying the new peers failed", "err", err)
				continue
			}
			cfg, peers = reloaded, next
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

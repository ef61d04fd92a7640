package appliance

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/warren-appliance/warren/configs"
	"github.com/warren-appliance/warren/hostfw"
	"github.com/warren-appliance/warren/orchestrate"
	"github.com/warren-appliance/warren/orchestrate/secretfs"
	"github.com/warren-appliance/warren/tunnel"
)

// Cleanup removes what the appliance created on this host: its tasks and
// their networks, its firewall rules and sets, the WireGuard interface and sockets.
// State (keys, store, cached map) stays: purging the package removes that.
// Each part is attempted even if another fails.
func Cleanup(ctx context.Context, cfg *configs.Loaded) error {
	log := NewLogger(cfg.Log.Level)
	var errs []error
	orch, err := orchestrate.New(ctx, orchestrate.Config{
		ContainerdAddress: cfg.Runtime.ContainerdAddress,
		Namespace:         cfg.Runtime.Namespace,
		Bridge:            cfg.Network.Bridge,
		// Removal finds tasks by label and name; it needs no node block,
		// but the config wants a valid one.
		Block:            cfg.Network.ContainerSubnet.Prefix,
		StateDir:         filepath.Join(cfg.Node.StateDir, "tasks"),
		OverlayInterface: cfg.WireGuard.Interface,
		CgroupParent:     cfg.Runtime.CgroupParent,
		Logger:           log,
	})
	if err == nil {
		err = orch.Cleanup(ctx)
		orch.Close()
	}
	if err != nil {
		errs = append(errs, fmt.Errorf("tasks: %w", err))
	}
	// The tasks' secrets and configs: every task tmpfs unmounted.
	if err := secretfs.New(secretfs.DefaultRoot).Sync(nil, nil); err != nil {
		errs = append(errs, fmt.Errorf("task secrets: %w", err))
	}
	// The one firewall cleanup: every hook, chain and set of nat,
	// netpolicy and the task network, and the bridge chain, in both
	// iptables variants.
	if err := hostfw.Cleanup(log); err != nil {
		errs = append(errs, fmt.Errorf("firewall: %w", err))
	}
	if err := tunnel.Remove(cfg.WireGuard.Interface, log); err != nil {
		errs = append(errs, err)
	}
	if err := os.Remove(SocketPath); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	if len(errs) == 0 {
		log.Info("removed everything warren created on this host", "interface", cfg.WireGuard.Interface)
	}
	return errors.Join(errs...)
}

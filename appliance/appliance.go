// Package appliance is the node daemon: it loads the config, brings up the
// tunnel and the reconcilers for the node's role, and tears them down.
package appliance

import (
	"context"
	"fmt"

	"github.com/warren-appliance/warren/configs"
)

// Run runs the node until ctx is cancelled.
func Run(ctx context.Context, cfg *configs.Loaded) error {
	return fmt.Errorf("role %q: the node daemon is not built yet in this version (only --check and --version work)", cfg.Node.Role)
}

// PublicKey returns the node's WireGuard public key.
func PublicKey(cfg *configs.Loaded) (string, error) {
	return "", fmt.Errorf("--show-public-key is not built yet in this version")
}

// Cleanup removes what the appliance created on this host.
func Cleanup(ctx context.Context, cfg *configs.Loaded) error {
	return fmt.Errorf("--cleanup is not built yet in this version")
}

package appliance

import (
	"log/slog"
	"net"

	"github.com/warren-appliance/warren/cluster"
	"github.com/warren-appliance/warren/cluster/agent"
	"github.com/warren-appliance/warren/configs"
)

// ForceNewCluster prepares this manager's state dir, before the daemon
// starts, to run as a one-manager cluster that keeps every node, address,
// service, VIP and certificate: from its own state after the managers lost
// their quorum, or from a backup file on a fresh board (restore.File != "").
func ForceNewCluster(cfg *configs.Loaded, restore cluster.Restore, log *slog.Logger) error {
	advertise, err := advertiseAddress(cfg)
	if err != nil {
		return err
	}
	addr := net.JoinHostPort(advertise.String(), apiPort(cfg.Cluster.APIListen))
	return cluster.ForceNewCluster(cfg.Node.StateDir, addr, agent.JoinedNodeID(cfg.Node.StateDir), restore, log)
}

package configs

import (
	"net/netip"
	"time"
)

// The reference defaults, each written once. Default() builds the config
// from them, and every package with a default of its own (tunnel,
// orchestrate, dns, the manager) takes it from here.
const (
	DefaultInterface         = "warren0"
	DefaultListenPort        = 51820
	DefaultMTU               = 1420
	DefaultBridge            = "warren-br0"
	DefaultDomain            = "warren.local"
	DefaultContainerBlock    = 24
	DefaultAPIListen         = ":7946"
	DefaultStateDir          = "/var/lib/warren"
	DefaultContainerdAddress = "/run/containerd/containerd.sock"
	DefaultNamespace         = "warren"
	// DefaultRestartBackoffMax caps a failing task's restart back-off: a
	// task failing for good restarts about 300 times a day rather than
	// 2,880 at a 30 s cap (each start writes to the board's SD card).
	DefaultRestartBackoffMax = 5 * time.Minute
	// A task's output is kept in at most 3 files of 1 MiB (SD cards).
	DefaultLogMaxSize  = 1 << 20
	DefaultLogMaxFiles = 3
)

// Default ranges: they do not overlap (the seed's literal ones do).
var (
	DefaultWireGuardSubnet = netip.MustParsePrefix("10.0.0.0/24")
	DefaultContainerSubnet = netip.MustParsePrefix("10.0.0.0/16")
	DefaultVIPSubnet       = netip.MustParsePrefix("10.1.0.0/16")
)

// Package tunnel runs this node's end of the WireGuard mesh inside the
// process: wireguard-go on a kernel TUN interface, or on a gVisor netstack
// when /dev/net/tun is unavailable (our own link endpoint with TCP GSO and
// GRO and batched reads, see netstack.go; not wireguard-go's tun/netstack). It owns the node key, the UAPI socket that
// `wg` and wgctrl talk to, the peer set (applied as a diff so live sessions
// are never disturbed), the interface's routes (the peers' allowed ranges and
// the extra ones handed to SetRoutes, such as the cluster's VIP range), and
// per-peer health. Remove clears what a killed process left behind. A peer
// the device cannot hold (zero or low-order key, its own key, a duplicate, a
// prefix another peer claims) is skipped and logged; the others are applied.
//
// wireguard-go's buffers are unbounded on Linux; the device bounds the
// packets it holds per direction (Config.QueuedPackets). For the RSS figures
// in BENCHMARKS.md the process also needs a Go memory limit: main takes both
// from PlanMemory(BoardMemory()) and calls SetMemoryLimitUnlessSet (GOMEMLIMIT
// overrides). On a board of two cores or fewer main also runs Go on one
// thread (SetGoThreadsUnlessSet, cpuplan.go; GOMAXPROCS overrides). The bind
// works around the Linux 7.0-7.1.4 UDP GSO bug (gso.go).
package tunnel

package tunnel

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// What bounds the daemon's memory is chosen from the board's: the Go soft
// memory limit and the tunnel's packet budget (memory.go). Measured on the
// daemon (tunnel/BENCHMARKS.md), its RSS is the binary's mapped pages (about
// 25 MiB, file-backed) plus anonymous memory that follows the Go limit; the
// heap's live set under load is mostly wireguard-go's 64 KiB packet buffers:
// 3 x 128 for its intake batches (fixed by upstream's bind, allocated but
// mostly untouched) plus those in flight, which the budget bounds. A limit
// below that live set makes the GC run without pause and throughput
// collapse (48 MiB with the 256-packet budget: 0.2 Gbit/s instead of 2), so
// a smaller board gets a smaller budget first and the limit follows it.

// MemoryPlan is the daemon's memory bound on one board.
type MemoryPlan struct {
	Board         int64 // bytes of memory the plan was made for (0: unknown)
	GoLimit       int64 // soft Go memory limit, bytes
	QueuedPackets int   // tunnel packet budget per direction (Config.QueuedPackets)
	// In netstack mode (Config.NetstackQueuedPackets, NetstackTCPBuffer):
	// the packet budget, and the largest TCP buffer gVisor may grow.
	NetstackQueuedPackets int
	NetstackTCPBuffer     int
}

// smallBoard is the largest board PlanMemory treats as a 512 MB one (the
// kernel reports a little less than the RAM; a cgroup limit may be anything).
const smallBoard = 768 << 20

// PlanMemory chooses the memory bound for a board of board bytes (0 or
// less: unknown, planned as a large board). The figures are measured on
// the daemons of a lab cluster under iperf3 (tunnel/BENCHMARKS.md, "Memory
// ceiling"): a 512 MB board gets a 44 MiB limit and 32 packets per
// direction (peak RSS 42-47 MiB; 46 MiB peaked at 48.1 with three peers
// loaded), any other board 50 MiB and 96 packets (peak 50-51 MiB between two
// nodes, 57 MiB on a manager with three loaded peers; 52 MiB and 128
// packets reached 62 MiB there). The 64 MiB limit and 256 packets used
// before peaked at 64 MiB. The cost is throughput when several peers load
// a small board: the GC runs more often against a live set near the limit.
//
// Netstack mode gets 32 packets and 1 MiB TCP buffers: under the 50 MiB
// limit with 96 packets and 4 MiB buffers the netstack device collected
// 800-1600 times in 20 s (TUN mode: 50-70), its live heap at 41 of a 42 MB
// goal; each collection empties wireguard-go's sync.Pool of 64 KiB
// buffers, which it then allocates anew (280 MB in 8 s), so the GC feeds
// itself. 32 packets and 1 MiB took it back to ~60 collections.
func PlanMemory(board int64) MemoryPlan {
	p := MemoryPlan{Board: max(board, 0), GoLimit: 50 << 20, QueuedPackets: 96,
		NetstackQueuedPackets: 32, NetstackTCPBuffer: 1 << 20}
	if board > 0 && board <= smallBoard {
		p.GoLimit, p.QueuedPackets = 44<<20, 32
	}
	return p
}

// BoardMemory returns the memory this process can have: the machine's
// (MemTotal of /proc/meminfo) or its cgroup's limit if that is lower (a
// container, a systemd MemoryMax=, a test's cgroup).
func BoardMemory() (int64, error) {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0, fmt.Errorf("board memory: %w", err)
	}
	defer f.Close()
	total, err := parseMemTotal(bufio.NewScanner(f))
	if err != nil {
		return 0, fmt.Errorf("board memory: /proc/meminfo: %w", err)
	}
	self, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return total, nil
	}
	for _, path := range cgroupLimitFiles(string(self), "/sys/fs/cgroup") {
		b, err := os.ReadFile(path)
		if err != nil {
			continue
		}
		if limit, ok := parseCgroupLimit(string(b)); ok && limit < total {
			total = limit
		}
	}
	return total, nil
}

// parseMemTotal reads MemTotal (kB) from /proc/meminfo's lines.
func parseMemTotal(sc *bufio.Scanner) (int64, error) {
	for sc.Scan() {
		v, ok := strings.CutPrefix(sc.Text(), "MemTotal:")
		if !ok {
			continue
		}
		kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		if err != nil || kb <= 0 {
			return 0, fmt.Errorf("MemTotal %q: not a size in kB", strings.TrimSpace(v))
		}
		return kb << 10, nil
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, errors.New("no MemTotal line")
}

// cgroupLimitFiles maps /proc/self/cgroup to the memory limit files of the
// process's cgroup and its ancestors (a parent's limit binds the child too):
// memory.max under cgroup v2 ("0::/path"), memory.limit_in_bytes under the
// v1 memory controller ("N:memory:/path" or "N:cpu,memory:/path").
func cgroupLimitFiles(procSelfCgroup, root string) []string {
	var out []string
	add := func(dir, file, cg string) {
		for p := filepath.Clean("/" + cg); ; p = filepath.Dir(p) {
			out = append(out, filepath.Join(dir, p, file))
			if p == "/" {
				break
			}
		}
	}
	for _, line := range strings.Split(procSelfCgroup, "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 {
			continue
		}
		switch {
		case parts[0] == "0" && parts[1] == "":
			dir := root
			if _, err := os.Stat(filepath.Join(root, "cgroup.controllers")); err != nil {
				dir = filepath.Join(root, "unified") // hybrid layout
			}
			add(dir, "memory.max", parts[2])
		case slices.Contains(strings.Split(parts[1], ","), "memory"):
			add(filepath.Join(root, parts[1]), "memory.limit_in_bytes", parts[2])
		}
	}
	return out
}

// parseCgroupLimit reads a memory.max or memory.limit_in_bytes file: "max"
// or v1's near-2^63 value mean no limit.
func parseCgroupLimit(s string) (int64, bool) {
	s = strings.TrimSpace(s)
	if s == "max" {
		return 0, false
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n <= 0 || n >= 1<<62 {
		return 0, false
	}
	return n, true
}

package tunnel

import (
	"bufio"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestPlanMemory(t *testing.T) {
	for _, c := range []struct {
		board       int64
		limit       int64
		queued      int
		description string
	}{
		{512 << 20, 44 << 20, 32, "512 MB board"},
		{(512 - 60) << 20, 44 << 20, 32, "512 MB board as the kernel reports it"},
		{768 << 20, 44 << 20, 32, "cgroup of 768 MiB"},
		{1 << 30, 50 << 20, 96, "1 GB board"},
		{8 << 30, 50 << 20, 96, "8 GB board"},
		{0, 50 << 20, 96, "unknown"},
		{-1, 50 << 20, 96, "unknown"},
	} {
		p := PlanMemory(c.board)
		if p.GoLimit != c.limit || p.QueuedPackets != c.queued {
			t.Errorf("%s: %+v, want limit %d MiB and %d packets", c.description, p, c.limit>>20, c.queued)
		}
		// The buffers the budget lets in flight (64 KiB each, both
		// directions) must fit well inside the limit.
		if int64(p.QueuedPackets)*2*65536 > p.GoLimit/2 {
			t.Errorf("%s: %d packets per direction take more than half of the %d MiB limit", c.description, p.QueuedPackets, p.GoLimit>>20)
		}
		// Netstack mode: a smaller (or equal) budget and TCP buffers
		// of at most 1 MiB (tunnel/BENCHMARKS.md, Netstack mode).
		if p.NetstackQueuedPackets <= 0 || p.NetstackQueuedPackets > p.QueuedPackets || p.NetstackTCPBuffer <= 0 || p.NetstackTCPBuffer > 1<<20 {
			t.Errorf("%s: netstack budget %d, TCP buffer %d: want 1..%d packets and at most 1 MiB", c.description, p.NetstackQueuedPackets, p.NetstackTCPBuffer, p.QueuedPackets)
		}
		if p.GoLimit > 64<<20 {
			t.Errorf("%s: limit %d MiB above the 64 MiB ceiling", c.description, p.GoLimit>>20)
		}
	}
}

func TestParseMemTotal(t *testing.T) {
	got, err := parseMemTotal(bufio.NewScanner(strings.NewReader("MemFree:  100 kB\nMemTotal:        3884196 kB\n")))
	if err != nil || got != 3884196<<10 {
		t.Errorf("got %d, %v", got, err)
	}
	for _, bad := range []string{"MemFree: 1 kB\n", "MemTotal: lots\n", ""} {
		if _, err := parseMemTotal(bufio.NewScanner(strings.NewReader(bad))); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestParseCgroupLimit(t *testing.T) {
	for s, want := range map[string]int64{"536870912\n": 512 << 20, "max\n": 0, "9223372036854771712\n": 0, "0": 0, "x": 0} {
		got, ok := parseCgroupLimit(s)
		if got != want || ok != (want > 0) {
			t.Errorf("parseCgroupLimit(%q) = %d, %v; want %d", s, got, ok, want)
		}
	}
}

func TestCgroupLimitFiles(t *testing.T) {
	v2 := t.TempDir()
	os.WriteFile(filepath.Join(v2, "cgroup.controllers"), []byte("memory"), 0o644)
	got := cgroupLimitFiles("0::/system.slice/warren-appliance.service\n", v2)
	want := []string{
		v2 + "/system.slice/warren-appliance.service/memory.max",
		v2 + "/system.slice/memory.max",
		v2 + "/memory.max",
	}
	if !slices.Equal(got, want) {
		t.Errorf("v2: %q, want %q", got, want)
	}
	v1 := "/sys/fs/cgroup"
	got = cgroupLimitFiles("9:name=systemd:/\n4:memory:/lab-x-board\n3:cpu,cpuacct:/\n0::/\n", v1)
	if !slices.Contains(got, "/sys/fs/cgroup/memory/lab-x-board/memory.limit_in_bytes") ||
		!slices.Contains(got, "/sys/fs/cgroup/memory/memory.limit_in_bytes") {
		t.Errorf("v1: %q", got)
	}
	for _, f := range got {
		if strings.Contains(f, "/cpu") {
			t.Errorf("v1: %s is not a memory limit", f)
		}
	}
}

// On this machine: a figure, at most MemTotal.
func TestBoardMemory(t *testing.T) {
	n, err := BoardMemory()
	if err != nil {
		t.Fatal(err)
	}
	f, _ := os.Open("/proc/meminfo")
	defer f.Close()
	total, _ := parseMemTotal(bufio.NewScanner(f))
	if n <= 0 || n > total {
		t.Errorf("BoardMemory() = %d, MemTotal %d", n, total)
	}
	t.Logf("board memory %d MiB, plan %+v", n>>20, PlanMemory(n))
}

// The device applies the plan's netstack budget in netstack mode only,
// and never bounds a device configured unbounded.
func TestQueuedPacketsByMode(t *testing.T) {
	p := PlanMemory(8 << 30)
	cfg := Config{QueuedPackets: p.QueuedPackets, NetstackQueuedPackets: p.NetstackQueuedPackets}
	if got := queuedPackets(cfg, ModeTUN); got != p.QueuedPackets {
		t.Errorf("tun mode: %d packets, want %d", got, p.QueuedPackets)
	}
	if got := queuedPackets(cfg, ModeNetstack); got != p.NetstackQueuedPackets {
		t.Errorf("netstack mode: %d packets, want %d", got, p.NetstackQueuedPackets)
	}
	if got := queuedPackets(Config{QueuedPackets: 96}, ModeNetstack); got != 96 {
		t.Errorf("netstack mode without a netstack budget: %d packets, want 96", got)
	}
	if got := queuedPackets(Config{QueuedPackets: -1, NetstackQueuedPackets: 32}, ModeNetstack); got != -1 {
		t.Errorf("unbounded netstack device: %d, want -1 (unbounded)", got)
	}
}

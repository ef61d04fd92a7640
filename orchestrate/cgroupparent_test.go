package orchestrate

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestTasksMemoryMax(t *testing.T) {
	for _, c := range []struct{ configured, total, want int64 }{
		{0, 4 << 30, 4<<30 - DefaultSystemReserve},
		{0, 512 << 20, 256 << 20},
		{0, 256 << 20, 128 << 20},
		{100 << 20, 4 << 30, 100 << 20},
	} {
		if got := tasksMemoryMax(c.configured, c.total); got != c.want {
			t.Errorf("tasksMemoryMax(%d, %d) = %d, want %d", c.configured, c.total, got, c.want)
		}
	}
}

// A fake cgroup tree (plain files): v2 enables memory down the path and
// sets memory.max; v1 sets the memory hierarchy's limit.
func TestApplyParentMemoryMax(t *testing.T) {
	v2 := t.TempDir()
	os.WriteFile(filepath.Join(v2, "cgroup.controllers"), []byte("cpu memory pids\n"), 0o644)
	os.WriteFile(filepath.Join(v2, "cgroup.subtree_control"), []byte("cpu\n"), 0o644)
	os.MkdirAll(filepath.Join(v2, "warren"), 0o755)
	os.WriteFile(filepath.Join(v2, "warren", "cgroup.subtree_control"), []byte(""), 0o644)
	if err := applyParentMemoryMax(v2, "/warren/10.0.1.0_24", 1<<30); err != nil {
		t.Fatal(err)
	}
	for file, want := range map[string]string{
		"cgroup.subtree_control":        "+memory",
		"warren/cgroup.subtree_control": "+memory",
		"warren/10.0.1.0_24/memory.max": "1073741824",
	} {
		b, _ := os.ReadFile(filepath.Join(v2, file))
		if strings.TrimSpace(string(b)) != want {
			t.Errorf("v2 %s = %q, want %q", file, b, want)
		}
	}
	v1 := t.TempDir()
	os.MkdirAll(filepath.Join(v1, "memory"), 0o755)
	if err := applyParentMemoryMax(v1, "/warren/10.0.1.0_24", 1<<30); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(v1, "memory/warren/10.0.1.0_24/memory.limit_in_bytes")); string(b) != "1073741824" {
		t.Errorf("v1 limit = %q", b)
	}
	if err := applyParentMemoryMax(t.TempDir(), "/x", 1); err == nil || !strings.Contains(err.Error(), "no memory cgroup controller") {
		t.Errorf("no controller: %v", err)
	}
}

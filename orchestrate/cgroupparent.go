package orchestrate

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// The tasks' parent cgroup gets a memory ceiling below the node's memory,
// so the tasks together cannot take what the daemon, containerd and the
// system need: a task's OOM kill then happens inside that ceiling, not
// against the mesh (the unit's OOMScoreAdjust protects the daemon further).

// DefaultSystemReserve is what the default ceiling leaves to the daemon,
// containerd and the system.
const DefaultSystemReserve = 256 << 20

// tasksMemoryMax is the ceiling for the tasks' parent cgroup: configured,
// or the node's memory less DefaultSystemReserve, but never less than half
// of it (a 512 MB board keeps 256 MiB for tasks).
func tasksMemoryMax(configured, memTotal int64) int64 {
	if configured > 0 {
		return configured
	}
	return max(memTotal-DefaultSystemReserve, memTotal/2)
}

// applyParentMemoryMax sets limit on the cgroup parent (a path such as
// /warren/10.0.1.0_24) under root (/sys/fs/cgroup), for cgroup v2 or the
// v1 memory hierarchy, creating it as runc would.
func applyParentMemoryMax(root, parent string, limit int64) error {
	val := strconv.FormatInt(limit, 10)
	if _, err := os.Stat(filepath.Join(root, "cgroup.controllers")); err == nil {
		// v2: the memory controller must be on in every ancestor's subtree.
		dir := root
		for _, part := range strings.Split(strings.Trim(parent, "/"), "/") {
			if err := enableController(dir, "memory"); err != nil {
				return err
			}
			dir = filepath.Join(dir, part)
			if err := os.MkdirAll(dir, 0o755); err != nil {
				return fmt.Errorf("create cgroup %s: %w", dir, err)
			}
		}
		return writeCgroup(filepath.Join(dir, "memory.max"), val)
	}
	dir := filepath.Join(root, "memory", parent)
	if _, err := os.Stat(filepath.Join(root, "memory")); err != nil {
		return fmt.Errorf("no memory cgroup controller at %s: %w", root, err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create cgroup %s: %w", dir, err)
	}
	return writeCgroup(filepath.Join(dir, "memory.limit_in_bytes"), val)
}

func enableController(dir, ctrl string) error {
	b, err := os.ReadFile(filepath.Join(dir, "cgroup.subtree_control"))
	if err != nil {
		return fmt.Errorf("cgroup %s: %w", dir, err)
	}
	for _, c := range strings.Fields(string(b)) {
		if c == ctrl {
			return nil
		}
	}
	return writeCgroup(filepath.Join(dir, "cgroup.subtree_control"), "+"+ctrl)
}

func writeCgroup(file, val string) error {
	if cur, err := os.ReadFile(file); err == nil && strings.TrimSpace(string(cur)) == val {
		return nil
	}
	if err := os.WriteFile(file, []byte(val), 0o644); err != nil {
		return fmt.Errorf("write %s: %w", file, errors.Unwrap(err))
	}
	return nil
}

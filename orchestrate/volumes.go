package orchestrate

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"

	"github.com/warren-appliance/warren/cluster/clustermap"
	"github.com/warren-appliance/warren/internal/dockerflags"
)

// Volume is a named volume on this node.
type Volume struct {
	Name      string
	SizeBytes int64
}

// ErrVolumeInUse refuses removing a volume a task of this node mounts.
var ErrVolumeInUse = errors.New("volume in use")

// Volumes lists the node's named volumes with the bytes their files hold.
func (r *Reconciler) Volumes() ([]Volume, error) {
	entries, err := os.ReadDir(r.cfg.VolumesDir)
	if errors.Is(err, fs.ErrNotExist) {
		return []Volume{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list volumes: %w", err)
	}
	out := []Volume{}
	for _, e := range entries {
		if !e.IsDir() || !dockerflags.VolumeNameOK(e.Name()) {
			continue
		}
		var size int64
		filepath.WalkDir(filepath.Join(r.cfg.VolumesDir, e.Name()), func(_ string, d fs.DirEntry, err error) error {
			if err == nil && d.Type().IsRegular() {
				if info, err := d.Info(); err == nil {
					size += info.Size()
				}
			}
			return nil
		})
		out = append(out, Volume{Name: e.Name(), SizeBytes: size})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// RemoveVolume deletes volume name and its data, unless a task this node
// runs (or is told to run) mounts it. A volume that is not there is not an
// error.
func (r *Reconciler) RemoveVolume(name string) error {
	if !dockerflags.VolumeNameOK(name) {
		return fmt.Errorf("volume name %q is not valid", name)
	}
	r.mu.Lock()
	var users []string
	for _, s := range r.desired {
		for _, m := range s.Mounts {
			if m.Type == clustermap.MountVolume && m.Source == name {
				users = append(users, s.Name)
			}
		}
	}
	r.mu.Unlock()
	if len(users) > 0 {
		sort.Strings(users)
		return fmt.Errorf("%w: volume %s is mounted by task %v", ErrVolumeInUse, name, users)
	}
	if err := os.RemoveAll(filepath.Join(r.cfg.VolumesDir, name)); err != nil {
		return fmt.Errorf("remove volume %s: %w", name, err)
	}
	return nil
}

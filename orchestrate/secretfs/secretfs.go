// Package secretfs keeps the secrets and configs of this node's tasks on
// one tmpfs per task, outside the state dir (default /run/warren/tasks),
// and wipes them (unmount) when the task no longer runs here.
//
// A task's tmpfs holds two directories:
//
//	secrets/          bind-mounted read-only at /run/secrets
//	  ..<generation>/ the files of one version set, with their modes
//	  ..data          symlink to the current generation
//	  TARGET          symlink to ..data/TARGET
//	configs/N         one file per config, bind-mounted read-only at its target
//
// A new version of the secrets is written to a new generation directory,
// then ..data is swapped to it with one rename (as Kubernetes' projected
// volumes do): a task opening /run/secrets/TARGET sees the old or the new
// file, never a mix. A config is a bind-mounted file, which a rename would
// detach from the container: it is rewritten in place (same inode).
package secretfs

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// DefaultRoot is where task tmpfs mounts live: under /run (not the state
// dir, which is on the SD card).
const DefaultRoot = "/run/warren/tasks"

// tmpfsSize bounds one task's tmpfs (its values are at most 500 KiB each;
// 64 secrets and 64 configs per service, two generations while swapping).
const tmpfsSize = "140m"

// File is one secret or config file of a task.
type File struct {
	Name string // a secret's target file name; a config's target path
	Data []byte
	UID  int
	GID  int
	Mode os.FileMode
}

// Task is what one task must see.
type Task struct {
	Secrets []File
	Configs []File
}

// fingerprint identifies a task's content (never stored anywhere but in
// memory).
func (t Task) fingerprint() string {
	h := sha256.New()
	for _, set := range [][]File{t.Secrets, t.Configs} {
		for _, f := range set {
			fmt.Fprintf(h, "%q %d %d %o %d\n", f.Name, f.UID, f.GID, f.Mode, len(f.Data))
			h.Write(f.Data)
		}
		h.Write([]byte{0})
	}
	return hex.EncodeToString(h.Sum(nil))
}

// Store writes tasks' files under Root.
type Store struct {
	Root string

	mu      sync.Mutex
	applied map[string]string // task -> fingerprint written
}

// New returns a store under root (DefaultRoot if empty).
func New(root string) *Store {
	if root == "" {
		root = DefaultRoot
	}
	return &Store{Root: root, applied: map[string]string{}}
}

func (s *Store) dir(task string) string { return filepath.Join(s.Root, task) }

// SecretsDir is the host directory bind-mounted at /run/secrets.
func (s *Store) SecretsDir(task string) string { return filepath.Join(s.dir(task), "secrets") }

// ConfigPath is the host file bind-mounted at the i-th config's target.
func (s *Store) ConfigPath(task string, i int) string {
	return filepath.Join(s.dir(task), "configs", strconv.Itoa(i))
}

// Has reports whether task's tmpfs is mounted (it holds the files last
// written, possibly by a previous run of the daemon).
func (s *Store) Has(task string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return checkTaskName(task) == nil && s.mounted(task)
}

// Sync makes the tasks in want (by name) see their files, leaves the
// tasks in keep as they are, and wipes every other task's tmpfs. A task
// whose files fail is reported in the error; the others are done.
func (s *Store) Sync(want map[string]Task, keep []string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	var errs []error
	for _, name := range sortedKeys(want) {
		if err := checkTaskName(name); err != nil {
			errs = append(errs, err)
			continue
		}
		t := want[name]
		fp := t.fingerprint()
		if s.applied[name] == fp && s.mounted(name) {
			continue
		}
		if err := s.write(name, t); err != nil {
			errs = append(errs, fmt.Errorf("task %s: %w", name, err))
			delete(s.applied, name)
			continue
		}
		s.applied[name] = fp
	}
	entries, err := os.ReadDir(s.Root)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	for _, e := range entries {
		if _, ok := want[e.Name()]; ok || slices.Contains(keep, e.Name()) {
			continue
		}
		if err := s.wipe(e.Name()); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func sortedKeys(m map[string]Task) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

func checkTaskName(name string) error {
	if name == "" || name == "." || name == ".." || strings.ContainsAny(name, "/\x00") {
		return fmt.Errorf("task name %q cannot name a directory", name)
	}
	return nil
}

// mounted reports whether the task's directory is a mount point (its own
// tmpfs, not the directory beneath).
func (s *Store) mounted(task string) bool {
	var dir, parent unix.Stat_t
	if unix.Lstat(s.dir(task), &dir) != nil || unix.Stat(s.Root, &parent) != nil {
		return false
	}
	return dir.Dev != parent.Dev
}

// ensureMount mounts the task's tmpfs if it is not mounted yet.
func (s *Store) ensureMount(task string) error {
	if s.mounted(task) {
		return nil
	}
	if err := os.MkdirAll(s.Root, 0o700); err != nil {
		return fmt.Errorf("create %s: %w", s.Root, err)
	}
	d := s.dir(task)
	if err := os.Mkdir(d, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("create %s: %w", d, err)
	}
	if err := unix.Mount("tmpfs", d, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "mode=0700,size="+tmpfsSize); err != nil {
		return fmt.Errorf("mount a tmpfs on %s: %w", d, err)
	}
	return nil
}

// write puts t's files in place on the task's tmpfs.
func (s *Store) write(task string, t Task) error {
	if err := s.ensureMount(task); err != nil {
		return err
	}
	sec := s.SecretsDir(task)
	for _, d := range []string{sec, filepath.Join(s.dir(task), "configs")} {
		if err := os.Mkdir(d, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
			return err
		}
		if err := os.Chmod(d, 0o755); err != nil {
			return err
		}
	}
	if err := writeSecrets(sec, t.Secrets); err != nil {
		return err
	}
	for i, f := range t.Configs {
		if err := writeInPlace(s.ConfigPath(task, i), f); err != nil {
			return err
		}
	}
	return removeExtraConfigs(filepath.Join(s.dir(task), "configs"), len(t.Configs))
}

// writeSecrets writes a new generation and swaps ..data to it.
func writeSecrets(dir string, files []File) error {
	for _, f := range files {
		if f.Name == "" || strings.ContainsAny(f.Name, "/\x00") || strings.HasPrefix(f.Name, "..") {
			return fmt.Errorf("secret target %q is not a plain file name", f.Name)
		}
	}
	gen := filepath.Join(dir, fmt.Sprintf("..%d", time.Now().UnixNano()))
	if err := os.Mkdir(gen, 0o755); err != nil {
		return err
	}
	for _, f := range files {
		if err := writeFile(filepath.Join(gen, f.Name), f); err != nil {
			return err
		}
	}
	tmp := filepath.Join(dir, "..data_tmp")
	os.Remove(tmp)
	if err := os.Symlink(filepath.Base(gen), tmp); err != nil {
		return err
	}
	if err := os.Rename(tmp, filepath.Join(dir, "..data")); err != nil {
		return fmt.Errorf("swap ..data: %w", err)
	}
	want := map[string]bool{}
	for _, f := range files {
		want[f.Name] = true
		link := filepath.Join(dir, f.Name)
		if target, err := os.Readlink(link); err == nil && target == "..data/"+f.Name {
			continue
		}
		os.Remove(link)
		if err := os.Symlink("..data/"+f.Name, link); err != nil {
			return err
		}
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		n := e.Name()
		switch {
		case n == "..data" || n == filepath.Base(gen):
		case strings.HasPrefix(n, ".."):
			if err := os.RemoveAll(filepath.Join(dir, n)); err != nil {
				return err
			}
		case !want[n]:
			if err := os.Remove(filepath.Join(dir, n)); err != nil {
				return err
			}
		}
	}
	return nil
}

func writeFile(path string, f File) error {
	fd, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	_, err = fd.Write(f.Data)
	if err == nil {
		err = fd.Chown(f.UID, f.GID)
	}
	if err == nil {
		err = fd.Chmod(f.Mode)
	}
	if cerr := fd.Close(); err == nil {
		err = cerr
	}
	return err
}

// writeInPlace rewrites a bind-mounted file keeping its inode.
func writeInPlace(path string, f File) error {
	fd, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	err = fd.Chown(f.UID, f.GID)
	if err == nil {
		err = fd.Chmod(f.Mode)
	}
	if err == nil {
		_, err = fd.WriteAt(f.Data, 0)
	}
	if err == nil {
		err = fd.Truncate(int64(len(f.Data)))
	}
	if cerr := fd.Close(); err == nil {
		err = cerr
	}
	return err
}

func removeExtraConfigs(dir string, n int) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if i, err := strconv.Atoi(e.Name()); err != nil || i >= n {
			if err := os.Remove(filepath.Join(dir, e.Name())); err != nil {
				return err
			}
		}
	}
	return nil
}

// wipe unmounts a task's tmpfs (its values are gone with it) and removes
// the directory. A running container's own bind mounts keep their view
// until the container is gone.
func (s *Store) wipe(task string) error {
	d := s.dir(task)
	for s.mounted(task) {
		if err := unix.Unmount(d, unix.MNT_DETACH); err != nil {
			return fmt.Errorf("unmount %s: %w", d, err)
		}
	}
	delete(s.applied, task)
	if err := os.RemoveAll(d); err != nil {
		return fmt.Errorf("remove %s: %w", d, err)
	}
	return nil
}

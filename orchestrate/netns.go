package orchestrate

import (
	"errors"
	"fmt"
	"os"
	"runtime"

	"golang.org/x/sys/unix"
)

// A task's network namespace lives as long as a bind mount of it exists on
// a file (as `ip netns add` does), so it outlives the task's processes:
// restarts keep the IP and veth, and a restarted daemon finds it again.

// nsfsMagic is the statfs type of a mounted namespace file.
const nsfsMagic = 0x6e736673

// isNetnsMount reports whether path is a bind-mounted namespace.
func isNetnsMount(path string) bool {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return false
	}
	return st.Type == nsfsMagic
}

// createNetns makes a new network namespace pinned at path. A stale plain
// file at path (left by a reboot) is reused.
func createNetns(path string) error {
	f, err := os.OpenFile(path, os.O_RDONLY|os.O_CREATE, 0o444)
	if err != nil {
		return fmt.Errorf("create netns file: %w", err)
	}
	f.Close()
	errc := make(chan error, 1)
	go func() {
		// The thread switches namespace and back. Were it left in the new
		// namespace and discarded (by ending this goroutine locked), the
		// runtime could not discard the main thread: it would stay in the
		// task's namespace for good, and with it what the kernel shows as
		// the process's namespace (/proc/PID/ns/net), keeping the task's
		// namespace alive after its removal.
		runtime.LockOSThread()
		tid := unix.Gettid()
		orig, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", tid))
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("open own netns: %w", err)
			return
		}
		defer orig.Close()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread() // still in its own namespace
			errc <- fmt.Errorf("unshare netns: %w", err)
			return
		}
		self := fmt.Sprintf("/proc/self/task/%d/ns/net", tid)
		mountErr := unix.Mount(self, path, "none", unix.MS_BIND, "")
		if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err == nil {
			runtime.UnlockOSThread()
		} // else the thread stays locked and the runtime discards it
		if mountErr != nil {
			errc <- fmt.Errorf("bind mount netns to %s: %w", path, mountErr)
			return
		}
		errc <- nil
	}()
	if err := <-errc; err != nil {
		os.Remove(path)
		return err
	}
	return nil
}

// removeNetns unpins the namespace at path and removes the file; the
// kernel frees the namespace (and the veth end in it) once no process
// uses it.
func removeNetns(path string) error {
	if err := unix.Unmount(path, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("unmount netns %s: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove netns file: %w", err)
	}
	return nil
}

package lab

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"time"
)

// PowerOff kills every process of the node at once, as a power cut would:
// the appliance, containerd, the shims and the tasks under them. The node's
// namespaces stay, so StartContainerd and StartAppliance bring it back the
// way a board boots, with whatever its disk held.
func (n *Node) PowerOff() error {
	ino, err := n.netnsInode()
	if err != nil {
		return err
	}
	holder := n.holder.Process.Pid
	// The processes the lab started are killed by PID first, and the
	// appliance is reaped before the scan: whatever namespace its threads
	// are in at that moment (netlink work on locked threads inside task
	// namespaces), a powered-off node's appliance must not report again.
	// The scan below then takes the shims and the tasks.
	for _, c := range []*exec.Cmd{n.appliance, n.containerd} {
		if c != nil && c.Process != nil {
			c.Process.Kill()
		}
	}
	if n.applianceDone != nil {
		select {
		case <-n.applianceDone:
		case <-time.After(10 * time.Second):
			return fmt.Errorf("%s: the appliance survives SIGKILL", n.Name)
		}
	}
	for round := 0; round < 50; round++ {
		var victims []int
		for _, pid := range processesIn(ino) {
			if pid != holder {
				victims = append(victims, pid)
			}
		}
		if len(victims) == 0 {
			n.appliance, n.containerd = nil, nil
			return nil
		}
		for _, pid := range victims {
			syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("%s: processes survive SIGKILL: %v", n.Name, processesIn(ino))
}

func (n *Node) netnsInode() (uint64, error) {
	var st syscall.Stat_t
	if err := syscall.Stat("/proc/"+strconv.Itoa(n.holder.Process.Pid)+"/ns/net", &st); err != nil {
		return 0, fmt.Errorf("%s: network namespace: %w", n.Name, err)
	}
	return st.Ino, nil
}

// StateOnTmpfs moves the node's /var/lib/warren onto a tmpfs of sizeMiB
// inside the node's mount namespace, keeping its contents, so a test can
// fill the state filesystem without filling the host's disk. Stop the
// appliance first: it must not hold files of the old directory open. The
// tmpfs goes away with the node.
func (n *Node) StateOnTmpfs(ctx context.Context, sizeMiB int) error {
	if n.appliance != nil {
		return fmt.Errorf("%s: stop the appliance before moving its state directory", n.Name)
	}
	script := fmt.Sprintf(`set -e
rm -rf /run/warren-state-copy
cp -a /var/lib/warren /run/warren-state-copy
mount -t tmpfs -o size=%dm,mode=0700 tmpfs /var/lib/warren
cp -a /run/warren-state-copy/. /var/lib/warren/
rm -rf /run/warren-state-copy`, sizeMiB)
	if _, err := n.Sh(ctx, script); err != nil {
		return fmt.Errorf("state dir on tmpfs: %w", err)
	}
	return nil
}

// RestartAppliance stops the appliance with sig (SIGKILL for a crash) and
// starts it again with the same command line, once the old process is
// reaped (StopAppliance waits for that).
func (n *Node) RestartAppliance(sig syscall.Signal) error {
	cmd := n.appliance
	if cmd == nil || cmd.Process == nil {
		return fmt.Errorf("%s: no appliance running to restart", n.Name)
	}
	args := cmd.Args[len(n.enter()):]
	if err := n.StopAppliance(sig); err != nil { // returns once reaped
		return err
	}
	return n.StartAppliance(args[0], args[1:]...)
}

// ForgetVolatile makes a powered-off node look like a board after a cold
// boot: what lives in RAM is gone. It unmounts and empties /run's containerd
// and warren state (task rootfs mounts, sockets), unmounts the pinned task
// network namespaces (the files stay, as on a real disk), deletes every
// network device but lo and eth0, and flushes iptables. Disk state
// (/var/lib/warren, /var/lib/containerd) stays. Call it after PowerOff.
func (n *Node) ForgetVolatile(ctx context.Context) error {
	if n.appliance != nil || n.containerd != nil {
		return fmt.Errorf("%s: power the node off first", n.Name)
	}
	script := `set -e
for m in $(awk '$2 ~ "^(/run/containerd|/run/warren|/var/lib/warren/tasks|/var/lib/containerd)/" {print $2}' /proc/self/mounts | sort -r); do
	umount -l "$m"
done
rm -rf /run/containerd /run/wireguard /run/warren
mkdir -p /run/containerd /run/warren
for l in $(ip -o link show | awk -F': ' '{sub(/@.*/, "", $2); print $2}'); do
	case "$l" in lo|eth0) ;; *) ip link del "$l" 2>/dev/null || true ;; esac
done
for t in nat filter mangle raw; do
	iptables -w -t $t -F
	iptables -w -t $t -X
done`
	if _, err := n.Sh(ctx, script); err != nil {
		return fmt.Errorf("forget volatile state: %w", err)
	}
	return nil
}

// StopContainerd stops the node's containerd cleanly (SIGTERM) and waits
// until it is reaped. Its shims, and so the tasks, keep running.
func (n *Node) StopContainerd() error {
	cmd := n.containerd
	if cmd == nil || cmd.Process == nil {
		return nil
	}
	n.containerd = nil
	cmd.Process.Signal(syscall.SIGTERM)
	proc := "/proc/" + strconv.Itoa(cmd.Process.Pid)
	deadline := time.Now().Add(20 * time.Second)
	for {
		if _, err := os.Stat(proc); err != nil {
			return nil
		}
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			return fmt.Errorf("%s: containerd did not exit within 20s of SIGTERM", n.Name)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

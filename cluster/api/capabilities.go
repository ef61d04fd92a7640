package api

import (
	"fmt"
	"slices"
	"strings"
)

// knownCapabilities are the Linux capabilities a service may add or drop
// (Docker's --cap-add/--cap-drop), as of Linux 5.9.
var knownCapabilities = []string{
	"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL",
	"CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE",
	"CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER",
	"CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE", "CAP_SYS_PACCT",
	"CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE", "CAP_SYS_RESOURCE", "CAP_SYS_TIME",
	"CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE", "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL",
	"CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM",
	"CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
}

// CapAll stands for every capability, as in Docker's `--cap-add ALL`.
const CapAll = "ALL"

// NormalizeCapabilities checks capability names as Docker takes them
// (NET_RAW, net_raw or CAP_NET_RAW; ALL) and returns them in one form
// (CAP_NET_RAW, ALL), sorted and without duplicates; nil for none.
func NormalizeCapabilities(flag string, caps []string) ([]string, error) {
	var out []string
	for _, c := range caps {
		name := strings.ToUpper(strings.TrimSpace(c))
		if name != CapAll && !strings.HasPrefix(name, "CAP_") {
			name = "CAP_" + name
		}
		if name != CapAll && !slices.Contains(knownCapabilities, name) {
			return nil, fmt.Errorf("%s: unknown capability %q: want a Linux capability such as NET_RAW or NET_ADMIN, or ALL", flag, c)
		}
		out = append(out, name)
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}

// UpdateCapabilities applies a service update's --cap-add and --cap-drop
// (normalized) to a service's lists, as Docker's `service update` does: a
// capability added leaves the drop list and one dropped leaves the add
// list. Both results are sorted; nil when empty.
func UpdateCapabilities(capAdd, capDrop, add, drop []string) (newAdd, newDrop []string) {
	for _, c := range capAdd {
		if !slices.Contains(drop, c) {
			newAdd = append(newAdd, c)
		}
	}
	for _, c := range capDrop {
		if !slices.Contains(add, c) {
			newDrop = append(newDrop, c)
		}
	}
	newAdd, newDrop = append(newAdd, add...), append(newDrop, drop...)
	slices.Sort(newAdd)
	slices.Sort(newDrop)
	return slices.Compact(newAdd), slices.Compact(newDrop)
}

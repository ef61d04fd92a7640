// Package dockerflags parses the values of Docker's service flags as
// `docker service create` takes them: --mount's comma-separated
// key=value grammar, memory sizes ("32M", "1.5G") and CPU fractions
// ("0.5"). Pure functions; the CLI turns their errors into usage errors.
package dockerflags

import (
	"encoding/csv"
	"fmt"
	"math/big"
	"path"
	"strconv"
	"strings"

	units "github.com/docker/go-units"
	"golang.org/x/sys/unix"

	"github.com/warren-appliance/warren/cluster/clustermap"
)

// ParseMemory parses a memory size as Docker's --limit-memory does
// (go-units' RAMInBytes: binary units, "32M" is 32 MiB, "1.5G" is 1.5 GiB,
// a bare number is bytes).
func ParseMemory(s string) (int64, error) {
	n, err := units.RAMInBytes(s)
	if err != nil {
		return 0, fmt.Errorf("memory size %q: want a number with an optional unit b, k, m or g (e.g. 32M, 1.5G)", s)
	}
	if n <= 0 {
		return 0, fmt.Errorf("memory size %q: must be more than 0", s)
	}
	return n, nil
}

// ParseSize parses a byte size as Docker's tmpfs-size does (like
// ParseMemory; a bare number is bytes).
func ParseSize(s string) (int64, error) { return ParseMemory(s) }

// ParseCPUs parses a CPU amount as Docker's --limit-cpu does ("0.5",
// "2") into billionths of a CPU, exactly (no float rounding).
func ParseCPUs(s string) (int64, error) {
	r, ok := new(big.Rat).SetString(s)
	if !ok || strings.ContainsAny(s, "/eE") {
		return 0, fmt.Errorf("CPU amount %q: want a decimal number of CPUs, e.g. 0.5 or 2", s)
	}
	nano := r.Mul(r, big.NewRat(1e9, 1))
	if !nano.IsInt() {
		return 0, fmt.Errorf("CPU amount %q: at most 9 decimal places", s)
	}
	if nano.Sign() <= 0 {
		return 0, fmt.Errorf("CPU amount %q: must be more than 0", s)
	}
	if !nano.Num().IsInt64() {
		return 0, fmt.Errorf("CPU amount %q is too large", s)
	}
	return nano.Num().Int64(), nil
}

// FormatCPUs writes billionths of a CPU as Docker prints them ("0.5").
func FormatCPUs(nano int64) string {
	return strconv.FormatFloat(float64(nano)/1e9, 'f', -1, 64)
}

// ParseMount parses one --mount value in Docker's grammar:
// comma-separated key=value fields (CSV quoting allowed), with keys
// type (volume, bind or tmpfs; default volume), source|src, target|dst|
// destination, readonly|ro (alone, or =true/false/1/0), tmpfs-size.
func ParseMount(s string) (clustermap.Mount, error) {
	var m clustermap.Mount
	r := csv.NewReader(strings.NewReader(s))
	fields, err := r.Read()
	if err != nil {
		return m, fmt.Errorf("mount %q: %w", s, err)
	}
	m.Type = clustermap.MountVolume
	var sizeSet bool
	for _, f := range fields {
		key, val, hasVal := strings.Cut(f, "=")
		key = strings.ToLower(strings.TrimSpace(key))
		switch key {
		case "readonly", "ro":
			if !hasVal {
				m.ReadOnly = true
				continue
			}
			b, err := strconv.ParseBool(val)
			if err != nil {
				return m, fmt.Errorf("mount %q: %s=%q: want true or false", s, key, val)
			}
			m.ReadOnly = b
			continue
		}
		if !hasVal {
			return m, fmt.Errorf("mount %q: field %q is not KEY=VALUE", s, f)
		}
		switch key {
		case "type":
			m.Type = val
		case "source", "src":
			m.Source = val
		case "target", "dst", "destination":
			m.Target = val
		case "tmpfs-size":
			n, err := ParseSize(val)
			if err != nil {
				return m, fmt.Errorf("mount %q: tmpfs-size: %w", s, err)
			}
			m.TmpfsSize, sizeSet = n, true
		default:
			return m, fmt.Errorf("mount %q: unknown field %q (want type, source, target, readonly, tmpfs-size)", s, key)
		}
	}
	if sizeSet && m.Type != clustermap.MountTmpfs {
		return m, fmt.Errorf("mount %q: tmpfs-size is only for type=tmpfs", s)
	}
	if err := CheckMount(m); err != nil {
		return m, fmt.Errorf("mount %q: %w", s, err)
	}
	return m, nil
}

// CheckMount says what is wrong with m, if anything.
func CheckMount(m clustermap.Mount) error {
	if m.Target == "" {
		return fmt.Errorf("target is missing: add target=/path/in/container")
	}
	if !path.IsAbs(m.Target) || path.Clean(m.Target) != m.Target {
		return fmt.Errorf("target %q: want a clean absolute path", m.Target)
	}
	if m.Target == "/" {
		return fmt.Errorf("target / would hide the image's root file system")
	}
	switch m.Type {
	case clustermap.MountVolume:
		if !volumeNameOK(m.Source) {
			return fmt.Errorf("volume name %q: want 1-64 letters, digits, '_', '.' or '-', starting with a letter or digit (source=NAME)", m.Source)
		}
	case clustermap.MountBind:
		if !path.IsAbs(m.Source) || path.Clean(m.Source) != m.Source {
			return fmt.Errorf("bind source %q: want a clean absolute host path (source=/host/path)", m.Source)
		}
	case clustermap.MountTmpfs:
		if m.Source != "" {
			return fmt.Errorf("a tmpfs mount takes no source")
		}
		if m.TmpfsSize < 0 {
			return fmt.Errorf("tmpfs-size %d: must not be negative", m.TmpfsSize)
		}
	default:
		return fmt.Errorf("type %q: want volume, bind or tmpfs", m.Type)
	}
	return nil
}

// VolumeNameOK reports whether name is a valid volume name (as Docker's:
// [a-zA-Z0-9][a-zA-Z0-9_.-]*, at most 64 characters here).
func VolumeNameOK(name string) bool { return volumeNameOK(name) }

func volumeNameOK(name string) bool {
	if name == "" || len(name) > 64 {
		return false
	}
	for i, c := range name {
		alnum := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
		if !alnum && (i == 0 || (c != '_' && c != '.' && c != '-')) {
			return false
		}
	}
	return true
}

// FormatMount writes m back in --mount grammar.
func FormatMount(m clustermap.Mount) string {
	parts := []string{"type=" + m.Type}
	if m.Source != "" {
		parts = append(parts, "source="+m.Source)
	}
	parts = append(parts, "target="+m.Target)
	if m.ReadOnly {
		parts = append(parts, "readonly")
	}
	if m.TmpfsSize > 0 {
		parts = append(parts, "tmpfs-size="+strconv.FormatInt(m.TmpfsSize, 10))
	}
	return strings.Join(parts, ",")
}

// ParseSignal parses a signal name ("SIGTERM", "TERM", "sigint") or
// number (1-64) as Docker's --stop-signal does.
func ParseSignal(s string) (unix.Signal, error) {
	if n, err := strconv.Atoi(s); err == nil {
		if n < 1 || n > 64 {
			return 0, fmt.Errorf("signal %d: want 1 to 64", n)
		}
		return unix.Signal(n), nil
	}
	name := strings.ToUpper(s)
	if !strings.HasPrefix(name, "SIG") {
		name = "SIG" + name
	}
	if sig := unix.SignalNum(name); sig != 0 {
		return sig, nil
	}
	return 0, fmt.Errorf("signal %q: want a name such as SIGTERM, SIGINT or SIGQUIT, or a number", s)
}

// FormatBytes writes n in binary units as people read them: "32 MiB",
// "1.5 GiB", "512 B".
func FormatBytes(n int64) string {
	units := []string{"B", "KiB", "MiB", "GiB", "TiB"}
	v := float64(n)
	i := 0
	for v >= 1024 && i < len(units)-1 {
		v /= 1024
		i++
	}
	if v == float64(int64(v)) {
		return fmt.Sprintf("%d %s", int64(v), units[i])
	}
	return fmt.Sprintf("%.1f %s", v, units[i])
}

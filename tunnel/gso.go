package tunnel

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// The kernel UDP GSO bug: Linux commit b10b446 (v7.0-rc1) made the kernel
// mangle UDP headers and checksums of a GSO batch whose segments are all
// of equal length, on some drivers; commits 78effd8 and 5f17ae0 fixed it
// (v7.1-rc5 in mainline, v7.1.5 in the stable series). Distributions shipped
// the broken kernels (Ubuntu 26.04 LTS). Turning UDP GSO off fixes it but
// halves throughput, so on an affected kernel the bind keeps GSO where it is
// safe, as Tailscale does (net/batching, never-gso-equal-tail): batches
// smaller than gsoMinBatch go out without GSO, and every GSO message whose
// segments would all be equal gets a 1-byte sentinel datagram as its tail,
// so it ends with a segment shorter than the others. The sentinel is below
// WireGuard's minimum message size: wireguard-go drops it on receipt, and our
// bind drops it before the packet handler (pathbind.go).

// UDP GSO settings of Config.UDPGSO ([wireguard] udp_gso).
const (
	UDPGSOAuto = "auto" // work around the bug on affected kernels, plain GSO elsewhere
	UDPGSOOn   = "on"   // plain GSO, no workaround, whatever the kernel
	UDPGSOOff  = "off"  // no UDP GSO at all
)

// gsoMinBatch is the smallest batch the workaround still sends with GSO:
// below it a sentinel would cost more than GSO saves (Tailscale's figure: at
// 8 keepalive-sized messages the sentinel is 6 % of the bytes).
const gsoMinBatch = 8

// gsoSentinel is the 1-byte tail datagram of a padded GSO message. 0x07 is
// no WireGuard message type.
var gsoSentinel = []byte{0x07}

// isGSOSentinel reports whether a received datagram is a peer's sentinel.
func isGSOSentinel(b []byte) bool { return len(b) == 1 && b[0] == gsoSentinel[0] }

// Limits of one UDP GSO message (the kernel's UDP_MAX_SEGMENTS and the
// largest IPv4 UDP payload, the smaller one, used for both families).
const (
	gsoMaxPayload  = 1<<16 - 1 - 20 - 8
	gsoMaxSegments = 64
)

// KernelRelease is a parsed kernel release (uname -r).
type KernelRelease struct {
	Major, Minor, Patch int
	RC                  int // release candidate number, 0 for a release
}

// ParseKernelRelease parses a uname release such as "7.1.2-1-amd64",
// "7.0.0-15-generic", "6.12.73+deb13-amd64", "7.1-rc5" or "7.0.14-pve":
// major.minor[.patch], then an optional "-rcN", then anything.
func ParseKernelRelease(s string) (KernelRelease, error) {
	m := kernelReleaseRE.FindStringSubmatch(strings.TrimSpace(s))
	if m == nil {
		return KernelRelease{}, fmt.Errorf("kernel release %q: want major.minor[.patch]", s)
	}
	var r KernelRelease
	for i, p := range []*int{&r.Major, &r.Minor, &r.Patch, &r.RC} {
		if m[i+1] == "" {
			continue
		}
		n, err := strconv.Atoi(m[i+1])
		if err != nil {
			return KernelRelease{}, fmt.Errorf("kernel release %q: %w", s, err)
		}
		*p = n
	}
	return r, nil
}

var kernelReleaseRE = regexp.MustCompile(`^(\d+)\.(\d+)(?:\.(\d+))?(?:-rc(\d+))?`)

// String formats the release as major.minor.patch[-rcN].
func (r KernelRelease) String() string {
	s := fmt.Sprintf("%d.%d.%d", r.Major, r.Minor, r.Patch)
	if r.RC > 0 {
		s += fmt.Sprintf("-rc%d", r.RC)
	}
	return s
}

// KernelHasUDPGSOBug reports whether a kernel release (uname -r, distro
// suffixes allowed) is in the range that corrupts equal-length UDP GSO
// batches: 7.0 (from its first release candidate) through 7.1.4, inclusive.
// The mainline fix landed in 7.1-rc5, but the stable 7.1 series only
// carries it from 7.1.5, so every 7.1 up to 7.1.4, release candidates
// included, counts as affected: a false positive costs a sentinel per GSO
// message, a false negative costs most of the throughput. Distribution
// kernels that backported the fix (or the bug) into another version are not
// recognised: [wireguard] udp_gso = "on" or "off" overrides. An unparsable
// release is reported as not affected, with the error.
func KernelHasUDPGSOBug(release string) (bool, error) {
	r, err := ParseKernelRelease(release)
	if err != nil {
		return false, err
	}
	if r.Major != 7 {
		return false, nil
	}
	switch r.Minor {
	case 0:
		return true, nil
	case 1:
		return r.Patch <= 4, nil
	}
	return false, nil
}

// gsoPolicy is how the bind (udpbind.go, planSend) segments what it sends.
type gsoPolicy int

const (
	gsoPlain      gsoPolicy = iota // every run of equal-length datagrams in one GSO message
	gsoWorkaround                  // small batches unsegmented, equal-length GSO messages padded
	gsoNone                        // one datagram per message
)

// chooseGSOPolicy maps the udp_gso setting and the kernel release to a
// policy. It returns a message for the log when the choice departs from
// plain GSO, and an error for a setting that is none of the three.
func chooseGSOPolicy(setting, release string) (gsoPolicy, string, error) {
	switch setting {
	case UDPGSOOn:
		return gsoPlain, "", nil
	case UDPGSOOff:
		return gsoNone, "UDP GSO off ([wireguard] udp_gso = \"off\")", nil
	case UDPGSOAuto, "":
		affected, err := KernelHasUDPGSOBug(release)
		if err != nil {
			return gsoPlain, fmt.Sprintf("cannot tell whether kernel %s corrupts UDP GSO batches (%v): using plain UDP GSO", release, err), nil
		}
		if affected {
			return gsoWorkaround, fmt.Sprintf("kernel %s corrupts equal-length UDP GSO batches (Linux 7.0 to 7.1.4): batches under %d packets go out without GSO, larger ones end in a 1-byte sentinel ([wireguard] udp_gso = \"on\" or \"off\" overrides)", release, gsoMinBatch), nil
		}
		return gsoPlain, "", nil
	}
	return gsoPlain, "", fmt.Errorf("udp_gso %q: want auto, on or off", setting)
}

// kernelRelease returns uname -r.
func kernelRelease() string {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return ""
	}
	return unix.ByteSliceToString(u.Release[:])
}

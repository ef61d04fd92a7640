package configs

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"

	units "github.com/docker/go-units"
)

// Duration is a TOML duration written only as a string such as "25s": a bare
// number is refused, because "25" could mean seconds or nanoseconds.
//
// Bad values do not stop decoding: the problem is kept and reported by
// Finish with the key's line, so one run lists every mistake in a file.
type Duration struct {
	time.Duration
	bad error
}

// UnmarshalText implements encoding.TextUnmarshaler.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	switch {
	case err != nil:
		d.bad = fmt.Errorf("%q is not a duration (write it like \"25s\", \"3h\" or \"500ms\")", b)
	case v < 0:
		d.bad = fmt.Errorf("%q: a duration cannot be negative", b)
	default:
		*d = Duration{Duration: v}
	}
	return nil
}

// MarshalText implements encoding.TextMarshaler.
func (d Duration) MarshalText() ([]byte, error) { return []byte(d.Duration.String()), nil }

// Subnet is a canonical IPv4 CIDR: host bits set is an error that suggests
// the canonical form, because "10.0.1.0/16" silently meaning 10.0.0.0/16 is
// how the seed document's ranges came to overlap.
// Like Duration, a bad value is kept for Finish to report with its line.
type Subnet struct {
	netip.Prefix
	bad error
}

// UnmarshalText implements encoding.TextUnmarshaler.
func (s *Subnet) UnmarshalText(b []byte) error {
	if len(b) == 0 {
		*s = Subnet{} // unset: Finish says which key must be set
		return nil
	}
	p, err := ParseSubnet(string(b))
	if err != nil {
		*s = Subnet{bad: err}
		return nil
	}
	*s = Subnet{Prefix: p}
	return nil
}

// Set parses v as a canonical CIDR, for command-line overrides.
func (s *Subnet) Set(v string) error {
	p, err := ParseSubnet(v)
	if err != nil {
		return err
	}
	*s = Subnet{Prefix: p}
	return nil
}

// MarshalText implements encoding.TextMarshaler.
func (s Subnet) MarshalText() ([]byte, error) {
	if !s.IsValid() {
		return []byte(""), nil
	}
	return []byte(s.String()), nil
}

// ParseSubnet parses a canonical IPv4 CIDR such as "10.0.0.0/24".
func ParseSubnet(s string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(strings.TrimSpace(s))
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q is not a CIDR (write it like \"10.0.0.0/24\")", s)
	}
	if !p.Addr().Is4() {
		return netip.Prefix{}, fmt.Errorf("%s: only IPv4 ranges are supported", p)
	}
	if p.Masked() != p {
		return netip.Prefix{}, fmt.Errorf("%s: host bits set, did you mean %s?", p, p.Masked())
	}
	return p, nil
}

// InterfaceAddress is an address with its prefix length, such as
// "10.0.0.1/24": host bits are the point here.
type InterfaceAddress struct {
	netip.Prefix
	bad error
}

// UnmarshalText implements encoding.TextUnmarshaler.
func (a *InterfaceAddress) UnmarshalText(b []byte) error {
	if len(b) == 0 {
		*a = InterfaceAddress{}
		return nil
	}
	p, err := netip.ParsePrefix(strings.TrimSpace(string(b)))
	if err != nil || !p.Addr().Is4() {
		*a = InterfaceAddress{bad: fmt.Errorf("%q is not an IPv4 interface address (write it like \"10.0.0.1/24\")", b)}
		return nil
	}
	*a = InterfaceAddress{Prefix: p}
	return nil
}

// MarshalText implements encoding.TextMarshaler.
func (a InterfaceAddress) MarshalText() ([]byte, error) {
	if !a.IsValid() {
		return []byte(""), nil
	}
	return []byte(a.String()), nil
}

// Size is a byte count written as Docker writes sizes ("1M", "512k",
// "1.5G": binary units). Like Duration, a bad value is kept for Finish to
// report with its line.
type Size struct {
	Bytes int64
	bad   error
}

// UnmarshalText implements encoding.TextUnmarshaler.
func (s *Size) UnmarshalText(b []byte) error {
	n, err := units.RAMInBytes(string(b))
	switch {
	case err != nil:
		s.bad = fmt.Errorf("%q is not a size (write it like \"1M\", \"512k\" or \"2G\")", b)
	case n <= 0:
		s.bad = fmt.Errorf("%q: a size must be more than 0", b)
	default:
		*s = Size{Bytes: n}
	}
	return nil
}

// MarshalText implements encoding.TextMarshaler.
func (s Size) MarshalText() ([]byte, error) { return []byte(strconv.FormatInt(s.Bytes, 10)), nil }

package dns

import (
	"context"
	"errors"
	"fmt"
	"net/netip"

	miekg "github.com/miekg/dns"
)

// ErrNotFound is returned by Resolve when the server answers NXDOMAIN.
var ErrNotFound = errors.New("no such name")

// Resolve asks server ("ip" or "ip:port", port 53 by default) for the A and
// AAAA records of name, taken as fully qualified: the caller appends the
// cluster domain to short names. It retries over TCP when the UDP answer
// is truncated. A name that exists without addresses gives no addresses
// and no error; NXDOMAIN gives an error wrapping ErrNotFound. Without a
// deadline on ctx, each question waits at most 4 s.
func Resolve(ctx context.Context, server string, name string) ([]netip.Addr, error) {
	ap, err := parseHostPort(server, 53)
	if err != nil {
		return nil, fmt.Errorf("dns server %q: %w", server, err)
	}
	fqdn := miekg.Fqdn(name)
	if _, ok := miekg.IsDomainName(fqdn); !ok {
		return nil, fmt.Errorf("%q is not a valid DNS name", name)
	}

	type result struct {
		addrs []netip.Addr
		err   error
	}
	qtypes := []uint16{miekg.TypeA, miekg.TypeAAAA}
	results := make([]result, len(qtypes))
	done := make(chan struct{}, len(qtypes))
	for i, qtype := range qtypes {
		go func() {
			defer func() { done <- struct{}{} }()
			addrs, err := query(ctx, ap.String(), fqdn, qtype)
			results[i] = result{addrs, err}
		}()
	}
	for range qtypes {
		<-done
	}

	// One failed question does not hide the other's addresses (an
	// upstream that drops AAAA queries, say).
	var (
		addrs    []netip.Addr
		firstErr error
		notFound int
	)
	for i, r := range results {
		switch {
		case errors.Is(r.err, ErrNotFound):
			notFound++
		case r.err != nil && firstErr == nil:
			firstErr = fmt.Errorf("resolve %s %s at %s: %w", name, miekg.TypeToString[qtypes[i]], ap, r.err)
		}
		addrs = append(addrs, r.addrs...)
	}
	switch {
	case len(addrs) > 0:
		return addrs, nil
	case firstErr != nil:
		return nil, firstErr
	case notFound == len(qtypes):
		return nil, fmt.Errorf("resolve %s at %s: %w", name, ap, ErrNotFound)
	}
	return nil, nil
}

// query runs one question over UDP, then over TCP if the answer was
// truncated.
func query(ctx context.Context, server, fqdn string, qtype uint16) ([]netip.Addr, error) {
	m := new(miekg.Msg)
	m.SetQuestion(fqdn, qtype)
	m.SetEdns0(maxUDPResponse, false)
	if _, ok := ctx.Deadline(); !ok {
		// Twice the server's default forwarding budget: long enough to
		// get its SERVFAIL rather than time out first.
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, DefaultForwardTimeout*2)
		defer cancel()
	}
	resp, err := roundTrip(ctx, "udp", m, server)
	if err == nil && resp.Truncated {
		resp, err = roundTrip(ctx, "tcp", m, server)
	}
	if err != nil {
		return nil, err
	}
	switch resp.Rcode {
	case miekg.RcodeSuccess:
	case miekg.RcodeNameError:
		return nil, ErrNotFound
	default:
		return nil, fmt.Errorf("server answered %s", miekg.RcodeToString[resp.Rcode])
	}
	var addrs []netip.Addr
	for _, rr := range resp.Answer {
		switch rr := rr.(type) {
		case *miekg.A:
			if qtype == miekg.TypeA {
				if a, ok := netip.AddrFromSlice(rr.A); ok {
					addrs = append(addrs, a.Unmap())
				}
			}
		case *miekg.AAAA:
			if qtype == miekg.TypeAAAA {
				if a, ok := netip.AddrFromSlice(rr.AAAA); ok {
					addrs = append(addrs, a)
				}
			}
		}
	}
	return addrs, nil
}

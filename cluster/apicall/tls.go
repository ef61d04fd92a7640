package apicall

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"slices"
	"time"

	"github.com/warren-appliance/warren/cluster/pki"
)

// MTLS is the client side of warren's mTLS: TLS 1.3, the peer checked by
// verify instead of by host name (managers are dialled by IP, and their
// certificates cannot know every address), and cert presented when the
// server asks for one (cert may return an empty certificate: a node before
// its first join presents none).
func MTLS(verify func(raw [][]byte) error, cert func() *tls.Certificate, choose ...func(*tls.CertificateRequestInfo) *tls.Certificate) *tls.Config {
	get := func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return cert(), nil }
	if len(choose) > 0 {
		// choose picks among several certificates by the CAs the server
		// says it accepts.
		get = func(cri *tls.CertificateRequestInfo) (*tls.Certificate, error) { return choose[0](cri), nil }
	}
	return &tls.Config{
		MinVersion:         tls.VersionTLS13,
		InsecureSkipVerify: true, // replaced by VerifyPeerCertificate: verify
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			return verify(raw)
		},
		GetClientCertificate: get,
	}
}

// Deadlines bound one kind of call. Zero fields are not bounded (Total:
// the caller's context bounds the call).
type Deadlines struct {
	Dial           time.Duration
	KeepAlive      time.Duration // TCP keepalive probes (0: Go's default)
	Handshake      time.Duration
	ResponseHeader time.Duration
	Total          time.Duration
}

// HTTPS returns a client over conf with deadlines d that keeps a few
// connections per peer open.
func HTTPS(conf *tls.Config, d Deadlines) *http.Client {
	return &http.Client{Timeout: d.Total, Transport: &http.Transport{
		TLSClientConfig:       conf,
		DialContext:           (&net.Dialer{Timeout: d.Dial, KeepAlive: d.KeepAlive}).DialContext,
		TLSHandshakeTimeout:   d.Handshake,
		ResponseHeaderTimeout: d.ResponseHeader,
		MaxIdleConnsPerHost:   2,
		IdleConnTimeout:       90 * time.Second,
	}}
}

// Unix returns a client that reaches the daemon's unix socket whatever the
// URL's host, with deadlines d (Dial and Total).
func Unix(socket string, d Deadlines) *http.Client {
	return &http.Client{Timeout: d.Total, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{Timeout: d.Dial}).DialContext(ctx, "unix", socket)
		},
	}}
}

// Pin is a CA pinned by the hash of its certificate, and what pinned it,
// for the error when a peer presents another CA.
type Pin struct {
	CAHash string
	// Also are more pinned CA hashes: during a CA rotation a node trusts
	// the old and the new CA (its trust bundle).
	Also   []string
	By     string // "the token", "this node's cluster CA (cluster-ca.crt)"
	Advice string // what to do about a mismatch
}

// Verify returns a verify function for MTLS: the peer must present a CA
// whose hash is the pinned one and a serving certificate signed by it,
// both valid at now().
func (p Pin) Verify(now func() time.Time) func(raw [][]byte) error {
	return func(raw [][]byte) error {
		var certs []*x509.Certificate
		for _, r := range raw {
			c, err := x509.ParseCertificate(r)
			if err != nil {
				return fmt.Errorf("manager sent an unparsable certificate: %w", err)
			}
			certs = append(certs, c)
		}
		if len(certs) == 0 {
			return errors.New("manager sent no certificate")
		}
		cas := p.findAll(certs)
		if len(cas) == 0 {
			got := ""
			if len(certs) > 1 {
				got = pki.CertHash(certs[len(certs)-1].Raw)
			}
			return &CAMismatchError{Pin: p, Got: got}
		}
		var err error
		for _, ca := range cas {
			pool := x509.NewCertPool()
			pool.AddCert(ca)
			if err = pki.VerifyChain(ca, pool, x509.ExtKeyUsageAny, now()); err != nil {
				continue
			}
			if err = pki.VerifyChain(certs[0], pool, x509.ExtKeyUsageServerAuth, now()); err == nil {
				return nil
			}
		}
		return err
	}
}

// Find returns the pinned CA among certs, nil if it is not there.
func (p Pin) Find(certs []*x509.Certificate) *x509.Certificate {
	cas := p.findAll(certs)
	if len(cas) == 0 {
		return nil
	}
	return cas[len(cas)-1]
}

// findAll returns the presented certificates whose hash is pinned.
func (p Pin) findAll(certs []*x509.Certificate) []*x509.Certificate {
	var out []*x509.Certificate
	for _, c := range certs {
		if h := pki.CertHash(c.Raw); h == p.CAHash || slices.Contains(p.Also, h) {
			out = append(out, c)
		}
	}
	return out
}

// CAMismatchError: the manager's CA is not the pinned one. Retrying cannot
// help.
type CAMismatchError struct {
	Pin
	Got string // the hash of the CA the manager sent, "" if it sent none
}

func (e *CAMismatchError) Error() string {
	got := ""
	if e.Got != "" {
		got = " (sha256 " + short(e.Got) + "…)"
	}
	return fmt.Sprintf("the manager's CA%s does not match %s (sha256 %s…): %s", got, e.By, short(e.CAHash), e.Advice)
}

func short(h string) string { return h[:min(12, len(h))] }

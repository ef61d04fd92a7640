package registry

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"strings"
	"syscall"

	"github.com/containerd/containerd/v2/core/remotes/docker"
	remoteerrors "github.com/containerd/containerd/v2/core/remotes/errors"
	"github.com/containerd/errdefs"
	"github.com/containerd/platforms"
)

// Explain turns a pull error from registry host into one line that says
// what went wrong and what to fix, with the underlying error after it.
func Explain(err error, host string) string {
	return fmt.Sprintf("%s (%v)", advice(err, host), err)
}

// Problem classes, as Classify names them.
const (
	UnknownHost  = "unknown host"
	Unreachable  = "unreachable"
	TLS          = "tls"
	Unauthorized = "unauthorized"
	NotFound     = "manifest not found"
	NoPlatform   = "no platform"
	Other        = "other"
)

// Classify names the class of a pull error.
func Classify(err error) string {
	var (
		dns      *net.DNSError
		unknown  x509.UnknownAuthorityError
		hostname x509.HostnameError
		invalid  x509.CertificateInvalidError
		verify   *tls.CertificateVerificationError
		record   tls.RecordHeaderError
		status   remoteerrors.ErrUnexpectedStatus
	)
	msg := err.Error()
	switch {
	case errors.As(err, &dns):
		return UnknownHost
	case errors.As(err, &unknown), errors.As(err, &hostname), errors.As(err, &invalid), errors.As(err, &verify), errors.As(err, &record),
		strings.Contains(msg, "server gave HTTP response to HTTPS client"):
		return TLS
	case errors.Is(err, docker.ErrInvalidAuthorization),
		errors.As(err, &status) && (status.StatusCode == 401 || status.StatusCode == 403),
		strings.Contains(msg, "401 Unauthorized"), strings.Contains(msg, "403 Forbidden"):
		return Unauthorized
	case strings.Contains(msg, "no match for platform"):
		return NoPlatform
	case errdefs.IsNotFound(err):
		return NotFound
	case errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH),
		errors.Is(err, syscall.ETIMEDOUT), strings.Contains(msg, "i/o timeout"):
		return Unreachable
	}
	return Other
}

// adviser is an error that knows what to fix (another node's answer).
type adviser interface{ Advice() string }

func advice(err error, host string) string {
	var a adviser
	if errors.As(err, &a) {
		return a.Advice()
	}
	switch Classify(err) {
	case UnknownHost:
		var dns *net.DNSError
		errors.As(err, &dns)
		return fmt.Sprintf("registry %s: unknown host %s (DNS has no address for it): check the image name's registry, or this node's DNS", host, dns.Name)
	case Unreachable:
		return fmt.Sprintf("registry %s is unreachable from this node: check that it runs and that this node has a route to it", host)
	case TLS:
		return fmt.Sprintf("registry %s: TLS failed: %s", host, certProblem(err, host))
	case Unauthorized:
		return fmt.Sprintf("registry %s: unauthorized: log in with `warren registry login %s --username USER --password-stdin`, or check that the user may pull this repository", host, host)
	case NoPlatform:
		return fmt.Sprintf("registry %s: the image has no variant for this board's platform (%s): build or push one for it", host, platformName())
	case NotFound:
		return fmt.Sprintf("registry %s: manifest not found: check the image's repository and tag", host)
	}
	return fmt.Sprintf("pull from registry %s failed", host)
}

// certProblem names the certificate problem in a TLS error.
func certProblem(err error, host string) string {
	var (
		unknown  x509.UnknownAuthorityError
		hostname x509.HostnameError
		invalid  x509.CertificateInvalidError
		record   tls.RecordHeaderError
	)
	switch {
	case errors.As(err, &unknown):
		return fmt.Sprintf("its certificate is signed by an unknown authority: give the registry's CA with `warren registry add %s --ca-file CA.pem`", host)
	case errors.As(err, &hostname):
		return fmt.Sprintf("its certificate is not valid for %s (%v): use the name the certificate holds, or a certificate for this name", host, hostname.Error())
	case errors.As(err, &invalid) && invalid.Reason == x509.Expired:
		return "its certificate is expired or not yet valid: renew it, or check this board's clock"
	case errors.As(err, &invalid):
		return fmt.Sprintf("its certificate is not valid: %v", invalid.Error())
	case errors.As(err, &record), strings.Contains(err.Error(), "server gave HTTP response to HTTPS client"):
		return fmt.Sprintf("it does not speak TLS: if it serves plain HTTP, add it with `warren registry add %s --insecure`", host)
	}
	return "certificate verification failed"
}

func platformName() string { return platforms.DefaultString() }

// Wrap is Explain as an error that still unwraps to err.
func Wrap(err error, host string) error { return &explained{msg: Explain(err, host), err: err} }

type explained struct {
	msg string
	err error
}

func (e *explained) Error() string { return e.msg }
func (e *explained) Unwrap() error { return e.err }

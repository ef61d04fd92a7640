// Package registry configures how a node talks to image registries: each
// registry's TLS (its own CA, or plain HTTP), its credentials, and the
// mirrors tried before it. It builds containerd's docker.RegistryHosts,
// checks credentials as `docker login` does, and turns pull errors into
// what to fix.
package registry

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/containerd/containerd/v2/core/remotes/docker"
)

// Config is one registry as a node uses it.
type Config struct {
	// Host is HOST[:PORT] as image references name it ("reg.example:5000").
	Host string
	// CA is the PEM bundle that signs the registry's certificate (nil: the
	// system's CAs).
	CA []byte
	// Insecure: plain HTTP.
	Insecure bool
	// MirrorOf is the registry this one mirrors ("docker.io"), or "".
	MirrorOf string
	// Username and Password; empty: anonymous.
	Username, Password string

	// implicit: not configured (an image's registry nobody added).
	implicit bool
}

// CheckHost validates HOST[:PORT]: a DNS name or IP literal, an optional
// port, nothing else (no scheme, no path).
func CheckHost(h string) error {
	if h == "" {
		return errors.New("registry host is empty: give HOST[:PORT], e.g. registry.example.com:5000")
	}
	if strings.Contains(h, "://") || strings.ContainsAny(h, "/ \t@?#") {
		return fmt.Errorf("registry %q is not HOST[:PORT]: leave out the scheme and any path, e.g. registry.example.com:5000", h)
	}
	name := h
	if host, port, err := net.SplitHostPort(h); err == nil {
		n, perr := strconv.Atoi(port)
		if perr != nil || n < 1 || n > 65535 {
			return fmt.Errorf("registry %q: port %q is not a number from 1 to 65535", h, port)
		}
		name = host
	}
	if name == "" {
		return fmt.Errorf("registry %q has no host name", h)
	}
	if net.ParseIP(strings.Trim(name, "[]")) != nil {
		return nil
	}
	for _, label := range strings.Split(name, ".") {
		if label == "" || len(label) > 63 || strings.HasPrefix(label, "-") || strings.HasSuffix(label, "-") {
			return fmt.Errorf("registry %q: %q is not a valid host name", h, name)
		}
		for _, r := range label {
			if !(r == '-' || r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z') {
				return fmt.Errorf("registry %q: %q is not a valid host name", h, name)
			}
		}
	}
	return nil
}

// CheckCA parses a PEM bundle and returns its pool.
func CheckCA(pemData []byte) (*x509.CertPool, error) {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pemData) {
		return nil, errors.New("no PEM certificate in it: give the CA certificate that signed the registry's certificate (PEM)")
	}
	return pool, nil
}

// tlsConfig is the client TLS of c: its CA when given, else the system's.
func tlsConfig(c Config) (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if len(c.CA) > 0 {
		pool, err := CheckCA(c.CA)
		if err != nil {
			return nil, fmt.Errorf("registry %s: CA: %w", c.Host, err)
		}
		cfg.RootCAs = pool
	}
	return cfg, nil
}

func (c Config) scheme() string {
	if c.Insecure {
		return "http"
	}
	if local, _ := docker.MatchLocalhost(c.Host); local && c.implicit {
		return "http" // as Docker: a registry on localhost speaks plain HTTP unless added
	}
	return "https"
}

// host renders c as containerd's RegistryHost with its own client (TLS)
// and authorizer (credentials for c.Host only).
func (c Config) host(caps docker.HostCapabilities) (docker.RegistryHost, error) {
	tc, err := tlsConfig(c)
	if err != nil {
		return docker.RegistryHost{}, err
	}
	client := &http.Client{Transport: docker.DefaultHTTPTransport(tc)}
	var opts []docker.AuthorizerOpt
	opts = append(opts, docker.WithAuthClient(client))
	if c.Username != "" {
		user, pass := c.Username, c.Password
		// As Docker: the credentials go to the registry and to the token
		// realm its challenge names.
		opts = append(opts, docker.WithAuthCreds(func(string) (string, string, error) { return user, pass, nil }))
	}
	name := c.Host
	if name == "docker.io" {
		name = "registry-1.docker.io"
	}
	return docker.RegistryHost{
		Client:       client,
		Authorizer:   docker.NewDockerAuthorizer(opts...),
		Host:         name,
		Scheme:       c.scheme(),
		Path:         "/v2",
		Capabilities: caps,
	}, nil
}

// Hosts returns containerd's RegistryHosts for the registries regs: for a
// registry name, the mirrors of it in the order of regs (pull and resolve
// only), then the registry itself, as configured in regs or, when it is
// not, with defaults (HTTPS with the system's CAs, anonymous).
func Hosts(regs []Config) docker.RegistryHosts {
	return func(name string) ([]docker.RegistryHost, error) {
		var out []docker.RegistryHost
		self := Config{Host: name, implicit: true}
		for _, r := range regs {
			switch {
			case r.MirrorOf == name && r.Host != name:
				h, err := r.host(docker.HostCapabilityPull | docker.HostCapabilityResolve)
				if err != nil {
					return nil, err
				}
				out = append(out, h)
			case r.Host == name:
				self = r
			}
		}
		h, err := self.host(docker.HostCapabilityPull | docker.HostCapabilityResolve | docker.HostCapabilityPush | docker.HostCapabilityReferrers)
		if err != nil {
			return nil, err
		}
		return append(out, h), nil
	}
}

// CheckLogin checks c's credentials against the registry as `docker login`
// does: GET /v2/, and on a 401 the challenge's flow (basic, or a bearer
// token from the realm it names) with the credentials, which must end in
// a 200. The error holds the registry's answer.
func CheckLogin(ctx context.Context, c Config) error {
	h, err := c.host(docker.HostCapabilityPull)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	url := h.Scheme + "://" + h.Host + h.Path + "/"
	get := func() (*http.Request, error) { return http.NewRequestWithContext(ctx, http.MethodGet, url, nil) }
	req, err := get()
	if err != nil {
		return err
	}
	resp, err := h.Client.Do(req)
	if err != nil {
		return fmt.Errorf("%s", Explain(err, c.Host))
	}
	drain(resp)
	switch {
	case resp.StatusCode == http.StatusOK:
		return nil // no authentication wanted
	case resp.StatusCode != http.StatusUnauthorized:
		return fmt.Errorf("registry %s answered GET /v2/ with %s: is it a registry (Docker registry API v2)?", c.Host, resp.Status)
	}
	if err := h.Authorizer.AddResponses(ctx, []*http.Response{resp}); err != nil {
		return fmt.Errorf("registry %s: its challenge (%q): %w", c.Host, resp.Header.Get("WWW-Authenticate"), err)
	}
	req, err = get()
	if err != nil {
		return err
	}
	if err := h.Authorizer.Authorize(ctx, req); err != nil {
		return fmt.Errorf("registry %s refused the credentials of %q: %w", c.Host, c.Username, err)
	}
	resp, err = h.Client.Do(req)
	if err != nil {
		return fmt.Errorf("%s", Explain(err, c.Host))
	}
	body := drain(resp)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("registry %s refused the credentials of %q: %s %s", c.Host, c.Username, resp.Status, strings.TrimSpace(body))
	}
	return nil
}

// drain reads (at most 4 KiB of) a response's body and closes it.
func drain(resp *http.Response) string {
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
	return string(b)
}

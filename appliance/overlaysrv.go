package appliance

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"time"
)

// overlayServer is one of the node's HTTPS servers on its overlay address
// (task logs and volumes for managers, image blobs for nodes): mTLS with
// the node's own certificate, and a client check of the caller's leaf
// against the cluster CAs. None of them is on the LAN.
type overlayServer struct {
	name    string // for errors and logs: "blob server"
	overlay netip.Addr
	port    int
	ident   func() (*tls.Certificate, *x509.CertPool)
	// verify checks the client's leaf certificate against the pool.
	verify  func(leaf *x509.Certificate, pool *x509.CertPool) error
	handler http.Handler
}

// serve listens (a few tries: the overlay address comes up with the
// tunnel) and serves until ctx ends.
func (s overlayServer) serve(ctx context.Context, log *slog.Logger) error {
	addr := net.JoinHostPort(s.overlay.String(), strconv.Itoa(s.port))
	var ln net.Listener
	var err error
	for i := 0; i < 20; i++ {
		if ln, err = net.Listen("tcp", addr); err == nil {
			break
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(250 * time.Millisecond):
		}
	}
	if err != nil {
		return fmt.Errorf("%s on %s: %w", s.name, addr, err)
	}
	conf := &tls.Config{
		MinVersion: tls.VersionTLS13,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			c, _ := s.ident()
			return c, nil
		},
		ClientAuth: tls.RequireAnyClientCert,
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			if len(raw) == 0 {
				return errors.New("no client certificate")
			}
			leaf, err := x509.ParseCertificate(raw[0])
			if err != nil {
				return err
			}
			_, pool := s.ident()
			return s.verify(leaf, pool)
		},
	}
	srv := &http.Server{Handler: s.handler, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: time.Minute,
		BaseContext: func(net.Listener) context.Context { return ctx }}
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
	log.Info(s.name+" up", "listen", addr)
	if err := srv.Serve(tls.NewListener(ln, conf)); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

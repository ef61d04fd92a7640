package agent

import (
	"bytes"
	"crypto/x509"
	"fmt"
	"slices"

	"github.com/warren-appliance/warren/cluster/apicall"
	"github.com/warren-appliance/warren/cluster/clustermap"
	"github.com/warren-appliance/warren/cluster/pki"
	"github.com/warren-appliance/warren/internal/atomicfile"
)

// The node's trust bundle (FileCA): the CAs it accepts managers of,
// current first. It starts as the CA the join token pinned; during a CA
// rotation the map (received over the mTLS stream this bundle already
// authenticates) adds the new CA first, and when the rotation finishes it
// drops the old one. A node whose certificate the current CA did not sign
// renews it at once.

// trustCerts returns the bundle (shared: do not modify).
func (a *Agent) trustCerts() []*x509.Certificate {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.trust
}

// identityPeer talks to managers whose chain ends at a CA of the bundle
// held at the time of each handshake.
func (a *Agent) identityPeer() apicall.Caller {
	return a.peerVerify(func(raw [][]byte) error {
		return identityPin(a.trustCerts()).Verify(a.now)(raw)
	})
}

// identityPin pins the CAs of the bundle.
func identityPin(trust []*x509.Certificate) apicall.Pin {
	p := apicall.Pin{By: "this node's cluster CA (" + FileCA + ")",
		Advice: "this address now serves another cluster (was the manager re-created, or the cluster's CA rotated while this node was away?); to join that cluster, clear the state dir and join with its token"}
	for i, c := range trust {
		if i == 0 {
			p.CAHash = pki.CertHash(c.Raw)
			continue
		}
		p.Also = append(p.Also, pki.CertHash(c.Raw))
	}
	return p
}

func encodeBundle(certs []*x509.Certificate) []byte {
	var out []byte
	for _, c := range certs {
		out = append(out, pki.EncodeCertPEM(c.Raw)...)
	}
	return out
}

// setTrust stores bundle as the node's trust (FileCA) if it differs.
func (a *Agent) setTrust(bundle []byte) (changed bool, err error) {
	certs, err := pki.ParseCertsPEM(bundle)
	if err != nil {
		return false, fmt.Errorf("trust bundle: %w", err)
	}
	for _, c := range certs {
		if !c.IsCA {
			return false, fmt.Errorf("trust bundle: %q is not a CA", c.Subject.CommonName)
		}
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if bytes.Equal(encodeBundle(a.trust), encodeBundle(certs)) {
		return false, nil
	}
	if err := atomicfile.Write(a.path(FileCA), encodeBundle(certs), 0o644); err != nil {
		return false, fmt.Errorf("save cluster CA bundle: %w", err)
	}
	a.trust = certs
	return true, nil
}

// noteTrust takes the map's trust bundle; when this node's certificate is
// not signed by the bundle's first CA (a rotation started) it asks for an
// early renewal.
func (a *Agent) noteTrust(m *clustermap.Map) {
	if len(m.TrustBundle) == 0 {
		return // a manager from before CA rotation
	}
	changed, err := a.setTrust(m.TrustBundle)
	if err != nil {
		a.log.Error("the map's trust bundle is unusable; keeping this node's", "err", err)
		return
	}
	if changed {
		hashes := []string{}
		for _, c := range a.trustCerts() {
			hashes = append(hashes, pki.CertHash(c.Raw)[:12])
		}
		a.log.Info("cluster trust bundle changed (CA rotation)", "cas", hashes)
		// Pooled connections were checked against the old bundle.
		a.peer.HTTP.CloseIdleConnections()
	}
	if a.needsNewCA() {
		select {
		case a.renewKick <- struct{}{}:
		default:
		}
	}
}

// needsNewCA reports whether this node's certificate is not signed by the
// current CA (the bundle's first).
func (a *Agent) needsNewCA() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.trust) == 0 || a.cert.Leaf == nil {
		return false
	}
	return a.cert.Leaf.CheckSignatureFrom(a.trust[0]) != nil
}

// trustPool returns a pool of the bundle.
func (a *Agent) trustPool() *x509.CertPool {
	p := x509.NewCertPool()
	for _, c := range a.trustCerts() {
		p.AddCert(c)
	}
	return p
}

// bundleWith returns the join answer's bundle, or the pinned CA alone
// (a manager from before CA rotation sends none); the pinned CA must be
// in it.
func bundleWith(pinned *x509.Certificate, bundle []byte) ([]*x509.Certificate, error) {
	if len(bundle) == 0 {
		return []*x509.Certificate{pinned}, nil
	}
	certs, err := pki.ParseCertsPEM(bundle)
	if err != nil {
		return nil, fmt.Errorf("join: the manager's trust bundle: %w", err)
	}
	if !slices.ContainsFunc(certs, func(c *x509.Certificate) bool { return bytes.Equal(c.Raw, pinned.Raw) }) {
		return nil, fmt.Errorf("join: the manager's trust bundle does not hold the CA the token pins")
	}
	return certs, nil
}

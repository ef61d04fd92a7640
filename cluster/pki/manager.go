package pki

import (
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"slices"
	"time"
)

// ManagerUnit is the OrganizationalUnit that marks a manager's certificate:
// only such certificates may speak the managers' Raft and forwarding
// protocol. Worker certificates never carry it.
const ManagerUnit = "warren-manager"

// SessionUnit marks the certificate a manager issues itself at every start
// for Raft and forwarded calls (beside ManagerUnit). Its serial is not
// recorded anywhere: the managers accept it for the member's recorded TLS
// key only, while a manager's node certificate (from join or renewal) is
// accepted for its recorded serials only.
const SessionUnit = "warren-manager-session"

// IsSession reports whether cert is a manager's session certificate.
func IsSession(cert *x509.Certificate) bool {
	return slices.Contains(cert.Subject.OrganizationalUnit, SessionUnit)
}

// SignManagerSession signs a manager's own session certificate (CSR signed
// with its node TLS key), valid for NodeValidity.
func (ca *CA) SignManagerSession(csrDER []byte, nodeID string, now time.Time) (*x509.Certificate, error) {
	return ca.signManager(csrDER, nodeID, now, NodeValidity, []string{ManagerUnit, SessionUnit})
}

// SignManager signs a manager's CSR: like SignNode (CN = node ID, same
// validity) plus the manager unit and server use, since managers also
// accept each other's connections.
func (ca *CA) SignManager(csrDER []byte, nodeID string, now time.Time) (*x509.Certificate, error) {
	return ca.SignManagerFor(csrDER, nodeID, now, NodeValidity)
}

// SignManagerFor is SignManager with a given lifetime (as SignNodeFor).
func (ca *CA) SignManagerFor(csrDER []byte, nodeID string, now time.Time, lifetime time.Duration) (*x509.Certificate, error) {
	return ca.signManager(csrDER, nodeID, now, lifetime, []string{ManagerUnit})
}

func (ca *CA) signManager(csrDER []byte, nodeID string, now time.Time, lifetime time.Duration, units []string) (*x509.Certificate, error) {
	if lifetime <= 0 {
		lifetime = NodeValidity
	}
	csr, err := ParseCSR(csrDER)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: randomSerial(),
		Subject:      pkix.Name{CommonName: nodeID, Organization: ca.Cert.Subject.Organization, OrganizationalUnit: units},
		NotBefore:    now.Add(-Backdate),
		NotAfter:     now.Add(lifetime),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, csr.PublicKey, ca.Key)
	if err != nil {
		return nil, fmt.Errorf("sign manager certificate: %w", err)
	}
	return x509.ParseCertificate(der)
}

// VerifyManager checks that cert chains to roots for usage and is a
// manager's certificate; it returns the manager's node ID.
func VerifyManager(cert *x509.Certificate, roots *x509.CertPool, usage x509.ExtKeyUsage, now time.Time) (string, error) {
	if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{usage}}); err != nil {
		return "", fmt.Errorf("certificate %q is not valid for this cluster: %w", cert.Subject.CommonName, err)
	}
	if !slices.Contains(cert.Subject.OrganizationalUnit, ManagerUnit) {
		return "", fmt.Errorf("certificate %q is not a manager's certificate", cert.Subject.CommonName)
	}
	return cert.Subject.CommonName, nil
}

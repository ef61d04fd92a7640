// Package pki holds the cluster's certificate authority: creating it,
// signing node client certificates from CSRs, issuing the manager's serving
// certificate, and the join tokens that pin the CA by hash.
package pki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net/netip"
	"time"
)

// Validity periods. The CA lives long because edge boards are rarely
// re-provisioned; node certificates live NodeValidity unless the manager's
// cluster.cert_lifetime says otherwise, and the agent renews them at about
// two thirds of their lifetime.
const (
	CAValidity   = 20 * 365 * 24 * time.Hour
	NodeValidity = 90 * 24 * time.Hour
	// Backdate absorbs small clock differences between boards.
	Backdate = time.Hour
)

// CA is the cluster's certificate authority.
type CA struct {
	Cert *x509.Certificate
	Key  *ecdsa.PrivateKey
}

// NewCA creates a self-signed ECDSA P-256 CA for the cluster.
func NewCA(clusterID string, now time.Time) (*CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate CA key: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          randomSerial(),
		Subject:               pkix.Name{CommonName: "warren cluster CA " + clusterID, Organization: []string{"warren:" + clusterID}},
		NotBefore:             now.Add(-Backdate),
		NotAfter:              now.Add(CAValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("self-sign CA: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parse new CA: %w", err)
	}
	return &CA{Cert: cert, Key: key}, nil
}

// LoadCA parses a CA from PEM cert and key.
func LoadCA(certPEM, keyPEM []byte) (*CA, error) {
	cert, err := ParseCertPEM(certPEM)
	if err != nil {
		return nil, fmt.Errorf("CA certificate: %w", err)
	}
	key, err := ParseKeyPEM(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("CA key: %w", err)
	}
	return &CA{Cert: cert, Key: key}, nil
}

// Hash is the CA's fingerprint carried in join tokens: lowercase hex
// sha256 of the certificate's DER.
func (ca *CA) Hash() string { return CertHash(ca.Cert.Raw) }

// CertHash returns the lowercase hex sha256 of a certificate's DER.
func CertHash(der []byte) string {
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:])
}

// CertPEM returns the CA certificate in PEM.
func (ca *CA) CertPEM() []byte { return EncodeCertPEM(ca.Cert.Raw) }

// KeyPEM returns the CA key in PEM.
func (ca *CA) KeyPEM() ([]byte, error) { return EncodeKeyPEM(ca.Key) }

// Pool returns a pool holding only this CA.
func (ca *CA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.Cert)
	return p
}

// SignNode signs a node's CSR into a client certificate valid NodeValidity.
func (ca *CA) SignNode(csrDER []byte, nodeID string, now time.Time) (*x509.Certificate, error) {
	return ca.SignNodeFor(csrDER, nodeID, now, NodeValidity)
}

// SignNodeFor signs a node's CSR into a client certificate whose CommonName
// is nodeID (the manager trusts the CN, never the CSR's subject), valid for
// lifetime from now.
func (ca *CA) SignNodeFor(csrDER []byte, nodeID string, now time.Time, lifetime time.Duration) (*x509.Certificate, error) {
	csr, err := ParseCSR(csrDER)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: randomSerial(),
		Subject:      pkix.Name{CommonName: nodeID, Organization: ca.Cert.Subject.Organization},
		NotBefore:    now.Add(-Backdate),
		NotAfter:     now.Add(lifetime),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, csr.PublicKey, ca.Key)
	if err != nil {
		return nil, fmt.Errorf("sign node certificate: %w", err)
	}
	return x509.ParseCertificate(der)
}

// ParseCSR parses a certificate request and checks its signature, which
// proves that the sender holds the private key of the key it names.
func ParseCSR(der []byte) (*x509.CertificateRequest, error) {
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, fmt.Errorf("parse certificate request: %w", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("certificate request signature: %w", err)
	}
	return csr, nil
}

// KeyHash is the lowercase hex sha256 of a public key's PKIX encoding: how
// the manager remembers which TLS key a node holds.
func KeyHash(pub any) string {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return ""
	}
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:])
}

// Serial is a certificate's serial number as the manager records it.
func Serial(c *x509.Certificate) string { return c.SerialNumber.Text(16) }

// IssuedAt is when a certificate was signed (its NotBefore is backdated).
func IssuedAt(c *x509.Certificate) time.Time { return c.NotBefore.Add(Backdate) }

// RenewAt is when a holder should renew c: at frac (about 2/3) of its
// lifetime from issue.
func RenewAt(c *x509.Certificate, frac float64) time.Time {
	issued := IssuedAt(c)
	return issued.Add(time.Duration(float64(c.NotAfter.Sub(issued)) * frac))
}

// IssueServer creates the manager's TLS serving key and certificate. Nodes
// reach managers by IP and pin the CA, so the SANs are informative only.
func (ca *CA) IssueServer(name string, addrs []netip.Addr, now time.Time) (certDER []byte, key *ecdsa.PrivateKey, err error) {
	key, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generate server key: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: randomSerial(),
		Subject:      pkix.Name{CommonName: name, Organization: ca.Cert.Subject.Organization},
		DNSNames:     []string{name},
		NotBefore:    now.Add(-Backdate),
		NotAfter:     ca.Cert.NotAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, a := range addrs {
		tmpl.IPAddresses = append(tmpl.IPAddresses, a.AsSlice())
	}
	certDER, err = x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.Key)
	if err != nil {
		return nil, nil, fmt.Errorf("sign server certificate: %w", err)
	}
	return certDER, key, nil
}

// NewKey generates a node's private TLS key; it never leaves the node.
func NewKey() (*ecdsa.PrivateKey, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate TLS key: %w", err)
	}
	return key, nil
}

// NewCSR builds a certificate request for key, naming the node.
func NewCSR(key *ecdsa.PrivateKey, name string) ([]byte, error) {
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: name}}, key)
	if err != nil {
		return nil, fmt.Errorf("create certificate request: %w", err)
	}
	return der, nil
}

// VerifyChain checks cert against roots for usage at time now. It returns a
// *ClockError when the only problem is that now is outside the validity.
func VerifyChain(cert *x509.Certificate, roots *x509.CertPool, usage x509.ExtKeyUsage, now time.Time) error {
	_, err := cert.Verify(x509.VerifyOptions{Roots: roots, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{usage}})
	var inv x509.CertificateInvalidError
	if errors.As(err, &inv) && inv.Reason == x509.Expired {
		c := inv.Cert
		if c == nil {
			c = cert
		}
		return &ClockError{Now: now, NotBefore: c.NotBefore, NotAfter: c.NotAfter, Subject: c.Subject.CommonName}
	}
	return err
}

// ClockError says a certificate is outside its validity at this node's
// clock, which on boards without an RTC usually means the clock is wrong.
type ClockError struct {
	Now, NotBefore, NotAfter time.Time
	Subject                  string
}

func (e *ClockError) Error() string {
	if e.Now.Before(e.NotBefore) {
		return fmt.Sprintf("this node's clock says %s, before certificate %q becomes valid (%s): the clock is wrong "+
			"(boards without a real-time clock boot in the past); set it or enable NTP (systemd-timesyncd) and retry",
			e.Now.UTC().Format(time.RFC3339), e.Subject, e.NotBefore.UTC().Format(time.RFC3339))
	}
	return fmt.Sprintf("certificate %q expired at %s (this node's clock says %s): if the clock is right, the node must be renewed or rejoined",
		e.Subject, e.NotAfter.UTC().Format(time.RFC3339), e.Now.UTC().Format(time.RFC3339))
}

// EncodeCertPEM wraps DER in a CERTIFICATE block.
func EncodeCertPEM(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// EncodeKeyPEM encodes an EC private key.
func EncodeKeyPEM(key *ecdsa.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("marshal key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), nil
}

// ParseCertPEM parses the first CERTIFICATE block.
func ParseCertPEM(data []byte) (*x509.Certificate, error) {
	block, _ := pem.Decode(data)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, errors.New("no PEM CERTIFICATE block")
	}
	return x509.ParseCertificate(block.Bytes)
}

// ParseKeyPEM parses an EC PRIVATE KEY block.
func ParseKeyPEM(data []byte) (*ecdsa.PrivateKey, error) {
	block, _ := pem.Decode(data)
	if block == nil || block.Type != "EC PRIVATE KEY" {
		return nil, errors.New("no PEM EC PRIVATE KEY block")
	}
	return x509.ParseECPrivateKey(block.Bytes)
}

func randomSerial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 126))
	if err != nil {
		panic(fmt.Sprintf("crypto/rand failed: %v", err))
	}
	return n.Add(n, big.NewInt(1))
}

// NewRotatedCA creates the CA that replaces a cluster's current one in
// `warren cluster ca rotate`: the same key type (ECDSA P-256) and
// organization as NewCA, and a subject naming its generation, so two CAs
// of one cluster never share a subject (chain building tells them apart).
func NewRotatedCA(clusterID string, generation int, now time.Time) (*CA, error) {
	ca, err := NewCA(clusterID, now)
	if err != nil {
		return nil, err
	}
	tmpl := *ca.Cert
	tmpl.Raw, tmpl.RawSubject, tmpl.RawIssuer, tmpl.RawTBSCertificate, tmpl.RawSubjectPublicKeyInfo = nil, nil, nil, nil, nil
	tmpl.Subject = pkix.Name{CommonName: fmt.Sprintf("warren cluster CA %s gen %d", clusterID, generation), Organization: []string{"warren:" + clusterID}}
	der, err := x509.CreateCertificate(rand.Reader, &tmpl, &tmpl, &ca.Key.PublicKey, ca.Key)
	if err != nil {
		return nil, fmt.Errorf("self-sign CA: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parse new CA: %w", err)
	}
	return &CA{Cert: cert, Key: ca.Key}, nil
}

// KeyMatches reports whether the CA's key is the one its certificate names.
func (ca *CA) KeyMatches() bool {
	return KeyHash(ca.Cert.PublicKey) != "" && KeyHash(ca.Cert.PublicKey) == KeyHash(&ca.Key.PublicKey)
}

// ParseCertsPEM parses every CERTIFICATE block of data (a trust bundle).
func ParseCertsPEM(data []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("unexpected PEM block %q in a certificate bundle", block.Type)
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		return nil, errors.New("no PEM CERTIFICATE block")
	}
	return out, nil
}

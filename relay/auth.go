package relay

import (
	"crypto/x509"
	"errors"
	"fmt"
	"time"

	"github.com/warren-appliance/warren/cluster/pki"
)

// VerifyMember returns the check a relay's TLS leg applies to a client
// (relays that are not managers; a manager's API port checks members
// itself): a client certificate of the cluster's CA whose node ID (its CN)
// is a member the server serves now. It returns that node ID.
func (s *Server) VerifyMember(pool func() *x509.CertPool) func([]*x509.Certificate) (string, error) {
	return func(certs []*x509.Certificate) (string, error) {
		if len(certs) == 0 {
			return "", errors.New("no client certificate: only cluster members may use the relay")
		}
		leaf := certs[0]
		if err := pki.VerifyChain(leaf, pool(), x509.ExtKeyUsageClientAuth, time.Now()); err != nil {
			return "", fmt.Errorf("relay client: %w", err)
		}
		id := leaf.Subject.CommonName
		if !s.IsMember(id) {
			return "", fmt.Errorf("relay client %q is not a member of this cluster", id)
		}
		return id, nil
	}
}

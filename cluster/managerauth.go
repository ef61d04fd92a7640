package cluster

import (
	"crypto/ecdsa"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/warren-appliance/warren/cluster/clustermap"
	"github.com/warren-appliance/warren/cluster/pki"
	"github.com/warren-appliance/warren/internal/atomicfile"
)

// managerCred is what the managers accept from one manager: its newest
// node certificate's serial (join or renewal) and its TLS key, for which
// its session certificate (pki.SessionUnit) is issued.
type managerCred struct {
	serial, key string
}

// publishCredsLocked makes the current state's managers the ones
// liveManager accepts, and its members' addresses the ones knownAddr knows. It is read without m.mu: Raft connections check it
// on every read, while m.mu may be held waiting for a Raft commit.
func (m *Manager) publishCredsLocked() {
	c := map[string]managerCred{}
	for id, n := range m.st.nodes {
		if n.Role == clustermap.RoleManager {
			c[id] = managerCred{serial: n.CertSerial, key: n.TLSKey}
		}
	}
	m.creds.Store(&c)
	known := map[netip.Addr]bool{}
	for _, n := range m.st.nodes {
		if n.Endpoint.IsValid() {
			known[n.Endpoint.Addr().Unmap()] = true
		}
		if ap, err := netip.ParseAddrPort(n.API); err == nil {
			known[ap.Addr().Unmap()] = true
		}
	}
	m.known.Store(&known)
}

// knownAddr reports whether a is a member's endpoint or API address.
func (m *Manager) knownAddr(a netip.Addr) bool {
	p := m.known.Load()
	return p != nil && (*p)[a]
}

// liveManager checks a manager certificate whose chain was verified
// against the current state: its ID must be a manager member, and the
// certificate either its newest node certificate (recorded serial and TLS key) or
// a session certificate for its recorded TLS key. A manager without state yet (a
// joining one) accepts any chain-verified manager: it cannot tell.
func (m *Manager) liveManager(leaf *x509.Certificate) (string, error) {
	id := leaf.Subject.CommonName
	p := m.creds.Load()
	if p == nil {
		return id, nil
	}
	c, ok := (*p)[id]
	if !ok {
		return "", fmt.Errorf("manager %s is not a manager of this cluster (removed?)", id)
	}
	if pki.IsSession(leaf) {
		if c.key != "" && pki.KeyHash(leaf.PublicKey) != c.key {
			return "", fmt.Errorf("manager %s: session certificate for a TLS key the member no longer holds (superseded)", id)
		}
		return id, nil
	}
	// Only the newest: the one a renewal replaced (kept on the node API in
	// case the renewal's answer was lost) is no use here, where managers
	// present their session certificates.
	if s := pki.Serial(leaf); c.serial != "" && s != c.serial {
		return "", fmt.Errorf("manager %s: certificate serial %s is superseded by a newer one", id, s)
	}
	// Serials are in every manager's copy of the state: one signed with a
	// copy of the CA key must also hold the member's own key.
	if c.key != "" && pki.KeyHash(leaf.PublicKey) != c.key {
		return "", fmt.Errorf("manager %s: certificate for a TLS key the member does not hold", id)
	}
	return id, nil
}

// raftConn is a Raft connection with a manager whose certificate is
// checked again on every read: a manager removed with `node rm`, or whose
// certificate was superseded, loses the connections it holds at once.
type raftConn struct {
	net.Conn
	m    *Manager
	leaf *x509.Certificate
}

func (c *raftConn) Read(b []byte) (int, error) {
	// Checked after the read: Raft's reader waits in Read between RPCs,
	// and what arrives after a removal must not be used.
	n, err := c.Conn.Read(b)
	if _, bad := c.m.liveManager(c.leaf); bad != nil {
		c.Conn.Close()
		return 0, fmt.Errorf("raft connection refused: %w", bad)
	}
	return n, err
}

// nodeKeyFile is agent.FileTLSKey (the agent's tests import this package,
// so it cannot import the agent; TestNodeKeyFileIsTheAgents keeps them equal).
const nodeKeyFile = "node-tls.key"

// nodeKey is this manager's node TLS key (the agent's, in the state dir),
// created on the manager that creates the cluster. Session certificates
// are issued for it, so the managers can tell a member's session
// certificate from a stolen or superseded one by the key recorded at join.
func (m *Manager) nodeKey() (*ecdsa.PrivateKey, error) {
	path := filepath.Join(m.cfg.StateDir, nodeKeyFile)
	b, err := os.ReadFile(path)
	if err == nil {
		key, err := pki.ParseKeyPEM(b)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		return key, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	key, err := pki.NewKey()
	if err != nil {
		return nil, err
	}
	if b, err = pki.EncodeKeyPEM(key); err != nil {
		return nil, err
	}
	if err := atomicfile.Write(path, b, 0o600); err != nil {
		return nil, fmt.Errorf("write this manager's TLS key: %w", err)
	}
	return key, nil
}

package api

import (
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"net/netip"
	"regexp"
	"time"
	"unicode/utf8"

	"github.com/warren-appliance/warren/cluster/clustermap"
	"github.com/warren-appliance/warren/internal/wgkey"
)

// WatchKeepalive is how often an idle watch stream carries an empty line,
// so agents notice a dead manager without TCP timeouts; agents give up on a
// stream silent for three of them. A manager says its own period in the
// HeaderKeepalive of the stream's answer.
const WatchKeepalive = 15 * time.Second

// HeaderKeepalive carries the manager's watch keepalive period (a Go
// duration, e.g. "15s") on a PathWatch answer.
const HeaderKeepalive = "X-Warren-Keepalive"

// Bounds on a node's labels (join, self update): one node must not be able
// to grow the map, the store or every node's cached map.
const (
	MaxLabels     = 64
	MaxLabelKey   = 63
	MaxLabelValue = 253
)

// NodeInfo is what a node says about itself when it joins.
type NodeInfo struct {
	Name      string
	Role      string
	Labels    map[string]string
	Endpoint  netip.AddrPort // advertise address : WireGuard port
	PublicKey string         // WireGuard, base64
	Relay     string         // IP:port where this node relays, "" if it does not
}

var nameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

// Validate says what is wrong with n, if anything: the node checks its own
// before it asks, the manager checks what it is asked.
func (n NodeInfo) Validate() error {
	if !nameRE.MatchString(n.Name) {
		return fmt.Errorf("node name %q is not valid: use 1-63 lowercase letters, digits and '-', starting and ending with a letter or digit", n.Name)
	}
	if n.Role != clustermap.RoleManager && n.Role != clustermap.RoleWorker {
		return fmt.Errorf("node role %q is not valid: want manager or worker", n.Role)
	}
	k, err := base64.StdEncoding.DecodeString(n.PublicKey)
	if err != nil || len(k) != 32 {
		return fmt.Errorf("WireGuard public key %q is not valid: want 32 bytes in base64 (as `wg pubkey` prints)", n.PublicKey)
	}
	if err := wgkey.Check(k); err != nil {
		// Such a key gives no shared secret: WireGuard refuses the peer.
		return fmt.Errorf("WireGuard public key %q is not usable (%v): generate one with `wg genkey | wg pubkey`", n.PublicKey, err)
	}
	if !n.Endpoint.IsValid() || n.Endpoint.Port() == 0 {
		return fmt.Errorf("advertise endpoint %q is not valid: want IP:PORT of the WireGuard listener", n.Endpoint)
	}
	if err := validateLabels(n.Labels); err != nil {
		return fmt.Errorf("node labels: %w", err)
	}
	if n.Relay != "" {
		if ap, err := netip.ParseAddrPort(n.Relay); err != nil || ap.Port() == 0 {
			return fmt.Errorf("relay address %q is not valid: want IP:PORT", n.Relay)
		}
	}
	return nil
}

func validateLabels(labels map[string]string) error {
	if len(labels) > MaxLabels {
		return fmt.Errorf("%d labels: at most %d", len(labels), MaxLabels)
	}
	for k, v := range labels {
		if k == "" || len(k) > MaxLabelKey || !printable(k) {
			return fmt.Errorf("label key %.70q: want 1-%d printable characters", k, MaxLabelKey)
		}
		if len(v) > MaxLabelValue || !printable(v) {
			return fmt.Errorf("label %q value: want at most %d printable characters", k, MaxLabelValue)
		}
	}
	return nil
}

func printable(s string) bool {
	if !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if r < 0x20 || r == 0x7f {
			return false
		}
	}
	return true
}

// ManagerJoin is what a node that joined with a manager token hands to the
// Manager it then runs (the agent's ManagerJoin gives it).
type ManagerJoin struct {
	ID     string          // its node ID
	Cert   tls.Certificate // its manager certificate (chain to the CA)
	CACert []byte          // the cluster CA, PEM
	Leader string          // host:port of the manager it joined through
}

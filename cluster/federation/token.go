package federation

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/netip"
	"regexp"
	"strings"

	"github.com/warren-appliance/warren/cluster/clustermap"
)

// TokenPrefix starts every peer token; the number is the format version.
// It differs from the join token's (WRN-1-) so neither is taken for the
// other.
const TokenPrefix = "WRNP-1-"

// MaxTokenManagers bounds the manager addresses a token carries.
const MaxTokenManagers = 16

var (
	hashRE   = regexp.MustCompile(`^[0-9a-f]{64}$`)
	secretRE = regexp.MustCompile(`^[a-z2-7]{26}$`)
)

// Token is what `warren cluster peer token` prints on cluster B: how to
// reach B's managers, the hash of B's CA (pinned by A before it sends
// anything, as a join token pins it), B's ranges (so A refuses an
// overlapping peer before dialling) and the secret that lets A register
// itself with B.
type Token struct {
	ClusterID string             `json:"cluster_id"`
	CAHash    string             `json:"ca_hash"`
	Managers  []string           `json:"managers"`
	Network   clustermap.Network `json:"network"`
	Secret    string             `json:"secret"`
}

// String encodes the token as WRNP-1-<base64url of its JSON>.
func (t Token) String() string {
	b, err := json.Marshal(t)
	if err != nil {
		panic(fmt.Sprintf("encode peer token: %v", err)) // plain fields: cannot fail
	}
	return TokenPrefix + base64.RawURLEncoding.EncodeToString(b)
}

// ParseToken decodes and checks a peer token.
func ParseToken(s string) (Token, error) {
	s = strings.TrimSpace(s)
	if !strings.HasPrefix(s, TokenPrefix) {
		if strings.HasPrefix(s, "WRN-1-") {
			return Token{}, fmt.Errorf("this is a join token, not a peer token: print a peer token on the other cluster's manager with `warren cluster peer token`")
		}
		return Token{}, fmt.Errorf("peer token must start with %q (print one on the other cluster's manager with `warren cluster peer token`)", TokenPrefix)
	}
	raw, err := base64.RawURLEncoding.DecodeString(strings.TrimPrefix(s, TokenPrefix))
	if err != nil {
		return Token{}, fmt.Errorf("peer token is malformed (was it truncated when copied?): %w", err)
	}
	var t Token
	if err := json.Unmarshal(raw, &t); err != nil {
		return Token{}, fmt.Errorf("peer token is malformed (was it truncated when copied?): %w", err)
	}
	if err := t.Check(); err != nil {
		return Token{}, fmt.Errorf("peer token: %w", err)
	}
	return t, nil
}

// Check validates every field.
func (t Token) Check() error {
	if t.ClusterID == "" || len(t.ClusterID) > 64 {
		return fmt.Errorf("cluster ID missing or longer than 64 characters")
	}
	if !hashRE.MatchString(t.CAHash) {
		return fmt.Errorf("CA hash must be 64 lowercase hex digits")
	}
	if !secretRE.MatchString(t.Secret) {
		return fmt.Errorf("secret must be 26 base32 characters")
	}
	if err := CheckManagers(t.Managers); err != nil {
		return err
	}
	return CheckNetwork(t.Network)
}

// CheckManagers checks a list of manager API addresses (IP:port).
func CheckManagers(addrs []string) error {
	if len(addrs) == 0 {
		return fmt.Errorf("no manager address")
	}
	if len(addrs) > MaxTokenManagers {
		return fmt.Errorf("%d manager addresses (at most %d)", len(addrs), MaxTokenManagers)
	}
	for _, a := range addrs {
		ap, err := netip.ParseAddrPort(a)
		if err != nil || ap.Port() == 0 || !ap.Addr().IsValid() || ap.Addr().IsUnspecified() {
			return fmt.Errorf("manager address %q is not IP:port", a)
		}
	}
	return nil
}

// CheckNetwork checks that a peer's ranges are all given and canonical.
func CheckNetwork(n clustermap.Network) error {
	for _, r := range ranges(n) {
		if !r.p.IsValid() {
			return fmt.Errorf("%s missing", r.what)
		}
		if r.p != r.p.Masked() {
			return fmt.Errorf("%s %s has host bits set", r.what, r.p)
		}
	}
	return nil
}

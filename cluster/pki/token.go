package pki

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/base32"
	"fmt"
	"regexp"
	"strings"
)

// TokenPrefix starts every join token; the number is the format version.
const TokenPrefix = "WRN-1-"

// A token is WRN-1-<64 hex: sha256 of the CA cert DER>-<26 base32: secret>.
var tokenRE = regexp.MustCompile(`^WRN-1-([0-9a-f]{64})-([a-z2-7]{26})$`)

// Token is a parsed join token.
type Token struct {
	CAHash string
	Secret string
}

func (t Token) String() string { return TokenPrefix + t.CAHash + "-" + t.Secret }

// NewSecret returns a fresh random token secret (128 bits).
func NewSecret() string {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		panic(fmt.Sprintf("crypto/rand failed: %v", err))
	}
	return strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(b))
}

// ParseToken checks a token's shape; it does not check the secret.
func ParseToken(s string) (Token, error) {
	s = strings.TrimSpace(s)
	m := tokenRE.FindStringSubmatch(s)
	if m == nil {
		if !strings.HasPrefix(s, TokenPrefix) {
			return Token{}, fmt.Errorf("join token must start with %q (print one on a manager with `warren cluster join-token worker`)", TokenPrefix)
		}
		return Token{}, fmt.Errorf("join token is malformed: want %s<64 hex digits>-<26 characters> (was it truncated when copied?)", TokenPrefix)
	}
	return Token{CAHash: m[1], Secret: m[2]}, nil
}

// SecretEqual compares secrets in constant time.
func SecretEqual(a, b string) bool {
	return subtle.ConstantTimeCompare([]byte(a), []byte(b)) == 1
}

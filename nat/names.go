package nat

import (
	"crypto/sha256"
	"encoding/base32"
	"fmt"
	"strings"
)

// Chain names. iptables limits a chain name to 28 characters, so chains
// that carry service or endpoint identity use a hash, as kube-proxy does.
const (
	chainServices    = "WARREN-SERVICES"          // nat and filter: VIP dispatch
	chainNodePorts   = "WARREN-NODEPORTS"         // nat: published ports
	chainPostrouting = "WARREN-POSTROUTING"       // nat: masquerade marked traffic
	chainMarkMasq    = "WARREN-MARK-MASQ"         // nat: mark for masquerade
	chainCanary      = "WARREN-CANARY"            // nat and filter: empty, jumped from WARREN-SERVICES
	chainExternal    = "WARREN-EXTERNAL-SERVICES" // filter: published ports without endpoints
	chainForward     = "WARREN-FORWARD"           // filter: accept DNATed traffic

	// maxChainName is iptables' limit (XT_EXTENSION_MAXNAMELEN - 1).
	maxChainName = 28
)

// masqMark is the packet mark bit that asks WARREN-POSTROUTING to
// masquerade. It differs from kube-proxy's 0x4000 so both can share a host.
const masqMark = "0x40000"

// hashedChain returns prefix + 16 base32 characters of sha256(key): 27
// characters for the 11-character prefixes used here.
func hashedChain(prefix, key string) string {
	sum := sha256.Sum256([]byte(key))
	encoded := base32.StdEncoding.EncodeToString(sum[:])
	return prefix + encoded[:16]
}

// portKey identifies a service port independently of its VIP, so a
// service keeps its chains when the VIP is unchanged or not.
func portKey(service string, p Port) string {
	return fmt.Sprintf("%s:%s/%d", service, strings.ToLower(p.Protocol), p.Port)
}

// serviceChain is the per-service-port chain that picks an endpoint.
func serviceChain(service string, p Port) string {
	return hashedChain("WARREN-SVC-", portKey(service, p))
}

// externalChain is the per-published-port chain entered from WARREN-NODEPORTS.
func externalChain(service string, p Port) string {
	return hashedChain("WARREN-EXT-", portKey(service, p))
}

// endpointChain is the per-endpoint chain that DNATs. The key includes the
// endpoint address and target port, so a replaced task gets a new chain and
// only that chain and its service chain are rewritten.
func endpointChain(service string, p Port, e Endpoint) string {
	return hashedChain("WARREN-SEP-", fmt.Sprintf("%s>%s:%d", portKey(service, p), e.IP, p.targetPort()))
}

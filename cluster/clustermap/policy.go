package clustermap

// Policy is a network policy in the shape of a Kubernetes NetworkPolicy
// (apiVersion warren.io/v1): it selects tasks by labels and says which new
// connections they accept (ingress) and open (egress). Package netpolicy
// parses, validates, matches and renders it.
type Policy struct {
	Name        string        `json:"name"`
	PodSelector LabelSelector `json:"podSelector"`
	PolicyTypes []string      `json:"policyTypes"` // "Ingress", "Egress"; always filled in
	Ingress     []PolicyRule  `json:"ingress,omitempty"`
	Egress      []PolicyRule  `json:"egress,omitempty"`
}

// Policy types.
const (
	PolicyIngress = "Ingress"
	PolicyEgress  = "Egress"
)

// LabelSelector selects tasks by their labels: every matchLabels pair and
// every expression must hold. The empty selector selects every task.
type LabelSelector struct {
	MatchLabels      map[string]string  `json:"matchLabels,omitempty"`
	MatchExpressions []LabelRequirement `json:"matchExpressions,omitempty"`
}

// LabelRequirement is one expression: Operator is In, NotIn, Exists or
// DoesNotExist; Values are set for In and NotIn only.
type LabelRequirement struct {
	Key      string   `json:"key"`
	Operator string   `json:"operator"`
	Values   []string `json:"values,omitempty"`
}

// PolicyRule allows traffic from (ingress) or to (egress) any of Peers on
// any of Ports. No peers means every address; no ports means every port.
type PolicyRule struct {
	Peers []PolicyPeer `json:"peers,omitempty"`
	Ports []PolicyPort `json:"ports,omitempty"`
}

// PolicyPeer is exactly one of a task selector and an address block.
type PolicyPeer struct {
	PodSelector *LabelSelector `json:"podSelector,omitempty"`
	IPBlock     *IPBlock       `json:"ipBlock,omitempty"`
}

// IPBlock is a CIDR minus the CIDRs in Except (each inside it).
type IPBlock struct {
	CIDR   string   `json:"cidr"`
	Except []string `json:"except,omitempty"`
}

// PolicyPort is a protocol ("TCP" or "UDP") and a port, or a range
// Port..EndPort; Port 0 means every port of the protocol.
type PolicyPort struct {
	Protocol string `json:"protocol"`
	Port     uint16 `json:"port,omitempty"`
	EndPort  uint16 `json:"endPort,omitempty"`
}

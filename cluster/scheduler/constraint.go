package scheduler

import (
	"fmt"
	"strings"

	"github.com/warren-appliance/warren/cluster/clustermap"
)

// Constraint is one placement rule of a service, as Docker Swarm writes
// them: node.id==X, node.name!=X, node.labels.KEY==VALUE.
type Constraint struct {
	Field string // "node.id", "node.name" or "node.labels"
	Label string // the KEY of node.labels.KEY; empty otherwise
	Value string
	Equal bool // == when true, != when false
}

// ParseConstraint parses one constraint expression.
func ParseConstraint(expr string) (Constraint, error) {
	var c Constraint
	var lhs, rhs string
	if l, r, ok := strings.Cut(expr, "!="); ok {
		lhs, rhs = l, r
	} else if l, r, ok := strings.Cut(expr, "=="); ok {
		lhs, rhs, c.Equal = l, r, true
	} else {
		return c, fmt.Errorf("%s: no operator (want == or !=)", expr)
	}
	lhs, rhs = strings.TrimSpace(lhs), strings.TrimSpace(rhs)
	if rhs == "" {
		return c, fmt.Errorf("%s: empty value", expr)
	}
	if strings.Contains(rhs, "==") || strings.Contains(rhs, "!=") {
		return c, fmt.Errorf("%s: more than one operator", expr)
	}
	c.Value = rhs
	switch {
	case lhs == "node.id" || lhs == "node.name":
		c.Field = lhs
	case strings.HasPrefix(lhs, "node.labels."):
		c.Field = "node.labels"
		c.Label = strings.TrimPrefix(lhs, "node.labels.")
		if c.Label == "" {
			return c, fmt.Errorf("%s: empty label key", expr)
		}
	default:
		return c, fmt.Errorf("%s: unknown field %q (want node.id, node.name or node.labels.KEY)", expr, lhs)
	}
	return c, nil
}

// String renders the constraint back into its expression.
func (c Constraint) String() string {
	op := "!="
	if c.Equal {
		op = "=="
	}
	field := c.Field
	if c.Field == "node.labels" {
		field += "." + c.Label
	}
	return field + op + c.Value
}

// Matches reports whether node n satisfies the constraint. A missing label
// equals nothing, so node.labels.k!=v holds on a node without k.
func (c Constraint) Matches(n clustermap.Node) bool {
	var have string
	var present bool
	switch c.Field {
	case "node.id":
		have, present = n.ID, true
	case "node.name":
		have, present = n.Name, true
	case "node.labels":
		have, present = n.Labels[c.Label]
	}
	eq := present && have == c.Value
	return eq == c.Equal
}

// parseConstraints parses all of a service's expressions.
func parseConstraints(exprs []string) ([]Constraint, error) {
	out := make([]Constraint, 0, len(exprs))
	for _, e := range exprs {
		c, err := ParseConstraint(e)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return out, nil
}

func matchesAll(cs []Constraint, n clustermap.Node) bool {
	for _, c := range cs {
		if !c.Matches(n) {
			return false
		}
	}
	return true
}

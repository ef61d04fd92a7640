package netpolicy

import (
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strings"

	"github.com/warren-appliance/warren/cluster/clustermap"
)

// Label syntax is Kubernetes': a key is an optional DNS-subdomain prefix
// and '/', then a name of at most 63 characters; a value is empty or at
// most 63 characters; names and values are letters, digits, '-', '_' and
// '.', starting and ending with a letter or digit.
var (
	labelNameRE   = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$`)
	labelPrefixRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$`)
)

// CheckLabelKey reports why k is not a valid label key.
func CheckLabelKey(k string) error {
	name := k
	if prefix, rest, ok := strings.Cut(k, "/"); ok {
		if len(prefix) > 253 || !labelPrefixRE.MatchString(prefix) {
			return fmt.Errorf("label key %q: prefix %q must be a DNS subdomain (lowercase letters, digits, '-' and '.')", k, prefix)
		}
		name = rest
	}
	if !labelNameRE.MatchString(name) {
		return fmt.Errorf("label key %q: name must be 1-63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit", k)
	}
	return nil
}

// CheckLabelValue reports why v is not a valid label value.
func CheckLabelValue(v string) error {
	if v != "" && !labelNameRE.MatchString(v) {
		return fmt.Errorf("label value %q must be empty or 1-63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit", v)
	}
	return nil
}

// CheckLabels checks every key and value of labels.
func CheckLabels(labels map[string]string) error {
	for _, k := range slices.Sorted(maps.Keys(labels)) {
		if err := CheckLabelKey(k); err != nil {
			return err
		}
		if err := CheckLabelValue(labels[k]); err != nil {
			return fmt.Errorf("label %s: %w", k, err)
		}
	}
	return nil
}

// ParseLabel parses "KEY=VALUE" (the CLI's --label).
func ParseLabel(s string) (string, string, error) {
	k, v, ok := strings.Cut(s, "=")
	if !ok {
		return "", "", fmt.Errorf("label %q: want KEY=VALUE, e.g. app=api", s)
	}
	if err := CheckLabelKey(k); err != nil {
		return "", "", err
	}
	if err := CheckLabelValue(v); err != nil {
		return "", "", fmt.Errorf("label %s: %w", k, err)
	}
	return k, v, nil
}

// Matches reports whether labels satisfy the selector (Kubernetes
// semantics: every matchLabels pair and every expression; NotIn and
// DoesNotExist hold for a missing key).
func Matches(sel clustermap.LabelSelector, labels map[string]string) bool {
	for k, v := range sel.MatchLabels {
		if have, ok := labels[k]; !ok || have != v {
			return false
		}
	}
	for _, r := range sel.MatchExpressions {
		v, ok := labels[r.Key]
		switch r.Operator {
		case OpIn:
			if !ok || !slices.Contains(r.Values, v) {
				return false
			}
		case OpNotIn:
			if ok && slices.Contains(r.Values, v) {
				return false
			}
		case OpExists:
			if !ok {
				return false
			}
		case OpDoesNotExist:
			if ok {
				return false
			}
		default:
			return false // Validate refuses these
		}
	}
	return true
}

// Selector operators.
const (
	OpIn           = "In"
	OpNotIn        = "NotIn"
	OpExists       = "Exists"
	OpDoesNotExist = "DoesNotExist"
)

// SelectorString is a canonical text of sel (sorted), used as a set key
// and in listings: "app=api,tier in (a,b),!debug".
func SelectorString(sel clustermap.LabelSelector) string {
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(sel.MatchLabels)) {
		parts = append(parts, k+"="+sel.MatchLabels[k])
	}
	var exprs []string
	for _, r := range sel.MatchExpressions {
		vals := slices.Clone(r.Values)
		slices.Sort(vals)
		switch r.Operator {
		case OpIn:
			exprs = append(exprs, fmt.Sprintf("%s in (%s)", r.Key, strings.Join(vals, ",")))
		case OpNotIn:
			exprs = append(exprs, fmt.Sprintf("%s notin (%s)", r.Key, strings.Join(vals, ",")))
		case OpExists:
			exprs = append(exprs, r.Key)
		case OpDoesNotExist:
			exprs = append(exprs, "!"+r.Key)
		}
	}
	slices.Sort(exprs)
	parts = append(parts, exprs...)
	if len(parts) == 0 {
		return "(all tasks)"
	}
	return strings.Join(parts, ",")
}

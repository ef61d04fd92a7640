package netpolicy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"reflect"
	"slices"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/warren-appliance/warren/cluster/clustermap"
)

// APIVersion and Kind are what a policy document must declare. Kubernetes'
// own apiVersion is accepted as well, so NetworkPolicies written for
// Kubernetes (the community recipes, existing manifests) paste unchanged.
const (
	APIVersion    = "warren.io/v1"
	APIVersionK8s = "networking.k8s.io/v1"
	Kind          = "NetworkPolicy"
	// Namespace is the one namespace a document may name: Warren has
	// none, so every task is where Kubernetes' default namespace would be.
	Namespace = "default"
)

// Parse reads every NetworkPolicy document of a YAML file (documents are
// separated by ---; empty ones are skipped). Unknown fields and bad
// values are errors that name the file and line; a name given twice is an
// error too. Policies are returned in file order, validated, with their
// policyTypes filled in; one bad document fails the whole file, so a file
// is applied all or none.
func Parse(file string, data []byte) ([]clustermap.Policy, error) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var out []clustermap.Policy
	seen := map[string]int{}
	for {
		var root yaml.Node
		err := dec.Decode(&root)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", file, err)
		}
		if len(root.Content) == 0 || (root.Content[0].Kind == yaml.ScalarNode && root.Content[0].Tag == "!!null") {
			continue // an empty document
		}
		doc := root.Content[0]
		if err := strict(doc, reflect.TypeOf(yDoc{}), ""); err != nil {
			return nil, fmt.Errorf("%s: %w", file, err)
		}
		var d yDoc
		if err := doc.Decode(&d); err != nil {
			return nil, fmt.Errorf("%s: %w", file, cleanYAMLError(err))
		}
		p, err := d.policy()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", file, err)
		}
		if line, dup := seen[p.Name]; dup {
			return nil, fmt.Errorf("%s: line %d: policy %q is already defined on line %d", file, d.Metadata.Name.Line, p.Name, line)
		}
		seen[p.Name] = d.Metadata.Name.Line
		out = append(out, p)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s: no NetworkPolicy document in it", file)
	}
	return out, nil
}

// lv is a scalar (or a plain map) with the line it was written on.
type lv[T any] struct {
	V    T
	Line int
}

func (l *lv[T]) UnmarshalYAML(n *yaml.Node) error {
	l.Line = n.Line
	return n.Decode(&l.V)
}

func (lv[T]) leaf() {}

type leafer interface{ leaf() }

// lined records the line of a mapping (for errors about the whole item).
type lined struct{ line int }

type yDoc struct {
	APIVersion lv[string] `yaml:"apiVersion"`
	Kind       lv[string] `yaml:"kind"`
	Metadata   struct {
		Name        lv[string]            `yaml:"name"`
		Namespace   lv[string]            `yaml:"namespace"`
		Labels      lv[map[string]string] `yaml:"labels"`
		Annotations lv[map[string]string] `yaml:"annotations"`
	} `yaml:"metadata"`
	Spec *ySpec `yaml:"spec"`
}

type ySpec struct {
	PodSelector *ySelector   `yaml:"podSelector"`
	PolicyTypes []lv[string] `yaml:"policyTypes"`
	Ingress     []yRule      `yaml:"ingress"`
	Egress      []yRule      `yaml:"egress"`
}

type ySelector struct {
	MatchLabels      lv[map[string]string] `yaml:"matchLabels"`
	MatchExpressions []yRequirement        `yaml:"matchExpressions"`
}

type yRequirement struct {
	Key      lv[string]   `yaml:"key"`
	Operator lv[string]   `yaml:"operator"`
	Values   []lv[string] `yaml:"values"`
	lined
}

type yRule struct {
	From  []yPeer `yaml:"from"`
	To    []yPeer `yaml:"to"`
	Ports []yPort `yaml:"ports"`
	lined
}

type yPeer struct {
	PodSelector *ySelector `yaml:"podSelector"`
	IPBlock     *yBlock    `yaml:"ipBlock"`
	lined
}

type yBlock struct {
	CIDR   lv[string]   `yaml:"cidr"`
	Except []lv[string] `yaml:"except"`
	lined
}

type yPort struct {
	Protocol lv[string] `yaml:"protocol"`
	Port     lv[any]    `yaml:"port"`
	EndPort  lv[int]    `yaml:"endPort"`
	lined
}

// The line of each list item is kept through these decoders (the plain
// types have no UnmarshalYAML method, so decoding them does not recurse).
func (r *yRequirement) UnmarshalYAML(n *yaml.Node) error {
	type plain yRequirement
	return decodeLined(n, (*plain)(r), &r.lined)
}

func (r *yRule) UnmarshalYAML(n *yaml.Node) error {
	type plain yRule
	return decodeLined(n, (*plain)(r), &r.lined)
}

func (p *yPeer) UnmarshalYAML(n *yaml.Node) error {
	type plain yPeer
	return decodeLined(n, (*plain)(p), &p.lined)
}

func (b *yBlock) UnmarshalYAML(n *yaml.Node) error {
	type plain yBlock
	return decodeLined(n, (*plain)(b), &b.lined)
}

func (p *yPort) UnmarshalYAML(n *yaml.Node) error {
	type plain yPort
	return decodeLined(n, (*plain)(p), &p.lined)
}

func decodeLined(n *yaml.Node, v any, l *lined) error {
	l.line = n.Line
	return n.Decode(v)
}

// strict reports the first mapping key that no field of t declares, with
// its line and the keys that are known there.
func strict(n *yaml.Node, t reflect.Type, path string) error {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if reflect.PointerTo(t).Implements(reflect.TypeOf((*leafer)(nil)).Elem()) {
		return nil
	}
	if n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	switch t.Kind() {
	case reflect.Struct:
		if n.Kind != yaml.MappingNode {
			if n.Tag == "!!null" {
				return nil
			}
			return fmt.Errorf("line %d: %s: want a mapping (key: value), got %s", n.Line, strings.TrimPrefix(path, "."), nodeKind(n))
		}
		fields := map[string]reflect.Type{}
		var known []string
		for i := range t.NumField() {
			f := t.Field(i)
			if tag, _, _ := strings.Cut(f.Tag.Get("yaml"), ","); tag != "" && tag != "-" {
				fields[tag] = f.Type
				known = append(known, tag)
			}
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			ft, ok := fields[k.Value]
			if !ok {
				where := strings.TrimPrefix(path, ".")
				if where == "" {
					where = "the document"
				}
				if k.Value == "namespaceSelector" {
					return fmt.Errorf("line %d: %s.namespaceSelector cannot be honoured: Warren has no namespaces, so there are none to select; select tasks by their labels with podSelector (podSelector: {} is every task)", k.Line, where)
				}
				return fmt.Errorf("line %d: unknown field %q in %s; known fields: %s", k.Line, k.Value, where, strings.Join(known, ", "))
			}
			if err := strict(v, ft, path+"."+k.Value); err != nil {
				return err
			}
		}
	case reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			if n.Tag == "!!null" {
				return nil
			}
			return fmt.Errorf("line %d: %s: want a list (- item), got %s", n.Line, strings.TrimPrefix(path, "."), nodeKind(n))
		}
		for i, item := range n.Content {
			if err := strict(item, t.Elem(), fmt.Sprintf("%s[%d]", path, i)); err != nil {
				return err
			}
		}
	}
	return nil
}

func nodeKind(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	}
	return fmt.Sprintf("%q", n.Value)
}

// cleanYAMLError drops yaml.v3's "yaml: unmarshal errors:\n  " wrapping.
func cleanYAMLError(err error) error {
	var te *yaml.TypeError
	if errors.As(err, &te) {
		return errors.New(strings.Join(te.Errors, "; "))
	}
	return err
}

func (d yDoc) policy() (clustermap.Policy, error) {
	var p clustermap.Policy
	if d.APIVersion.V != APIVersion && d.APIVersion.V != APIVersionK8s {
		return p, fmt.Errorf("line %d: apiVersion %q: want %s (or Kubernetes' %s)", lineOr(d.APIVersion.Line, 1), d.APIVersion.V, APIVersion, APIVersionK8s)
	}
	if d.Kind.V != Kind {
		return p, fmt.Errorf("line %d: kind %q: want %s", lineOr(d.Kind.Line, 1), d.Kind.V, Kind)
	}
	p.Name = d.Metadata.Name.V
	if err := CheckName(p.Name); err != nil {
		return p, fmt.Errorf("line %d: metadata.name: %w", lineOr(d.Metadata.Name.Line, d.Kind.Line), err)
	}
	if ns := d.Metadata.Namespace; ns.V != "" && ns.V != Namespace {
		return p, fmt.Errorf("line %d: metadata.namespace %q cannot be honoured: Warren has no namespaces, every task is in one (Kubernetes' %q); remove the field or write %q", ns.Line, ns.V, Namespace, Namespace)
	}
	if d.Spec == nil {
		return p, fmt.Errorf("line %d: policy %s has no spec", d.Metadata.Name.Line, p.Name)
	}
	s := d.Spec
	if s.PodSelector == nil {
		return p, fmt.Errorf("line %d: policy %s: spec.podSelector is required (write `podSelector: {}` to select every task)", d.Metadata.Name.Line, p.Name)
	}
	var err error
	if p.PodSelector, err = s.PodSelector.selector(d.Metadata.Name.Line); err != nil {
		return p, err
	}
	for _, t := range s.PolicyTypes {
		if err := checkPolicyType(t.V); err != nil {
			return p, fmt.Errorf("line %d: policyTypes: %w", t.Line, err)
		}
		if !slices.Contains(p.PolicyTypes, t.V) {
			p.PolicyTypes = append(p.PolicyTypes, t.V)
		}
	}
	if p.Ingress, err = rules(s.Ingress, false); err != nil {
		return p, err
	}
	if p.Egress, err = rules(s.Egress, true); err != nil {
		return p, err
	}
	if err := Validate(&p); err != nil {
		return p, fmt.Errorf("line %d: %w", d.Metadata.Name.Line, err)
	}
	return p, nil
}

func lineOr(line, other int) int {
	if line == 0 {
		return other
	}
	return line
}

func (s *ySelector) selector(line int) (clustermap.LabelSelector, error) {
	var out clustermap.LabelSelector
	if s == nil {
		return out, nil
	}
	if len(s.MatchLabels.V) > 0 {
		if err := CheckLabels(s.MatchLabels.V); err != nil {
			return out, fmt.Errorf("line %d: matchLabels: %w", s.MatchLabels.Line, err)
		}
		out.MatchLabels = s.MatchLabels.V
	}
	for _, r := range s.MatchExpressions {
		req := clustermap.LabelRequirement{Key: r.Key.V, Operator: r.Operator.V}
		for _, v := range r.Values {
			req.Values = append(req.Values, v.V)
		}
		if err := checkRequirement(req); err != nil {
			return out, fmt.Errorf("line %d: %w", lineOr(r.Operator.Line, r.line), err)
		}
		out.MatchExpressions = append(out.MatchExpressions, req)
	}
	return out, nil
}

func rules(in []yRule, egress bool) ([]clustermap.PolicyRule, error) {
	var out []clustermap.PolicyRule
	for _, r := range in {
		peers, wrong, field := r.From, r.To, "from"
		if egress {
			peers, wrong, field = r.To, r.From, "to"
		}
		if len(wrong) > 0 {
			other := "to"
			if egress {
				other = "from"
			}
			return nil, fmt.Errorf("line %d: %s rules list peers under %q, not %q", wrong[0].line, map[bool]string{false: "ingress", true: "egress"}[egress], field, other)
		}
		var rule clustermap.PolicyRule
		for _, peer := range peers {
			var cp clustermap.PolicyPeer
			if peer.PodSelector != nil {
				sel, err := peer.PodSelector.selector(peer.line)
				if err != nil {
					return nil, err
				}
				cp.PodSelector = &sel
			}
			if peer.IPBlock != nil {
				b := clustermap.IPBlock{CIDR: peer.IPBlock.CIDR.V}
				if _, err := BlockPrefixes(clustermap.IPBlock{CIDR: b.CIDR}); err != nil {
					return nil, fmt.Errorf("line %d: %w", lineOr(peer.IPBlock.CIDR.Line, peer.IPBlock.line), err)
				}
				for _, e := range peer.IPBlock.Except {
					b.Except = append(b.Except, e.V)
					if _, err := BlockPrefixes(clustermap.IPBlock{CIDR: b.CIDR, Except: []string{e.V}}); err != nil {
						return nil, fmt.Errorf("line %d: %w", e.Line, err)
					}
				}
				cp.IPBlock = &b
			}
			if err := checkPeer(cp); err != nil {
				return nil, fmt.Errorf("line %d: %s: %w", peer.line, field, err)
			}
			rule.Peers = append(rule.Peers, cp)
		}
		for _, port := range r.Ports {
			pp := clustermap.PolicyPort{Protocol: port.Protocol.V}
			if pp.Protocol == "" {
				pp.Protocol = "TCP" // Kubernetes' default
			}
			switch v := port.Port.V.(type) {
			case nil:
			case int:
				if v < 1 || v > 65535 {
					return nil, fmt.Errorf("line %d: port %d is out of range: want 1 to 65535", port.Port.Line, v)
				}
				pp.Port = uint16(v)
			default:
				return nil, fmt.Errorf("line %d: port %v: want a number from 1 to 65535 (named ports are not supported)", port.Port.Line, v)
			}
			if e := port.EndPort.V; e != 0 {
				if e < 1 || e > 65535 {
					return nil, fmt.Errorf("line %d: endPort %d is out of range: want 1 to 65535", port.EndPort.Line, e)
				}
				pp.EndPort = uint16(e)
			}
			if err := checkPort(pp); err != nil {
				return nil, fmt.Errorf("line %d: %w", lineOr(port.Protocol.Line, port.line), err)
			}
			rule.Ports = append(rule.Ports, pp)
		}
		out = append(out, rule)
	}
	return out, nil
}

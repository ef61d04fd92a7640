package netpolicy

import (
	"os"
	"reflect"
	"strings"
	"testing"

	"github.com/warren-appliance/warren/cluster/clustermap"
)

func TestParseSeedPolicy(t *testing.T) {
	data, err := os.ReadFile("testdata/seed.yaml")
	if err != nil {
		t.Fatal(err)
	}
	got, err := Parse("seed.yaml", data)
	if err != nil {
		t.Fatal(err)
	}
	want := []clustermap.Policy{{
		Name:        "api-policy",
		PodSelector: clustermap.LabelSelector{MatchLabels: map[string]string{"app": "api"}},
		PolicyTypes: []string{"Ingress"},
		Ingress: []clustermap.PolicyRule{{
			Peers: []clustermap.PolicyPeer{{PodSelector: &clustermap.LabelSelector{MatchLabels: map[string]string{"app": "frontend"}}}},
			Ports: []clustermap.PolicyPort{{Protocol: "TCP", Port: 8080}},
		}},
	}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got  %+v\nwant %+v", got, want)
	}
}

func TestParseSeveralDocumentsEgressBlocksExpressions(t *testing.T) {
	const file = `
apiVersion: warren.io/v1
kind: NetworkPolicy
metadata:
  name: a
spec:
  podSelector: {}
  egress:
    - to:
        - ipBlock:
            cidr: 192.168.0.0/16
            except: [192.168.1.0/24]
        - podSelector:
            matchExpressions:
              - {key: tier, operator: In, values: [db, cache]}
              - {key: debug, operator: DoesNotExist}
      ports:
        - port: 5432
        - protocol: UDP
          port: 5000
          endPort: 5010
---
---
apiVersion: warren.io/v1
kind: NetworkPolicy
metadata:
  name: b
spec:
  podSelector: {matchLabels: {app: db}}
  policyTypes: [Ingress]
`
	got, err := Parse("f.yaml", []byte(file))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].Name != "a" || got[1].Name != "b" {
		t.Fatalf("got %+v", got)
	}
	a := got[0]
	if !reflect.DeepEqual(a.PolicyTypes, []string{"Ingress", "Egress"}) {
		t.Errorf("policyTypes = %v, want Ingress and Egress (egress rules given)", a.PolicyTypes)
	}
	if len(a.Egress) != 1 || len(a.Egress[0].Peers) != 2 || a.Egress[0].Peers[0].IPBlock.Except[0] != "192.168.1.0/24" {
		t.Fatalf("egress = %+v", a.Egress)
	}
	if p := a.Egress[0].Ports; p[0] != (clustermap.PolicyPort{Protocol: "TCP", Port: 5432}) || p[1] != (clustermap.PolicyPort{Protocol: "UDP", Port: 5000, EndPort: 5010}) {
		t.Fatalf("ports = %+v", p)
	}
	if len(got[1].Ingress) != 0 || !reflect.DeepEqual(got[1].PolicyTypes, []string{"Ingress"}) {
		t.Fatalf("b = %+v (deny all ingress)", got[1])
	}
}

func TestParseErrorsNameTheLine(t *testing.T) {
	head := "apiVersion: warren.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: p\nspec:\n  podSelector: {}\n"
	cases := map[string]struct{ body, want string }{
		"unknown field":               {head + "  ingres: []\n", `line 7: unknown field "ingres" in spec`},
		"unknown nested":              {head + "  ingress:\n    - from:\n        - podSelectr: {}\n", `line 9: unknown field "podSelectr" in spec.ingress[0].from[0]`},
		"namespaceSelector":           {head + "  ingress:\n    - from:\n        - namespaceSelector: {}\n", "line 9: spec.ingress[0].from[0].namespaceSelector cannot be honoured: Warren has no namespaces"},
		"namespaceSelector in egress": {head + "  egress:\n    - to:\n        - podSelector: {}\n          namespaceSelector:\n            matchLabels: {team: ops}\n", "line 10: spec.egress[0].to[0].namespaceSelector cannot be honoured"},
		"other namespace":             {"apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: p\n  namespace: prod\nspec:\n  podSelector: {}\n", `line 5: metadata.namespace "prod" cannot be honoured: Warren has no namespaces`},
		"second document bad":         {head + "---\n" + strings.Replace(head, "name: p", "name: q", 1) + "  ingress:\n    - from:\n        - namespaceSelector: {}\n", "line 16: spec.ingress[0].from[0].namespaceSelector"},
		"bad port":                    {head + "  ingress:\n    - ports:\n        - port: 70000\n", "line 9: port 70000 is out of range"},
		"named port":                  {head + "  ingress:\n    - ports:\n        - port: http\n", "line 9: port http: want a number"},
		"bad protocol":                {head + "  ingress:\n    - ports:\n        - protocol: ICMP\n", `line 9: protocol "ICMP" is not supported`},
		"bad cidr":                    {head + "  ingress:\n    - from:\n        - ipBlock: {cidr: 10.0.0.1/8}\n", "line 9: ipBlock cidr: 10.0.0.1/8: host bits set, did you mean 10.0.0.0/8?"},
		"except outside":              {head + "  ingress:\n    - from:\n        - ipBlock:\n            cidr: 10.0.0.0/8\n            except:\n              - 11.0.0.0/8\n", "line 12: ipBlock except 11.0.0.0/8 is not inside cidr 10.0.0.0/8"},
		"bad operator":                {head + "  ingress:\n    - from:\n        - podSelector:\n            matchExpressions:\n              - key: a\n                operator: Is\n", `line 12: matchExpressions: key a: operator "Is"`},
		"both in one peer":            {head + "  ingress:\n    - from:\n        - podSelector: {}\n          ipBlock: {cidr: 10.0.0.0/8}\n", "line 9: from: a peer is either"},
		"empty peer":                  {head + "  ingress:\n    - from:\n        - {}\n", "line 9: from: a peer needs"},
		"to in ingress":               {head + "  ingress:\n    - to:\n        - podSelector: {}\n", `line 9: ingress rules list peers under "from"`},
		"bad label":                   {head + "  ingress:\n    - from:\n        - podSelector: {matchLabels: {\"a b\": x}}\n", `line 9: matchLabels: label key "a b"`},
		"wrong kind":                  {"apiVersion: warren.io/v1\nkind: Service\n", `line 2: kind "Service": want NetworkPolicy`},
		"wrong api":                   {"apiVersion: v1\nkind: NetworkPolicy\n", `line 1: apiVersion "v1": want warren.io/v1 (or Kubernetes' networking.k8s.io/v1)`},
		"bad name":                    {"apiVersion: warren.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: Bad_Name\n", "line 4: metadata.name: policy name"},
		"no selector":                 {"apiVersion: warren.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: p\nspec:\n  ingress: []\n", "spec.podSelector is required"},
		"type mismatch":               {head + "  ingress: yes\n", "line 7: spec.ingress: want a list"},
		"bad policy type":             {head + "  policyTypes: [Inbound]\n", `line 7: policyTypes: "Inbound" is not a policy type`},
		"duplicate":                   {head + "---\n" + head, `line 11: policy "p" is already defined on line 4`},
		"not yaml":                    {"a: [b\n", "f.yaml: yaml: line 1"},
		"empty":                       {"---\n", "no NetworkPolicy document"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := Parse("f.yaml", []byte(c.body))
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err = %v, want it to contain %q", err, c.want)
			}
			if !strings.HasPrefix(err.Error(), "f.yaml: ") {
				t.Fatalf("err = %v, want it to name the file", err)
			}
		})
	}
}

func TestMatches(t *testing.T) {
	labels := map[string]string{"app": "api", "tier": "db"}
	cases := []struct {
		sel  clustermap.LabelSelector
		want bool
	}{
		{clustermap.LabelSelector{}, true},
		{clustermap.LabelSelector{MatchLabels: map[string]string{"app": "api"}}, true},
		{clustermap.LabelSelector{MatchLabels: map[string]string{"app": "web"}}, false},
		{clustermap.LabelSelector{MatchExpressions: []clustermap.LabelRequirement{{Key: "tier", Operator: OpIn, Values: []string{"db", "x"}}}}, true},
		{clustermap.LabelSelector{MatchExpressions: []clustermap.LabelRequirement{{Key: "tier", Operator: OpNotIn, Values: []string{"db"}}}}, false},
		{clustermap.LabelSelector{MatchExpressions: []clustermap.LabelRequirement{{Key: "zone", Operator: OpNotIn, Values: []string{"a"}}}}, true},
		{clustermap.LabelSelector{MatchExpressions: []clustermap.LabelRequirement{{Key: "zone", Operator: OpExists}}}, false},
		{clustermap.LabelSelector{MatchExpressions: []clustermap.LabelRequirement{{Key: "zone", Operator: OpDoesNotExist}}}, true},
	}
	for i, c := range cases {
		if got := Matches(c.sel, labels); got != c.want {
			t.Errorf("case %d (%s): got %v", i, SelectorString(c.sel), got)
		}
	}
}

func TestBlockPrefixes(t *testing.T) {
	got, err := BlockPrefixes(clustermap.IPBlock{CIDR: "10.0.0.0/8", Except: []string{"10.0.0.0/16", "10.128.0.0/9"}})
	if err != nil {
		t.Fatal(err)
	}
	var s []string
	for _, p := range got {
		s = append(s, p.String())
	}
	want := "10.1.0.0/16 10.2.0.0/15 10.4.0.0/14 10.8.0.0/13 10.16.0.0/12 10.32.0.0/11 10.64.0.0/10"
	if strings.Join(s, " ") != want {
		t.Fatalf("got %v, want %s", s, want)
	}
}

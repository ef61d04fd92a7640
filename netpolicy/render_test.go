package netpolicy

import (
	"bytes"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/warren-appliance/warren/cluster/clustermap"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden from the current renderer")

func task(name, ip string, labels ...string) Task {
	l := map[string]string{}
	for i := 0; i+1 < len(labels); i += 2 {
		l[labels[i]] = labels[i+1]
	}
	return Task{Name: name, IP: netip.MustParseAddr(ip), Labels: l}
}

var labTasks = []Task{
	task("api-1", "10.0.1.2", "app", "api"),
	task("api-2", "10.0.2.2", "app", "api"),
	task("web-1", "10.0.1.3", "app", "frontend"),
	task("web-2", "10.0.2.3", "app", "frontend"),
	task("other-1", "10.0.1.4", "app", "other"),
}

func seedPolicy(t *testing.T) clustermap.Policy {
	data, err := os.ReadFile("testdata/seed.yaml")
	if err != nil {
		t.Fatal(err)
	}
	p, err := Parse("seed.yaml", data)
	if err != nil {
		t.Fatal(err)
	}
	return p[0]
}

func mustParse(t *testing.T, yaml string) []clustermap.Policy {
	t.Helper()
	p, err := Parse("case.yaml", []byte(yaml))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

const egressYAML = `
apiVersion: warren.io/v1
kind: NetworkPolicy
metadata: {name: web-egress}
spec:
  podSelector: {matchLabels: {app: frontend}}
  policyTypes: [Egress]
  egress:
    - to:
        - podSelector: {matchLabels: {app: api}}
      ports: [{protocol: TCP, port: 8080}, {protocol: UDP, port: 5000, endPort: 5010}]
    - to:
        - ipBlock: {cidr: 192.168.0.0/16, except: [192.168.1.0/24]}
    - to:
        - ipBlock: {cidr: 0.0.0.0/0}
      ports: [{port: 443}]
---
apiVersion: warren.io/v1
kind: NetworkPolicy
metadata: {name: api-from-lan}
spec:
  podSelector:
    matchExpressions: [{key: app, operator: In, values: [api]}]
  ingress:
    - from:
        - ipBlock: {cidr: 192.168.0.0/16, except: [192.168.1.0/24]}
        - podSelector: {}
      ports: [{port: 8080}]
---
apiVersion: warren.io/v1
kind: NetworkPolicy
metadata: {name: deny-other}
spec:
  podSelector: {matchLabels: {app: other}}
  policyTypes: [Ingress, Egress]
`

func goldenText(r Rules) []byte {
	var buf bytes.Buffer
	buf.Write(r.Restore)
	for _, s := range r.Sets {
		fmt.Fprintf(&buf, "# set %s (%s):", s.Name, s.Comment)
		for _, m := range s.Members {
			fmt.Fprintf(&buf, " %s", m)
		}
		buf.WriteString("\n")
	}
	return buf.Bytes()
}

func TestRenderGolden(t *testing.T) {
	subnet := netip.MustParsePrefix("10.0.0.0/24")
	cases := map[string]Input{
		"none":                      {Tasks: labTasks, NodeSubnet: subnet, Overlay: "warren0"},
		"seed":                      {Policies: []clustermap.Policy{seedPolicy(t)}, Tasks: labTasks, NodeSubnet: subnet, Overlay: "warren0"},
		"egress-blocks-expressions": {Policies: mustParse(t, egressYAML), Tasks: labTasks, NodeSubnet: subnet, Overlay: "warren0"},
	}
	for name, in := range cases {
		t.Run(name, func(t *testing.T) {
			got := goldenText(Render(in))
			path := filepath.Join("testdata", name+".golden")
			if *update {
				if err := os.WriteFile(path, got, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run go test -update to create it)", err)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("render differs from %s:\n%s", path, got)
			}
		})
	}
}

// Task churn changes set members, never the rules.
func TestTaskChurnChangesOnlySets(t *testing.T) {
	pols := append(mustParse(t, egressYAML), seedPolicy(t))
	before := Render(Input{Policies: pols, Tasks: labTasks})
	more := append(labTasks[1:], task("api-3", "10.0.3.2", "app", "api"), task("web-3", "10.0.3.3", "app", "frontend"))
	after := Render(Input{Policies: pols, Tasks: more})
	if !bytes.Equal(before.Restore, after.Restore) {
		t.Fatalf("rules changed with the tasks:\n%s\n---\n%s", before.Restore, after.Restore)
	}
	if bytes.Equal(goldenText(before), goldenText(after)) {
		t.Fatal("sets did not change with the tasks")
	}
	// The same input renders the same output, whatever the order.
	rev := append([]clustermap.Policy(nil), pols...)
	for i, j := 0, len(rev)-1; i < j; i, j = i+1, j-1 {
		rev[i], rev[j] = rev[j], rev[i]
	}
	if !bytes.Equal(goldenText(Render(Input{Policies: rev, Tasks: labTasks})), goldenText(before)) {
		t.Fatal("render depends on the order of the policies")
	}
}

// The node exemption names the overlay interface; without one there is
// no exemption (a source address alone proves nothing: tasks can forge).
func TestNodeExemptionNeedsTheOverlay(t *testing.T) {
	subnet := netip.MustParsePrefix("10.0.0.0/24")
	with := string(Render(Input{Tasks: labTasks, NodeSubnet: subnet, Overlay: "warren0"}).Restore)
	if !bytes.Contains([]byte(with), []byte("-A WARREN-POL-INGRESS -i warren0 -s 10.0.0.0/24 ")) {
		t.Fatalf("no exemption tied to warren0:\n%s", with)
	}
	without := string(Render(Input{Tasks: labTasks, NodeSubnet: subnet}).Restore)
	if bytes.Contains([]byte(without), []byte("10.0.0.0/24")) {
		t.Fatalf("an exemption without an interface:\n%s", without)
	}
}

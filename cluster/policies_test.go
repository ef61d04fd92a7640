package cluster

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"reflect"
	"testing"

	"github.com/warren-appliance/warren/netpolicy"
)

func TestServiceLabelsReachTasksAndMap(t *testing.T) {
	tm := startManager(t)
	c := adminClient(t, tm.m)
	ctx := context.Background()

	spec := apiSpec("api", 2)
	spec.Labels = map[string]string{"app": "api", "tier": "backend"}
	v, err := c.CreateService(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(v.Labels, spec.Labels) || !reflect.DeepEqual(v.Tasks[0].Labels, spec.Labels) {
		t.Fatalf("labels = %v, task labels = %v", v.Labels, v.Tasks[0].Labels)
	}
	v0 := tm.m.Map().Version
	v, err = c.UpdateServiceLabels(ctx, "api", map[string]string{"zone": "a"}, []string{"tier"})
	if err != nil {
		t.Fatal(err)
	}
	if want := map[string]string{"app": "api", "zone": "a"}; !reflect.DeepEqual(v.Labels, want) {
		t.Fatalf("labels = %v, want %v", v.Labels, want)
	}
	m := tm.m.Map()
	if m.Version <= v0 || !reflect.DeepEqual(m.ServiceLabels()["api"], v.Labels) {
		t.Fatalf("map v%d (was v%d) labels %v", m.Version, v0, m.ServiceLabels()["api"])
	}
	if _, err := c.UpdateServiceLabels(ctx, "api", map[string]string{"bad key": "x"}, nil); err == nil {
		t.Fatal("a bad label key was accepted")
	}
	spec = apiSpec("other", 1)
	spec.Labels = map[string]string{"app": "-x"}
	_, err = c.CreateService(ctx, spec)
	wantAPIError(t, err, http.StatusBadRequest, `label value "-x"`)

	// At most 64 labels per service: on create, and after an update's
	// additions (which then change nothing).
	many := map[string]string{}
	for i := range maxServiceLabels + 1 {
		many[fmt.Sprintf("k%02d", i)] = "v"
	}
	spec = apiSpec("many", 1)
	spec.Labels = many
	_, err = c.CreateService(ctx, spec)
	wantAPIError(t, err, http.StatusBadRequest, "service many would have 65 labels: at most 64 labels per service")
	delete(many, "k64")
	spec.Labels = many
	if _, err := c.CreateService(ctx, spec); err != nil {
		t.Fatalf("64 labels refused: %v", err)
	}
	before := tm.m.Map().Version
	_, err = c.UpdateServiceLabels(ctx, "many", map[string]string{"one": "more"}, nil)
	wantAPIError(t, err, http.StatusBadRequest, "service many would have 65 labels: at most 64 labels per service")
	if v, err := c.Service(ctx, "many"); err != nil || len(v.Labels) != 64 || tm.m.Map().Version != before {
		t.Fatalf("after a refused update: %d labels, map v%d (was v%d), %v", len(v.Labels), tm.m.Map().Version, before, err)
	}
	if v, err := c.UpdateServiceLabels(ctx, "many", map[string]string{"one": "more"}, []string{"k00"}); err != nil || len(v.Labels) != 64 {
		t.Fatalf("replacing one of 64 labels: %v %v", v.Labels, err)
	}

	// Labels survive a manager restart (they are in the store).
	tm.restart()
	c = adminClient(t, tm.m)
	if v, err = c.Service(ctx, "api"); err != nil || v.Labels["zone"] != "a" {
		t.Fatalf("after restart: %v %v", v.Labels, err)
	}
}

func TestPoliciesApplyIdempotentInspectRemove(t *testing.T) {
	tm := startManager(t)
	c := adminClient(t, tm.m)
	ctx := context.Background()
	for _, s := range []struct{ name, app string }{{"api", "api"}, {"web", "frontend"}, {"other", "other"}} {
		spec := apiSpec(s.name, 2)
		spec.Labels = map[string]string{"app": s.app}
		if _, err := c.CreateService(ctx, spec); err != nil {
			t.Fatal(err)
		}
	}
	data, err := os.ReadFile("../netpolicy/testdata/seed.yaml")
	if err != nil {
		t.Fatal(err)
	}
	pols, err := netpolicy.Parse("seed.yaml", data)
	if err != nil {
		t.Fatal(err)
	}
	out, err := c.ApplyPolicies(ctx, pols)
	if err != nil || len(out) != 1 || out[0].Result != "created" {
		t.Fatalf("apply: %+v %v", out, err)
	}
	v1 := tm.m.Map()
	if len(v1.Policies) != 1 || v1.Policies[0].Name != "api-policy" {
		t.Fatalf("map policies = %+v", v1.Policies)
	}
	out, err = c.ApplyPolicies(ctx, pols)
	if err != nil || out[0].Result != "unchanged" || tm.m.Map().Version != v1.Version {
		t.Fatalf("second apply: %+v %v (map v%d, was v%d)", out, err, tm.m.Map().Version, v1.Version)
	}
	pols[0].Ingress[0].Ports[0].Port = 9090
	if out, err = c.ApplyPolicies(ctx, pols); err != nil || out[0].Result != "configured" {
		t.Fatalf("replace: %+v %v", out, err)
	}

	p, err := c.Policy(ctx, "api-policy")
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Selected) != 2 || p.Selected[0].Service != "api" || len(p.Peers) != 1 || len(p.Peers[0].Tasks) != 2 || p.Peers[0].Tasks[0].Service != "web" {
		t.Fatalf("inspect = %+v", p)
	}
	list, err := c.Policies(ctx)
	if err != nil || len(list) != 1 {
		t.Fatalf("ls = %+v %v", list, err)
	}

	// All or none: one bad policy keeps the good one out too.
	bad := pols[0]
	bad.Name = "second"
	bad.Ingress = append(bad.Ingress, bad.Ingress[0])
	bad.Ingress[1].Ports = append(bad.Ingress[1].Ports, bad.Ingress[1].Ports[0])
	bad.Ingress[1].Ports[1].Protocol = "ICMP"
	good := pols[0]
	good.Name = "third"
	_, err = c.ApplyPolicies(ctx, append(pols[:0:0], good, bad))
	wantAPIError(t, err, http.StatusBadRequest, `protocol "ICMP"`)
	if _, err := c.Policy(ctx, "third"); err == nil {
		t.Fatal("a policy of a refused apply was created")
	}

	tm.restart()
	c = adminClient(t, tm.m)
	if _, err := c.Policy(ctx, "api-policy"); err != nil {
		t.Fatalf("after restart: %v", err)
	}
	if err := c.RemovePolicy(ctx, "api-policy"); err != nil {
		t.Fatal(err)
	}
	wantAPIError(t, c.RemovePolicy(ctx, "api-policy"), http.StatusNotFound, "no network policy")
	if m := tm.m.Map(); len(m.Policies) != 0 {
		t.Fatalf("map still has %+v", m.Policies)
	}
}

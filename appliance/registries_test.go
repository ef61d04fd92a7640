package appliance

import (
	"context"
	"log/slog"
	"testing"

	"github.com/warren-appliance/warren/cluster/api"
	"github.com/warren-appliance/warren/cluster/clustermap"
	"github.com/warren-appliance/warren/orchestrate"
)

type fakeRegValues struct{ asked [][]api.ValueRef }

func (f *fakeRegValues) FetchValues(_ context.Context, refs []api.ValueRef) ([]api.Value, error) {
	f.asked = append(f.asked, refs)
	var out []api.Value
	for _, r := range refs {
		out = append(out, api.Value{Kind: r.Kind, Name: r.Name, Version: 3, Data: []byte(`{"username":"u-` + r.Name + `","password":"p"}`)})
	}
	return out, nil
}

func TestRegistryCredsOnlyForRegistriesTasksPullFrom(t *testing.T) {
	m := &clustermap.Map{Registries: []clustermap.Registry{
		{Host: "reg.local:5000", Auth: true, AuthVersion: 3, CA: "PEM"},
		{Host: "mirror.local", MirrorOf: "reg.local:5000", Auth: true, AuthVersion: 3},
		{Host: "other.local", Auth: true, AuthVersion: 3},
		{Host: "anon.local"},
	}}
	specs := []orchestrate.TaskSpec{{Name: "app-1", Image: "reg.local:5000/team/app:1"}, {Name: "web-1", Image: "nginx"}}
	need := neededRegistryCreds(m, specs)
	if len(need) != 2 || need["reg.local:5000"] != 3 || need["mirror.local"] != 3 {
		t.Fatalf("need = %v", need)
	}
	src := &fakeRegValues{}
	rc := newRegistryCreds(src, slog.New(slog.DiscardHandler))
	regs, ok := rc.configs(context.Background(), m, specs)
	if !ok || len(regs) != 4 {
		t.Fatalf("configs: %v %+v", ok, regs)
	}
	for _, r := range regs {
		wantUser := map[string]string{"reg.local:5000": "u-reg.local:5000", "mirror.local": "u-mirror.local"}[r.Host]
		if r.Username != wantUser {
			t.Errorf("%s: username %q, want %q", r.Host, r.Username, wantUser)
		}
	}
	// Cached at the same version: not asked again; dropped when no task needs it.
	rc.configs(context.Background(), m, specs)
	if len(src.asked) != 1 {
		t.Fatalf("asked %d times, want 1 (cached)", len(src.asked))
	}
	regs, _ = rc.configs(context.Background(), m, specs[1:])
	for _, r := range regs {
		if r.Password != "" {
			t.Fatalf("%s kept its password with no task pulling from it", r.Host)
		}
	}
}

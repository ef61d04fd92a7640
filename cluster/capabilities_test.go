package cluster

import (
	"context"
	"net/http"
	"reflect"
	"testing"
)

// --cap-add/--cap-drop reach the map (normalized) and are updated as
// Docker's service update does; bad names are refused with the name.
func TestServiceCapabilities(t *testing.T) {
	tm := startManager(t)
	c := adminClient(t, tm.m)
	ctx := context.Background()

	spec := apiSpec("probe", 1)
	spec.CapAdd = []string{"net_raw", "CAP_NET_RAW"}
	spec.CapDrop = []string{"CHOWN"}
	v, err := c.CreateService(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(v.CapAdd, []string{"CAP_NET_RAW"}) || !reflect.DeepEqual(v.CapDrop, []string{"CAP_CHOWN"}) {
		t.Fatalf("created with cap_add %v cap_drop %v", v.CapAdd, v.CapDrop)
	}
	v0 := tm.m.Map().Version
	v, err = c.UpdateServiceCapabilities(ctx, "probe", []string{"CHOWN"}, []string{"NET_RAW", "SYS_ADMIN"})
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(v.CapAdd, []string{"CAP_CHOWN"}) || !reflect.DeepEqual(v.CapDrop, []string{"CAP_NET_RAW", "CAP_SYS_ADMIN"}) {
		t.Fatalf("after update: cap_add %v cap_drop %v", v.CapAdd, v.CapDrop)
	}
	m := tm.m.Map()
	for _, s := range m.Services {
		if s.Name == "probe" && (m.Version <= v0 || !reflect.DeepEqual(s.CapAdd, v.CapAdd) || !reflect.DeepEqual(s.CapDrop, v.CapDrop)) {
			t.Fatalf("map v%d (was v%d): cap_add %v cap_drop %v", m.Version, v0, s.CapAdd, s.CapDrop)
		}
	}

	spec = apiSpec("bad", 1)
	spec.CapAdd = []string{"NET_RAWR"}
	_, err = c.CreateService(ctx, spec)
	wantAPIError(t, err, http.StatusBadRequest, `unknown capability "NET_RAWR"`)
	spec.CapAdd, spec.CapDrop = []string{"NET_ADMIN"}, []string{"net_admin"}
	_, err = c.CreateService(ctx, spec)
	wantAPIError(t, err, http.StatusBadRequest, "capability CAP_NET_ADMIN is both added and dropped")
	_, err = c.UpdateServiceCapabilities(ctx, "probe", nil, nil)
	wantAPIError(t, err, http.StatusBadRequest, "no capability to add or drop")
}

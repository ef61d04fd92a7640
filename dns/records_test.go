package dns

import (
	"net/netip"
	"reflect"
	"testing"

	"github.com/warren-appliance/warren/cluster/clustermap"
)

func TestRecordsFromMap(t *testing.T) {
	ip := netip.MustParseAddr
	m := &clustermap.Map{
		Domain: "warren.local",
		Services: []clustermap.Service{
			{Name: "nginx", VIP: ip("10.1.0.5")},
			{Name: "idle", VIP: ip("10.1.0.6")},
			{Name: "novip"},
		},
		Tasks: []clustermap.Task{
			{Name: "nginx-2", Service: "nginx", IP: ip("10.0.2.2"), DesiredState: "running", State: "running"},
			{Name: "nginx-1", Service: "nginx", IP: ip("10.0.1.2"), DesiredState: "running", State: "running"},
			{Name: "nginx-3", Service: "nginx", IP: ip("10.0.1.3"), DesiredState: "running", State: "starting"},
			{Name: "nginx-4", Service: "nginx", IP: ip("10.0.1.4"), DesiredState: "shutdown", State: "running"},
			{Name: "nginx-5", Service: "nginx", DesiredState: "running", State: "pending"},
			{Name: "idle-1", Service: "idle", IP: ip("10.0.2.3"), DesiredState: "running", State: "failed"},
		},
	}
	want := Records{
		Domain:   "warren.local",
		Services: map[string]netip.Addr{"nginx": ip("10.1.0.5"), "idle": ip("10.1.0.6")},
		Tasks: map[string]netip.Addr{
			"nginx-1": ip("10.0.1.2"), "nginx-2": ip("10.0.2.2"), "nginx-3": ip("10.0.1.3"), "idle-1": ip("10.0.2.3"),
		},
		ServiceTasks: map[string][]netip.Addr{
			"nginx": {ip("10.0.1.2"), ip("10.0.2.2")}, // running ones, by task name
			"idle":  {},
			"novip": {},
		},
	}
	if got := RecordsFromMap(m); !reflect.DeepEqual(got, want) {
		t.Fatalf("got  %+v\nwant %+v", got, want)
	}
}

package dns

import (
	"net/netip"
	"reflect"
	"testing"

	miekg "github.com/miekg/dns"

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
			{Name: "nginx-2", Service: "nginx", Slot: 2, IP: ip("10.0.2.2"), DesiredState: "running", State: "running"},
			{Name: "nginx-1", Service: "nginx", Slot: 1, IP: ip("10.0.1.2"), DesiredState: "running", State: "running"},
			{Name: "nginx-3", Service: "nginx", Slot: 3, IP: ip("10.0.1.3"), DesiredState: "running", State: "starting"},
			{Name: "nginx-4", Service: "nginx", Slot: 4, IP: ip("10.0.1.4"), DesiredState: "shutdown", State: "running"},
			{Name: "nginx-5", Service: "nginx", Slot: 5, DesiredState: "running", State: "pending"},
			{Name: "idle-1", Service: "idle", Slot: 1, IP: ip("10.0.2.3"), DesiredState: "running", State: "failed"},
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
		// The seed's <service>-task-<slot> names (issue 25).
		TaskAliases: map[string]netip.Addr{
			"nginx-task-1": ip("10.0.1.2"), "nginx-task-2": ip("10.0.2.2"), "nginx-task-3": ip("10.0.1.3"), "idle-task-1": ip("10.0.2.3"),
		},
	}
	if got := RecordsFromMap(m); !reflect.DeepEqual(got, want) {
		t.Fatalf("got  %+v\nwant %+v", got, want)
	}
}

// The seed's `nginx-task-1.warren.local` answers the address of nginx-1;
// a real name wins over an alias, and the PTR names the task itself.
func TestTaskAlias(t *testing.T) {
	ip := netip.MustParseAddr
	m := &clustermap.Map{
		Domain:   "warren.local",
		Services: []clustermap.Service{{Name: "nginx", VIP: ip("10.1.0.5")}, {Name: "web-task", VIP: ip("10.1.0.6")}},
		Tasks: []clustermap.Task{
			{Name: "nginx-1", Service: "nginx", Slot: 1, IP: ip("10.0.1.2"), DesiredState: "running", State: "running"},
			{Name: "web-1", Service: "web", Slot: 1, IP: ip("10.0.1.3"), DesiredState: "running", State: "running"},
			{Name: "web-task-1", Service: "web-task", Slot: 1, IP: ip("10.0.1.4"), DesiredState: "running", State: "running"},
		},
	}
	z, problems := compileZone("warren.local.", RecordsFromMap(m), 1)
	if len(problems) != 0 {
		t.Fatalf("problems: %v", problems)
	}
	for name, want := range map[string]string{"nginx-task-1.warren.local.": "10.0.1.2", "nginx-1.warren.local.": "10.0.1.2", "web-task-1.warren.local.": "10.0.1.4"} {
		got := aAddrs(lookup(z, name, miekg.TypeA).Answer)
		if len(got) != 1 || got[0].String() != want {
			t.Errorf("%s: %v, want %s", name, got, want)
		}
	}
	arpa, _ := miekg.ReverseAddr("10.0.1.2")
	if ptr, ok := z.lookupPTR(arpa); !ok || ptr.(*miekg.PTR).Ptr != "nginx-1.warren.local." {
		t.Errorf("PTR 10.0.1.2: %v", ptr)
	}
}

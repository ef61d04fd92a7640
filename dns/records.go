package dns

import (
	"fmt"
	"net/netip"

	"github.com/warren-appliance/warren/cluster/clustermap"
)

// RecordsFromMap translates a cluster map into the names the server
// answers:
//   - every service with a VIP: <service> -> VIP;
//   - every task meant to run that has an address: <task> -> task IP, while
//     it starts too, so a name looked up during a restart finds it; and
//     <service>-task-<slot> as an alias of <task> (the seed's form);
//   - tasks.<service> -> the IPs of the service's running tasks only (the
//     map's endpoints), present and empty for a service without one, so
//     it answers NODATA rather than NXDOMAIN;
//   - every import of a peered cluster: <service>.<peer> (and
//     <service>.global) -> its VIP;
//   - the WireGuard and container subnets as the client ranges answered.
func RecordsFromMap(m *clustermap.Map) Records {
	r := Records{
		Domain:       m.Domain,
		Services:     make(map[string]netip.Addr, len(m.Services)),
		Tasks:        make(map[string]netip.Addr, len(m.Tasks)),
		ServiceTasks: make(map[string][]netip.Addr, len(m.Services)),
		TaskAliases:  make(map[string]netip.Addr, len(m.Tasks)),
	}
	for _, im := range m.Imports {
		if im.VIP.IsValid() {
			if r.Imports == nil {
				r.Imports = map[string]netip.Addr{}
			}
			r.Imports[im.Service+"."+im.Peer] = im.VIP
		}
	}
	for _, p := range []netip.Prefix{m.WireGuardSubnet, m.ContainerSubnet} {
		if p.IsValid() {
			r.Clients = append(r.Clients, p)
		}
	}
	for _, svc := range m.Services {
		if svc.VIP.IsValid() {
			r.Services[svc.Name] = svc.VIP
		}
		ips := []netip.Addr{}
		for _, t := range m.Endpoints(svc.Name) {
			ips = append(ips, t.IP)
		}
		r.ServiceTasks[svc.Name] = ips
	}
	for _, t := range m.Tasks {
		if t.DesiredState == clustermap.TaskRunning && t.IP.IsValid() {
			r.Tasks[t.Name] = t.IP
			if t.Service != "" && t.Slot > 0 {
				r.TaskAliases[fmt.Sprintf("%s-task-%d", t.Service, t.Slot)] = t.IP
			}
		}
	}
	return r
}

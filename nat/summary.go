package nat

import (
	"bytes"
	"fmt"
	"net/netip"
	"strings"
	"text/tabwriter"
)

// Summary is a short human view of services for `warren network vips`:
// one line per VIP port with its published port and its endpoints, and
// "none (refused)" for ports without endpoints.
func Summary(services []Service) string {
	var buf bytes.Buffer
	w := tabwriter.NewWriter(&buf, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "SERVICE\tVIP\tPUBLISHED\tENDPOINTS")
	for _, s := range sortedServices(services) {
		endpoints := sortedEndpoints(s.Endpoints)
		for _, p := range servicePorts(s) {
			proto := strings.ToLower(p.Protocol)
			published := "-"
			if p.Published != 0 {
				published = fmt.Sprintf(":%d/%s", p.Published, proto)
			}
			var eps []string
			for _, e := range endpoints {
				ep := fmt.Sprintf("%s=%s", e.Name, netip.AddrPortFrom(e.IP, p.targetPort()))
				if proto == protoAll {
					ep = fmt.Sprintf("%s=%s", e.Name, e.IP)
				}
				if e.Local {
					ep += "(local)"
				}
				eps = append(eps, ep)
			}
			list := strings.Join(eps, " ")
			if len(eps) == 0 {
				list = "none (refused)"
			}
			affinity := ""
			if s.Affinity {
				affinity = " [affinity]"
			}
			vip := fmt.Sprintf("%s/%s", netip.AddrPortFrom(s.VIP, p.Port), proto)
			if proto == protoAll {
				vip = s.VIP.String() + " (all ports)"
			}
			fmt.Fprintf(w, "%s%s\t%s\t%s\t%s\n", s.Name, affinity, vip, published, list)
		}
	}
	w.Flush()
	return buf.String()
}

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
		for _, p := range sortedPorts(s.Ports) {
			proto := strings.ToLower(p.Protocol)
			published := "-"
			if p.Published != 0 {
				published = fmt.Sprintf(":%d/%s", p.Published, proto)
			}
			var eps []string
			for _, e := range endpoints {
				ep := fmt.Sprintf("%s=%s", e.Name, netip.AddrPortFrom(e.IP, p.targetPort()))
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
			fmt.Fprintf(w, "%s%s\t%s/%s\t%s\t%s\n", s.Name, affinity, netip.AddrPortFrom(s.VIP, p.Port), proto, published, list)
		}
	}
	w.Flush()
	return buf.String()
}

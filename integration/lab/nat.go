package lab

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
)

// Router is a NAT router namespace as DESIGN.md's "Testing on one machine"
// describes a site: one leg (eth0) on the LAN bridge, one (site0) on the
// site's own network, IP forwarding on, and the site's traffic masqueraded
// behind the LAN address. Nothing on the LAN routes to the site network:
// the site is reachable only through the mappings its NAT keeps.
//
// Like every home router's firewall (OpenWrt's wan zone: input REJECT), it
// refuses unsolicited packets addressed to itself on its LAN leg. Without
// that, the first probe of a peer reaching the router before the site's own
// probe went out would leave a conntrack entry for the reversed flow, and
// MASQUERADE would then give the site's flow another port: a router that
// accepts such packets into its own stack turns port-keeping NAT into a
// port-changing one for exactly the flows hole punching needs.
type Router struct {
	Host
	// Site is the site network; the router is its .1, the node behind it .2.
	Site netip.Prefix
	idx  int
}

// SiteGateway is the router's address on its site network.
func (r *Router) SiteGateway() netip.Addr { return r.Site.Addr().Next() }

// NAT modes of Router.SetNAT.
const (
	// NATPortKeeping is plain MASQUERADE: a flow keeps its source port
	// when it is free, as most home routers do.
	NATPortKeeping = "port-keeping"
	// NATSymmetric is MASQUERADE --random-fully: every new flow gets a
	// random source port, as port-randomising CGNATs do.
	NATSymmetric = "symmetric"
)

// AddRouter creates a NAT router on the LAN with an empty site network
// (172.16.N.0/24); AddNodeBehind puts a node there.
func (l *Lab) AddRouter(name string) (*Router, error) {
	l.mu.Lock()
	idx := len(l.routers) + 1
	l.mu.Unlock()
	if idx > 50 {
		return nil, fmt.Errorf("lab: at most 50 routers")
	}
	ip := netip.AddrFrom4([4]byte{192, 168, 100, byte(200 + idx)})
	h, err := l.addHost(name, ip)
	if err != nil {
		return nil, err
	}
	r := &Router{Host: *h, Site: netip.PrefixFrom(netip.AddrFrom4([4]byte{172, 16, byte(idx), 0}), 24), idx: idx}
	l.mu.Lock()
	l.routers = append(l.routers, r)
	l.mu.Unlock()
	ctx := context.Background()
	if _, err := r.Sh(ctx, "sysctl -qw net.ipv4.ip_forward=1 && "+
		"iptables -w -A INPUT -i eth0 -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT && "+
		"iptables -w -A INPUT -i eth0 -j DROP"); err != nil {
		return nil, err
	}
	if err := r.SetNAT(ctx, NATPortKeeping); err != nil {
		return nil, err
	}
	return r, nil
}

// addSiteHost creates a namespace whose only link is a veth to router r's
// site network, default route through r.
func (l *Lab) addSiteHost(name string, r *Router) (*Host, error) {
	ip := r.SiteGateway().Next()
	h := &Host{Name: name, NetNS: fmt.Sprintf("%s-%s", l.id, name), LANIP: ip, lab: l, dir: filepath.Join(l.dir, name)}
	if err := os.MkdirAll(h.dir, 0o755); err != nil {
		return nil, err
	}
	if err := run("ip", "netns", "add", h.NetNS); err != nil {
		return nil, err
	}
	in := fmt.Sprintf("%ss%d", trimID(l.id), r.idx)
	peer := in + "p"
	if err := run("ip", "link", "add", in, "netns", h.NetNS, "type", "veth", "peer", "name", peer, "netns", r.NetNS); err != nil {
		return nil, err
	}
	gw := netip.PrefixFrom(r.SiteGateway(), r.Site.Bits()).String()
	for _, args := range [][]string{
		{"ip", "link", "set", peer, "name", "site0"},
		{"ip", "addr", "add", gw, "dev", "site0"},
		{"ip", "link", "set", "site0", "up"},
	} {
		if err := runNS(r.NetNS, args...); err != nil {
			return nil, err
		}
	}
	for _, args := range [][]string{
		{"ip", "link", "set", "lo", "up"},
		{"ip", "link", "set", in, "name", "eth0"},
		{"ip", "addr", "add", netip.PrefixFrom(ip, r.Site.Bits()).String(), "dev", "eth0"},
		{"ip", "link", "set", "eth0", "up"},
		{"ip", "route", "add", "default", "via", r.SiteGateway().String()},
	} {
		if err := runNS(h.NetNS, args...); err != nil {
			return nil, err
		}
	}
	return h, nil
}

// SetNAT switches the router's NAT to mode and flushes its conntrack
// table, so existing flows take the new mode too (as a router reboot
// would).
func (r *Router) SetNAT(ctx context.Context, mode string) error {
	var flags string
	switch mode {
	case NATPortKeeping:
	case NATSymmetric:
		flags = " --random-fully"
	default:
		return fmt.Errorf("router %s: NAT mode %q: want %s or %s", r.Name, mode, NATPortKeeping, NATSymmetric)
	}
	script := "iptables -w -t nat -F POSTROUTING && iptables -w -t nat -A POSTROUTING -o eth0 -j MASQUERADE" + flags +
		" && conntrack -F"
	_, err := r.Sh(ctx, script)
	return err
}

// BlockUDP makes the router drop (block=true) or forward again the
// site's outgoing UDP, as a firewall that allows only TCP out.
func (r *Router) BlockUDP(ctx context.Context, block bool) error {
	rule := "FORWARD -i site0 -p udp -j DROP"
	var script string
	if block {
		script = "iptables -w -C " + rule + " 2>/dev/null || iptables -w -I " + rule
	} else {
		script = "while iptables -w -C " + rule + " 2>/dev/null; do iptables -w -D " + rule + "; done"
	}
	_, err := r.Sh(ctx, script)
	return err
}

// UDPFlows lists the router's conntrack entries for UDP (conntrack -L).
func (r *Router) UDPFlows(ctx context.Context) ([]string, error) {
	out, err := r.Exec(ctx, "conntrack", "-L", "-p", "udp")
	if err != nil {
		return nil, err
	}
	if !strings.Contains(out, "flow entries have been shown") {
		return nil, fmt.Errorf("%s: conntrack -L printed no summary: %q", r.Name, out)
	}
	var flows []string
	for _, line := range strings.Split(out, "\n") {
		if strings.HasPrefix(line, "udp") {
			flows = append(flows, line)
		}
	}
	return flows, nil
}

// Routers returns the lab's NAT routers in creation order.
func (l *Lab) Routers() []*Router {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]*Router(nil), l.routers...)
}

package dns

import (
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"strings"

	miekg "github.com/miekg/dns"

	"github.com/warren-appliance/warren/configs"
)

// DefaultDomain is the zone served when neither Config nor Records name one.
const DefaultDomain = configs.DefaultDomain

// TTLs: task addresses move when tasks restart or reschedule, so resolvers
// must come back soon; VIPs live as long as their service.
const (
	TaskTTL    uint32 = 5
	ServiceTTL uint32 = 60
	// NegativeTTL is the SOA minimum: how long a resolver may cache
	// NXDOMAIN/NODATA, short so a new service is found promptly.
	NegativeTTL uint32 = 5
)

// tasksLabel prefixes the name listing every running task of a service:
// tasks.<service>.<domain>.
const tasksLabel = "tasks"

// Records is the naming state the server answers from, translated by the
// caller from the cluster map.
type Records struct {
	Domain       string                  // e.g. "warren.local"; empty keeps the server's current domain
	Services     map[string]netip.Addr   // service name -> VIP
	Tasks        map[string]netip.Addr   // task name (<service>-<slot>) -> task IP
	ServiceTasks map[string][]netip.Addr // service -> running task IPs (tasks.<service>.<domain>)
	// TaskAliases are other names of tasks: <service>-task-<slot>, the
	// seed document's form, for the task <service>-<slot>. A real service
	// or task name wins over an alias; aliases get no PTR.
	TaskAliases map[string]netip.Addr
	// Imports are peered clusters' services (federation): "SERVICE.PEER"
	// (PEER "global" for SERVICE.global) -> a VIP of this cluster.
	Imports map[string]netip.Addr
	// Clients are source ranges answered besides Config.Allow: the
	// cluster's WireGuard and container subnets (RecordsFromMap).
	Clients []netip.Prefix
}

// rrset is the precomputed answer for one owner name. The records are shared
// by concurrent responses, which only read them.
type rrset struct {
	a    []miekg.RR
	aaaa []miekg.RR
}

// zone is an immutable, compiled view of Records: lookups are one map read
// on the lowercased question name.
type zone struct {
	domain  string              // lowercase FQDN, "warren.local."
	names   map[string]*rrset   // lowercase FQDN -> answers
	exists  map[string]struct{} // every name in the zone that exists, incl. empty non-terminals and the apex
	reverse map[string]miekg.RR // lowercase in-addr.arpa / ip6.arpa name -> PTR
	soa     *miekg.SOA
	clients []netip.Prefix
}

// normalizeDomain returns domain as a lowercase FQDN, or an error if it is
// not a usable zone name.
func normalizeDomain(domain string) (string, error) {
	d := strings.ToLower(strings.TrimSpace(domain))
	d = strings.TrimSuffix(d, ".")
	if d == "" {
		return "", errors.New("empty domain")
	}
	for _, label := range strings.Split(d, ".") {
		if !validLabel(label) {
			return "", fmt.Errorf("domain %q: invalid label %q", domain, label)
		}
	}
	d += "."
	if _, ok := miekg.IsDomainName(d); !ok || len(d) > 254 {
		return "", fmt.Errorf("domain %q is not a valid DNS name", domain)
	}
	return d, nil
}

// validLabel accepts the hostname-safe labels service and task names use
// (letters, digits, '-', '_'), at most 63 bytes.
func validLabel(s string) bool {
	if s == "" || len(s) > 63 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '-', c == '_':
		default:
			return false
		}
	}
	return true
}

// compileZone turns records into a zone for domain (a normalized FQDN).
// Names that cannot be served (invalid labels, clashes) are left out and
// reported, so one bad name does not take the others down.
func compileZone(domain string, r Records, serial uint32) (*zone, []error) {
	z := &zone{
		clients: r.Clients,
		domain:  domain,
		names:   make(map[string]*rrset),
		exists:  map[string]struct{}{domain: {}},
		reverse: make(map[string]miekg.RR),
		soa: &miekg.SOA{
			Hdr:     miekg.RR_Header{Name: domain, Rrtype: miekg.TypeSOA, Class: miekg.ClassINET, Ttl: NegativeTTL},
			Ns:      domain,
			Mbox:    "hostmaster." + domain,
			Serial:  serial,
			Refresh: 60,
			Retry:   60,
			Expire:  3600,
			Minttl:  NegativeTTL,
		},
	}
	var problems []error

	// Services first, in sorted order, so a clash resolves the same way on
	// every node: the stable VIP wins over a task of the same name.
	for _, name := range sortedKeys(r.Services) {
		if err := z.add(name, "", []netip.Addr{r.Services[name]}, ServiceTTL, true); err != nil {
			problems = append(problems, fmt.Errorf("service %q: %w", name, err))
		}
	}
	for _, name := range sortedKeys(r.Tasks) {
		if err := z.add(name, "", []netip.Addr{r.Tasks[name]}, TaskTTL, true); err != nil {
			problems = append(problems, fmt.Errorf("task %q: %w", name, err))
		}
	}
	for _, name := range sortedKeys(r.ServiceTasks) {
		// Reverse records point at the task names, not at tasks.<service>.
		if err := z.add(name, tasksLabel+".", r.ServiceTasks[name], TaskTTL, false); err != nil {
			problems = append(problems, fmt.Errorf("tasks of service %q: %w", name, err))
		}
	}
	for _, name := range sortedKeys(r.Imports) {
		svc, peer, ok := strings.Cut(name, ".")
		if !ok || !validLabel(svc) || !validLabel(peer) {
			problems = append(problems, fmt.Errorf("imported service %q: not SERVICE.PEER", name))
			continue
		}
		if err := z.add(peer, strings.ToLower(svc)+".", []netip.Addr{r.Imports[name]}, ServiceTTL, true); err != nil {
			problems = append(problems, fmt.Errorf("imported service %q: %w", name, err))
		}
	}
	for _, name := range sortedKeys(r.TaskAliases) {
		// A clash leaves the alias out quietly: the name is someone's own.
		_ = z.add(name, "", []netip.Addr{r.TaskAliases[name]}, TaskTTL, false)
	}
	return z, problems
}

// add registers prefix+label.<domain> with addrs.
func (z *zone) add(label, prefix string, addrs []netip.Addr, ttl uint32, withReverse bool) error {
	if !validLabel(label) {
		return errors.New("not a valid DNS label")
	}
	owner := prefix + strings.ToLower(label) + "." + z.domain
	if _, ok := miekg.IsDomainName(owner); !ok || len(owner) > 254 {
		return fmt.Errorf("name %q is too long", owner)
	}
	if _, taken := z.names[owner]; taken {
		return fmt.Errorf("name %q already taken", owner)
	}
	set := &rrset{}
	seen := make(map[netip.Addr]bool, len(addrs))
	for _, addr := range addrs {
		addr = addr.Unmap()
		if !addr.IsValid() || seen[addr] {
			continue
		}
		seen[addr] = true
		hdr := miekg.RR_Header{Name: owner, Class: miekg.ClassINET, Ttl: ttl}
		if addr.Is4() {
			hdr.Rrtype = miekg.TypeA
			set.a = append(set.a, &miekg.A{Hdr: hdr, A: addr.AsSlice()})
		} else {
			hdr.Rrtype = miekg.TypeAAAA
			set.aaaa = append(set.aaaa, &miekg.AAAA{Hdr: hdr, AAAA: addr.AsSlice()})
		}
		if withReverse {
			z.addReverse(addr, owner, ttl)
		}
	}
	z.names[owner] = set
	// Every ancestor up to the apex exists too (an empty non-terminal such
	// as tasks.<domain>): it must answer NODATA, not NXDOMAIN (RFC 8020).
	for n := owner; n != z.domain; {
		z.exists[n] = struct{}{}
		i := strings.IndexByte(n, '.')
		n = n[i+1:]
	}
	return nil
}

func (z *zone) addReverse(addr netip.Addr, owner string, ttl uint32) {
	arpa, err := miekg.ReverseAddr(addr.String())
	if err != nil {
		return
	}
	if _, taken := z.reverse[arpa]; taken {
		return // first owner wins: services were added before tasks
	}
	z.reverse[arpa] = &miekg.PTR{
		Hdr: miekg.RR_Header{Name: arpa, Rrtype: miekg.TypePTR, Class: miekg.ClassINET, Ttl: ttl},
		Ptr: owner,
	}
}

// inZone reports whether the lowercase FQDN name is the apex or below it.
func (z *zone) inZone(name string) bool {
	return name == z.domain || strings.HasSuffix(name, "."+z.domain)
}

// answer fills resp for a question inside the zone: the records of the
// name, NODATA with the SOA when the name exists without that type, or
// NXDOMAIN with the SOA.
func (z *zone) answer(resp *miekg.Msg, name string, qtype uint16) {
	resp.Authoritative = true
	if set, ok := z.names[name]; ok {
		switch qtype {
		case miekg.TypeA:
			resp.Answer = append(resp.Answer, set.a...)
		case miekg.TypeAAAA:
			resp.Answer = append(resp.Answer, set.aaaa...)
		case miekg.TypeANY:
			resp.Answer = append(resp.Answer, set.a...)
			resp.Answer = append(resp.Answer, set.aaaa...)
		}
	}
	if name == z.domain && (qtype == miekg.TypeSOA || qtype == miekg.TypeANY) {
		resp.Answer = append(resp.Answer, z.soa)
	}
	if len(resp.Answer) > 0 {
		return
	}
	if _, ok := z.exists[name]; !ok {
		resp.Rcode = miekg.RcodeNameError
	}
	resp.Ns = append(resp.Ns, z.soa)
}

// lookupPTR returns the PTR record for a reverse name of one of our
// addresses.
func (z *zone) lookupPTR(name string) (miekg.RR, bool) {
	rr, ok := z.reverse[name]
	return rr, ok
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

package nat

import (
	"github.com/warren-appliance/warren/hostfw"

	"bytes"
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden from the current renderer")

func ep(name, ip string) Endpoint { return Endpoint{Name: name, IP: netip.MustParseAddr(ip)} }

var baseOpts = Options{
	ContainerSubnet: netip.MustParsePrefix("10.0.0.0/16"),
	Bridge:          "warren-br0",
	Overlay:         "warren0",
}

func web() Service {
	return Service{
		Name: "web",
		VIP:  netip.MustParseAddr("10.1.0.5"),
		Ports: []Port{
			{Protocol: "tcp", Port: 80, TargetPort: 8080},
		},
		Endpoints: []Endpoint{ep("web-3", "10.0.2.7"), ep("web-1", "10.0.1.5"), ep("web-2", "10.0.1.6")},
	}
}

var goldenCases = map[string]struct {
	services []Service
	opts     Options
}{
	"empty":           {nil, baseOpts},
	"three-endpoints": {[]Service{web()}, baseOpts},
	"no-endpoints": {[]Service{{
		Name: "db", VIP: netip.MustParseAddr("10.1.0.6"),
		Ports: []Port{{Protocol: "tcp", Port: 5432, Published: 15432}},
	}}, baseOpts},
	"affinity": {[]Service{func() Service { s := web(); s.Affinity = true; return s }()}, baseOpts},
	"persistence-option": {[]Service{web()}, Options{
		Persistence: true, PersistenceTimeout: 10 * time.Minute,
		ContainerSubnet: baseOpts.ContainerSubnet, Bridge: "warren-br0", Overlay: "warren0",
	}},
	"published-tcp-udp": {[]Service{{
		Name: "dns", VIP: netip.MustParseAddr("10.1.0.7"),
		Ports: []Port{
			{Protocol: "udp", Port: 53, Published: 5353},
			{Protocol: "TCP", Port: 53, Published: 5353},
		},
		Endpoints: []Endpoint{ep("dns-1", "10.0.1.9"), ep("dns-2", "10.0.2.9")},
	}}, baseOpts},
	"node-addresses": {[]Service{func() Service {
		s := web()
		s.Ports[0].Published = 8080
		return s
	}()}, Options{
		NodeAddresses:   []netip.Addr{netip.MustParseAddr("192.168.1.20"), netip.MustParseAddr("10.0.0.2")},
		ContainerSubnet: baseOpts.ContainerSubnet,
	}},
	"all-ports": {[]Service{{
		Name: "web", VIP: netip.MustParseAddr("10.1.0.1"),
		Endpoints: []Endpoint{ep("web-2", "10.0.2.2"), ep("web-1", "10.0.1.2")},
	}}, baseOpts},
	"all-ports-no-endpoints": {[]Service{{Name: "web", VIP: netip.MustParseAddr("10.1.0.1")}}, baseOpts},
	"no-container-subnet": {[]Service{{
		Name: "one", VIP: netip.MustParseAddr("10.1.0.9"),
		Ports:     []Port{{Protocol: "tcp", Port: 443}},
		Endpoints: []Endpoint{ep("one-1", "10.0.1.20")},
	}}, Options{}},
}

func TestRenderGolden(t *testing.T) {
	for name, c := range goldenCases {
		t.Run(name, func(t *testing.T) {
			if err := Validate(c.services, c.opts); err != nil {
				t.Fatalf("case input invalid: %v", err)
			}
			got := Render(c.services, c.opts)
			path := filepath.Join("testdata", name+".golden")
			if *update {
				if err := os.WriteFile(path, got, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("read golden (run with -update to create): %v", err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("Render differs from %s (run go test ./nat -run TestRenderGolden -update and review the diff)\ngot:\n%s", path, got)
			}
		})
	}
}

func TestRenderAllPorts(t *testing.T) {
	all := string(Render(goldenCases["all-ports"].services, baseOpts))
	for _, want := range []string{
		`-A WARREN-SERVICES -d 10.1.0.1/32 -m comment --comment "web:all/0 virtual IP" -j WARREN-SVC-`,
		"-j DNAT --to-destination 10.0.1.2\n",
		"--probability 0.5000000000",
	} {
		if !strings.Contains(all, want) {
			t.Errorf("all-ports rules lack %q:\n%s", want, all)
		}
	}
	if strings.Contains(all, "--dport") || strings.Contains(all, " -p ") {
		t.Errorf("all-ports rules match a protocol or port:\n%s", all)
	}
	none := string(Render(goldenCases["all-ports-no-endpoints"].services, baseOpts))
	if !strings.Contains(none, `-A WARREN-SERVICES -d 10.1.0.1/32 -m comment --comment "web:all/0 has no endpoints" -j REJECT`) {
		t.Errorf("an all-ports service without endpoints must REJECT on its VIP:\n%s", none)
	}
	if err := Validate([]Service{web(), {Name: "other", VIP: web().VIP}}, baseOpts); err == nil {
		t.Error("an all-ports service sharing a VIP was accepted")
	}
}

func TestRenderIsDeterministic(t *testing.T) {
	a := web()
	b := web()
	// Same endpoints and ports, other order.
	b.Endpoints = []Endpoint{b.Endpoints[2], b.Endpoints[0], b.Endpoints[1]}
	other := Service{Name: "aaa", VIP: netip.MustParseAddr("10.1.0.1"),
		Ports:     []Port{{Protocol: "udp", Port: 9}, {Protocol: "tcp", Port: 9}},
		Endpoints: []Endpoint{ep("aaa-1", "10.0.1.1")}}
	otherSwapped := other
	otherSwapped.Ports = []Port{other.Ports[1], other.Ports[0]}
	x := Render([]Service{a, other}, baseOpts)
	y := Render([]Service{otherSwapped, b}, baseOpts)
	if !bytes.Equal(x, y) {
		t.Fatalf("render depends on input order:\n%s\nvs\n%s", x, y)
	}
}

func TestProbabilities(t *testing.T) {
	for _, n := range []int{1, 2, 3, 4, 7, 10} {
		s := Service{Name: "svc", VIP: netip.MustParseAddr("10.1.0.3"), Ports: []Port{{Protocol: "tcp", Port: 80}}}
		for i := range n {
			s.Endpoints = append(s.Endpoints, ep("svc-"+strconv.Itoa(i+10), "10.0.1."+strconv.Itoa(i+10)))
		}
		rs := plan([]Service{s}, baseOpts)
		rules := rs["nat"][serviceChain("svc", s.Ports[0])]
		var probs []float64
		var unconditional int
		for _, r := range rules {
			if !strings.Contains(r, "-j WARREN-SEP-") {
				continue
			}
			if i := strings.Index(r, "--probability "); i >= 0 {
				f := strings.Fields(r[i+len("--probability "):])[0]
				if len(f) != len("0.1234567890") {
					t.Errorf("n=%d: probability %q not printed with 10 decimals", n, f)
				}
				p, err := strconv.ParseFloat(f, 64)
				if err != nil {
					t.Fatal(err)
				}
				probs = append(probs, p)
			} else {
				unconditional++
			}
		}
		if len(probs) != n-1 || unconditional != 1 {
			t.Fatalf("n=%d: %d random rules and %d final rules, want %d and 1: %q", n, len(probs), unconditional, n-1, rules)
		}
		if !strings.Contains(rules[len(rules)-1], "-j WARREN-SEP-") || strings.Contains(rules[len(rules)-1], "statistic") {
			t.Errorf("n=%d: last rule %q is not the unconditional endpoint jump", n, rules[len(rules)-1])
		}
		// Each endpoint's overall chance: reach rule i (product of the
		// misses before it) times its probability; all must be 1/n.
		reach := 1.0
		for i := range n {
			p := 1.0
			if i < len(probs) {
				p = probs[i]
			}
			if want := 1 / float64(n); abs(reach*p-want) > 1e-9 {
				t.Errorf("n=%d: endpoint %d picked with %.12f, want %.12f", n, i, reach*p, want)
			}
			reach *= 1 - p
		}
	}
}

func abs(f float64) float64 {
	if f < 0 {
		return -f
	}
	return f
}

func TestChainNames(t *testing.T) {
	long := strings.Repeat("x", 63)
	p := Port{Protocol: "udp", Port: 65535, TargetPort: 65535}
	e := ep("x-1", "10.0.255.254")
	names := []string{serviceChain(long, p), externalChain(long, p), endpointChain(long, p, e),
		chainServices, chainNodePorts, chainPostrouting, chainMarkMasq, chainCanary, chainExternal, chainForward}
	for _, n := range names {
		if len(n) > maxChainName {
			t.Errorf("chain %q is %d characters, over the %d limit", n, len(n), maxChainName)
		}
		if !strings.HasPrefix(n, hostfw.ChainPrefix) {
			t.Errorf("chain %q lacks the %s prefix Cleanup relies on", n, hostfw.ChainPrefix)
		}
	}
	if serviceChain("web", p) != serviceChain("web", Port{Protocol: "UDP", Port: 65535}) {
		t.Error("service chain depends on protocol case or target port")
	}
	distinct := map[string]string{}
	for _, name := range []string{
		serviceChain("web", Port{Protocol: "tcp", Port: 80}),
		serviceChain("web", Port{Protocol: "udp", Port: 80}),
		serviceChain("web", Port{Protocol: "tcp", Port: 81}),
		serviceChain("web2", Port{Protocol: "tcp", Port: 80}),
		externalChain("web", Port{Protocol: "tcp", Port: 80}),
		endpointChain("web", Port{Protocol: "tcp", Port: 80}, ep("web-1", "10.0.1.5")),
		endpointChain("web", Port{Protocol: "tcp", Port: 80}, ep("web-1", "10.0.1.6")),
		endpointChain("web", Port{Protocol: "tcp", Port: 80, TargetPort: 8080}, ep("web-1", "10.0.1.5")),
	} {
		if _, dup := distinct[name]; dup {
			t.Errorf("chain name %s collides", name)
		}
		distinct[name] = name
	}
	// The endpoint chain follows the address, not the task name.
	if endpointChain("web", p, ep("web-1", "10.0.1.5")) != endpointChain("web", p, ep("web-9", "10.0.1.5")) {
		t.Error("endpoint chain depends on task name")
	}
}

func TestValidate(t *testing.T) {
	good := []Service{web()}
	if err := Validate(good, baseOpts); err != nil {
		t.Fatalf("valid input refused: %v", err)
	}
	bad := map[string][]Service{
		"quote in name":  {{Name: `we"b`, VIP: netip.MustParseAddr("10.1.0.1")}},
		"ipv6 vip":       {{Name: "a", VIP: netip.MustParseAddr("fd00::1")}},
		"sctp":           {{Name: "a", VIP: netip.MustParseAddr("10.1.0.1"), Ports: []Port{{Protocol: "sctp", Port: 1}}}},
		"port 0":         {{Name: "a", VIP: netip.MustParseAddr("10.1.0.1"), Ports: []Port{{Protocol: "tcp"}}}},
		"duplicate name": {web(), web()},
		"same vip port": {web(), func() Service {
			s := web()
			s.Name = "other"
			return s
		}()},
		"published twice": {
			{Name: "a", VIP: netip.MustParseAddr("10.1.0.1"), Ports: []Port{{Protocol: "tcp", Port: 1, Published: 80}}},
			{Name: "b", VIP: netip.MustParseAddr("10.1.0.2"), Ports: []Port{{Protocol: "tcp", Port: 1, Published: 80}}},
		},
		"endpoint twice": {{Name: "a", VIP: netip.MustParseAddr("10.1.0.1"), Endpoints: []Endpoint{ep("a-1", "10.0.1.1"), ep("a-2", "10.0.1.1")}}},
	}
	for name, services := range bad {
		if err := Validate(services, baseOpts); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if err := Validate(good, Options{Bridge: "much-too-long-bridge-name"}); err == nil {
		t.Error("interface name over 15 characters accepted")
	}
}

func TestRestoreTextPartial(t *testing.T) {
	before := plan([]Service{web()}, baseOpts)
	changed := web()
	changed.Endpoints[0] = ep("web-3", "10.0.2.8") // web-3 moved
	after := plan([]Service{changed}, baseOpts)
	text := string(restoreText(after, before, nil))

	svc := serviceChain("web", changed.Ports[0])
	oldSEP := endpointChain("web", changed.Ports[0], ep("web-3", "10.0.2.7"))
	newSEP := endpointChain("web", changed.Ports[0], ep("web-3", "10.0.2.8"))
	want := "*nat\n" +
		":" + newSEP + " - [0:0]\n" +
		":" + svc + " - [0:0]\n" +
		":" + oldSEP + " - [0:0]\n"
	if !strings.HasPrefix(text, want) {
		t.Fatalf("partial text should touch only the new endpoint chain, its service chain and the old endpoint chain:\n%s", text)
	}
	if strings.Contains(text, "*filter") || strings.Contains(text, chainServices) {
		t.Errorf("partial text rewrites untouched chains:\n%s", text)
	}
	if !strings.HasSuffix(text, "-X "+oldSEP+"\nCOMMIT\n") {
		t.Errorf("old endpoint chain not deleted at the end:\n%s", text)
	}
	if got := restoreText(after, after, nil); len(got) != 0 {
		t.Errorf("no change should give no transaction, got:\n%s", got)
	}
}

func TestSummary(t *testing.T) {
	s := web()
	s.Endpoints[1].Local = true
	s.Ports[0].Published = 8080
	empty := Service{Name: "db", VIP: netip.MustParseAddr("10.1.0.6"), Ports: []Port{{Protocol: "udp", Port: 53}}}
	allPorts := Service{Name: "any", VIP: netip.MustParseAddr("10.1.0.8"), Endpoints: []Endpoint{ep("any-1", "10.0.1.30")}}
	got := Summary([]Service{s, empty, allPorts})
	for _, want := range []string{
		"10.1.0.5:80/tcp", ":8080/tcp", "web-1=10.0.1.5:8080(local)", "web-2=10.0.1.6:8080 ", "web-3=10.0.2.7:8080",
		"10.1.0.6:53/udp", "none (refused)",
		"10.1.0.8 (all ports)", "any-1=10.0.1.30\n",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("summary lacks %q:\n%s", want, got)
		}
	}
	if strings.Index(got, "db") > strings.Index(got, "web") {
		t.Errorf("summary not sorted by service:\n%s", got)
	}
}

func TestPartCacheMatchesPlan(t *testing.T) {
	var c partCache
	steps := [][]Service{
		services3x3(),
		withOneEndpointMoved(services3x3()),
		services3x3()[1:],
		append(services3x3(), Service{Name: "new", VIP: netip.MustParseAddr("10.1.0.77"),
			Ports: []Port{{Protocol: "udp", Port: 53}}, Endpoints: []Endpoint{ep("new-1", "10.0.9.9")}}),
	}
	for i, services := range steps {
		for _, opts := range []Options{baseOpts, {Persistence: true}} {
			got := restoreText(c.plan(services, opts), nil, nil)
			want := Render(services, opts)
			if !bytes.Equal(got, want) {
				t.Fatalf("step %d: cached plan differs from Render:\n%s\nwant:\n%s", i, got, want)
			}
		}
	}
	// A caller editing its slices in place after a sync must not change
	// what the cache compares against.
	services := services3x3()
	c.plan(services, baseOpts)
	services[0].Endpoints[0].IP = netip.MustParseAddr("10.0.99.99")
	if got, want := restoreText(c.plan(services, baseOpts), nil, nil), Render(services, baseOpts); !bytes.Equal(got, want) {
		t.Fatal("in-place edit of a service's endpoints not noticed by the cache")
	}
}

package orchestrate

import (
	"context"
	"github.com/warren-appliance/warren/cluster/clustermap"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestHostVethName(t *testing.T) {
	a, b := hostVethName("web-1"), hostVethName("web-2")
	if a == b {
		t.Fatal("two tasks share a veth name")
	}
	if len(a) > 15 || !strings.HasPrefix(a, hostVethPrefix) {
		t.Fatalf("bad veth name %q", a)
	}
	if hostVethName("web-1") != a {
		t.Fatal("veth name is not stable")
	}
}

func TestCheckSpec(t *testing.T) {
	block := netip.MustParsePrefix("10.0.1.0/24")
	ok := TaskSpec{Name: "web-1", Image: "busybox", IP: netip.MustParseAddr("10.0.1.2")}
	if err := checkSpec(ok, block); err != nil {
		t.Fatalf("valid spec rejected: %v", err)
	}
	for name, mutate := range map[string]func(*TaskSpec){
		"ip outside block": func(s *TaskSpec) { s.IP = netip.MustParseAddr("10.0.2.2") },
		"bridge ip":        func(s *TaskSpec) { s.IP = netip.MustParseAddr("10.0.1.1") },
		"network ip":       func(s *TaskSpec) { s.IP = netip.MustParseAddr("10.0.1.0") },
		"broadcast ip":     func(s *TaskSpec) { s.IP = netip.MustParseAddr("10.0.1.255") },
		"no ip":            func(s *TaskSpec) { s.IP = netip.Addr{} },
		"no image":         func(s *TaskSpec) { s.Image = " " },
		"bad name":         func(s *TaskSpec) { s.Name = "web 1" },
		"path name":        func(s *TaskSpec) { s.Name = "../x" },
	} {
		s := ok
		mutate(&s)
		if err := checkSpec(s, block); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestSpecHash(t *testing.T) {
	s := TaskSpec{Name: "web-1", Service: "web", Image: "busybox", IP: netip.MustParseAddr("10.0.1.2"), Env: []string{"A=1"}}
	h := specHash(s, "docker.io/library/busybox:latest")
	if specHash(s, "docker.io/library/busybox:latest") != h {
		t.Fatal("hash not stable")
	}
	changed := []TaskSpec{s, s, s, s, s, s}
	changed[0].IP = netip.MustParseAddr("10.0.1.3")
	changed[1].Env = []string{"A=2"}
	changed[2].Command = []string{"sleep", "1"}
	changed[3].Limits.MemoryBytes = 32 << 20
	changed[4].Mounts = []clustermap.Mount{{Type: "volume", Source: "data", Target: "/data"}}
	changed[5].Process.ReadOnly = true
	// The restart policy is not part of the container: no recreate.
	policy := s
	policy.Restart.Condition = clustermap.RestartNone
	if specHash(policy, "docker.io/library/busybox:latest") != h {
		t.Error("a restart policy change changes the container hash")
	}
	// A spec without workload settings keeps the hash it had before they
	// existed (no recreate of every task on upgrade).
	if h != "a08531c35b0c665674771cdc430664cc" { // specHash before workloads (with capabilities)
		t.Errorf("hash of a spec without workload settings changed: %s", h)
	}
	for i, c := range changed {
		if specHash(c, "docker.io/library/busybox:latest") == h {
			t.Errorf("change %d does not change the hash", i)
		}
	}
	if specHash(s, "docker.io/library/busybox:1") == h {
		t.Error("image change does not change the hash")
	}
}

func TestNormalizeRef(t *testing.T) {
	for in, want := range map[string]string{
		"nginx":                   "docker.io/library/nginx:latest",
		"nginx:1.27":              "docker.io/library/nginx:1.27",
		"ghcr.io/acme/app":        "ghcr.io/acme/app:latest",
		"registry.lan:5000/a/b:c": "registry.lan:5000/a/b:c",
	} {
		got, err := normalizeRef(in)
		if err != nil || got != want {
			t.Errorf("%s: got %q, %v; want %q", in, got, err, want)
		}
	}
	if _, err := normalizeRef("Bad Ref"); err == nil {
		t.Error("invalid ref accepted")
	}
}

func TestChainRules(t *testing.T) {
	rules := chainRules("warren-br0", "warren0", netip.MustParsePrefix("10.0.1.0/24"), netip.MustParsePrefix("10.0.0.0/16"), netip.MustParsePrefix("10.0.0.0/24"))
	var text []string
	for _, key := range []string{"filter/" + chainForward, "nat/" + chainPostrouting, "filter/" + chainInput} {
		for _, r := range rules[key] {
			text = append(text, r.Table+" "+r.Chain+" "+strings.Join(r.Spec, " "))
		}
	}
	want := []string{
		"filter WARREN-TASK-FORWARD -i warren-br0 -j ACCEPT",
		"filter WARREN-TASK-FORWARD -i warren0 -o warren-br0 -j ACCEPT",
		"filter WARREN-TASK-FORWARD -o warren-br0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
		"nat WARREN-TASK-EGRESS -o warren-br0 -j RETURN",
		"nat WARREN-TASK-EGRESS -o warren0 -j RETURN",
		"nat WARREN-TASK-EGRESS -s 10.0.1.0/24 -j MASQUERADE",
		"filter WARREN-TASK-INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN",
		"filter WARREN-TASK-INPUT -i warren-br0 -d 10.0.1.1/32 -p udp -m udp --dport 53 -j RETURN",
		"filter WARREN-TASK-INPUT -i warren-br0 -d 10.0.1.1/32 -p tcp -m tcp --dport 53 -j RETURN",
		"filter WARREN-TASK-INPUT -i warren-br0 -p icmp -m icmp --icmp-type echo-request -j RETURN",
		"filter WARREN-TASK-INPUT -i warren-br0 -m comment --comment tasks reach only DNS on their node -j DROP",
		"filter WARREN-TASK-INPUT -i warren0 -s 10.0.0.0/24 -m comment --comment other nodes reach this node over the overlay -j RETURN",
		"filter WARREN-TASK-INPUT -i warren0 -s 10.0.0.0/16 -m comment --comment tasks of other nodes reach no node port -j DROP",
	}
	if strings.Join(text, "\n") != strings.Join(want, "\n") {
		t.Fatalf("rules:\n%s\nwant:\n%s", strings.Join(text, "\n"), strings.Join(want, "\n"))
	}
}

// Each task port may send IPv4 from its own address and MAC, and ARP
// claiming them; every other frame of every task port is dropped. The
// rules are sorted by port, whatever order the ports come in.
func TestPortSourceRules(t *testing.T) {
	mac := func(s string) net.HardwareAddr { m, _ := net.ParseMAC(s); return m }
	ports := []taskPort{
		{Veth: "wvbbb", IP: netip.MustParseAddr("10.0.1.3"), MAC: mac("02:00:00:00:00:03")},
		{Veth: "wvaaa", IP: netip.MustParseAddr("10.0.1.2"), MAC: mac("02:00:00:00:00:02")},
		{Veth: "wvccc", IP: netip.MustParseAddr("10.0.1.4")}, // MAC unknown: address only
		{Veth: "wvddd"}, // no address: only the catch-all applies
	}
	got := string(portSourceRestore(portSourceRules(ports)))
	want := `*filter
:WARREN-TASK-SRC RETURN
-A WARREN-TASK-SRC -p IPv4 -i wvaaa -s 02:00:00:00:00:02 --ip-src 10.0.1.2 -j RETURN
-A WARREN-TASK-SRC -p ARP -i wvaaa -s 02:00:00:00:00:02 --arp-ip-src 10.0.1.2 --arp-mac-src 02:00:00:00:00:02 -j RETURN
-A WARREN-TASK-SRC -p IPv4 -i wvbbb -s 02:00:00:00:00:03 --ip-src 10.0.1.3 -j RETURN
-A WARREN-TASK-SRC -p ARP -i wvbbb -s 02:00:00:00:00:03 --arp-ip-src 10.0.1.3 --arp-mac-src 02:00:00:00:00:03 -j RETURN
-A WARREN-TASK-SRC -p IPv4 -i wvccc --ip-src 10.0.1.4 -j RETURN
-A WARREN-TASK-SRC -p ARP -i wvccc --arp-ip-src 10.0.1.4 -j RETURN
-A WARREN-TASK-SRC -i wv+ -j DROP
COMMIT
`
	if got != want {
		t.Fatalf("rules:\n%s\nwant:\n%s", got, want)
	}
	if again := string(portSourceRestore(portSourceRules([]taskPort{ports[2], ports[0], ports[3], ports[1]}))); again != got {
		t.Errorf("order of ports changes the rules:\n%s", again)
	}
	if none := string(portSourceRestore(portSourceRules(nil))); none != "*filter\n:WARREN-TASK-SRC RETURN\n-A WARREN-TASK-SRC -i wv+ -j DROP\nCOMMIT\n" {
		t.Errorf("no ports:\n%s", none)
	}
}

// NET_RAW is dropped unless added back; ALL as Docker has it; a change of
// capabilities changes the spec hash (the container is recreated).
func TestCapabilities(t *testing.T) {
	for _, c := range []struct {
		add, drop         []string
		wantAdd, wantDrop string
	}{
		{nil, nil, "", "CAP_NET_RAW"},
		{[]string{"CAP_NET_RAW"}, nil, "CAP_NET_RAW", ""},
		{[]string{"ALL"}, nil, "ALL", ""},
		{[]string{"ALL"}, []string{"CAP_SYS_ADMIN"}, "ALL", "CAP_SYS_ADMIN"},
		{nil, []string{"CAP_CHOWN", "CAP_NET_RAW"}, "", "CAP_CHOWN,CAP_NET_RAW"},
		{[]string{"CAP_NET_ADMIN"}, []string{"ALL"}, "CAP_NET_ADMIN", "ALL,CAP_NET_RAW"},
	} {
		add, drop := capabilities(TaskSpec{CapAdd: c.add, CapDrop: c.drop})
		if strings.Join(add, ",") != c.wantAdd || strings.Join(drop, ",") != c.wantDrop {
			t.Errorf("add %v drop %v: got add %v drop %v, want add %s drop %s", c.add, c.drop, add, drop, c.wantAdd, c.wantDrop)
		}
	}
	s := TaskSpec{Name: "a-1", Service: "a", IP: netip.MustParseAddr("10.0.1.2")}
	raw := s
	raw.CapAdd = []string{"CAP_NET_RAW"}
	if specHash(s, "busybox") == specHash(raw, "busybox") {
		t.Error("adding NET_RAW does not change the spec hash")
	}
}

func TestHostsFile(t *testing.T) {
	got := string(hostsFile("web-1", netip.MustParseAddr("10.0.1.2")))
	if !strings.Contains(got, "10.0.1.2\tweb-1\n") || !strings.Contains(got, "127.0.0.1\tlocalhost\n") {
		t.Fatalf("hosts file:\n%s", got)
	}
}

func TestBackoff(t *testing.T) {
	want := []time.Duration{500 * time.Millisecond, time.Second, 2 * time.Second, 4 * time.Second}
	for i, w := range want {
		if got := backoff(i+1, time.Minute); got != w {
			t.Errorf("backoff(%d) = %s, want %s", i+1, got, w)
		}
	}
	if backoff(100, time.Minute) != time.Minute {
		t.Errorf("backoff not capped: %s", backoff(100, time.Minute))
	}
	if backoff(100, 0) != DefaultRestartBackoffMax {
		t.Errorf("backoff without a cap: %s, want the default %s", backoff(100, 0), DefaultRestartBackoffMax)
	}
}

func TestConfigValidate(t *testing.T) {
	base := Config{StateDir: "/var/lib/warren/tasks", Block: netip.MustParsePrefix("10.0.1.0/24")}
	base.setDefaults()
	if err := base.validate(); err != nil {
		t.Fatalf("valid config rejected: %v", err)
	}
	if base.CgroupParent != "/warren/10.0.1.0_24" || base.Bridge != "warren-br0" || base.OverlayInterface != "warren0" {
		t.Fatalf("defaults: %+v", base)
	}
	bad := []func(*Config){
		func(c *Config) { c.StateDir = "" },
		func(c *Config) { c.StateDir = "relative" },
		func(c *Config) { c.Block = netip.MustParsePrefix("10.0.1.5/24") },
		func(c *Config) { c.Block = netip.MustParsePrefix("10.0.1.0/31") },
		func(c *Config) { c.Block = netip.Prefix{} },
		func(c *Config) { c.Bridge = "a-very-long-bridge-name" },
	}
	for i, mutate := range bad {
		c := base
		mutate(&c)
		if err := c.validate(); err == nil {
			t.Errorf("bad config %d accepted", i)
		}
	}
}

func TestTrimLog(t *testing.T) {
	f := taskFiles{dir: t.TempDir()}
	if err := f.trimLog(); err != nil {
		t.Fatalf("missing log: %v", err)
	}
	if err := os.WriteFile(f.log(), make([]byte, 100), 0o640); err != nil {
		t.Fatal(err)
	}
	if err := f.trimLog(); err != nil {
		t.Fatal(err)
	}
	if st, _ := os.Stat(f.log()); st.Size() != 100 {
		t.Fatalf("small log trimmed to %d", st.Size())
	}
	if err := os.WriteFile(f.log(), make([]byte, maxLogSize+1), 0o640); err != nil {
		t.Fatal(err)
	}
	if err := f.trimLog(); err != nil {
		t.Fatal(err)
	}
	if st, _ := os.Stat(f.log()); st.Size() != 0 {
		t.Fatalf("big log not trimmed: %d", st.Size())
	}
}

// TestApplyStatus checks what Status says between Apply and the loop's
// next pass; no containerd is needed (the client connects lazily).
func TestApplyStatus(t *testing.T) {
	r, err := New(context.Background(), Config{
		ContainerdAddress: filepath.Join(t.TempDir(), "nobody.sock"),
		StateDir:          t.TempDir(),
		Block:             netip.MustParsePrefix("10.0.1.0/24"),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	web := TaskSpec{Name: "web-1", Service: "web", Image: "nginx:1", IP: netip.MustParseAddr("10.0.1.2")}
	r.Apply([]TaskSpec{web})
	st := r.Status()
	if len(st) != 1 || st[0] != (TaskStatus{Name: "web-1", State: "pending", Image: "nginx:1"}) {
		t.Fatalf("status after Apply: %+v", st)
	}

	// Pretend a pass ran it; the same spec again keeps what is known.
	r.setState(web, "running", "")
	r.Apply([]TaskSpec{web})
	if st := r.Status(); st[0].State != "running" {
		t.Fatalf("re-Apply of the same spec lost the state: %+v", st)
	}
	// A new image starts over, and says which image it is about.
	web.Image = "nginx:2"
	r.Apply([]TaskSpec{web})
	if st := r.Status(); st[0].State != "pending" || st[0].Image != "nginx:2" {
		t.Fatalf("status after an image change: %+v", st)
	}
	r.Apply(nil)
	if st := r.Status(); len(st) != 1 || st[0].State != "pending" {
		// Removal is the loop's job: until it ran, the task is still there.
		t.Fatalf("status right after removal from the list: %+v", st)
	}
}

package configs

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

func load(t *testing.T, text string) (*Loaded, error) {
	t.Helper()
	l, err := Parse([]byte(text), "warren.toml")
	if err != nil {
		return nil, err
	}
	return l, l.Finish()
}

func TestDefaultsMatchReference(t *testing.T) {
	// Every key of the reference file, with its default value, is accepted
	// and decodes to exactly Default().
	ref := filepath.Join("..", "..", "shared", "warren.reference.toml")
	data, err := os.ReadFile(ref)
	if err != nil {
		t.Skipf("reference file not beside the repo: %v", err)
	}
	l, err := Parse(data, ref)
	if err != nil {
		t.Fatalf("reference config rejected: %v", err)
	}
	if !reflect.DeepEqual(l.Config, Default()) {
		t.Fatalf("reference decodes to\n%+v\nwant defaults\n%+v", l.Config, Default())
	}
}

func TestDefaultValues(t *testing.T) {
	d := Default()
	checks := map[string]bool{
		"role worker":          d.Node.Role == "worker",
		"listen 51820":         d.WireGuard.ListenPort == 51820,
		"keepalive 25s":        d.WireGuard.Keepalive.Duration == 25*time.Second,
		"mtu 1420":             d.WireGuard.MTU == 1420,
		"wg subnet":            d.WireGuard.Subnet.Prefix == netip.MustParsePrefix("10.0.0.0/24"),
		"container subnet":     d.Network.ContainerSubnet.Prefix == netip.MustParsePrefix("10.0.0.0/16"),
		"vip subnet":           d.Network.VIPSubnet.Prefix == netip.MustParsePrefix("10.1.0.0/16"),
		"block 24":             d.Network.ContainerBlock == 24,
		"domain":               d.Network.DNSDomain == "warren.local",
		"persistence timeout":  d.LoadBalancing.PersistenceTimeout.Duration == 3*time.Hour,
		"containerd namespace": d.Runtime.Namespace == "warren",
		"api listen":           d.Cluster.APIListen == ":7946",
		"metrics loopback":     d.Metrics.Listen == "127.0.0.1:9586",
		"relay port":           d.Relay.Port == 7946 && !d.Relay.Enable,
		"cert lifetime":        d.Cluster.CertLifetime.Duration == 90*24*time.Hour,
		"firewall iptables":    d.Firewall.Backend == "iptables",
	}
	for name, ok := range checks {
		if !ok {
			t.Errorf("default %s wrong", name)
		}
	}
}

func TestExamplesAreValid(t *testing.T) {
	files, _ := filepath.Glob("examples/*.toml")
	if len(files) != 3 {
		t.Fatalf("want manager, worker and standalone examples, found %v", files)
	}
	tokenFile := filepath.Join(t.TempDir(), "token")
	os.WriteFile(tokenFile, []byte(testToken+"\n"), 0o600)
	for _, f := range files {
		l, err := Load(f)
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		if l.Cluster.TokenFile != "" {
			l.Cluster.TokenFile = tokenFile // the example's /etc/warren/token
		}
		if err := l.Finish(); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
	}
}

// The config the package installs as /etc/warren/warren.toml sets nothing
// node-specific: with a fresh state dir it says which command to run, and
// once a setup is remembered it is valid as shipped.
func TestShippedConfig(t *testing.T) {
	data, err := os.ReadFile("../packaging/config/warren.toml")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	l, err := Parse(data, "warren.toml")
	if err != nil {
		t.Fatal(err)
	}
	l.Node.StateDir = dir
	err = l.Finish()
	if err == nil || !strings.Contains(err.Error(), "warren cluster init") || strings.Count(err.Error(), "\n") != 0 {
		t.Fatalf("fresh board: want exactly one error naming the command to run, got %v", err)
	}
	SaveSetup(dir, Setup{Role: RoleManager, Name: "pi-1"})
	l, _ = Parse(data, "warren.toml")
	l.Node.StateDir = dir
	if err := l.Finish(); err != nil {
		t.Fatalf("a board set up by cluster init, with the shipped config: %v", err)
	}
	if l.Node.Role != RoleManager || l.Node.Name != "pi-1" {
		t.Fatalf("remembered role/name not used: %+v", l.Node)
	}
}

func TestEffectiveConfigHidesToken(t *testing.T) {
	l, err := load(t, validWorker)
	if err != nil {
		t.Fatal(err)
	}
	out, err := l.Encode()
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(out), testToken) {
		t.Fatalf("effective config shows the token:\n%s", out)
	}
	// The printed config loads back to the same values (a round trip).
	back, err := Parse(out, "printed")
	if err != nil {
		t.Fatalf("printed config does not load: %v\n%s", err, out)
	}
	if back.WireGuard.Subnet != l.WireGuard.Subnet || back.Node.Name != "w1" {
		t.Fatalf("round trip changed values")
	}
}

func TestTokenFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "token")
	os.WriteFile(p, []byte(testToken+"\n"), 0o600)
	l, err := load(t, "[node]\nname='w1'\n[cluster]\nmanager='192.0.2.1:7946'\ntoken_file='"+p+"'\n")
	if err != nil {
		t.Fatal(err)
	}
	if l.Cluster.Token != testToken {
		t.Fatalf("token = %q", l.Cluster.Token)
	}
}

// testToken has the shape of a join token (the secret is not checked here).
var testToken = "WRN-1-" + strings.Repeat("ab", 32) + "-abcdefghijklmnopqrstuvwxyz"

var validWorker = "[node]\nname = 'w1'\n[cluster]\nmanager = '192.0.2.1:7946'\ntoken = '" + testToken + "'\n"

func TestBadConfigs(t *testing.T) {
	cases := []struct {
		name     string
		text     string
		key      string // must be named
		line     int    // 0: do not check
		contains string
	}{
		{"unknown key", validWorker + "[wireguard]\nlisten_prot = 51820\n", "wireguard.listen_prot", 7, `did you mean "wireguard.listen_port"`},
		{"unknown table", validWorker + "[wirguard]\nmtu = 1400\n", "wirguard.mtu", 7, "unknown key"},
		{"duration as number", validWorker + "[wireguard]\nkeepalive = 25\n", "wireguard.keepalive", 7, "not a duration"},
		{"bad duration", validWorker + "[wireguard]\nkeepalive = \"soon\"\n", "wireguard.keepalive", 7, "not a duration"},
		{"bad cidr", validWorker + "[network]\nvip_subnet = \"10.1.0.0/33\"\n", "network.vip_subnet", 7, "not a CIDR"},
		{"host bits", validWorker + "[network]\ncontainer_subnet = \"10.0.1.0/16\"\n", "network.container_subnet", 7, "host bits set, did you mean 10.0.0.0/16?"},
		{"vip overlaps containers", validWorker + "[network]\nvip_subnet = \"10.0.128.0/20\"\n", "network.vip_subnet", 7, "overlaps network.container_subnet 10.0.0.0/16"},
		{"wg overlaps vip", validWorker + "[wireguard]\nsubnet = \"10.1.0.0/24\"\n", "network.vip_subnet", 0, "overlaps wireguard.subnet 10.1.0.0/24"},
		{"wg partially overlaps containers", validWorker + "[wireguard]\nsubnet = \"10.0.0.0/8\"\n", "wireguard.subnet", 7, "overlaps network.container_subnet"},
		{"port too big", validWorker + "[wireguard]\nlisten_port = 70000\n", "wireguard.listen_port", 7, "not a UDP port"},
		{"port zero", validWorker + "[wireguard]\nlisten_port = 0\n", "wireguard.listen_port", 7, "not a UDP port"},
		{"public endpoint without port", validWorker + "[wireguard]\npublic_endpoint = \"203.0.113.7\"\n", "wireguard.public_endpoint", 7, "must be IP:port or host:port"},
		{"public endpoint bad port", validWorker + "[wireguard]\npublic_endpoint = \"shop.example.org:0\"\n", "wireguard.public_endpoint", 7, "port forward"},
		{"bad api port", validWorker + "api_listen = \":99999\"\n", "cluster.api_listen", 6, "not a TCP port"},
		{"bad role", "[node]\nname='n'\nrole = \"boss\"\n", "node.role", 3, "not a role"},
		{"worker without manager", "[node]\nname='w'\nrole='worker'\n[cluster]\ntoken='" + testToken + "'\n", "cluster.manager", 0, "needs the manager"},
		{"worker without token", "[node]\nname='w'\n[cluster]\nmanager='192.0.2.1:7946'\n", "cluster.token", 0, "needs a join token"},
		{"standalone without address", "[node]\nname='g'\nrole='standalone'\n", "wireguard.address", 0, "needs its overlay address"},
		{"bad mode", validWorker + "[wireguard]\nmode = \"kernel\"\n", "wireguard.mode", 7, "not a mode"},
		{"bad firewall backend", validWorker + "[firewall]\nbackend = \"pf\"\n", "firewall.backend", 7, "want \"iptables\""},
		{"firewall backend not a string", validWorker + "[firewall]\nbackend = 1\n", "firewall.backend", 7, ""},
		{"bad udp_gso", validWorker + "[wireguard]\nmtu = 1420\nudp_gso = \"yes\"\n", "wireguard.udp_gso", 8, "want \"auto\""},
		{"udp_gso not a string", validWorker + "[wireguard]\nudp_gso = false\n", "wireguard.udp_gso", 7, ""},
		{"bad level", validWorker + "[log]\nlevel = \"loud\"\n", "log.level", 7, "not a level"},
		{"relay port zero", validWorker + "[relay]\nport = 0\n", "relay.port", 7, "not a port"},
		{"relay on the wireguard port", validWorker + "[relay]\nenable = true\nport = 51820\n", "relay.port", 8, "is wireguard.listen_port"},
		{"relay sessions", validWorker + "[relay]\nmax_sessions = 0\n", "relay.max_sessions", 7, "want 1-65535"},
		{"relay rate", validWorker + "[relay]\npeer_rate_mbps = -1\n", "relay.peer_rate_mbps", 7, "Mbit/s per member"},
		{"standalone relay", "[node]\nname='g'\nrole='standalone'\n[wireguard]\naddress='10.0.0.1/24'\n[relay]\nenable = true\n", "relay.enable", 7, "no cluster to relay for"},
		{"metrics listen without IP", validWorker + "[metrics]\nlisten = \":9586\"\n", "metrics.listen", 7, "must be an IP:port"},
		{"bad peer key", "[node]\nname='g'\nrole='standalone'\n[wireguard]\naddress='10.0.0.1/24'\n[[wireguard.peer]]\npublic_key='nope'\nallowed_ips=['10.0.0.2/32']\n", "wireguard.peer[0].public_key", 7, "not a WireGuard public key"},
		{"peer hostname endpoint", "[node]\nname='g'\nrole='standalone'\n[wireguard]\naddress='10.0.0.1/24'\n[[wireguard.peer]]\npublic_key='xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg='\nendpoint='peer.example'\nallowed_ips=['10.0.0.2/32']\n", "wireguard.peer[0].endpoint", 8, "must be IP:port or host:port"},
		{"bad block", validWorker + "[network]\ncontainer_block = 8\n", "network.container_block", 7, "between"},
		{"bad node name", "[node]\nname = 'Worker_1'\n[cluster]\nmanager='192.0.2.1:7946'\ntoken='x'\n", "node.name", 2, "not a valid node name"},
		{"relative state dir", validWorker + "state_dir = 'var/warren'\n", "cluster.state_dir", 0, "unknown key"},
		{"bad forward", validWorker + "[[forward]]\nproto='sctp'\nlisten='127.0.0.1:1'\ntarget='10.1.0.1:80'\n", "forward[0].proto", 7, "not \"tcp\" or \"udp\""},
		{"syntax error", validWorker + "[wireguard\n", "cluster", 7, "expected"},
		{"cert lifetime too short", validWorker + "cert_lifetime = \"30s\"\n", "cluster.cert_lifetime", 0, "at least \"1m\""},
		{"token and file", validWorker + "token_file = '/etc/warren/token'\n", "cluster.token_file", 6, "not both"},
		{"placeholder token", "[node]\nname='w'\n[cluster]\nmanager='192.0.2.1:7946'\ntoken='WRN-1-replace-with-the-token-the-manager-printed'\n", "cluster.token", 5, "join token is malformed"},
		{"not set up", "[node]\nname='w'\n", "node.role", 0, "run `warren cluster init`"},
		{"peer allowed_ips not a list", "[node]\nname='g'\nrole='standalone'\n[wireguard]\naddress='10.0.0.1/24'\n[[wireguard.peer]]\npublic_key='xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg='\nallowed_ips=['10.0.0.2/32']\n[[wireguard.peer]]\npublic_key='xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg='\nallowed_ips='10.0.0.3/32'\n", "wireguard.peer[1].allowed_ips", 11, "want a list of CIDRs"},
		{"wrong type", validWorker + "[wireguard]\nlisten_port = '51820'\n", "wireguard.listen_port", 7, "want a whole number"},
		{"bad log size", validWorker + "[logs]\nmax_size = \"lots\"\n", "logs.max_size", 7, "not a size"},
		{"tiny log size", validWorker + "[logs]\nmax_size = \"1k\"\n", "logs.max_size", 0, "want 4k to 1G"},
		{"tiny tasks memory", validWorker + "[runtime]\ntasks_memory_max = \"1M\"\n", "runtime.tasks_memory_max", 0, "at least 64M"},
		{"no log files", validWorker + "[logs]\nmax_files = 0\n", "logs.max_files", 0, "want 1 to 20"},
		{"restart backoff too short", validWorker + "[runtime]\nrestart_backoff_max = \"10ms\"\n", "runtime.restart_backoff_max", 0, "want 1s to 24h"},
		// What start skipped with a log line (issue 25): refused by --check, naming key, index and line.
		{"duplicate peer key", standalone + peerA + "[[wireguard.peer]]\npublic_key='" + keyA + "'\nallowed_ips=['10.0.0.3/32']\n", "wireguard.peer[1].public_key", 10, "also the key of wireguard.peer[0] (line 7)"},
		{"same allowed_ips in two peers", standalone + peerA + "[[wireguard.peer]]\npublic_key='" + keyB + "'\nallowed_ips=['10.0.0.9/32', '10.0.0.2/32']\n", "wireguard.peer[1].allowed_ips", 11, "10.0.0.2/32 is also claimed by wireguard.peer[0] (line 8)"},
		{"all-zero peer key", standalone + "[[wireguard.peer]]\npublic_key='" + strings.Repeat("A", 43) + "='\nallowed_ips=['10.0.0.2/32']\n", "wireguard.peer[0].public_key", 7, "all-zero key"},
		{"low-order peer key", standalone + "[[wireguard.peer]]\npublic_key='4Ot6fDtBuK4WVuP68Z/EatoJjeucMrH9hmIFFl9JuAA='\nallowed_ips=['10.0.0.2/32']\n", "wireguard.peer[0].public_key", 7, "low-order"},
		{"wg subnet equals containers", validWorker + "[wireguard]\nsubnet = \"10.0.0.0/16\"\n", "wireguard.subnet", 7, "leaves no /24 block of network.container_subnet 10.0.0.0/16"},
		{"wg subnet covers the only block", validWorker + "[wireguard]\nsubnet = \"10.0.0.0/24\"\n[network]\ncontainer_subnet = \"10.0.0.0/24\"\n", "wireguard.subnet", 7, "leaves no /24 block"},
		{"manager address not host:port", "[node]\nname='w'\n[cluster]\nmanager='192.0.2.1:x'\ntoken='" + testToken + "'\n", "cluster.manager", 4, "not a TCP port"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := load(t, tc.text)
			if err == nil {
				t.Fatalf("config accepted:\n%s", tc.text)
			}
			var es Errors
			if !errors.As(err, &es) {
				t.Fatalf("error %T is not configs.Errors: %v", err, err)
			}
			found := false
			for _, e := range es {
				if e.Key == tc.key && strings.Contains(e.Error(), tc.contains) && (tc.line == 0 || e.Line == tc.line) {
					found = true
				}
			}
			if !found {
				t.Fatalf("want an error naming key %q (line %d) containing %q; got:\n%v", tc.key, tc.line, tc.contains, err)
			}
		})
	}
}

func TestLogsAndRestartKeys(t *testing.T) {
	l, err := load(t, validWorker+"[logs]\nmax_size = \"4k\"\nmax_files = 2\n[runtime]\nrestart_backoff_max = \"1m\"\n")
	if err != nil {
		t.Fatal(err)
	}
	if l.Logs.MaxSize.Bytes != 4096 || l.Logs.MaxFiles != 2 || l.Runtime.RestartBackoffMax.Duration != time.Minute {
		t.Fatalf("logs = %+v, restart_backoff_max = %v", l.Logs, l.Runtime.RestartBackoffMax)
	}
	d, err := load(t, validWorker)
	if err != nil {
		t.Fatal(err)
	}
	if d.Logs.MaxSize.Bytes != 1<<20 || d.Logs.MaxFiles != 3 || d.Runtime.RestartBackoffMax.Duration != 5*time.Minute {
		t.Fatalf("defaults: logs = %+v, restart_backoff_max = %v", d.Logs, d.Runtime.RestartBackoffMax)
	}
}

// Static peers for the cases above: a standalone node, peer[0] at lines 6-8.
const (
	keyA       = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="
	keyB       = "TrMvSoP4jYQlY6RIzBgbssQqY3vxI2Pi+y71lOWWXX0="
	standalone = "[node]\nname='g'\nrole='standalone'\n[wireguard]\naddress='10.0.0.1/24'\n"
	peerA      = "[[wireguard.peer]]\npublic_key='" + keyA + "'\nallowed_ips=['10.0.0.2/32']\n"
)

// Distinct peers with distinct ranges pass; a peer without keepalive shows
// the interval the daemon uses (wireguard.keepalive), not "0s".
func TestStaticPeersValid(t *testing.T) {
	l, err := load(t, standalone+peerA+"[[wireguard.peer]]\npublic_key='"+keyB+"'\nallowed_ips=['10.0.0.3/32']\nkeepalive='10s'\n")
	if err != nil {
		t.Fatal(err)
	}
	if k := l.WireGuard.Peers[0].Keepalive.Duration; k != 25*time.Second {
		t.Errorf("peer[0] keepalive = %v, want the global 25s", k)
	}
	if k := l.WireGuard.Peers[1].Keepalive.Duration; k != 10*time.Second {
		t.Errorf("peer[1] keepalive = %v, want its own 10s", k)
	}
	out, err := l.Encode()
	if err != nil || strings.Contains(string(out), `keepalive = "0s"`) {
		t.Errorf("--check output shows a keepalive of 0s: %v\n%s", err, out)
	}
}

// The seed's `--manager <ip>` (no port) joins the API port, 7946.
func TestManagerWithoutPort(t *testing.T) {
	for in, want := range map[string]string{"192.0.2.1": "192.0.2.1:7946", "mgr.example": "mgr.example:7946", "192.0.2.1:8000": "192.0.2.1:8000"} {
		l, err := load(t, "[node]\nname='w'\n[cluster]\nmanager='"+in+"'\ntoken='"+testToken+"'\n")
		if err != nil || l.Cluster.Manager != want {
			t.Errorf("manager %q: %v, got %q want %q", in, err, l.Cluster.Manager, want)
		}
	}
}

func TestShortCertLifetimeAccepted(t *testing.T) {
	l, err := load(t, validWorker+"cert_lifetime = \"1m\"\n")
	if err != nil {
		t.Fatal(err)
	}
	if l.Cluster.CertLifetime.Duration != time.Minute {
		t.Fatalf("cert_lifetime = %v", l.Cluster.CertLifetime.Duration)
	}
}

func TestEveryErrorReported(t *testing.T) {
	_, err := load(t, "[node]\nname='w'\nrole='worker'\n[wireguard]\nlisten_port=0\nmtu=10\n")
	var es Errors
	if !errors.As(err, &es) || len(es) < 4 {
		t.Fatalf("want at least 4 errors (manager, token, port, mtu), got %v", err)
	}
}

func TestWireGuardInsideContainerSubnetAllowed(t *testing.T) {
	if _, err := load(t, validWorker); err != nil {
		t.Fatalf("default nesting of wireguard.subnet in container_subnet refused: %v", err)
	}
}

func TestHostOverlap(t *testing.T) {
	l, err := load(t, validWorker)
	if err != nil {
		t.Fatal(err)
	}
	err = l.CheckHostOverlap([]netip.Prefix{netip.MustParsePrefix("10.1.2.3/24"), netip.MustParsePrefix("192.168.1.5/24")})
	if err == nil || !strings.Contains(err.Error(), "network.vip_subnet: 10.1.0.0/16 overlaps 10.1.2.0/24") {
		t.Fatalf("want vip overlap with host network, got %v", err)
	}
	if err := l.CheckHostOverlap([]netip.Prefix{netip.MustParsePrefix("192.168.1.5/24")}); err != nil {
		t.Fatalf("unexpected overlap: %v", err)
	}
}

func FuzzLoad(f *testing.F) {
	files, _ := filepath.Glob("examples/*.toml")
	for _, p := range files {
		b, _ := os.ReadFile(p)
		f.Add(b)
	}
	f.Add([]byte(validWorker))
	f.Add([]byte("[[wireguard.peer]]\n[[forward]]\n[node.labels]\na=1\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		l, err := Parse(data, "fuzz.toml")
		if err != nil {
			if err.Error() == "" {
				t.Fatal("empty error message")
			}
			return
		}
		if err := l.Finish(); err != nil && err.Error() == "" {
			t.Fatal("empty validation message")
		}
		if _, err := l.Encode(); err != nil {
			t.Fatalf("a config that loaded does not encode: %v", err)
		}
	})
}

// Every mistake of a file is reported in one run: wrong types, unknown keys
// and bad values, in different tables and in different peers.
func TestAllErrorsInOneRun(t *testing.T) {
	text := "[node]\nname='g'\nrole='standalone'\nlabelz={}\n" +
		"[wireguard]\naddress='10.0.0.1/24'\nmtu='big'\nlisten_port=0\n" +
		"[[wireguard.peer]]\npublic_key='nope'\nallowed_ips=['10.0.0.2/32']\n" +
		"[[wireguard.peer]]\npublic_key='xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg='\nallowed_ips='10.0.0.3/32'\nkeepalive=5\n" +
		"[log]\nlevel='loud'\n"
	_, err := load(t, text)
	var es Errors
	if !errors.As(err, &es) {
		t.Fatalf("want configs.Errors, got %v", err)
	}
	want := map[string]int{ // key -> line
		"node.labelz":                   4,
		"wireguard.mtu":                 7,
		"wireguard.listen_port":         8,
		"wireguard.peer[0].public_key":  10,
		"wireguard.peer[1].allowed_ips": 14,
		"wireguard.peer[1].keepalive":   15,
		"log.level":                     17,
	}
	for _, e := range es {
		if line, ok := want[e.Key]; ok && (line == e.Line) {
			delete(want, e.Key)
		}
	}
	if len(want) > 0 {
		t.Fatalf("missing errors (key: line) %v in:\n%v", want, err)
	}
	if !strings.Contains(err.Error(), "warren.toml:14: wireguard.peer[1].allowed_ips: want a list of CIDRs") {
		t.Errorf("peer error not in the issue's words:\n%v", err)
	}
	if !strings.Contains(err.Error(), ExamplesDir) {
		t.Errorf("the unknown key's hint does not name %s:\n%v", ExamplesDir, err)
	}
}

// What `cluster init` / `worker start` remembered in the state dir fills
// the keys the TOML leaves out; a key the TOML sets wins; a joined node
// needs no token (its token file may be gone).
func TestRememberedSetup(t *testing.T) {
	dir := t.TempDir()
	shipped := "[node]\nstate_dir = '" + dir + "'\n"
	if _, err := load(t, shipped); err == nil || !strings.Contains(err.Error(), "warren worker start") {
		t.Fatalf("a node set up by nothing must say which command to run, got %v", err)
	}
	if err := SaveSetup(dir, Setup{Role: RoleWorker, Name: "pi-2", Managers: []string{"192.0.2.1:7946"}, AdvertiseAddress: "192.0.2.9", Mode: "tun"}); err != nil {
		t.Fatal(err)
	}
	l, err := load(t, shipped)
	if err != nil {
		t.Fatalf("a set-up node with the shipped config: %v", err)
	}
	if l.Node.Role != RoleWorker || l.Node.Name != "pi-2" || l.Cluster.Manager != "192.0.2.1:7946" || l.Node.AdvertiseAddress != "192.0.2.9" || l.WireGuard.Mode != "tun" || !l.Joined {
		t.Fatalf("remembered setup not applied: %+v", l.Config)
	}
	// The TOML overrides; a token file that is gone does not matter any more.
	l, err = load(t, shipped+"name = 'other'\n[wireguard]\nmode = 'auto'\n[cluster]\ntoken_file = '/nonexistent/token'\n")
	if err != nil {
		t.Fatal(err)
	}
	if l.Node.Name != "other" || l.WireGuard.Mode != "auto" || l.Node.AdvertiseAddress != "192.0.2.9" {
		t.Fatalf("TOML keys must override the remembered ones: %+v", l.Config)
	}
	if got := l.Remembered(); !slices.Contains(got, "node.advertise_address") || slices.Contains(got, "node.name") {
		t.Fatalf("Remembered() = %v", got)
	}
	// A damaged record is an error that says what to do.
	os.WriteFile(filepath.Join(dir, SetupFile), []byte("{"), 0o600)
	if _, err := load(t, shipped); err == nil || !strings.Contains(err.Error(), "is damaged") {
		t.Fatalf("damaged setup.json: %v", err)
	}
}

// A node that joined before setup.json existed (node.json in the state
// dir) needs no token either.
func TestJoinedNodeNeedsNoToken(t *testing.T) {
	dir := t.TempDir()
	text := "[node]\nname='w'\nstate_dir='" + dir + "'\n[cluster]\nmanager='192.0.2.1:7946'\n"
	if _, err := load(t, text); err == nil || !strings.Contains(err.Error(), "cluster.token") {
		t.Fatalf("a node that never joined needs a token: %v", err)
	}
	os.WriteFile(filepath.Join(dir, "node.json"), []byte("{}"), 0o600)
	if _, err := load(t, text); err != nil {
		t.Fatalf("a joined node must start without a token: %v", err)
	}
}

// TestRelayEnabledByRole: managers relay unless relay.enable = false;
// workers only with relay.enable = true.
func TestRelayEnabledByRole(t *testing.T) {
	manager := "[node]\nname='m1'\nrole='manager'\n"
	for _, tc := range []struct {
		name, text string
		want       bool
	}{
		{"manager by default", manager, true},
		{"manager turned off", manager + "[relay]\nenable = false\n", false},
		{"worker by default", validWorker, false},
		{"worker turned on", validWorker + "[relay]\nenable = true\nport = 7947\n", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l, err := load(t, tc.text)
			if err != nil {
				t.Fatal(err)
			}
			if got := l.RelayEnabled(); got != tc.want {
				t.Fatalf("RelayEnabled() = %v, want %v", got, tc.want)
			}
		})
	}
}

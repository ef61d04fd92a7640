// Package configs is the warren.toml schema: its defaults, strict decoding
// and validation. Every error names the key, and the line where it is known,
// so an operator with a text editor can fix it without reading code.
package configs

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"reflect"
	"sort"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
)

// DefaultPath is where packages install the node's config.
const DefaultPath = "/etc/warren/warren.toml"

// ExamplesDir is where the package installs the commented example configs.
const ExamplesDir = "/usr/share/doc/warren-appliance/examples/"

// Roles.
const (
	RoleManager    = "manager"
	RoleWorker     = "worker"
	RoleStandalone = "standalone"
)

// Config is one node's warren.toml.
type Config struct {
	Node          Node          `toml:"node"`
	Cluster       Cluster       `toml:"cluster"`
	WireGuard     WireGuard     `toml:"wireguard"`
	Network       Network       `toml:"network"`
	LoadBalancing LoadBalancing `toml:"loadbalancing"`
	Runtime       Runtime       `toml:"runtime"`
	Log           Log           `toml:"log"`
	Metrics       Metrics       `toml:"metrics"`
	Logs          Logs          `toml:"logs"`
	Relay         Relay         `toml:"relay"`
	Firewall      Firewall      `toml:"firewall"`
	// Forward entries let a netstack node (no TUN) reach mesh services
	// through local listeners.
	Forward []Forward `toml:"forward"`
}

// Node is [node].
type Node struct {
	Name             string            `toml:"name"`
	Role             string            `toml:"role"`
	StateDir         string            `toml:"state_dir"`
	AdvertiseAddress string            `toml:"advertise_address"`
	Labels           map[string]string `toml:"labels"`
}

// Cluster is [cluster].
type Cluster struct {
	Manager   string `toml:"manager"`
	Token     string `toml:"token"`
	TokenFile string `toml:"token_file"`
	APIListen string `toml:"api_listen"`
	// NodeDownAfter is how long a silent node stays "ready" before the
	// manager marks it down and reschedules its tasks.
	NodeDownAfter Duration `toml:"node_down_after"`
	// ReportOnChange sends a status report as soon as a task's state
	// changes; false reports only with the heartbeat (every 5 s), as
	// before, which benchmarks use as their baseline.
	ReportOnChange bool `toml:"report_on_change"`
	// ShareImages: this node takes image blobs from the nodes that have
	// them and from the coordinator (one pull per cluster) before the
	// registry; false pulls every image from the registry itself (the
	// benchmark's baseline).
	ShareImages bool `toml:"share_images"`
	// CertLifetime is how long the node certificates a manager signs are
	// valid; agents renew them at about two thirds of it.
	CertLifetime Duration `toml:"cert_lifetime"`
}

// WireGuard is [wireguard].
type WireGuard struct {
	Interface      string           `toml:"interface"`
	Mode           string           `toml:"mode"`
	ListenPort     int              `toml:"listen_port"`
	Keepalive      Duration         `toml:"keepalive"`
	MTU            int              `toml:"mtu"`
	Subnet         Subnet           `toml:"subnet"`
	Address        InterfaceAddress `toml:"address"`
	PrivateKeyFile string           `toml:"private_key_file"`
	// PublicEndpoint is "host:port" where this node's WireGuard port is
	// reachable from other sites (a port forward on the site's router); it
	// becomes a path candidate beside the discovered ones. Empty: discover.
	PublicEndpoint string `toml:"public_endpoint"`
	// UDPGSO is "auto" (work around the Linux 7.0-7.1.4 UDP GSO bug on
	// those kernels), "on" (plain UDP GSO) or "off" (none).
	UDPGSO string `toml:"udp_gso"`
	Peers  []Peer `toml:"peer"`
}

// Peer is one [[wireguard.peer]]: a static peer such as an operator laptop.
type Peer struct {
	PublicKey  string   `toml:"public_key"`
	Endpoint   string   `toml:"endpoint"`
	AllowedIPs []Subnet `toml:"allowed_ips"`
	Keepalive  Duration `toml:"keepalive"`
}

// Network is [network].
type Network struct {
	ContainerSubnet Subnet `toml:"container_subnet"`
	ContainerBlock  int    `toml:"container_block"`
	VIPSubnet       Subnet `toml:"vip_subnet"`
	Bridge          string `toml:"bridge"`
	DNSDomain       string `toml:"dns_domain"`
}

// LoadBalancing is [loadbalancing].
type LoadBalancing struct {
	Algorithm          string   `toml:"algorithm"`
	Persistence        bool     `toml:"persistence"`
	PersistenceTimeout Duration `toml:"persistence_timeout"`
}

// Runtime is [runtime].
type Runtime struct {
	ContainerdAddress string `toml:"containerd_address"`
	Namespace         string `toml:"namespace"`
	ImagesDir         string `toml:"images_dir"`
	// CgroupParent holds the tasks' cgroups; empty means
	// "/<namespace>/<node's block>", e.g. /warren/10.0.1.0_24.
	CgroupParent string `toml:"cgroup_parent"`
	// RestartBackoffMax caps the back-off between a failing task's
	// restarts (0.5 s doubling up to it).
	RestartBackoffMax Duration `toml:"restart_backoff_max"`
	// TasksMemoryMax is the memory ceiling of the tasks' parent cgroup
	// (unset: the node's memory less 256 MiB, at least half of it).
	TasksMemoryMax Size `toml:"tasks_memory_max"`
}

// Logs is [logs]: how much of each task's output the node keeps (files
// rotated at MaxSize, MaxFiles of them, written without fsync).
type Logs struct {
	MaxSize  Size `toml:"max_size"`
	MaxFiles int  `toml:"max_files"`
}

// Log is [log].
type Log struct {
	Level string `toml:"level"`
}

// Metrics is [metrics].
type Metrics struct {
	// Listen is where /metrics is served (Prometheus text format); ""
	// turns it off. The default binds loopback only: the numbers name
	// peers, services and nodes.
	Listen string `toml:"listen"`
}

// DefaultMetricsListen is [metrics] listen's default: loopback, on the
// WireGuard exporter's port (9586), whose metric names the peers use.
const DefaultMetricsListen = "127.0.0.1:9586"

// Firewall is [firewall]: which packet filter the node's rules (VIPs,
// published ports, network policies, task forwarding) are written to.
type Firewall struct {
	// Backend is "iptables" (the default: the iptables variant the host
	// uses, iptables-nft or iptables-legacy), "nftables" (one table of
	// warren's own, table inet warren, through netlink) or "auto"
	// (nftables where the kernel answers nf_tables, the host's iptables
	// is iptables-nft and legacy iptables holds no rules; iptables
	// otherwise).
	Backend string `toml:"backend"`
}

// Relay is [relay]: whether this node relays WireGuard packets for members
// that cannot reach each other directly (see RelayEnabled), and its bounds.
type Relay struct {
	// Enable: unset, managers relay and other nodes do not.
	Enable bool `toml:"enable"`
	// Port is where a relay that is not a manager serves, TLS over TCP and
	// UDP on the same number; a manager relays on its API port
	// (cluster.api_listen), TCP and UDP.
	Port int `toml:"port"`
	// MaxSessions bounds the members connected at once.
	MaxSessions int `toml:"max_sessions"`
	// PeerRateMbps bounds what one member may send through the relay.
	PeerRateMbps int `toml:"peer_rate_mbps"`
}

// Relay defaults.
const (
	DefaultRelayPort         = 7946
	DefaultRelayMaxSessions  = 256
	DefaultRelayPeerRateMbps = 100
)

// RelayEnabled reports whether this node relays: relay.enable when it is
// written, else whether the node is a manager.
func (l *Loaded) RelayEnabled() bool {
	if l.set("relay.enable") {
		return l.Relay.Enable
	}
	return l.Node.Role == RoleManager
}

// Forward is one [[forward]]: listen locally, dial Target through the mesh.
type Forward struct {
	Proto  string `toml:"proto"`
	Listen string `toml:"listen"`
	Target string `toml:"target"`
}

// Default returns the reference defaults (shared/warren.reference.toml).
func Default() Config {
	return Config{
		Node: Node{
			Role:     RoleWorker,
			StateDir: DefaultStateDir,
			Labels:   map[string]string{},
		},
		Cluster: Cluster{
			APIListen:      DefaultAPIListen,
			NodeDownAfter:  Duration{Duration: 30 * time.Second},
			CertLifetime:   Duration{Duration: 90 * 24 * time.Hour},
			ReportOnChange: true,
			ShareImages:    true,
		},
		WireGuard: WireGuard{
			Interface:  DefaultInterface,
			Mode:       "auto",
			UDPGSO:     "auto",
			ListenPort: DefaultListenPort,
			Keepalive:  Duration{Duration: 25 * time.Second},
			MTU:        DefaultMTU,
			Subnet:     Subnet{Prefix: DefaultWireGuardSubnet},
		},
		Network: Network{
			ContainerSubnet: Subnet{Prefix: DefaultContainerSubnet},
			ContainerBlock:  DefaultContainerBlock,
			VIPSubnet:       Subnet{Prefix: DefaultVIPSubnet},
			Bridge:          DefaultBridge,
			DNSDomain:       DefaultDomain,
		},
		LoadBalancing: LoadBalancing{
			Algorithm:          "random",
			PersistenceTimeout: Duration{Duration: 3 * time.Hour},
		},
		Firewall: Firewall{Backend: "iptables"},
		Runtime: Runtime{
			ContainerdAddress: DefaultContainerdAddress,
			Namespace:         DefaultNamespace,
			ImagesDir:         DefaultStateDir + "/images",
			RestartBackoffMax: Duration{Duration: DefaultRestartBackoffMax},
		},
		Log:     Log{Level: "info"},
		Logs:    Logs{MaxSize: Size{Bytes: DefaultLogMaxSize}, MaxFiles: DefaultLogMaxFiles},
		Metrics: Metrics{Listen: DefaultMetricsListen},
		Relay:   Relay{Port: DefaultRelayPort, MaxSessions: DefaultRelayMaxSessions, PeerRateMbps: DefaultRelayPeerRateMbps},
	}
}

// Error is one problem with a config, tied to the key that has it.
type Error struct {
	File string
	Line int    // 0 when unknown (e.g. the key was not written: a default)
	Key  string // dotted, e.g. "wireguard.listen_port"
	Msg  string
}

func (e *Error) Error() string {
	where := e.File
	if where == "" {
		where = "config"
	}
	if e.Line > 0 {
		where = fmt.Sprintf("%s:%d", where, e.Line)
	}
	if e.Key == "" {
		return where + ": " + e.Msg
	}
	return fmt.Sprintf("%s: %s: %s", where, e.Key, e.Msg)
}

// Errors is every problem found, in file order.
type Errors []*Error

func (es Errors) Error() string {
	msgs := make([]string, len(es))
	for i, e := range es {
		msgs[i] = e.Error()
	}
	return strings.Join(msgs, "\n")
}

// Loaded is a decoded config plus where its keys were written, so later
// checks (flags, host addresses) can still point at a line.
type Loaded struct {
	Config
	File  string
	lines map[string]int
	// defined: keys the TOML wrote; flags: keys a command-line flag set.
	defined map[string]bool
	flags   map[string]bool

	// Set by Finish from the state dir: what `cluster init`, `worker start`
	// or `manager join` remembered (nil if nothing), and whether this node
	// already joined (or created) a cluster, so it needs no token.
	Setup  *Setup
	Joined bool
	// JoinVerb is set by a command that only joins (`warren manager
	// join`): the config must then name a manager to join, never create.
	JoinVerb     string
	remembered   []string
	nameFromHost bool
	// parseErrs are the wrong types and unknown keys Parse found; Finish
	// reports them with the rest; failed holds their keys.
	parseErrs Errors
	failed    map[string]bool
}

// Line returns the line where key (dotted) was written, or 0.
func (l *Loaded) Line(key string) int { return l.lines[key] }

// SetByFlag records that a command-line flag set key (dotted).
func (l *Loaded) SetByFlag(key string) {
	if l.flags == nil {
		l.flags = map[string]bool{}
	}
	l.flags[key] = true
}

// Written reports whether the operator set key, in the file or by a flag,
// rather than leaving it at its default.
func (l *Loaded) Written(key string) bool { return l.set(key) }

// Load reads and decodes path. It does not validate: call Validate after
// applying any command-line overrides.
func Load(path string) (*Loaded, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	return Parse(data, path)
}

// Parse decodes TOML text strictly. Only a syntax error stops it: a value
// of the wrong type and an unknown key are kept, and Finish reports them
// with every other problem of the file, each naming its key and line
// (peers and forwards by index, e.g. wireguard.peer[1].allowed_ips).
func Parse(data []byte, file string) (*Loaded, error) {
	l := &Loaded{Config: Default(), File: file, lines: keyLines(data), defined: map[string]bool{}}
	var root map[string]toml.Primitive
	md, err := toml.NewDecoder(bytes.NewReader(data)).Decode(&root)
	if err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			msg := pe.Message
			if pe.LastKey != "" && !strings.Contains(msg, pe.LastKey) {
				return nil, Errors{{File: file, Line: pe.Position.Line, Key: pe.LastKey, Msg: msg}}
			}
			return nil, Errors{{File: file, Line: pe.Position.Line, Msg: msg}}
		}
		return nil, Errors{{File: file, Msg: err.Error()}}
	}
	for _, k := range md.Keys() {
		l.defined[k.String()] = true
	}
	l.failed = map[string]bool{}
	d := &decoder{md: md, l: l}
	d.fields(root, reflect.ValueOf(&l.Config).Elem(), "", "")
	return l, nil
}

// decoder decodes one key at a time, so a wrong type in one key does not
// hide the mistakes in the keys after it.
type decoder struct {
	md toml.MetaData
	l  *Loaded
}

// fields decodes the keys of one table into the struct dst. key is the
// dotted path with indexes (for messages), plain the path without them
// (what the TOML metadata and Undecoded use).
func (d *decoder) fields(tbl map[string]toml.Primitive, dst reflect.Value, key, plain string) {
	for name, prim := range tbl {
		f := fieldByTag(dst, name)
		k, p := join(key, name), join(plain, name)
		if !f.IsValid() {
			d.unknown(prim, k, p)
			continue
		}
		switch {
		case f.Kind() == reflect.Struct && f.Type() != reflect.TypeOf(Duration{}) && f.Type() != reflect.TypeOf(Size{}) && f.Type() != reflect.TypeOf(Subnet{}) && f.Type() != reflect.TypeOf(InterfaceAddress{}):
			var sub map[string]toml.Primitive
			if err := d.md.PrimitiveDecode(prim, &sub); err != nil {
				d.bad(k, p, "want a table, e.g. ["+k+"]")
				continue
			}
			d.fields(sub, f, k, p)
		case f.Kind() == reflect.Slice && f.Type().Elem().Kind() == reflect.Struct && f.Type().Elem() != reflect.TypeOf(Subnet{}):
			var items []map[string]toml.Primitive
			if err := d.md.PrimitiveDecode(prim, &items); err != nil {
				d.bad(k, p, "want a list of tables, each written [["+p+"]]")
				continue
			}
			out := reflect.MakeSlice(f.Type(), len(items), len(items))
			for i, it := range items {
				d.fields(it, out.Index(i), fmt.Sprintf("%s[%d]", k, i), p)
			}
			f.Set(out)
		default:
			if err := d.md.PrimitiveDecode(prim, f.Addr().Interface()); err != nil {
				d.bad(k, p, "want "+describeType(f.Type()))
			}
		}
	}
}

// unknown reports a key no field has; for an unknown table, each of its keys
// (a typo in a table name then gets a suggestion per key).
func (d *decoder) unknown(prim toml.Primitive, key, plain string) {
	var sub map[string]toml.Primitive
	if err := d.md.PrimitiveDecode(prim, &sub); err == nil && len(sub) > 0 {
		for name, v := range sub {
			d.unknown(v, join(key, name), join(plain, name))
		}
		return
	}
	line := d.l.lines[key]
	if line == 0 {
		line = d.l.lines[plain]
	}
	d.l.parseErrs = append(d.l.parseErrs, &Error{File: d.l.File, Line: line, Key: key, Msg: "unknown key" + suggest(plain)})
}

func (d *decoder) bad(key, plain, msg string) {
	d.l.failed[key] = true
	line := d.l.lines[key]
	if line == 0 {
		line = d.l.lines[plain]
	}
	d.l.parseErrs = append(d.l.parseErrs, &Error{File: d.l.File, Line: line, Key: key, Msg: msg})
}

func join(prefix, name string) string {
	if prefix == "" {
		return name
	}
	return prefix + "." + name
}

// fieldByTag finds the field of struct v whose toml tag is name.
func fieldByTag(v reflect.Value, name string) reflect.Value {
	t := v.Type()
	for i := range t.NumField() {
		if tag := strings.Split(t.Field(i).Tag.Get("toml"), ",")[0]; tag == name {
			return v.Field(i)
		}
	}
	return reflect.Value{}
}

// describeType says in an operator's words what a key's value must be.
func describeType(t reflect.Type) string {
	switch t {
	case reflect.TypeOf(Duration{}):
		return "a duration string such as \"25s\""
	case reflect.TypeOf(Subnet{}):
		return "a CIDR string such as \"10.0.0.0/24\""
	case reflect.TypeOf(InterfaceAddress{}):
		return "an address string such as \"10.0.0.1/24\""
	case reflect.TypeOf([]Subnet{}):
		return "a list of CIDRs, e.g. [\"10.0.0.2/32\"]"
	}
	switch t.Kind() {
	case reflect.String:
		return "a string (in quotes)"
	case reflect.Int:
		return "a whole number"
	case reflect.Bool:
		return "true or false"
	case reflect.Map:
		return "a table of strings, e.g. { zone = \"shelf-a\" }"
	}
	return "a value of type " + t.String()
}

// suggest names the reference key a typo was probably meant to be.
func suggest(key string) string {
	known := knownKeys()
	best, bestD := "", 3
	for _, k := range known {
		if d := editDistance(key, k); d < bestD {
			best, bestD = k, d
		}
	}
	if best != "" {
		return fmt.Sprintf(" (did you mean %q?)", best)
	}
	return " (every key is in the examples under " + ExamplesDir + ")"
}

func knownKeys() []string {
	var out []string
	var walk func(prefix string, v any)
	walk = func(prefix string, v any) {
		if m, ok := v.(map[string]any); ok {
			for k, sub := range m {
				walk(strings.TrimPrefix(prefix+"."+k, "."), sub)
			}
			return
		}
		out = append(out, prefix)
	}
	var m map[string]any
	var buf bytes.Buffer
	cfg := Default()
	cfg.WireGuard.Peers = []Peer{{}}
	cfg.Forward = []Forward{{}}
	if err := toml.NewEncoder(&buf).Encode(cfg); err == nil {
		if _, err := toml.Decode(buf.String(), &m); err == nil {
			walk("", m)
		}
	}
	sort.Strings(out)
	return out
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur := make([]int, len(b)+1)
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev = cur
	}
	return prev[len(b)]
}

// keyLines maps dotted keys to the line that sets them. The TOML decoder
// keeps key positions private, so this light scan recovers them for the
// checks that run after decoding. Entries of arrays of tables are keyed
// both with their index ("wireguard.peer[1].allowed_ips") and without it
// (the first entry's line).
func keyLines(data []byte) map[string]int {
	lines := map[string]int{}
	set := func(k string, n int) {
		if _, ok := lines[k]; !ok {
			lines[k] = n
		}
	}
	table, plain := "", ""
	count := map[string]int{}
	for i, raw := range strings.Split(string(data), "\n") {
		line := strings.TrimSpace(raw)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if strings.HasPrefix(line, "[") {
			name := strings.Trim(strings.SplitN(line, "#", 2)[0], "[] \t")
			plain, table = name, name
			if strings.HasPrefix(line, "[[") {
				table = fmt.Sprintf("%s[%d]", name, count[name])
				count[name]++
				set(table, i+1)
			}
			set(plain, i+1)
			continue
		}
		eq := strings.Index(line, "=")
		if eq <= 0 {
			continue
		}
		key := strings.Trim(strings.TrimSpace(line[:eq]), `"'`)
		set(join(table, key), i+1)
		set(join(plain, key), i+1)
	}
	return lines
}

// Encode writes the effective config as TOML, with secrets hidden.
func (c Config) Encode() ([]byte, error) {
	if c.Cluster.Token != "" {
		c.Cluster.Token = "(set, hidden)"
	}
	var buf bytes.Buffer
	if err := toml.NewEncoder(&buf).Encode(c); err != nil {
		return nil, fmt.Errorf("encode config: %w", err)
	}
	return buf.Bytes(), nil
}

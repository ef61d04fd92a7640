package tunnel

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/ipc"
	"golang.zx2c4.com/wireguard/tun"

	"github.com/warren-appliance/warren/configs"
)

// Modes of Config.Mode.
const (
	ModeTUN      = "tun"      // kernel TUN interface: the host routes into the mesh
	ModeNetstack = "netstack" // gVisor stack in the process: no kernel interface
	ModeAuto     = "auto"     // tun, or netstack when /dev/net/tun cannot be opened
)

// Defaults applied by Open to zero Config fields (the config's).
const (
	DefaultInterface  = configs.DefaultInterface
	DefaultListenPort = configs.DefaultListenPort
	DefaultMTU        = configs.DefaultMTU
)

// resyncInterval is how often the last desired peer set is re-applied, so a
// roamed endpoint that went stale falls back to the configured one and a
// partially applied IpcSet (it is not transactional) converges.
const resyncInterval = 30 * time.Second

// Forward relays a local host port to a target inside the mesh: in netstack
// mode the only way for host programs to reach the mesh.
type Forward struct {
	Proto  string         // "tcp" | "udp"
	Listen netip.AddrPort // on the host, e.g. 127.0.0.1:8080
	Target netip.AddrPort // an overlay address, dialled through the tunnel
}

// Config describes the device to open.
type Config struct {
	Interface  string // interface and UAPI socket name, default "warren0"
	Mode       string // "tun" | "netstack" | "auto" (default)
	ListenPort int    // UDP port, default 51820
	MTU        int    // default 1420
	PrivateKey Key
	// Address is this node's overlay address with the overlay subnet's
	// length, e.g. 10.0.0.2/24: peers inside that subnet need no route.
	Address netip.Prefix
	// Forwards are served in both modes; in tun mode they dial through the
	// kernel's routes into the interface.
	Forwards []Forward
	// QueuedPackets bounds how many packets wireguard-go may hold per
	// direction (each takes a 64 KiB buffer): 0 means DefaultQueuedPackets,
	// negative means unbounded (wireguard-go's own behaviour). See memory.go.
	QueuedPackets int
	// NetstackQueuedPackets replaces QueuedPackets when the device runs in
	// netstack mode (0: QueuedPackets; ignored when QueuedPackets is
	// negative). NetstackTCPBuffer is the largest send or receive buffer
	// gVisor's TCP may grow a connection to in netstack mode (0: 4 MiB).
	// PlanMemory chooses both: in netstack mode the heap also holds
	// gVisor's TCP buffers, and its garbage makes the GC run often enough
	// under the memory limit to empty wireguard-go's buffer pools.
	NetstackQueuedPackets int
	NetstackTCPBuffer     int
	// UDPGSO is "auto" (default: work around the kernel UDP GSO bug on
	// affected kernels), "on" (plain GSO) or "off" (no GSO). See gso.go.
	UDPGSO string
	// KernelRelease is the uname release udp_gso "auto" judges; empty:
	// this kernel's. Tests set it to exercise the workaround.
	KernelRelease string
	// stdBind (tests only) runs wireguard-go's StdNetBind in place of
	// ours (udpbind.go), with plain UDP GSO whatever UDPGSO says: the CPU
	// benchmark's comparison of the two.
	stdBind bool
	Logger  *slog.Logger
}

// Device is a running WireGuard interface with its UAPI socket.
type Device struct {
	cfg  Config
	mode string
	log  *slog.Logger
	pub  Key

	wg    *device.Device
	tnet  *Netstack   // netstack mode only
	link  *kernelLink // tun mode only
	uapi  net.Listener
	relay *relays
	mux   *muxBind // the bind: shares the WireGuard socket with path probes

	mu      sync.Mutex     // serialises peer and route changes
	desired []Peer         // last set given to SetPeers; nil before the first call
	routes  []netip.Prefix // last set given to SetRoutes
	applied bool
	chosen  map[Key]netip.AddrPort // endpoints the path machine chose (SetEndpoint)

	stop      chan struct{}
	done      sync.WaitGroup
	closeOnce sync.Once
	closeErr  error
}

func (c *Config) applyDefaults() error {
	if c.Interface == "" {
		c.Interface = DefaultInterface
	}
	if c.Mode == "" {
		c.Mode = ModeAuto
	}
	if c.ListenPort == 0 {
		c.ListenPort = DefaultListenPort
	}
	if c.MTU == 0 {
		c.MTU = DefaultMTU
	}
	if c.QueuedPackets == 0 {
		c.QueuedPackets = DefaultQueuedPackets
	}
	if c.UDPGSO == "" {
		c.UDPGSO = UDPGSOAuto
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	switch {
	case c.UDPGSO != UDPGSOAuto && c.UDPGSO != UDPGSOOn && c.UDPGSO != UDPGSOOff:
		return fmt.Errorf("udp_gso %q: want auto, on or off", c.UDPGSO)
	case len(c.Interface) > 15 || strings.ContainsAny(c.Interface, "/ \t\n"):
		return fmt.Errorf("interface name %q: at most 15 characters, no slash or space", c.Interface)
	case c.Mode != ModeTUN && c.Mode != ModeNetstack && c.Mode != ModeAuto:
		return fmt.Errorf("mode %q: want tun, netstack or auto", c.Mode)
	case c.ListenPort < 0 || c.ListenPort > 65535:
		return fmt.Errorf("listen port %d out of range", c.ListenPort)
	case c.MTU < 576 || c.MTU > 65535-80:
		return fmt.Errorf("mtu %d out of range", c.MTU)
	case c.PrivateKey.IsZero():
		return errors.New("private key not set")
	case !c.Address.IsValid():
		return errors.New("overlay address not set")
	}
	for _, f := range c.Forwards {
		if f.Proto != "tcp" && f.Proto != "udp" {
			return fmt.Errorf("forward %s -> %s: protocol %q, want tcp or udp", f.Listen, f.Target, f.Proto)
		}
		if !f.Listen.IsValid() || !f.Target.IsValid() || f.Target.Port() == 0 {
			return fmt.Errorf("forward %s -> %s: need a listen address and a target address with port", f.Listen, f.Target)
		}
	}
	return nil
}

// Open creates the interface (or netstack), starts wireguard-go on it with
// the standard UDP bind (wrapped: datagrams that are not WireGuard go to the
// packet handler, see SetPacketHandler), sets the key and port, brings it up with address
// and MTU, and serves the UAPI socket /var/run/wireguard/<iface>.sock.
// It starts with no peers: call SetPeers.
func Open(cfg Config) (*Device, error) {
	if err := cfg.applyDefaults(); err != nil {
		return nil, fmt.Errorf("tunnel config: %w", err)
	}
	d := &Device{cfg: cfg, log: cfg.Logger.With("component", "tunnel", "interface", cfg.Interface), pub: cfg.PrivateKey.PublicKey(), stop: make(chan struct{})}

	// The socket comes first: a live one means another process owns this
	// interface, and that must fail before we touch any interface.
	uapiFile, err := ipc.UAPIOpen(cfg.Interface)
	if err != nil {
		return nil, fmt.Errorf("open uapi socket for %s: %w", cfg.Interface, err)
	}
	ok := false
	defer func() {
		if !ok {
			close(d.stop)
			d.teardown()
			uapiFile.Close()
			if d.uapi == nil { // a listener would have unlinked it on close
				os.Remove(uapiSocketPath(cfg.Interface))
			}
		}
	}()

	tunDev, err := d.createTUN()
	if err != nil {
		return nil, err
	}
	release := cfg.KernelRelease
	if release == "" {
		release = kernelRelease()
	}
	policy, why, err := chooseGSOPolicy(cfg.UDPGSO, release)
	if err != nil {
		return nil, fmt.Errorf("tunnel config: %w", err)
	}
	var udp conn.Bind = newUDPBind(policy)
	if cfg.stdBind {
		udp = conn.NewStdNetBind()
	}
	d.mux = newMuxBind(udp)
	if why != "" {
		d.log.Warn(why, "kernel", release, "udp_gso", cfg.UDPGSO)
	}
	var bind conn.Bind = d.mux
	if queued := queuedPackets(cfg, d.mode); queued > 0 {
		bind, tunDev = budgetedBindAndTUN(bind, tunDev, queued)
	}
	d.wg = device.NewDevice(tunDev, bind, wgLogger(d.log))

	if err := d.wg.IpcSet(fmt.Sprintf("private_key=%s\nlisten_port=%d\n", cfg.PrivateKey.hex(), cfg.ListenPort)); err != nil {
		return nil, fmt.Errorf("configure %s: %w", cfg.Interface, err)
	}
	// Up before the link goes up: the link's up event makes wireguard-go
	// call Up itself, and a failed bind there would be retried by ours on a
	// random port (wireguard-go resets the port on failure).
	if err := d.wg.Up(); err != nil {
		return nil, fmt.Errorf("bring up %s on udp port %d: %w", cfg.Interface, cfg.ListenPort, err)
	}
	if err := d.checkListenPort(); err != nil {
		return nil, err
	}
	if d.link != nil {
		if err := d.link.configure(cfg.Address, cfg.MTU); err != nil {
			return nil, err
		}
	}

	d.uapi, err = ipc.UAPIListen(cfg.Interface, uapiFile)
	if err != nil {
		return nil, fmt.Errorf("listen on uapi socket for %s: %w", cfg.Interface, err)
	}
	uapiFile.Close() // the listener holds its own descriptor
	d.done.Add(1)
	go d.serveUAPI()

	if len(cfg.Forwards) > 0 {
		d.relay, err = startRelays(cfg.Forwards, d.dialer(), d.log)
		if err != nil {
			return nil, err
		}
	}

	d.done.Add(1)
	go d.resyncLoop()

	ok = true
	d.log.Info("wireguard device up", "mode", d.mode, "address", cfg.Address, "listen_port", cfg.ListenPort,
		"mtu", cfg.MTU, "public_key", d.pub.String())
	return d, nil
}

// checkListenPort makes sure the device listens on the configured port and
// not on the random one wireguard-go falls back to after a failed bind (as
// when netstack's own up event raced ours); setting the port again returns
// the bind's error.
func (d *Device) checkListenPort() error {
	text, err := d.wg.IpcGet()
	if err != nil {
		return fmt.Errorf("read %s: %w", d.cfg.Interface, err)
	}
	want := fmt.Sprintf("listen_port=%d\n", d.cfg.ListenPort)
	if strings.Contains(text, want) {
		return nil
	}
	if err := d.wg.IpcSet(want); err != nil {
		return fmt.Errorf("bring up %s on udp port %d: %w", d.cfg.Interface, d.cfg.ListenPort, err)
	}
	return nil
}

// queuedPackets is the packet budget of a device in mode (after Config's
// defaults): NetstackQueuedPackets in netstack mode if set, else
// QueuedPackets; 0 or less means unbounded.
func queuedPackets(cfg Config, mode string) int {
	if mode == ModeNetstack && cfg.NetstackQueuedPackets > 0 && cfg.QueuedPackets > 0 {
		return cfg.NetstackQueuedPackets
	}
	return cfg.QueuedPackets
}

// createTUN picks the mode and creates its tun.Device.
func (d *Device) createTUN() (tun.Device, error) {
	mode := d.cfg.Mode
	if mode == ModeAuto {
		if err := probeTUN(); err != nil {
			d.log.Warn("cannot open /dev/net/tun, using the userspace netstack: host programs reach the mesh only through forwards",
				"error", err)
			mode = ModeNetstack
		} else {
			mode = ModeTUN
		}
	}
	d.mode = mode
	if mode == ModeNetstack {
		dev, tnet, err := newNetstack([]netip.Addr{d.cfg.Address.Addr()}, d.cfg.MTU, d.cfg.NetstackTCPBuffer)
		if err != nil {
			return nil, fmt.Errorf("create netstack for %s: %w", d.cfg.Interface, err)
		}
		d.tnet = tnet
		return dev, nil
	}
	dev, err := tun.CreateTUN(d.cfg.Interface, d.cfg.MTU)
	if err != nil {
		return nil, fmt.Errorf("create tun %s: %w", d.cfg.Interface, err)
	}
	link, err := lookupLink(d.cfg.Interface)
	if err != nil {
		dev.Close()
		return nil, err
	}
	d.link = link
	return dev, nil
}

// uapiSocketPath is where ipc.UAPIOpen puts the socket, which is where `wg`
// and wgctrl look for userspace interfaces.
func uapiSocketPath(iface string) string { return "/var/run/wireguard/" + iface + ".sock" }

func probeTUN() error {
	f, err := os.OpenFile("/dev/net/tun", os.O_RDWR, 0)
	if err != nil {
		return err
	}
	return f.Close()
}

func wgLogger(log *slog.Logger) *device.Logger {
	return &device.Logger{
		Verbosef: func(format string, args ...any) {
			if log.Enabled(context.Background(), slog.LevelDebug) {
				log.Debug(fmt.Sprintf(format, args...), "source", "wireguard-go")
			}
		},
		Errorf: func(format string, args ...any) {
			log.Error(fmt.Sprintf(format, args...), "source", "wireguard-go")
		},
	}
}

func (d *Device) serveUAPI() {
	defer d.done.Done()
	for {
		c, err := d.uapi.Accept()
		if err != nil {
			select {
			case <-d.stop:
			default:
				d.log.Error("uapi socket stopped accepting; wg and wgctrl lose access", "error", err)
			}
			return
		}
		go d.wg.IpcHandle(c)
	}
}

func (d *Device) resyncLoop() {
	defer d.done.Done()
	t := time.NewTicker(resyncInterval)
	defer t.Stop()
	for {
		select {
		case <-d.stop:
			return
		case <-t.C:
			d.mu.Lock()
			if d.desired != nil {
				if err := d.applyLocked(d.desired); err != nil {
					d.log.Warn("re-applying peers", "error", err)
				}
			} else if err := d.syncRoutesLocked(nil); err != nil {
				d.log.Warn("re-applying routes", "error", err)
			}
			d.mu.Unlock()
		}
	}
}

// Mode returns the mode actually in use: "tun" or "netstack".
func (d *Device) Mode() string { return d.mode }

// PublicKey returns this device's public key.
func (d *Device) PublicKey() Key { return d.pub }

// Interface returns the interface (and UAPI socket) name.
func (d *Device) Interface() string { return d.cfg.Interface }

// Netstack returns the userspace network stack in netstack mode (to dial or
// listen inside the mesh), nil in tun mode.
func (d *Device) Netstack() *Netstack { return d.tnet }

// SetPeers converges the device's peers (and, in tun mode, the routes
// towards them) to peers, touching only what differs. A peer the device
// cannot hold (see usablePeers) is left out and logged; the others are
// applied. The set is kept and re-applied periodically until the next call.
func (d *Device) SetPeers(peers []Peer) error {
	peers, skipped := usablePeers(peers, d.pub)
	for _, err := range skipped {
		d.log.Warn("skipping an unusable peer; applying the others", "interface", d.cfg.Interface, "err", err)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	select {
	case <-d.stop:
		return fmt.Errorf("set peers on %s: device closed", d.cfg.Interface)
	default:
	}
	d.desired = clonePeers(peers)
	if d.link != nil {
		for _, p := range peers {
			for _, ip := range p.AllowedIPs {
				if ip.Bits() == 0 {
					d.log.Warn("peer allows a default route; not routing the host's traffic into the mesh",
						"peer", p.PublicKey.String(), "allowed_ip", ip.String())
				}
			}
		}
	}
	return d.applyLocked(d.desired)
}

func clonePeers(in []Peer) []Peer {
	out := make([]Peer, len(in))
	for i, p := range in {
		p.AllowedIPs = append([]netip.Prefix(nil), p.AllowedIPs...)
		out[i] = p
	}
	return out
}

// SetRoutes makes prefixes (e.g. the cluster's VIP range) routed into the
// interface with the overlay source address, besides the peers' routes;
// the device owns them like those: re-applied periodically, replaced by the
// next call, gone with the interface. A no-op in netstack mode.
func (d *Device) SetRoutes(prefixes []netip.Prefix) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	select {
	case <-d.stop:
		return fmt.Errorf("set routes on %s: device closed", d.cfg.Interface)
	default:
	}
	d.routes = append([]netip.Prefix(nil), prefixes...)
	return d.syncRoutesLocked(d.desired)
}

func (d *Device) applyLocked(peers []Peer) error {
	current, err := d.peerStates()
	if err != nil {
		return err
	}
	if plan := planPeers(current, withChosen(peers, d.chosen), time.Now()); plan != "" {
		d.log.Debug("applying peer diff", "uapi", plan)
		if err := d.wg.IpcSet(plan); err != nil {
			return fmt.Errorf("apply peers to %s: %w", d.cfg.Interface, err)
		}
	}
	return d.syncRoutesLocked(peers)
}

func (d *Device) syncRoutesLocked(peers []Peer) error {
	if d.link == nil {
		return nil
	}
	return d.link.syncRoutes(planRoutes(d.cfg.Address, peers, d.routes), d.cfg.Address.Addr())
}

func (d *Device) peerStates() ([]peerState, error) {
	text, err := d.wg.IpcGet()
	if err != nil {
		return nil, fmt.Errorf("read peers of %s: %w", d.cfg.Interface, err)
	}
	return parseUAPIGet(text)
}

// Close stops the device and removes what it created: the interface (and
// with it its addresses and routes), the UAPI socket and the forwards.
func (d *Device) Close() error {
	d.closeOnce.Do(func() {
		d.mu.Lock()
		close(d.stop)
		d.mu.Unlock()
		d.closeErr = d.teardown()
		d.done.Wait()
		d.log.Info("wireguard device closed")
	})
	return d.closeErr
}

// Remove deletes what a device named iface left behind when its process
// could not close it (killed, or an interface made persistent): the kernel
// interface, with its addresses and routes, and the UAPI socket. Nothing
// there is not an error. It is `--cleanup`'s way to the same end as Close.
func Remove(iface string, log *slog.Logger) error {
	var errs []error
	l, err := netlink.LinkByName(iface)
	var nf netlink.LinkNotFoundError
	switch {
	case errors.As(err, &nf):
	case err != nil:
		errs = append(errs, fmt.Errorf("interface %s: %w", iface, err))
	default:
		if err := netlink.LinkDel(l); err != nil {
			errs = append(errs, fmt.Errorf("remove interface %s: %w", iface, err))
		} else {
			log.Info("removed interface", "name", iface)
		}
	}
	if err := os.Remove(uapiSocketPath(iface)); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, fmt.Errorf("remove uapi socket: %w", err))
	}
	return errors.Join(errs...)
}

// teardown releases whatever Open got as far as creating.
func (d *Device) teardown() error {
	var errs []error
	if d.relay != nil {
		d.relay.close()
	}
	if d.uapi != nil {
		// Unlinks the socket. Its error is not ours to report: the listener's
		// own inotify goroutine races its Close ("file already closed").
		d.uapi.Close()
	}
	if d.wg != nil {
		d.wg.Close() // closes the TUN, which removes the kernel interface
	}
	if d.link != nil {
		if err := d.link.waitGone(5 * time.Second); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

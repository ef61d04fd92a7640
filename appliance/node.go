package appliance

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/warren-appliance/warren/cluster"
	"github.com/warren-appliance/warren/cluster/agent"
	"github.com/warren-appliance/warren/cluster/api"
	"github.com/warren-appliance/warren/cluster/clustermap"
	"github.com/warren-appliance/warren/configs"
	"github.com/warren-appliance/warren/dns"
	"github.com/warren-appliance/warren/hostfw"
	"github.com/warren-appliance/warren/internal/mdns"
	"github.com/warren-appliance/warren/internal/netaddr"
	"github.com/warren-appliance/warren/metrics"
	"github.com/warren-appliance/warren/nat"
	"github.com/warren-appliance/warren/netpolicy"
	"github.com/warren-appliance/warren/orchestrate"
	"github.com/warren-appliance/warren/orchestrate/health"
	"github.com/warren-appliance/warren/orchestrate/secretfs"
	"github.com/warren-appliance/warren/relay"
	"github.com/warren-appliance/warren/tunnel"
	"github.com/warren-appliance/warren/tunnel/paths"
)

// member is this node's link to the cluster: the in-process manager on the
// first manager, an agent talking mTLS to a manager everywhere else.
type member interface {
	Self() clustermap.Node
	// Network is the cluster-wide address plan and domain: every consumer
	// on this node uses it, never the node's own config.
	Network() clustermap.Network
	Watch(ctx context.Context, apply func(*clustermap.Map)) error
	Report(ctx context.Context, s cluster.NodeStatus) error
	// TLSIdentity: the certificate this node's log server shows, and the
	// CA its callers' (managers') certificates must chain to.
	TLSIdentity() (*tls.Certificate, *x509.CertPool)
	valueSource
}

// How often a node reports its status (heartbeat) and checks that nobody
// flushed its NAT rules.
const (
	reportInterval = 5 * time.Second
	// A task state change is reported after reportCoalesce, and at most
	// one report per reportMinGap is sent.
	reportCoalesce = 30 * time.Millisecond
	reportMinGap   = 200 * time.Millisecond
	// reportRetry is how soon a report that was not delivered is sent
	// again when reports on change are on.
	reportRetry = time.Second
	// canaryInterval: how often the firewall canary lists the built-in
	// chains holding warren's hooks (a flush is repaired within it);
	// every canarySlowEvery-th check also looks at the canary rules in
	// warren's own chains and the bridge chain, and retries failed syncs.
	canaryInterval  = time.Second
	canarySlowEvery = 10
)

// runClusterNode runs a manager or worker: join (or create) the cluster,
// bring up the tunnel with the assigned address, then converge every
// reconciler to each new map until ctx ends.
func runClusterNode(ctx context.Context, cfg *configs.Loaded, log *slog.Logger) error {
	info, advertise, err := describeNode(cfg)
	if err != nil {
		return err
	}
	// Every manager relays by default, other nodes with [relay] enable.
	var relaySrv *relay.Server
	if cfg.RelayEnabled() {
		relaySrv = newRelayServer(cfg, log)
	}
	var j *joined
	if cfg.Node.Role == configs.RoleManager {
		j, err = startManager(ctx, cfg, info, advertise, relaySrv, log)
	} else {
		j, err = startWorker(ctx, cfg, info, relaySrv, log)
	}
	if err != nil || j == nil {
		return err // nil: ctx ended before the manager was ready
	}
	defer j.close()
	n, err := newClusterNode(ctx, cfg, j, relaySrv, log)
	if err != nil {
		return err
	}

	dev, err := openTunnel(cfg, netip.PrefixFrom(n.self.OverlayIP, n.net.WireGuardSubnet.Bits()), log)
	if err != nil {
		return err
	}
	defer dev.Close()
	n.dev = dev
	if err := n.startOverlay(ctx, j); err != nil {
		return err
	}
	if err := n.startReconcilers(ctx); err != nil {
		n.stopReconcilers()
		return err
	}
	defer n.stopReconcilers()
	if cfg.Metrics.Listen != "" {
		if err := n.met.Serve(ctx, cfg.Metrics.Listen, log); err != nil {
			return err
		}
	}
	local, err := n.serveLocalSocket(j.admin)
	if err != nil {
		return err
	}
	defer local.Close()

	n.startServing(ctx, j.mem)
	notifyReady(log)
	err = j.mem.Watch(ctx, n.apply)
	if ctx.Err() != nil {
		log.Info("shutting down")
		return nil
	}
	return fmt.Errorf("watching the cluster map: %w", err)
}

// describeNode is what this node tells the cluster about itself (name,
// role, labels, WireGuard endpoint and key, relay address), and the address
// it advertises.
func describeNode(cfg *configs.Loaded) (cluster.NodeInfo, netip.Addr, error) {
	key, err := tunnel.LoadOrCreateKey(cfg.WireGuard.PrivateKeyFile)
	if err != nil {
		return cluster.NodeInfo{}, netip.Addr{}, err
	}
	advertise, err := advertiseAddress(cfg)
	if err != nil {
		return cluster.NodeInfo{}, netip.Addr{}, err
	}
	info := cluster.NodeInfo{
		Name:      cfg.Node.Name,
		Role:      cfg.Node.Role,
		Labels:    cfg.Node.Labels,
		Endpoint:  netip.AddrPortFrom(advertise, uint16(cfg.WireGuard.ListenPort)),
		PublicKey: key.PublicKey().String(),
		Relay:     relayAddress(cfg, advertise),
	}
	return info, advertise, nil
}

// newClusterNode is the node the cluster member j admitted: it remembers
// the setup, logs the node's identity in the cluster (and the config keys
// the cluster's values override), and checks the cluster's ranges against
// the host's networks.
func newClusterNode(ctx context.Context, cfg *configs.Loaded, j *joined, relaySrv *relay.Server, log *slog.Logger) (*node, error) {
	mem := j.mem
	self := mem.Self()
	if err := rememberSetup(cfg, self.Name); err != nil {
		return nil, err
	}
	clusterNet := mem.Network()
	log.Info("cluster identity", "node", self.Name, "id", self.ID, "overlay_ip", self.OverlayIP, "container_block", self.ContainerBlock,
		"wireguard_subnet", clusterNet.WireGuardSubnet, "container_subnet", clusterNet.ContainerSubnet, "vip_subnet", clusterNet.VIPSubnet, "dns_domain", clusterNet.Domain)
	if ignored := ignoredClusterKeys(cfg, clusterNet); len(ignored) > 0 {
		log.Warn("ignoring cluster-wide keys of this node's config: the cluster's values were fixed when it was created", "keys", ignored)
	}
	n := &node{cfg: cfg, log: log, self: self, net: clusterNet, static: staticPeers(ctx, cfg, lookupHost, log),
		candidatesChanged: make(chan struct{}, 1), relaySrv: relaySrv}
	n.secrets = newTaskSecrets(mem, secretfs.DefaultRoot, log.With("component", "secrets"))
	n.regCreds = newRegistryCreds(mem, log.With("component", "registries"))
	n.blobPeers = &blobPeers{ident: mem.TLSIdentity}
	n.met = n.newNodeMetrics(cfg.Node.Role == configs.RoleManager, j.raftStatus, j.peerStatus)
	if err := n.checkHostOverlap(); err != nil {
		return nil, err
	}
	return n, nil
}

// startOverlay makes the open tunnel (n.dev) carry the overlay: the relay
// client, the route of the VIP range, path discovery and the static peers.
func (n *node) startOverlay(ctx context.Context, j *joined) error {
	// The relay client: every cluster node keeps a session with one relay,
	// for the peers it cannot reach directly.
	n.relayCli = relay.NewClient(relay.ClientConfig{Cert: j.nodeCert, CAPool: j.caPool, WireGuardPort: n.cfg.WireGuard.ListenPort, Logger: n.log})
	go n.relayCli.Run(ctx)

	// The VIP range is routed into the overlay with the overlay source
	// address: connect() to a VIP needs a route before the nat table can
	// DNAT it (a board may have no default route), and the overlay source
	// is one every peer's AllowedIPs accepts. The tunnel owns the route.
	if err := n.dev.SetRoutes([]netip.Prefix{n.net.VIPSubnet}); err != nil {
		return fmt.Errorf("route the VIP range: %w", err)
	}

	// The relay client is the path machine's fallback for pairs without
	// a direct path.
	if err := n.startPaths(ctx, n.relayCli); err != nil {
		return fmt.Errorf("path discovery: %w", err)
	}

	// Static peers (an operator laptop) are up before the first map.
	if err := n.dev.SetPeers(n.static); err != nil {
		return fmt.Errorf("tunnel peers: %w", err)
	}
	return nil
}

// serveLocalSocket serves the local socket: this node's state, and on
// managers the admin API.
func (n *node) serveLocalSocket(admin http.Handler) (*localAPI, error) {
	st := &localState{dev: n.dev, extra: n.localHandlers(), peerNames: n.peerNames, paths: n.paths.Paths,
		relayVia: func(ep netip.AddrPort) (string, string, bool) {
			r, transport, ok := n.relayCli.Via(ep)
			return r.Name, transport, ok
		}}
	return startLocalAPI(SocketPath, st, admin, n.log)
}

// startServing starts what runs beside the map watch until ctx ends: status
// reports to the cluster, the firewall canary, and the task log and image
// blob servers on the overlay address.
func (n *node) startServing(ctx context.Context, mem member) {
	go n.reportLoop(ctx, mem)
	go n.canaryLoop(ctx)
	go func() {
		if err := serveTaskLogs(ctx, n.self.OverlayIP, mem.TLSIdentity, n.orch, n.log); err != nil {
			n.log.Warn("task logs cannot be read from managers", "err", err)
		}
	}()
	go func() {
		if err := serveBlobs(ctx, n.self.OverlayIP, mem.TLSIdentity, guardBlobFetches(n.orch.BlobHandler(), n.lastMap), n.log); err != nil {
			n.log.Warn("image blobs cannot be shared with other nodes", "err", err)
		}
	}()
}

// joined is what a node's role brought up: the cluster member (the
// manager, or the agent of a worker) and what the rest of the node needs
// of it.
type joined struct {
	mem      member
	admin    http.Handler // managers: the admin API, also on the local socket
	nodeCert func() *tls.Certificate
	caPool   func() *x509.CertPool
	// Managers: for /metrics.
	raftStatus func() metrics.Raft
	peerStatus func() []metrics.ClusterPeer
	close      func()
}

// startManager opens (creates, or joins with cluster.manager) this node's
// manager, serves the cluster API and, when it relays, the relay; it
// returns once the manager is ready (nil, nil when ctx ends first).
func startManager(ctx context.Context, cfg *configs.Loaded, info cluster.NodeInfo, advertise netip.Addr, relaySrv *relay.Server, log *slog.Logger) (*joined, error) {
	_, statErr := os.Stat(filepath.Join(cfg.Node.StateDir, "manager.db"))
	created := errors.Is(statErr, os.ErrNotExist) && cfg.Cluster.Manager == ""
	var join *cluster.ManagerJoin
	if cfg.Cluster.Manager != "" {
		// `warren manager join`: join like any node (manager token,
		// manager certificate), then run a manager that Raft fills.
		a, err := agent.Join(ctx, agent.Config{
			StateDir: cfg.Node.StateDir,
			Manager:  cfg.Cluster.Manager,
			Token:    cfg.Cluster.Token,
			Node:     info,
			Logger:   log,
		})
		if err != nil {
			return nil, err
		}
		if join, err = a.ManagerJoin(ctx); err != nil {
			return nil, err
		}
	}
	if created {
		// This config shapes the new cluster: its ranges must not shadow
		// a network this host is on (checked before anything is stored).
		hostNets, err := configs.HostNetworks(cfg.Config)
		if err != nil {
			return nil, err
		}
		if err := cfg.CheckHostOverlap(hostNets); err != nil {
			return nil, err
		}
	}
	mgr, err := cluster.OpenManager(cluster.ManagerConfig{
		StateDir:           cfg.Node.StateDir,
		APIListen:          cfg.Cluster.APIListen,
		Node:               info,
		WireGuardSubnet:    cfg.WireGuard.Subnet.Prefix,
		ContainerSubnet:    cfg.Network.ContainerSubnet.Prefix,
		ContainerBlockBits: cfg.Network.ContainerBlock,
		VIPSubnet:          cfg.Network.VIPSubnet.Prefix,
		Domain:             cfg.Network.DNSDomain,
		DownAfter:          cfg.Cluster.NodeDownAfter.Duration,
		CertLifetime:       cfg.Cluster.CertLifetime.Duration,
		ReservedPorts:      reservedPorts(&cfg.Config),
		Logger:             log,
		Join:               join,
		JoinedID:           agent.JoinedNodeID(cfg.Node.StateDir),
	})
	if err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			mgr.Close()
		}
	}()
	// Listen here, so a taken port is an error now, not in a goroutine.
	ln, err := net.Listen("tcp", cfg.Cluster.APIListen)
	if err != nil {
		return nil, fmt.Errorf("cluster API (cluster.api_listen): %w", err)
	}
	go func() {
		if err := mgr.ServeListener(ctx, ln); err != nil && ctx.Err() == nil {
			log.Error("cluster API stopped", "err", err)
		}
	}()
	select {
	case <-mgr.Ready():
	case <-ctx.Done():
		return nil, nil // shutting down
	}
	if created {
		// The tokens stay out of stdout and the logs (the journal is
		// readable by the adm group): say where to read them.
		fmt.Printf("Cluster created. To add a node, run on this one:\n\n    warren cluster join-token worker     (or: manager)\n\n"+
			"and run the command it prints on the new node. Join address: %s:%s\n\n", advertise, apiPort(cfg.Cluster.APIListen))
	}
	log.Info("manager up", "api", cfg.Cluster.APIListen, "join_tokens", "warren cluster join-token worker|manager")
	j := &joined{mem: mgr, admin: mgr.AdminHandler(), nodeCert: mgr.NodeCertificate, caPool: mgr.CAPool, close: func() { mgr.Close() }}
	if relaySrv != nil {
		if err := serveManagerRelay(ctx, relaySrv, mgr, cfg.Cluster.APIListen, log); err != nil {
			return nil, err
		}
	}
	j.raftStatus = func() metrics.Raft {
		i := mgr.Info()
		return metrics.Raft{State: i.RaftState, HasLeader: i.Leader != "", Voters: len(i.Voters)}
	}
	j.peerStatus = func() []metrics.ClusterPeer { return clusterPeerMetrics(mgr.Peers()) }
	ok = true
	return j, nil
}

// startWorker joins (or resumes) this node as a worker through its agent
// and serves the relay when [relay] enable is set.
func startWorker(ctx context.Context, cfg *configs.Loaded, info cluster.NodeInfo, relaySrv *relay.Server, log *slog.Logger) (*joined, error) {
	var err error
	acfg := agent.Config{
		StateDir: cfg.Node.StateDir,
		Manager:  cfg.Cluster.Manager,
		Token:    cfg.Cluster.Token,
		Node:     info,
		Logger:   log,
	}
	// The static binary's resolver does not speak mDNS: a manager given
	// as pi-1.local is looked up here, at every start (the setup
	// remembers the name, not the address DHCP gave it).
	if acfg.Manager, err = (mdns.Resolver{}).ResolveHostPort(ctx, cfg.Cluster.Manager); err != nil {
		if !cfg.Joined {
			return nil, fmt.Errorf("cluster.manager: %w", err)
		}
		// A joined node keeps serving with the manager down: it uses
		// the address it last reached the manager on.
		log.Warn("cannot resolve the manager's .local name; using the address stored at join", "err", err)
		acfg.Manager = ""
	}
	if acfg.Manager != cfg.Cluster.Manager {
		log.Info("resolved the manager's .local name over mDNS", "manager", cfg.Cluster.Manager, "address", acfg.Manager)
	}
	a, err := agent.Join(ctx, acfg)
	if err != nil && agent.IsNameTaken(err) && cfg.NameFromHostname() {
		// Boards often keep the OS's default host name (raspberrypi):
		// a name nobody chose is made unique with a suffix from this
		// node's key, the same on every retry, and remembered.
		acfg.Node.Name = UniqueName(info.Name, info.PublicKey)
		log.Warn("another node has this host name; joining under a unique name (set node.name or --name to choose one)",
			"hostname", info.Name, "name", acfg.Node.Name)
		a, err = agent.Join(ctx, acfg)
	}
	if err != nil {
		return nil, err
	}
	j := &joined{mem: a, nodeCert: a.Certificate, caPool: a.CAPool, close: func() {}}
	if relaySrv != nil {
		if err := serveRelay(ctx, relaySrv, cfg.Relay.Port, a.Certificate, a.CAPool, log); err != nil {
			return nil, err
		}
	}
	return j, nil
}

// policySyncer is what a node needs of netpolicy.Applier.
type policySyncer interface {
	Sync(netpolicy.Rules) (netpolicy.SyncStats, error)
}

// natSyncer is what a node needs of nat.Applier.
type natSyncer interface {
	Sync([]nat.Service, nat.Options) error
}

// taskRunner is what the per-map engine needs of the task reconciler.
type taskRunner interface {
	Apply([]orchestrate.TaskSpec)
	Status() []orchestrate.TaskStatus
}

// firewallCanary is the firewall owner's canary (hostfw.Syncer.Check).
type firewallCanary interface {
	Check(slow bool) (bool, error)
}

// node holds the running reconcilers of a cluster node.
type node struct {
	cfg    *configs.Loaded
	log    *slog.Logger
	self   clustermap.Node
	net    clustermap.Network // fixed at cluster creation
	dev    *tunnel.Device
	static []tunnel.Peer
	orch   *orchestrate.Reconciler
	// fw is the node's one firewall owner; nat and pol hand it their
	// rules, and so does the task reconciler (tasks).
	fw    firewallCanary
	tasks taskRunner // orch; a fake in tests
	nat   natSyncer
	pol   policySyncer
	dns   *dns.Server
	met   *metrics.Metrics
	// paths finds each peer's underlay path (direct or relayed);
	// candidatesChanged is poked when this node's candidates change.
	paths             *paths.Engine
	candidatesChanged chan struct{}
	// relaySrv is this node's relay (nil: it does not relay); relayCli
	// its relay client, the path machine's fallback.
	relaySrv *relay.Server
	relayCli *relay.Client

	// secrets gives tasks their secrets and configs (secrets.go).
	secrets   *taskSecrets
	regCreds  *registryCreds
	blobPeers *blobPeers
	// applyMu serialises apply: the map watch and the retry of values
	// that could not be fetched both call it.
	applyMu    sync.Mutex
	retryTimer *time.Timer

	mu   sync.Mutex
	last *clustermap.Map
	// natFailed: the last rule sync failed and must be retried.
	natFailed bool
	// polFailed: the last network policy sync failed and must be retried.
	polFailed bool
	// overlap: the last host-overlap finding, logged when it changes.
	overlap string
}

// checkHostOverlap refuses cluster ranges that overlap a network this host
// is on: routes into the overlay would cut the host off from it.
func (n *node) checkHostOverlap() error {
	hostNets, err := configs.HostNetworks(n.cfg.Config)
	if err != nil {
		return err
	}
	return clusterOverlapError(configs.HostOverlaps(clusterRanges(n.net), hostNets))
}

// recheckHostOverlap runs the overlap check again when a map arrives (the
// host may have joined a network since), logging only when the finding
// changes: a running node cannot refuse, but must say so.
func (n *node) recheckHostOverlap() {
	msg := ""
	if err := n.checkHostOverlap(); err != nil {
		msg = err.Error()
	}
	n.mu.Lock()
	changed := msg != n.overlap
	n.overlap = msg
	n.mu.Unlock()
	switch {
	case changed && msg != "":
		n.log.Error("cluster ranges overlap a host network", "err", msg)
	case changed:
		n.log.Info("cluster ranges no longer overlap a host network")
	}
}

func (n *node) bridgeIP() netip.Addr { return netaddr.Bridge(n.self.ContainerBlock) }

func (n *node) startReconcilers(ctx context.Context) error {
	cfg := n.cfg
	// The one owner of the node's firewall, with the one backend
	// detection: nat, netpolicy and the task network write through it.
	fw, err := hostfw.NewBackend(cfg.Firewall.Backend, n.log)
	if err != nil {
		return fmt.Errorf("firewall: %w", err)
	}
	n.fw = fw
	orch, err := orchestrate.New(ctx, orchestrate.Config{
		Firewall:          fw,
		ContainerdAddress: cfg.Runtime.ContainerdAddress,
		Namespace:         cfg.Runtime.Namespace,
		ImagesDir:         cfg.Runtime.ImagesDir,
		Bridge:            cfg.Network.Bridge,
		Block:             n.self.ContainerBlock,
		ResolvConf:        dns.ResolvConf(n.bridgeIP(), n.net.Domain),
		StateDir:          filepath.Join(cfg.Node.StateDir, "tasks"),
		OverlayInterface:  cfg.WireGuard.Interface,
		ContainerSubnet:   n.net.ContainerSubnet,
		NodeSubnet:        n.net.WireGuardSubnet,
		CgroupParent:      cfg.Runtime.CgroupParent,
		RestartBackoffMax: cfg.Runtime.RestartBackoffMax.Duration,
		LoggerBinary:      taskLogger(filepath.Join(cfg.Node.StateDir, "tasks"), n.log),
		LogMaxSize:        cfg.Logs.MaxSize.Bytes,
		LogMaxFiles:       cfg.Logs.MaxFiles,
		TasksMemoryMax:    cfg.Runtime.TasksMemoryMax.Bytes,
		VolumesDir:        filepath.Join(cfg.Node.StateDir, "volumes"),
		NodeName:          n.self.Name,
		Logger:            n.log,
	})
	if err != nil {
		return fmt.Errorf("containerd at %s: %w", cfg.Runtime.ContainerdAddress, err)
	}
	n.orch, n.tasks = orch, orch
	go func() {
		if err := orch.Run(ctx); err != nil && ctx.Err() == nil {
			n.log.Error("task reconciler stopped", "err", err)
		}
	}()

	n.nat = nat.NewApplierWith(fw, n.log)
	n.pol = netpolicy.NewApplier(fw)

	// FreeBind: the bridge address appears with the task reconciler's
	// first pass; the resolver must not wait for it.
	// Answer this node (loopback, its own addresses) and, from the map,
	// the cluster's ranges (which hold its tasks); nobody else.
	allow := []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")}
	if ep := n.self.Endpoint.Addr(); ep.IsValid() {
		allow = append(allow, netip.PrefixFrom(ep.Unmap(), ep.Unmap().BitLen()))
	}
	srv, err := dns.NewServer(dns.Config{
		Listen:   []string{netip.AddrPortFrom(n.bridgeIP(), 53).String()},
		Domain:   n.net.Domain,
		Allow:    allow,
		FreeBind: true,
		OnAnswer: n.met.CountDNS,
		Logger:   n.log,
	})
	if err != nil {
		return fmt.Errorf("dns: %w", err)
	}
	if err := srv.Start(); err != nil {
		return fmt.Errorf("dns on %s:53: %w", n.bridgeIP(), err)
	}
	n.dns = srv
	return nil
}

func (n *node) stopReconcilers() {
	if n.dns != nil {
		n.dns.Close()
	}
	// Tasks and NAT rules stay: running services keep serving while the
	// appliance restarts or upgrades (KillMode=process), and the next start
	// adopts them.
}

// apply converges every reconciler to m. Each one is level-triggered, so
// applying the same map twice changes nothing.
func (n *node) apply(m *clustermap.Map) {
	n.applyMu.Lock()
	defer n.applyMu.Unlock()
	n.mu.Lock()
	n.last = m
	n.mu.Unlock()
	if mn := m.Network(); mn.Complete() && mn != n.net {
		n.log.Error("the map's cluster network differs from the one this node started with; restart the node to follow it",
			"map", fmt.Sprintf("%+v", mn), "running", fmt.Sprintf("%+v", n.net))
	}
	n.recheckHostOverlap()
	if n.relaySrv != nil {
		n.relaySrv.SetMembers(relayMembers(m))
	}
	n.relayCli.SetRelays(relaysOf(m))
	peers := n.syncPeers(m)
	n.paths.SetPeers(pathPeers(m, n.self.ID))
	ctx, cancel := context.WithTimeout(context.Background(), valuesTimeout)
	specs, retry := n.secrets.prepare(ctx, m, taskSpecs(m, n.self.ID))
	regs, credsOK := n.regCreds.configs(ctx, m, specs)
	cancel()
	n.orch.SetRegistries(regs)
	if n.cfg.Cluster.ShareImages {
		n.orch.SetSharing(sharingFor(m, n.self.ID, n.blobPeers.client))
	}
	if retry || !credsOK {
		n.retryApplyLocked()
	}
	n.applyRules(m, specs)
	n.dns.Update(dns.RecordsFromMap(m))
	n.met.SetMapVersion(m.Version)
	n.log.Debug("applied map", "version", m.Version, "peers", len(peers))
}

// applyRules converges the packet filter and the tasks to m, in the
// order that never opens a hole: policies first (a new task's address is
// in its sets before it starts), then the tasks, then the service rules
// (a new endpoint gets traffic only once its task is set up). Each step
// is one sync of the firewall owner, which keeps the policy hook first.
//
// When the policies cannot be written, tasks the node does not run yet
// wait (gateNewTasks): started, one would sit outside its policy sets,
// open to what its policies forbid, and be reported running, so put
// behind its VIP. The map is applied again shortly (and the canary's slow
// check retries the policies); the tasks start once the policies are in.
func (n *node) applyRules(m *clustermap.Map, specs []orchestrate.TaskSpec) {
	if err := n.syncPolicies(m); err != nil {
		var held []string
		if specs, held = gateNewTasks(specs, n.tasks.Status()); len(held) > 0 {
			n.log.Warn("tasks wait until the network policies are written", "tasks", held, "err", err, "map_version", m.Version)
			n.retryApplyLocked()
		}
	}
	n.tasks.Apply(specs)
	n.syncNAT(m)
}

// gateNewTasks splits specs into the tasks the reconciler already has
// (they keep running) and the names of the others (held back).
func gateNewTasks(specs []orchestrate.TaskSpec, known []orchestrate.TaskStatus) ([]orchestrate.TaskSpec, []string) {
	have := map[string]bool{}
	for _, t := range known {
		have[t.Name] = true
	}
	var keep []orchestrate.TaskSpec
	var held []string
	for _, s := range specs {
		if have[s.Name] {
			keep = append(keep, s)
		} else {
			held = append(held, s.Name)
		}
	}
	return keep, held
}

// valuesTimeout bounds fetching secret and config values in apply; the
// tasks that wait for them are retried every valuesRetry.
const (
	valuesTimeout = 5 * time.Second
	valuesRetry   = 3 * time.Second
)

// retryApplyLocked applies the newest map again shortly (values that
// could not be fetched). applyMu is held.
func (n *node) retryApplyLocked() {
	if n.retryTimer != nil {
		return
	}
	n.retryTimer = time.AfterFunc(valuesRetry, func() {
		n.applyMu.Lock()
		n.retryTimer = nil
		n.applyMu.Unlock()
		if m := n.lastMap(); m != nil {
			n.apply(m)
		}
	})
}

// syncPeers converges the tunnel's peers to m's mesh plus the static
// peers, and returns them; the path machine sets the endpoints it chose
// (direct or relayed) on top (tunnel.Device.SetEndpoint).
func (n *node) syncPeers(m *clustermap.Map) []tunnel.Peer {
	// n.self is not refreshed from m: its ID, overlay IP and block are
	// fixed for the node's identity, and other goroutines read it.
	peers := append(meshPeers(m, n.self.ID, keepalive(configs.Duration{}, n.cfg.WireGuard.Keepalive)), n.static...)
	if err := n.dev.SetPeers(peers); err != nil {
		n.log.Error("applying mesh peers", "err", err, "map_version", m.Version)
		n.met.ReconcileError("tunnel")
	}
	return peers
}

// syncNAT applies m's service rules; a failure is retried by the canary
// loop, since the next map may be long in coming.
func (n *node) syncNAT(m *clustermap.Map) {
	start := time.Now()
	opts := n.natOptions()
	opts.PeerGateways = natGateways(m, n.self.ID)
	err := n.nat.Sync(natServices(m, n.self.ID), opts)
	n.met.ObserveNATSync(time.Since(start), err)
	if err != nil {
		n.log.Error("applying service rules", "err", err, "map_version", m.Version)
		n.met.ReconcileError("nat")
	}
	n.mu.Lock()
	n.natFailed = err != nil
	n.mu.Unlock()
}

// syncPolicies enforces m's network policies for the tasks forwarded
// through this node; a failure is retried by the canary loop.
func (n *node) syncPolicies(m *clustermap.Map) error {
	// Other nodes' traffic is exempt from ingress policies only on the
	// overlay interface; without a config there is none, and no exemption.
	var overlay string
	if n.cfg != nil {
		overlay = n.cfg.WireGuard.Interface
	}
	rules := netpolicy.Render(netpolicy.Input{Policies: m.Policies, Tasks: netpolicy.TasksOf(m), NodeSubnet: m.WireGuardSubnet, Overlay: overlay,
		Peers: policyPeers(m, n.self.ID)})
	st, err := n.pol.Sync(rules)
	if err != nil {
		n.log.Error("applying network policies", "err", err, "map_version", m.Version)
		n.met.ReconcileError("policy")
	} else if st.RulesWritten || st.Added+st.Removed > 0 {
		n.log.Debug("network policies applied", "map_version", m.Version, "policies", len(m.Policies), "sets", len(rules.Sets),
			"added", st.Added, "removed", st.Removed, "rules_written", st.RulesWritten)
	}
	n.mu.Lock()
	n.polFailed = err != nil
	n.mu.Unlock()
	return err
}

func (n *node) natOptions() nat.Options {
	c := n.cfg
	return nat.Options{
		Persistence:        c.LoadBalancing.Persistence,
		PersistenceTimeout: c.LoadBalancing.PersistenceTimeout.Duration,
		ContainerSubnet:    n.net.ContainerSubnet,
		Bridge:             c.Network.Bridge,
		Overlay:            c.WireGuard.Interface,
	}
}

func (n *node) lastMap() *clustermap.Map {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.last
}

// reportLoop sends the heartbeat: tunnel health and task states, every
// reportInterval and, unless cluster.report_on_change is off, as soon as a
// task's state changes: the manager puts a task behind its VIP only once
// it hears it runs, so waiting for the next heartbeat would add up to
// reportInterval to every service start.
func (n *node) reportLoop(ctx context.Context, mem member) {
	t := time.NewTicker(reportInterval)
	defer t.Stop()
	var changed <-chan struct{}
	if n.cfg.Cluster.ReportOnChange {
		changed = n.orch.Changed()
	}
	var last time.Time
	for {
		last = time.Now()
		err := mem.Report(ctx, n.status())
		if err != nil && ctx.Err() == nil {
			n.log.Debug("status report not delivered", "err", err)
		}
		var retry <-chan time.Time
		if err != nil && changed != nil {
			// The report may have carried a change (the manager limits
			// how many a node sends): try again soon rather than at the
			// next heartbeat.
			retry = time.After(reportRetry)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-retry:
		case <-n.candidatesChanged:
			// New candidates: the sooner the map carries them, the sooner
			// peers probe them.
		case <-changed:
			// Let a burst (tasks starting together) settle into one
			// report, and never report more often than reportMinGap.
			wait := max(reportCoalesce, reportMinGap-time.Since(last))
			select {
			case <-ctx.Done():
				return
			case <-time.After(wait):
			}
		}
	}
}

func (n *node) status() cluster.NodeStatus {
	s := cluster.NodeStatus{Time: time.Now()}
	if c, err := orchestrate.Capacity(); err == nil {
		s.Capacity = &c
	} else {
		n.log.Debug("node capacity", "err", err)
	}
	if c := n.paths.Candidates(); len(c) > 0 {
		s.Candidates = c
	}
	known := pathsByKey(n.paths)
	for _, h := range n.dev.Health() {
		path, _ := peerPath(h.Endpoint, known[h.PublicKey])
		s.Tunnel = append(s.Tunnel, api.PeerHealth{PublicKey: h.PublicKey.String(), LastHandshake: h.LastHandshake, RxBytes: uint64(h.RxBytes), TxBytes: uint64(h.TxBytes), Path: path})
	}
	// Until the task reconciler has looked at the node, its states are
	// guesses: leave Tasks nil so the manager keeps what it knows (a
	// restarted appliance must not make its running tasks leave the VIPs).
	if n.orch.Synced() {
		s.Tasks = []api.TaskStatus{}
		for _, t := range n.orch.Status() {
			s.Tasks = append(s.Tasks, api.TaskStatus{Name: t.Name, State: t.State, Error: t.Error, Image: t.Image, SpecVersion: t.SpecVersion,
				Revision: t.Revision, Health: reportHealth(t.Health),
				Run: clustermap.TaskRun{Exited: t.Exited, ExitCode: t.ExitCode, Restarts: t.Restarts, NextRestart: t.NextRestart, OOMKilled: t.OOMKilled,
					PullDone: t.PullDone, PullTotal: t.PullTotal}})
		}
		// Tasks waiting for their secrets' values are not in the
		// reconciler's hands yet: say why they wait.
		for _, t := range n.secrets.waitingTasks() {
			if !slices.ContainsFunc(s.Tasks, func(r api.TaskStatus) bool { return r.Name == t.Name }) {
				s.Tasks = append(s.Tasks, t)
			}
		}
	}
	return s
}

// canaryLoop runs the firewall owner's canary every canaryInterval: when
// someone flushed or reordered warren's rules (a firewall reload,
// `iptables -F FORWARD`, another container engine), the canary calls the
// same sync that wrote them, which puts the hooks back in order in one
// transaction, as kube-proxy's canary does. Every canarySlowEvery-th
// check also looks inside warren's chains and retries failed syncs (the
// next map may be long in coming).
func (n *node) canaryLoop(ctx context.Context) {
	t := time.NewTicker(canaryInterval)
	defer t.Stop()
	for tick := 1; ; tick++ {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		n.canaryTick(tick%canarySlowEvery == 0)
	}
}

// canaryTick is one check of canaryLoop.
func (n *node) canaryTick(slow bool) {
	if n.lastMap() == nil {
		return
	}
	if _, err := n.fw.Check(slow); err != nil {
		n.log.Error("restoring the firewall rules", "err", err)
		n.met.ReconcileError("nat")
	}
	if !slow {
		return
	}
	m := n.lastMap()
	n.mu.Lock()
	natFailed, polFailed := n.natFailed, n.polFailed
	n.mu.Unlock()
	if polFailed {
		n.syncPolicies(m)
	}
	if natFailed {
		n.syncNAT(m)
	}
}

// UniqueName is name with a suffix derived from the node's WireGuard
// public key: stable for the node, different for another board.
func UniqueName(name, publicKey string) string {
	sum := sha256.Sum256([]byte(publicKey))
	suffix := "-" + hex.EncodeToString(sum[:2])
	if len(name) > 63-len(suffix) {
		name = strings.TrimRight(name[:63-len(suffix)], "-")
	}
	return name + suffix
}

// apiPort is the port of a listen address such as ":7946".
func apiPort(listen string) string {
	_, port, err := net.SplitHostPort(listen)
	if err != nil {
		return listen
	}
	return port
}

// advertiseAddress is node.advertise_address, or the source address of the
// default route: what other nodes on the LAN reach this one on.
func advertiseAddress(cfg *configs.Loaded) (netip.Addr, error) {
	if a := cfg.Node.AdvertiseAddress; a != "" {
		return netip.MustParseAddr(a), nil // validated by configs
	}
	// Connecting a UDP socket asks the routing table for the source
	// address and sends nothing; any non-local address will do.
	c, err := net.Dial("udp4", "192.0.2.1:9")
	if err != nil {
		return netip.Addr{}, errors.New("no default route to take the advertise address from: set node.advertise_address (or --advertise-address) to this node's LAN address")
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).AddrPort().Addr().Unmap(), nil
}

// reservedPorts are this appliance's ports, beyond those the manager knows
// (DNS, its API, the WireGuard ports), that services may not publish.
func reservedPorts(cfg *configs.Config) []cluster.ReservedPort {
	var out []cluster.ReservedPort
	if _, p, err := net.SplitHostPort(cfg.Metrics.Listen); err == nil {
		if n, err := strconv.ParseUint(p, 10, 16); err == nil && n != 0 {
			out = append(out, cluster.ReservedPort{Port: uint16(n), Protocol: "tcp", What: "the metrics listener ([metrics] listen)"})
		}
	}
	return out
}

// reportHealth is a task's health as reported: the last probes, each
// output cut to what the manager keeps.
func reportHealth(h *health.State) *api.TaskHealth {
	if h == nil {
		return nil
	}
	out := &api.TaskHealth{Status: h.Status, FailingStreak: h.FailingStreak}
	for _, r := range h.Log {
		o := r.Output
		if len(o) > api.MaxHealthOutput {
			o = o[:api.MaxHealthOutput]
		}
		out.Log = append(out.Log, api.HealthResult{Start: r.Start, End: r.End, ExitCode: r.ExitCode, Output: o})
	}
	return out
}

// rememberSetup saves what `cluster init` / `worker start` made this node
// (under the name it joined with), so the unit's `warren-appliance
// --config` resumes it as that.
func rememberSetup(cfg *configs.Loaded, name string) error {
	var managers []string
	if cfg.Cluster.Manager != "" {
		managers = []string{cfg.Cluster.Manager}
	} else if cfg.Setup != nil {
		managers = cfg.Setup.Managers
	}
	return configs.SaveSetup(cfg.Node.StateDir, cfg.RememberedSetup(name, managers))
}

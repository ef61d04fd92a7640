// Package cluster is the control plane: the manager (bbolt store, CA and
// join tokens, IPAM, scheduling, the versioned map, the node and admin
// APIs) and the agent every other node runs (pinned-token join, map watch
// with an on-disk cache, status reports).
package cluster

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"

	"github.com/warren-appliance/warren/cluster/api"
	"github.com/warren-appliance/warren/cluster/apicall"
	"github.com/warren-appliance/warren/cluster/clustermap"
	"github.com/warren-appliance/warren/cluster/ipam"
	"github.com/warren-appliance/warren/cluster/pki"
	"github.com/warren-appliance/warren/cluster/replicate"
	"github.com/warren-appliance/warren/cluster/secretbox"
	"github.com/warren-appliance/warren/cluster/store"
	"github.com/warren-appliance/warren/configs"
	"golang.org/x/time/rate"
)

// NodeStatus is a node's heartbeat (tunnel health, task states).
type NodeStatus = api.NodeStatus

// Defaults for zero ManagerConfig fields.
const (
	DefaultAPIListen = configs.DefaultAPIListen
	DefaultDomain    = configs.DefaultDomain
	DefaultDownAfter = 30 * time.Second
	// MinCertLifetime is the shortest cluster.cert_lifetime (for tests and
	// labs; real clusters keep the default).
	MinCertLifetime = time.Minute
)

// ManagerConfig configures the manager. Subnets and domain are used when the
// cluster is created; later starts keep the stored ones (Manager.Network),
// and the caller tells the operator about a config that differs.
type ManagerConfig struct {
	StateDir           string
	APIListen          string // ":7946"
	Node               NodeInfo
	WireGuardSubnet    netip.Prefix
	ContainerSubnet    netip.Prefix
	ContainerBlockBits int
	VIPSubnet          netip.Prefix
	Domain             string
	DownAfter          time.Duration // a node silent this long is marked down
	// CertLifetime is how long node certificates are valid (default
	// pki.NodeValidity, 90 days); agents renew at about two thirds of it.
	CertLifetime time.Duration
	// ReservedPorts are host ports of this appliance that services may not
	// publish, beyond DNS, the node API and the WireGuard ports, which the
	// manager knows itself (e.g. the metrics listener).
	ReservedPorts []ReservedPort
	Logger        *slog.Logger
	// Advertise is host:port where the other managers reach this one's API
	// (and Raft, on the same port); default: the endpoint's IP with the
	// APIListen port.
	Advertise string
	// Join is set on a manager that joined an existing cluster (`warren
	// manager join`): it has no state of its own until Raft replicates it.
	Join *ManagerJoin
	// JoinedID is the node ID of a manager that joined the cluster once
	// (the agent's JoinedNodeID of the state dir), for a start without
	// Join; "" on the manager that created the cluster.
	JoinedID string
	// ForceNewCluster restarts this manager's state as a one-manager
	// cluster (lost quorum); with no Raft state (a restored backup, an
	// upgraded single manager) it only bootstraps.
	ForceNewCluster bool

	keepalive time.Duration // watch stream keepalive; tests shorten it
	// caRotationCheck is how often the leader checks whether a CA
	// rotation can finish (0: 5s); tests shorten it.
	caRotationCheck time.Duration
	// requestTimeout bounds reading a request (headers and body) and, with
	// half again, writing the answer; default 20 s, tests shorten it.
	requestTimeout time.Duration
	raftTune       func(*raft.Config) // tests shorten Raft's commit timeout
}

// ManagerJoin is what a joining manager got from its join.
type ManagerJoin = api.ManagerJoin

// NodeInfo is what a node says about itself when it joins.
type NodeInfo = api.NodeInfo

// Manager owns the cluster state and publishes the map.
type Manager struct {
	cfg       ManagerConfig
	keepalive time.Duration
	log       *slog.Logger
	store     *store.Store
	now       func() time.Time
	selfID    string
	replica   *replicate.Replica
	stream    *raftStream
	fwd       apicall.Caller // to the other managers (forwarded calls, Raft join)
	pool      atomic.Pointer[x509.CertPool]
	creds     atomic.Pointer[map[string]managerCred] // liveManager's view; nil before any state
	known     atomic.Pointer[map[netip.Addr]bool]    // members' addresses (connlimit's kept slots)
	slots     nodeSlots                              // per-node caps (nodecaps.go)
	mcert     atomic.Pointer[tls.Certificate]
	// mcertPrev is the session certificate of the previous CA during a CA
	// rotation (nil otherwise); prevCA that CA, with its key.
	mcertPrev atomic.Pointer[tls.Certificate]
	prevCA    *pki.CA
	relay     atomic.Pointer[RelayHandler] // relay connections on the API port
	notify    chan struct{}                // an entry was applied or a snapshot restored
	stop      chan struct{}
	loops     sync.WaitGroup
	ready     chan struct{} // closed once this manager holds the state
	readyOnce sync.Once
	initial   chan error    // the full state proposed on bootstrap: its result
	joinDone  chan struct{} // closed when joinRaft has returned (tests)

	mu       sync.Mutex
	st       *state
	snap     store.Snapshot // st as store records (what the replicas hold)
	applied  uint64         // the raft index st reflects
	leader   bool           // this manager leads and st is current
	pending  store.Snapshot // full state to propose once leader (bootstrap)
	ca       *pki.CA        // signs joins and renewals (the new CA during a rotation)
	server   tls.Certificate
	trustKey string // the CA material ca, server and pool reflect (carotate.go)
	current  *clustermap.Map
	mapJSON  []byte
	changed  chan struct{} // closed and replaced on every new map version
	unplaced map[string]string
	lastSeen map[string]time.Time
	health   map[string][]api.PeerHealth
	// taskHealth is each task's last reported health check detail (the
	// map carries only its status), from the reports this manager folded.
	taskHealth map[taskKey]api.TaskHealth
	skew       map[string]time.Duration // node clock minus manager clock, per last report
	// reportLimit limits each node's state-changing reports (bounds.go).
	reportLimit map[string]*rate.Limiter
	// views caches the encoded per-node views of the current map (views.go).
	views        map[string][]byte
	viewsVersion uint64
	aheadLogged  map[string]time.Time // noteNodeAhead's last warning per node
	servingAddr  string               // the node API's listener, once serving
	// dataKey seals secrets' and configs' values (objects.go); nil until
	// this manager has one.
	dataKey secretbox.Key
	// needKey: the replicated state did not open with dataKey (syncLocked);
	// unopened is that state (a key from another manager must open it).
	needKey  bool
	unopened *state
	// nextKey is a data key received for a re-key, until the entry that
	// seals with it applies (rekey.go); sealWith the key the leader's
	// next commit seals with during a re-key.
	nextKey  secretbox.Key
	sealWith *sealTarget
	// links is the state of the peer links (peers.go); peerKick asks the
	// peer loop to sync now.
	links    peerLinks
	peerKick chan struct{}
}

// OpenManager opens the store under cfg.StateDir, creating the cluster on
// first start (ID, CA, tokens, this node as first manager on the first
// overlay address with the first container block).
func OpenManager(cfg ManagerConfig) (*Manager, error) {
	if cfg.StateDir == "" {
		return nil, errors.New("manager: state dir is empty")
	}
	if cfg.APIListen == "" {
		cfg.APIListen = DefaultAPIListen
	}
	if cfg.Domain == "" {
		cfg.Domain = DefaultDomain
	}
	if cfg.DownAfter <= 0 {
		cfg.DownAfter = DefaultDownAfter
	}
	if cfg.CertLifetime <= 0 {
		cfg.CertLifetime = pki.NodeValidity
	}
	if cfg.CertLifetime < MinCertLifetime {
		return nil, fmt.Errorf("cluster.cert_lifetime %s is too short: want at least %s", cfg.CertLifetime, MinCertLifetime)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.keepalive == 0 {
		cfg.keepalive = api.WatchKeepalive
	}
	if cfg.caRotationCheck == 0 {
		cfg.caRotationCheck = 5 * time.Second
	}
	if cfg.requestTimeout == 0 {
		cfg.requestTimeout = 20 * time.Second
	}
	cfg.Node.Role = clustermap.RoleManager
	if err := cfg.Node.Validate(); err != nil {
		return nil, fmt.Errorf("manager node: %w", err)
	}
	if cfg.Advertise == "" {
		_, port, err := net.SplitHostPort(cfg.APIListen)
		if err != nil {
			return nil, fmt.Errorf("cluster.api_listen %q: %w", cfg.APIListen, err)
		}
		cfg.Advertise = net.JoinHostPort(cfg.Node.Endpoint.Addr().String(), port)
	}
	st, err := store.Open(filepath.Join(cfg.StateDir, "manager.db"))
	if err != nil {
		return nil, err
	}
	m := &Manager{
		cfg: cfg, keepalive: cfg.keepalive, log: cfg.Logger.With("component", "manager"), store: st, now: time.Now,
		changed: make(chan struct{}), lastSeen: map[string]time.Time{}, health: map[string][]api.PeerHealth{},
		skew: map[string]time.Duration{}, notify: make(chan struct{}, 1), stop: make(chan struct{}),
		ready: make(chan struct{}), initial: make(chan error, 1), joinDone: make(chan struct{}),
		peerKick: make(chan struct{}, 1),
	}
	m.fwd = apicall.Caller{Scheme: "https", Peer: "manager", HTTP: apicall.HTTPS(m.managerClientTLS(false),
		apicall.Deadlines{Dial: 5 * time.Second, Handshake: 5 * time.Second, Total: 15 * time.Second})}
	if err := m.open(); err != nil {
		m.Close()
		return nil, err
	}
	return m, nil
}

func (m *Manager) open() error {
	raftDir := filepath.Join(m.cfg.StateDir, "raft")
	hasRaft, err := replicate.HasState(raftDir)
	if err != nil {
		return err
	}
	s, err := m.loadStored(hasRaft)
	if err != nil {
		return err
	}
	s, bootstrap, err := m.prepareStart(s, hasRaft, raftDir)
	if err != nil {
		return err
	}
	rcfg := m.raftConfig(raftDir)
	if m.cfg.ForceNewCluster && hasRaft {
		m.log.Warn("forcing a new cluster: this manager becomes the only one, keeping its state")
		if err := replicate.Recover(rcfg); err != nil {
			return err
		}
	}
	if s != nil {
		if err := m.serveStartState(s); err != nil {
			return err
		}
	}
	m.stream = newRaftStream(m, m.cfg.Advertise)
	rcfg.Stream = m.stream
	if m.replica, err = replicate.Open(rcfg); err != nil {
		return err
	}
	if bootstrap {
		if err := m.replica.Bootstrap(); err != nil {
			return err
		}
	} else {
		close(m.initial)
	}
	m.loops.Add(4)
	go m.leadershipLoop()
	go m.followLoop()
	go m.dataKeyLoop()
	go m.caRotationLoop(m.cfg.caRotationCheck)
	if err := m.awaitOwnLeadership(bootstrap); err != nil {
		return err
	}
	m.logOpened()
	return nil
}

// loadStored reads the state dir: the stored cluster state (nil when there
// is none), the secrets data key and a rotation's next key. The stored
// state is opened with those keys unless this manager is joining the
// managers and has no Raft state yet (Raft then replaces it).
func (m *Manager) loadStored(hasRaft bool) (*state, error) {
	s, err := loadState(m.store.All())
	if err != nil {
		return nil, err
	}
	if err := m.loadDataKey(); err != nil {
		return nil, err
	}
	if err := m.loadNextKey(); err != nil {
		return nil, err
	}
	if s != nil && (m.cfg.Join == nil || hasRaft) {
		if err := m.openStateLocked(s); err != nil {
			return nil, fmt.Errorf("%s: %w (%s): copy secrets.key from another manager's state dir, or the key file written with a backup (FILE.key), to that path with mode 0600",
				filepath.Join(m.cfg.StateDir, "manager.db"), err, m.dataKeyPath())
		}
	}
	return s, nil
}

// prepareStart decides how this manager starts: joining the managers,
// creating a new cluster, or reopening the stored one. It returns the state
// to serve before Raft replicates anything (nil for a manager waiting to be
// added to Raft) and whether this manager bootstraps Raft.
func (m *Manager) prepareStart(s *state, hasRaft bool, raftDir string) (*state, bool, error) {
	switch {
	case m.cfg.Join != nil:
		s, err := m.prepareJoin(s, hasRaft)
		return s, false, err
	case s == nil:
		if hasRaft {
			return nil, false, fmt.Errorf("%s holds Raft state but %s no cluster: restore a backup with `warren cluster init --force-new-cluster --restore FILE`, or clear the state dir", raftDir, filepath.Join(m.cfg.StateDir, "manager.db"))
		}
		s, err := m.prepareNewCluster()
		return s, true, err
	default:
		return s, m.prepareReopen(s, hasRaft), nil
	}
}

// prepareJoin takes the identity, CA pool and certificate a joining
// manager was given. Without Raft state the stored state is dropped: what
// Raft replicates replaces it.
func (m *Manager) prepareJoin(s *state, hasRaft bool) (*state, error) {
	m.selfID = m.cfg.Join.ID
	cas, err := pki.ParseCertsPEM(m.cfg.Join.CACert)
	if err != nil {
		return nil, fmt.Errorf("cluster CA: %w", err)
	}
	pool := x509.NewCertPool()
	for _, ca := range cas {
		pool.AddCert(ca)
	}
	m.pool.Store(pool)
	cert := m.cfg.Join.Cert
	m.mcert.Store(&cert)
	if !hasRaft {
		s = nil // whatever is there is replaced by what Raft replicates
		m.log.Info("joining the managers: waiting to be added to Raft", "via", m.cfg.Join.Leader)
	}
	return s, nil
}

// prepareNewCluster creates the cluster (and the secrets data key when
// there is none) and queues its sealed state as Raft's first entry.
func (m *Manager) prepareNewCluster() (*state, error) {
	s, err := m.createCluster()
	if err != nil {
		return nil, err
	}
	if m.dataKey == nil {
		if m.dataKey, err = secretbox.NewKey(); err != nil {
			return nil, err
		}
		if err := secretbox.Save(m.cfg.StateDir, m.dataKey); err != nil {
			return nil, err
		}
	}
	// The CA key and join secrets are sealed from the first entry on.
	if err := sealMeta(s, nil, m.dataKey, 0); err != nil {
		return nil, err
	}
	if m.pending, err = s.snapshot(); err != nil {
		return nil, err
	}
	m.selfID = s.meta.SelfID
	m.log.Info("cluster created", "cluster", s.meta.ClusterID)
	return s, nil
}

// prepareReopen reopens the stored cluster and reports whether Raft must be
// bootstrapped from it (a store without Raft state).
func (m *Manager) prepareReopen(s *state, hasRaft bool) bool {
	m.selfID = s.meta.SelfID
	if m.cfg.JoinedID != "" {
		m.selfID = m.cfg.JoinedID // a manager that joined, started without cluster.manager
	}
	if hasRaft {
		return false
	}
	// A store written before Raft (single manager), or a restored
	// backup: Raft starts from it, and the full state is its first
	// entry so every manager added later receives it.
	m.pending = m.store.All()
	delete(m.pending, replicate.BucketRaft)
	m.log.Info("starting Raft from the existing store (upgrade or restore)", "nodes", len(s.nodes), "services", len(s.services))
	return true
}

// raftConfig is this manager's Raft replica configuration (without the
// stream, which needs the replica's state first).
func (m *Manager) raftConfig(raftDir string) replicate.Config {
	return replicate.Config{
		Dir: raftDir, ID: m.selfID, Addr: m.cfg.Advertise, Store: m.store, Logger: m.cfg.Logger, Tune: m.cfg.raftTune, Check: checkChange,
		OnApply: func() {
			select {
			case m.notify <- struct{}{}:
			default:
			}
		},
	}
}

// serveStartState serves s until Raft replicates newer state, and warns
// when the configured node name differs from this manager's record.
func (m *Manager) serveStartState(s *state) error {
	if err := m.setStateLocked(s); err != nil {
		return err
	}
	if name := s.nodes[m.selfID].Name; s.nodes[m.selfID].ID != "" && name != m.cfg.Node.Name && m.cfg.Join == nil {
		m.log.Warn("configured node name differs from this manager's record; keeping the record", "configured", m.cfg.Node.Name, "name", name)
	}
	return nil
}

// awaitOwnLeadership waits, for a one-manager cluster, until this manager
// leads it, so writes work once OpenManager returns: a bootstrapped cluster
// reports its first election on m.initial, a restarted one is polled.
func (m *Manager) awaitOwnLeadership(bootstrap bool) error {
	if !bootstrap && m.soleVoter() {
		// A restarted one-manager cluster: writes work once OpenManager
		// returns, as before Raft.
		deadline := time.Now().Add(60 * time.Second)
		for !m.isLeader() {
			if time.Now().After(deadline) {
				return errors.New("raft: this manager did not become leader of its own one-manager cluster within 60s")
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	if bootstrap {
		// A one-manager cluster elects itself within Raft's timeouts.
		select {
		case err := <-m.initial:
			if err != nil {
				return err
			}
		case <-time.After(60 * time.Second):
			return errors.New("raft: this manager did not become leader of its own one-manager cluster within 60s")
		}
	}
	return nil
}

// logOpened logs the cluster this manager serves.
func (m *Manager) logOpened() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.st != nil {
		m.log.Info("cluster open", "cluster", m.st.meta.ClusterID, "version", m.current.Version,
			"nodes", len(m.st.nodes), "services", len(m.st.services), "raft_index", m.applied)
	}
}

// soleVoter reports whether this manager is the only voter in its Raft
// configuration (it then always elects itself).
func (m *Manager) soleVoter() bool {
	f := m.replica.Raft.GetConfiguration()
	if f.Error() != nil {
		return false
	}
	voters := 0
	self := false
	for _, s := range f.Configuration().Servers {
		if s.Suffrage == raft.Voter {
			voters++
			self = self || string(s.ID) == m.selfID
		}
	}
	return voters == 1 && self
}

// setStateLocked makes s the state this manager serves: CA, serving
// certificate and map follow it.
func (m *Manager) setStateLocked(s *state) error {
	if m.ca == nil || m.trustKey != trustKey(s.meta) {
		if err := m.loadTrustLocked(s); err != nil {
			return err
		}
	}
	snap, err := s.snapshot()
	if err != nil {
		return err
	}
	if m.current == nil || m.current.Version != s.meta.Version {
		cur := s.buildMap(s.meta.Version)
		body, err := json.Marshal(cur)
		if err != nil {
			return fmt.Errorf("encode map: %w", err)
		}
		m.current, m.mapJSON = cur, body
		close(m.changed)
		m.changed = make(chan struct{})
	}
	now := m.now()
	for id := range s.nodes {
		if _, ok := m.lastSeen[id]; !ok {
			m.lastSeen[id] = now // a full DownAfter of grace for nodes this manager has not heard yet
		}
	}
	m.unplaced = schedule(s.clone(), m.now())
	m.st, m.snap = s, snap
	m.publishCredsLocked()
	if _, ok := s.nodes[m.selfID]; ok {
		m.readyOnce.Do(func() { close(m.ready) })
	}
	return nil
}

// Network returns the cluster-wide address plan and domain, as stored when
// the cluster was created.
func (m *Manager) Network() clustermap.Network {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.st.meta.network()
}

func (m *Manager) createCluster() (*state, error) {
	c := m.cfg
	if !c.WireGuardSubnet.IsValid() {
		c.WireGuardSubnet = configs.DefaultWireGuardSubnet
	}
	if !c.ContainerSubnet.IsValid() {
		c.ContainerSubnet = configs.DefaultContainerSubnet
	}
	if c.ContainerBlockBits == 0 {
		c.ContainerBlockBits = configs.DefaultContainerBlock
	}
	if !c.VIPSubnet.IsValid() {
		c.VIPSubnet = configs.DefaultVIPSubnet
	}
	if err := validateSubnets(c); err != nil {
		return nil, err
	}
	now := m.now()
	id := randomID()
	ca, err := pki.NewCA(id, now)
	if err != nil {
		return nil, err
	}
	caKey, err := ca.KeyPEM()
	if err != nil {
		return nil, err
	}
	var addrs []netip.Addr
	if c.Node.Endpoint.IsValid() {
		addrs = append(addrs, c.Node.Endpoint.Addr())
	}
	srvDER, srvKey, err := ca.IssueServer("warren-manager", addrs, now)
	if err != nil {
		return nil, err
	}
	srvKeyPEM, err := pki.EncodeKeyPEM(srvKey)
	if err != nil {
		return nil, err
	}
	s := &state{
		meta: meta{
			ClusterID: id, CreatedAt: now.UTC(), Domain: c.Domain,
			WireGuardSubnet: c.WireGuardSubnet.Masked(), ContainerSubnet: c.ContainerSubnet.Masked(),
			ContainerBlockBits: c.ContainerBlockBits, VIPSubnet: c.VIPSubnet.Masked(),
			CACert: ca.CertPEM(), CAKey: caKey, ServerCert: pki.EncodeCertPEM(srvDER), ServerKey: srvKeyPEM,
			WorkerSecret: pki.NewSecret(), ManagerSecret: pki.NewSecret(),
			Version: 1,
		},
		nodes: map[string]nodeRecord{}, removed: map[string]tombstone{}, services: map[string]serviceRecord{}, policies: map[string]policyRecord{},
		secrets: map[string]objectRecord{}, configs: map[string]objectRecord{},
	}
	self, err := s.admit(c.Node, randomID(), now)
	if err != nil {
		return nil, err
	}
	key, err := m.nodeKey()
	if err != nil {
		return nil, err
	}
	self.TLSKey = pki.KeyHash(key.Public())
	s.nodes[self.ID] = self
	s.meta.SelfID = self.ID
	return s, nil
}

// validateSubnets refuses address plans the allocators cannot serve. The
// config loader checks the same and more (host routes); this guards callers
// that build a ManagerConfig themselves.
func validateSubnets(c ManagerConfig) error {
	for name, p := range map[string]netip.Prefix{"wireguard subnet": c.WireGuardSubnet, "container subnet": c.ContainerSubnet, "VIP subnet": c.VIPSubnet} {
		if !p.Addr().Is4() || p != p.Masked() {
			return fmt.Errorf("%s %s: want a canonical IPv4 CIDR such as 10.0.0.0/24", name, p)
		}
	}
	if c.ContainerBlockBits < c.ContainerSubnet.Bits() || c.ContainerBlockBits > 30 {
		return fmt.Errorf("container block /%d does not fit container subnet %s (want /%d to /30)", c.ContainerBlockBits, c.ContainerSubnet, c.ContainerSubnet.Bits())
	}
	if c.VIPSubnet.Overlaps(c.WireGuardSubnet) || c.VIPSubnet.Overlaps(c.ContainerSubnet) {
		return fmt.Errorf("VIP subnet %s overlaps wireguard subnet %s or container subnet %s", c.VIPSubnet, c.WireGuardSubnet, c.ContainerSubnet)
	}
	return nil
}

// admit allocates an overlay IP and a container block and records a new
// member.
func (s *state) admit(info NodeInfo, id string, now time.Time) (nodeRecord, error) {
	s.pruneTombstones(now)
	ip, err := ipam.NextAddr(s.meta.WireGuardSubnet, s.ipTaken)
	if err != nil {
		return nodeRecord{}, &apiError{http.StatusConflict, fmt.Sprintf("no overlay address left: %v (%d members): remove nodes that are gone with `warren node rm`", err, len(s.nodes))}
	}
	block, err := ipam.NextBlock(s.meta.ContainerSubnet, s.meta.ContainerBlockBits, []netip.Prefix{s.meta.WireGuardSubnet}, s.blockTaken)
	if err != nil {
		return nodeRecord{}, &apiError{http.StatusConflict, fmt.Sprintf("no container block left: %v", err)}
	}
	n := nodeRecord{
		Node: clustermap.Node{
			ID: id, Name: info.Name, Role: info.Role, PublicKey: info.PublicKey, Endpoint: info.Endpoint,
			OverlayIP: ip, ContainerBlock: block, Labels: info.Labels, Status: clustermap.NodeReady, Relay: info.Relay,
		},
		JoinedAt: now.UTC(),
	}
	s.nodes[id] = n
	return n, nil
}

// update applies fn to a copy of the state, reschedules, and replicates
// and publishes the result; on any error nothing changes. Only the leader
// writes: followers forward write requests (see forward.go).
func (m *Manager) update(fn func(s *state) error) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.updateLocked(fn)
}

func (m *Manager) updateLocked(fn func(s *state) error) error {
	if !m.leader || m.st == nil || m.needKey {
		return m.noLeaderError(nil)
	}
	next := m.st.clone()
	if err := fn(next); err != nil {
		return err
	}
	// Seal the CA key and join secrets (sealmeta.go). A state written
	// before sealing is sealed by the first write of a leader that has the
	// data key (becomeLeader writes at once): that is the upgrade entry. A
	// leader without a key makes one while no secret or config is sealed;
	// otherwise the state stays as it is until it gets one.
	if t := m.sealWith; t != nil {
		if err := sealMeta(next, m.st, t.key, t.gen); err != nil {
			return err
		}
	} else if k, err := m.dataKeyLocked(next); err == nil {
		if err := sealMeta(next, m.st, k, stateKeyGen(m.st)); err != nil {
			return err
		}
	} else if next.meta.Sealed == nil {
		m.log.Warn("cannot seal the CA key and join secrets yet", "err", err)
	}
	unplaced := schedule(next, m.now())
	// Encode the candidate at the current version: equal bytes mean the
	// published map did not change and keeps its version.
	candidate := next.buildMap(m.current.Version)
	body, err := json.Marshal(candidate)
	if err != nil {
		return fmt.Errorf("encode map: %w", err)
	}
	mapChanged := !bytes.Equal(body, m.mapJSON)
	absurd := m.current.Version >= clustermap.MaxVersion
	if mapChanged || absurd {
		mapChanged = true
		next.meta.Version = m.current.Version + 1
		if absurd {
			// Nodes refuse versions above MaxVersion and forget cached
			// ones: start again low rather than wrap.
			m.log.Warn("map version above the bound: starting again from 1", "version", m.current.Version, "bound", clustermap.MaxVersion)
			next.meta.Version = 1
		}
		candidate.Version = next.meta.Version
		if body, err = json.Marshal(candidate); err != nil {
			return fmt.Errorf("encode map: %w", err)
		}
	}
	snap, err := next.snapshot()
	if err != nil {
		return err
	}
	// Only records that differ are replicated, and each replica writes
	// only records whose bytes differ from what it holds.
	if change := store.Diff(m.snap, snap); !change.Empty() {
		if err := m.checkDiskSpace(); err != nil {
			return err
		}
		idx, err := m.replica.Propose(change)
		if err != nil {
			// The entry may still commit under a new leader: the follow
			// loop then brings st up to date from the store.
			return m.noLeaderError(err)
		}
		m.applied = idx
	}
	m.st, m.snap, m.unplaced = next, snap, unplaced
	if m.trustKey != trustKey(next.meta) {
		// A CA rotation started or finished (carotate.go). The entry
		// passed validateTrust, so loading it cannot fail short of a bug.
		if err := m.loadTrustLocked(next); err != nil {
			m.log.Error("cannot load the cluster CA just committed", "err", err)
		}
	}
	m.publishCredsLocked()
	if mapChanged {
		m.current, m.mapJSON = candidate, body
		close(m.changed)
		m.changed = make(chan struct{})
	}
	return nil
}

// Close stops Raft and closes the store. Serve must have returned.
func (m *Manager) Close() error {
	select {
	case <-m.stop:
		return nil
	default:
	}
	close(m.stop)
	var err error
	if m.replica != nil {
		err = m.replica.Close()
	}
	if m.stream != nil {
		m.stream.Close()
	}
	m.loops.Wait()
	return errors.Join(err, m.store.Close())
}

// Ready is closed once this manager holds the cluster state (at once,
// except on a manager that is joining and waits for Raft to replicate).
func (m *Manager) Ready() <-chan struct{} { return m.ready }

// Self returns this manager's own node record.
func (m *Manager) Self() clustermap.Node {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.st.nodes[m.selfID].Node
}

// ClusterID returns the cluster's ID.
func (m *Manager) ClusterID() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.st.meta.ClusterID
}

// Map returns the current map. It is shared: do not modify it.
func (m *Manager) Map() *clustermap.Map {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.current
}

// JoinTokens returns the current worker and manager join tokens.
func (m *Manager) JoinTokens() (worker, manager string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	h := m.st.meta.servingCAHash()
	return pki.Token{CAHash: h, Secret: m.st.meta.WorkerSecret}.String(),
		pki.Token{CAHash: h, Secret: m.st.meta.ManagerSecret}.String()
}

// RotateJoinToken replaces role's secret; the old token stops working.
func (m *Manager) RotateJoinToken(role string) (string, error) {
	if role != clustermap.RoleWorker && role != clustermap.RoleManager {
		return "", &apiError{http.StatusBadRequest, fmt.Sprintf("unknown role %q: want worker or manager", role)}
	}
	err := m.update(func(s *state) error {
		if role == clustermap.RoleWorker {
			s.meta.WorkerSecret = pki.NewSecret()
		} else {
			s.meta.ManagerSecret = pki.NewSecret()
		}
		return nil
	})
	if err != nil {
		return "", err
	}
	w, mg := m.JoinTokens()
	m.log.Info("join token rotated", "role", role)
	if role == clustermap.RoleWorker {
		return w, nil
	}
	return mg, nil
}

// Watch is the in-process equivalent of Agent.Watch for the manager's own
// node: it calls apply with the current map and then with every newer one
// until ctx ends. Maps are shared: do not modify them.
func (m *Manager) Watch(ctx context.Context, apply func(*clustermap.Map)) error {
	var seen uint64
	for {
		m.mu.Lock()
		cur, ch := m.current, m.changed
		m.mu.Unlock()
		if cur.Version != seen {
			seen = cur.Version
			apply(cur)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-ch:
		}
	}
}

// Report records the manager node's own status, in process.
func (m *Manager) Report(ctx context.Context, s NodeStatus) error {
	s, err := checkReport(s) // the same bounds as a remote node's
	if err != nil {
		return err
	}
	if !m.isLeader() {
		return m.reportToLeader(ctx, s)
	}
	return m.foldStatus(m.selfID, s)
}

// foldStatus records a heartbeat and folds task states into the tasks.
func (m *Manager) foldStatus(nodeID string, s NodeStatus) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.st.nodes[nodeID]; !ok {
		return errNodeRemoved(nodeID)
	}
	now := m.now()
	m.lastSeen[nodeID] = now
	m.health[nodeID] = s.Tunnel
	m.noteTaskHealthLocked(nodeID, s.Tasks)
	if !s.Time.IsZero() {
		m.noteClockSkewLocked(nodeID, s.Time.Sub(now))
	}
	known := s.Tasks != nil // nil: the node has not looked at its tasks yet
	capChanged := s.Capacity != nil && *s.Capacity != m.st.nodes[nodeID].Capacity
	moved := s.Candidates != nil && !slices.Equal(s.Candidates, m.st.nodes[nodeID].Candidates)
	if m.st.nodes[nodeID].Status == clustermap.NodeReady && !capChanged && !moved && (!known || !taskStatusChanges(m.st.tasks, nodeID, s.Tasks)) {
		return nil // a plain heartbeat: nothing to reschedule, publish or write
	}
	if err := m.allowReportWriteLocked(nodeID, now); err != nil {
		return err
	}
	return m.updateLocked(func(st *state) error {
		n := st.nodes[nodeID]
		if n.Status != clustermap.NodeReady {
			m.log.Info("node is back", "node", n.Name)
			n.Status = clustermap.NodeReady
			st.nodes[nodeID] = n
		}
		if capChanged {
			n := st.nodes[nodeID]
			n.Capacity = *s.Capacity
			st.nodes[nodeID] = n
		}
		if moved {
			// New candidates make a new map: every peer probes the node's
			// new addresses at once, while the node probes theirs.
			n := st.nodes[nodeID]
			n.Candidates = slices.Clone(s.Candidates)
			st.nodes[nodeID] = n
		}
		if known {
			applyTaskStatus(st.tasks, nodeID, s.Tasks)
		}
		return nil
	})
}

// maxClockSkew is how far a node's clock may be off before the manager
// warns: boards without an RTC boot in the past until NTP catches up, and
// then reject certificates and WireGuard handshakes.
const maxClockSkew = 30 * time.Second

func (m *Manager) noteClockSkewLocked(nodeID string, skew time.Duration) {
	was := m.skew[nodeID]
	m.skew[nodeID] = skew
	if skew.Abs() > maxClockSkew && was.Abs() <= maxClockSkew {
		m.log.Warn("node clock is off (no RTC or no NTP?)", "node", m.st.nodes[nodeID].Name, "offset", skew.Round(time.Second))
	}
}

// markSilentNodesDown is the liveness check run by Serve.
func (m *Manager) markSilentNodesDown() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.leader {
		return // the leader's job; followers do not hear every node
	}
	now := m.now()
	silent := func(id string, n nodeRecord) bool {
		seen, ok := m.lastSeen[id]
		return id != m.selfID && n.Status != clustermap.NodeDown && (!ok || now.Sub(seen) > m.cfg.DownAfter)
	}
	anySilent := false
	for id, n := range m.st.nodes {
		anySilent = anySilent || silent(id, n)
	}
	if !anySilent {
		return
	}
	err := m.updateLocked(func(st *state) error {
		for id, n := range st.nodes {
			if id == m.selfID || n.Status == clustermap.NodeDown {
				continue
			}
			if seen, ok := m.lastSeen[id]; !ok || now.Sub(seen) > m.cfg.DownAfter {
				m.log.Warn("node silent, marking it down", "node", n.Name, "last_seen", seen, "down_after", m.cfg.DownAfter)
				n.Status = clustermap.NodeDown
				st.nodes[id] = n
			}
		}
		return nil
	})
	if err != nil {
		m.log.Error("mark silent nodes down", "err", err)
	}
}

func randomID() string {
	b := make([]byte, 8)
	if _, err := rand.Read(b); err != nil {
		panic(fmt.Sprintf("crypto/rand failed: %v", err))
	}
	return hex.EncodeToString(b)
}

// noteTaskHealthLocked keeps the health detail of nodeID's reported tasks.
func (m *Manager) noteTaskHealthLocked(nodeID string, tasks []api.TaskStatus) {
	if tasks == nil {
		return
	}
	if m.taskHealth == nil {
		m.taskHealth = map[taskKey]api.TaskHealth{}
	}
	for k := range m.taskHealth {
		if k.node == nodeID {
			delete(m.taskHealth, k)
		}
	}
	for _, t := range tasks {
		if t.Health != nil {
			m.taskHealth[taskKey{t.Name, nodeID}] = *t.Health
		}
	}
}

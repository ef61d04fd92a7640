package cluster

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"sort"
	"time"

	"github.com/warren-appliance/warren/cluster/clustermap"
	"github.com/warren-appliance/warren/cluster/federation"
	"github.com/warren-appliance/warren/cluster/replicate"
	"github.com/warren-appliance/warren/cluster/rollout"
	"github.com/warren-appliance/warren/cluster/store"
)

// Store buckets and keys.
const (
	bucketMeta       = "meta"
	bucketNodes      = "nodes"
	bucketRemoved    = "removed"
	bucketServices   = "services"
	bucketTasks      = "tasks"
	bucketPolicies   = "policies"
	bucketSecrets    = "secrets"
	bucketConfigs    = "configs"
	bucketRegistries = "registries"
	bucketPeers      = "peers"
	bucketImports    = "imports"
	keyCluster       = "cluster"
	keyTasks         = "all"
	keyGateway       = "gateway"
)

// meta is the cluster's identity and secrets, created once by cluster init.
type meta struct {
	ClusterID          string       `json:"cluster_id"`
	CreatedAt          time.Time    `json:"created_at"`
	Domain             string       `json:"domain"`
	WireGuardSubnet    netip.Prefix `json:"wireguard_subnet"`
	ContainerSubnet    netip.Prefix `json:"container_subnet"`
	ContainerBlockBits int          `json:"container_block_bits"`
	VIPSubnet          netip.Prefix `json:"vip_subnet"`
	CACert             []byte       `json:"ca_cert"` // PEM
	// CAKey, ServerKey and the join secrets are opened values in memory;
	// in the store they are in Sealed (sealmeta.go), except in records
	// written before sealing, which hold them here.
	CAKey         []byte `json:"ca_key,omitempty"` // PEM
	ServerCert    []byte `json:"server_cert"`
	ServerKey     []byte `json:"server_key,omitempty"`
	WorkerSecret  string `json:"worker_secret,omitempty"`
	ManagerSecret string `json:"manager_secret,omitempty"`
	SelfID        string `json:"self_id"` // the manager that created the cluster
	Version       uint64 `json:"version"`
	// CAGeneration counts CA rotations (0: the CA made by cluster init).
	CAGeneration int `json:"ca_generation,omitempty"`
	// CARotation is the CA rotation in progress (carotate.go), nil if none:
	// CACert/CAKey above are then already the new CA.
	CARotation *caRotation `json:"ca_rotation,omitempty"`
	// Sealed holds the secrets above sealed with the data key (nil in
	// records written before sealing).
	Sealed *sealedMeta `json:"sealed,omitempty"`
	// RekeyNeeded: a manager was removed and the leader has yet to replace
	// the data key (rekey.go).
	RekeyNeeded bool `json:"rekey_needed,omitempty"`
	// PeerSecret is the secret of this cluster's peer token, made by the
	// first `warren cluster peer token`.
	// Sealed in Sealed like the join secrets (sealmeta.go).
	PeerSecret string `json:"peer_secret,omitempty"`
}

// nodeRecord is a member plus what only the manager needs to know.
type nodeRecord struct {
	clustermap.Node
	JoinedAt     time.Time `json:"joined_at"`
	CertNotAfter time.Time `json:"cert_not_after,omitzero"`
	// CertSerial is the newest certificate issued to the node; PrevSerial
	// the one it presented to renew (still accepted, so a renewal whose
	// answer was lost locks nobody out). A join replaces both: older
	// certificates stop working. Records from before serials were kept
	// have neither and accept any certificate of the node's ID.
	CertSerial string `json:"cert_serial,omitempty"`
	PrevSerial string `json:"prev_serial,omitempty"`
	// TLSKey is the sha256 of the node's TLS public key: proving possession
	// of that key (a CSR signed with it) is what lets a node join again as
	// itself, or renew a certificate that expired while it was off.
	TLSKey string `json:"tls_key,omitempty"`
	// Demoted: the operator made this manager a non-voter (`warren node
	// demote`); it may not promote itself back (only `node promote` does).
	Demoted bool `json:"demoted,omitempty"`
	// CAHash is the fingerprint of the CA that signed CertSerial ("" in
	// records from before CA rotation: the cluster's first CA).
	CAHash string `json:"ca_hash,omitempty"`
}

// acceptsSerial reports whether serial is one of the node's live
// certificates.
func (n nodeRecord) acceptsSerial(serial string) bool {
	return n.CertSerial == "" || serial == n.CertSerial || serial == n.PrevSerial
}

// tombstone remembers a removed node until its last certificate expires:
// the manager refuses its serials and says it was removed. It holds no
// addresses: those are free at once.
type tombstone struct {
	Name      string       `json:"name"`
	OverlayIP netip.Addr   `json:"overlay_ip"`
	Block     netip.Prefix `json:"container_block"`
	Until     time.Time    `json:"until"`
	Serials   []string     `json:"serials,omitempty"` // revoked
}

type serviceRecord struct {
	clustermap.Service
	CreatedAt time.Time `json:"created_at"`
	UpdatedAt time.Time `json:"updated_at"`
	// Update is the last rolling update (nil before the first).
	Update *rollout.Status `json:"update,omitempty"`
	// Exported: peered clusters may reach the service (`warren service
	// export`).
	Exported bool `json:"exported,omitempty"`
}

type policyRecord struct {
	clustermap.Policy
	CreatedAt time.Time `json:"created_at"`
	UpdatedAt time.Time `json:"updated_at"`
}

// state is everything the manager persists. Records are values, so a
// shallow copy of the maps is an independent copy to mutate (nested maps
// and slices are replaced, never modified in place).
type state struct {
	meta     meta
	nodes    map[string]nodeRecord    // by node ID
	removed  map[string]tombstone     // by node ID
	services map[string]serviceRecord // by name
	tasks    []clustermap.Task
	policies map[string]policyRecord // by name
	// Secrets and configs by name; their values sealed (objects.go).
	secrets map[string]objectRecord
	configs map[string]objectRecord
	// registries by host; credentials sealed (registries.go).
	registries map[string]registryRecord
	// peers by name (peers.go); imports are the peers' exported services
	// with this cluster's VIPs, sorted by peer and service.
	peers   map[string]peerRecord
	imports []federation.Import
	// gatewayID is the node holding the links to the peers' gateways.
	gatewayID string
}

func (s *state) clone() *state {
	return &state{
		meta:       s.meta,
		nodes:      maps.Clone(s.nodes),
		removed:    maps.Clone(s.removed),
		services:   maps.Clone(s.services),
		tasks:      slices.Clone(s.tasks),
		policies:   maps.Clone(s.policies),
		secrets:    maps.Clone(s.secrets),
		configs:    maps.Clone(s.configs),
		registries: maps.Clone(s.registries),
		peers:      maps.Clone(s.peers),
		imports:    slices.Clone(s.imports),
		gatewayID:  s.gatewayID,
	}
}

// records is what loadState reads: a store or a snapshot of one.
type records interface {
	Load(bucket string) map[string][]byte
}

func loadState(st records) (*state, error) {
	s := &state{nodes: map[string]nodeRecord{}, removed: map[string]tombstone{}, services: map[string]serviceRecord{}, policies: map[string]policyRecord{},
		secrets: map[string]objectRecord{}, configs: map[string]objectRecord{}, registries: map[string]registryRecord{},
		peers: map[string]peerRecord{}}
	raw, ok := st.Load(bucketMeta)[keyCluster]
	if !ok {
		return nil, nil // no cluster yet
	}
	if err := json.Unmarshal(raw, &s.meta); err != nil {
		return nil, fmt.Errorf("decode cluster identity: %w", err)
	}
	for k, v := range st.Load(bucketNodes) {
		var n nodeRecord
		if err := json.Unmarshal(v, &n); err != nil {
			return nil, fmt.Errorf("decode node %s: %w", k, err)
		}
		s.nodes[k] = n
	}
	for k, v := range st.Load(bucketRemoved) {
		var t tombstone
		if err := json.Unmarshal(v, &t); err != nil {
			return nil, fmt.Errorf("decode removed node %s: %w", k, err)
		}
		s.removed[k] = t
	}
	for k, v := range st.Load(bucketServices) {
		var r serviceRecord
		if err := json.Unmarshal(v, &r); err != nil {
			return nil, fmt.Errorf("decode service %s: %w", k, err)
		}
		s.services[k] = r
	}
	for k, v := range st.Load(bucketPolicies) {
		var r policyRecord
		if err := json.Unmarshal(v, &r); err != nil {
			return nil, fmt.Errorf("decode policy %s: %w", k, err)
		}
		s.policies[k] = r
	}
	for bucket, into := range map[string]map[string]objectRecord{bucketSecrets: s.secrets, bucketConfigs: s.configs} {
		for k, v := range st.Load(bucket) {
			var r objectRecord
			if err := json.Unmarshal(v, &r); err != nil {
				return nil, fmt.Errorf("decode %s %s: %w", bucket, k, err)
			}
			into[k] = r
		}
	}
	for k, v := range st.Load(bucketRegistries) {
		var r registryRecord
		if err := json.Unmarshal(v, &r); err != nil {
			return nil, fmt.Errorf("decode registry %s: %w", k, err)
		}
		s.registries[k] = r
	}
	for k, v := range st.Load(bucketPeers) {
		var r peerRecord
		if err := json.Unmarshal(v, &r); err != nil {
			return nil, fmt.Errorf("decode peer %s: %w", k, err)
		}
		s.peers[k] = r
	}
	if v, ok := st.Load(bucketImports)[keyTasks]; ok {
		if err := json.Unmarshal(v, &s.imports); err != nil {
			return nil, fmt.Errorf("decode imports: %w", err)
		}
	}
	if v, ok := st.Load(bucketImports)[keyGateway]; ok {
		var f federationRecord
		if err := json.Unmarshal(v, &f); err != nil {
			return nil, fmt.Errorf("decode gateway: %w", err)
		}
		s.gatewayID = f.GatewayID
	}
	if v, ok := st.Load(bucketTasks)[keyTasks]; ok {
		if err := json.Unmarshal(v, &s.tasks); err != nil {
			return nil, fmt.Errorf("decode tasks: %w", err)
		}
	}
	return s, nil
}

// snapshot renders the state as store records.
func (s *state) snapshot() (store.Snapshot, error) {
	snap := store.Snapshot{bucketMeta: {}, bucketNodes: {}, bucketRemoved: {}, bucketServices: {}, bucketTasks: {}, bucketPolicies: {},
		bucketSecrets: {}, bucketConfigs: {}, bucketRegistries: {}, bucketPeers: {}, bucketImports: {}}
	put := func(bucket, key string, v any) error {
		b, err := json.Marshal(v)
		if err != nil {
			return fmt.Errorf("encode %s/%s: %w", bucket, key, err)
		}
		snap[bucket][key] = b
		return nil
	}
	if err := put(bucketMeta, keyCluster, storedMeta(s.meta)); err != nil {
		return nil, err
	}
	for k, v := range s.nodes {
		if err := put(bucketNodes, k, v); err != nil {
			return nil, err
		}
	}
	for k, v := range s.removed {
		if err := put(bucketRemoved, k, v); err != nil {
			return nil, err
		}
	}
	for k, v := range s.services {
		if err := put(bucketServices, k, v); err != nil {
			return nil, err
		}
	}
	for k, v := range s.policies {
		if err := put(bucketPolicies, k, v); err != nil {
			return nil, err
		}
	}
	for k, v := range s.secrets {
		if err := put(bucketSecrets, k, v); err != nil {
			return nil, err
		}
	}
	for k, v := range s.configs {
		if err := put(bucketConfigs, k, v); err != nil {
			return nil, err
		}
	}
	for k, v := range s.registries {
		if err := put(bucketRegistries, k, v); err != nil {
			return nil, err
		}
	}
	for k, v := range s.peers {
		if err := put(bucketPeers, k, v); err != nil {
			return nil, err
		}
	}
	if len(s.imports) > 0 {
		if err := put(bucketImports, keyTasks, s.imports); err != nil {
			return nil, err
		}
	}
	if s.gatewayID != "" {
		if err := put(bucketImports, keyGateway, federationRecord{GatewayID: s.gatewayID}); err != nil {
			return nil, err
		}
	}
	tasks := s.tasks
	if tasks == nil {
		tasks = []clustermap.Task{}
	}
	if err := put(bucketTasks, keyTasks, tasks); err != nil {
		return nil, err
	}
	return snap, nil
}

// sortedNodes returns the members ordered by overlay IP (join order, the
// lowest free address each: the node that created the cluster first).
func (s *state) sortedNodes() []clustermap.Node {
	out := make([]clustermap.Node, 0, len(s.nodes))
	for _, n := range s.nodes {
		out = append(out, n.Node)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].OverlayIP.Less(out[j].OverlayIP) })
	return out
}

func (s *state) sortedServices() []clustermap.Service {
	out := make([]clustermap.Service, 0, len(s.services))
	for _, r := range s.services {
		out = append(out, s.withVersions(r.Service))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// buildMap renders the published map at version v. Task error texts stay
// on the manager (the admin API shows them): no node acts on them, so a
// changing error must not make a new map for every node.
func (s *state) buildMap(v uint64) *clustermap.Map {
	tasks := slices.Clone(s.tasks)
	for i := range tasks {
		tasks[i].Error, tasks[i].Run = "", clustermap.TaskRun{}
	}
	sort.Slice(tasks, func(i, j int) bool {
		if tasks[i].Name != tasks[j].Name {
			return tasks[i].Name < tasks[j].Name
		}
		return tasks[i].NodeID < tasks[j].NodeID
	})
	if tasks == nil {
		tasks = []clustermap.Task{}
	}
	var policies []clustermap.Policy
	for _, name := range slices.Sorted(maps.Keys(s.policies)) {
		policies = append(policies, s.policies[name].Policy)
	}
	m := &clustermap.Map{
		Version:    v,
		ClusterID:  s.meta.ClusterID,
		Nodes:      s.sortedNodes(),
		Services:   s.sortedServices(),
		Tasks:      tasks,
		Policies:   policies,
		Registries: s.mapRegistries(),
		// Every node takes the trust bundle from the map (delivered over
		// the mTLS stream it already trusts): during a CA rotation it
		// holds the new CA first, then the old one.
		TrustBundle: s.meta.trustBundle(),
		Imports:     slices.Clone(s.imports),
	}
	if len(s.peers) > 0 {
		m.Federation = s.federationMap()
	}
	m.SetNetwork(s.meta.network())
	return m
}

// network is the cluster-wide address plan and domain fixed at creation.
func (mt meta) network() clustermap.Network {
	return clustermap.Network{
		Domain: mt.Domain, WireGuardSubnet: mt.WireGuardSubnet, ContainerSubnet: mt.ContainerSubnet,
		ContainerBlockBits: mt.ContainerBlockBits, VIPSubnet: mt.VIPSubnet,
	}
}

func (s *state) nodeByName(name string) (nodeRecord, bool) {
	for _, n := range s.nodes {
		if n.Name == name {
			return n, true
		}
	}
	return nodeRecord{}, false
}

// ipTaken reports whether a is held by a member.
func (s *state) ipTaken(a netip.Addr) bool {
	for _, n := range s.nodes {
		if n.OverlayIP == a {
			return true
		}
	}
	return false
}

func (s *state) blockTaken(p netip.Prefix) bool {
	for _, n := range s.nodes {
		if n.ContainerBlock.Overlaps(p) {
			return true
		}
	}
	return false
}

// pruneTombstones forgets removed nodes whose certificates have expired.
func (s *state) pruneTombstones(now time.Time) {
	for id, t := range s.removed {
		if now.After(t.Until) {
			delete(s.removed, id)
		}
	}
}

// checkChange is the replicas' check of a committed change
// (replicate.Config.Check): every record put must decode as its bucket's
// type, and nothing may touch the replica's own bookkeeping. A change that
// fails is applied as no change on every manager, instead of leaving state
// no manager can load.
func checkChange(c store.Change) error {
	for bucket, recs := range c.Put {
		for key, v := range recs {
			var err error
			switch bucket {
			case bucketMeta:
				var x meta
				if err = json.Unmarshal(v, &x); err == nil {
					err = x.validateTrust()
				}
			case bucketNodes:
				var x nodeRecord
				err = json.Unmarshal(v, &x)
			case bucketRemoved:
				var x tombstone
				err = json.Unmarshal(v, &x)
			case bucketServices:
				var x serviceRecord
				err = json.Unmarshal(v, &x)
			case bucketPolicies:
				var x policyRecord
				err = json.Unmarshal(v, &x)
			case bucketTasks:
				var x []clustermap.Task
				err = json.Unmarshal(v, &x)
			case bucketSecrets, bucketConfigs:
				var x objectRecord
				err = json.Unmarshal(v, &x)
			case bucketRegistries:
				var x registryRecord
				err = json.Unmarshal(v, &x)
			case bucketPeers:
				err = checkPeerRecord(key, v)
			case bucketImports:
				if key == keyGateway {
					var x federationRecord
					err = json.Unmarshal(v, &x)
				} else {
					var x []federation.Import
					err = json.Unmarshal(v, &x)
				}
			case replicate.BucketRaft:
				err = errors.New("the replica's own bucket is not replicated")
			}
			if err != nil {
				return fmt.Errorf("record %s/%s: %w", bucket, key, err)
			}
		}
	}
	if _, ok := c.Delete[replicate.BucketRaft]; ok {
		return errors.New("the replica's own bucket is not replicated")
	}
	return nil
}

// Package agent is a joined node's link to the managers: the first join
// (pinning the CA by the token), the stored identity, the map stream,
// heartbeats and certificate renewal, all over mTLS (cluster/apicall). The
// manager itself is package cluster.
package agent

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/warren-appliance/warren/cluster/api"
	"github.com/warren-appliance/warren/cluster/apicall"
	"github.com/warren-appliance/warren/cluster/clustermap"
	"github.com/warren-appliance/warren/cluster/pki"
	"github.com/warren-appliance/warren/internal/atomicfile"
	"github.com/warren-appliance/warren/internal/backoff"
)

// Files the agent keeps in its state dir.
const (
	FileCA       = "cluster-ca.crt" // the pinned cluster CA
	FileTLSKey   = "node-tls.key"   // this node's TLS key, 0600, never sent anywhere
	FileTLSCert  = "node-tls.crt"   // signed by the CA, CN = node ID
	FileIdentity = "node.json"      // cluster ID, manager address, own record
	FileMap      = "map.json"       // last map received, restored at boot
)

// Config configures a node's link to the managers.
type Config struct {
	StateDir string
	Manager  string // host:port of a manager's API
	Token    string // needed only for the first join
	Node     api.NodeInfo
	Logger   *slog.Logger

	now func() time.Time // tests move the clock
	// renewCheck is how often the renewal timer looks at the certificate
	// at most (default a minute; tests shorten it).
	renewCheck time.Duration
}

// Agent is a joined node's link to the manager.
type Agent struct {
	cfg  Config
	log  *slog.Logger
	now  func() time.Time
	key  *ecdsa.PrivateKey
	peer apicall.Caller // to the managers, once the CA is pinned

	mu         sync.Mutex
	trust      []*x509.Certificate // FileCA: the CAs managers may present, current first (trust.go)
	cert       tls.Certificate
	id         identity
	selfSynced bool
	managers   []string // API addresses of every manager, from the last map
	home       string   // the configured (or stored) manager address

	renewMu   sync.Mutex    // one renewal at a time (timer and stream start)
	renewFrac float64       // renew at this fraction of the lifetime: 0.6..0.7, per agent
	lastRenew time.Time     // monotonic: when the last renewal succeeded
	renewKick chan struct{} // a CA rotation asks for a renewal now
}

type identity struct {
	ClusterID string          `json:"cluster_id"`
	Manager   string          `json:"manager"`
	Node      clustermap.Node `json:"node"`
	// Network is the cluster's address plan and domain, from the join
	// answer (or, for an identity stored before it was kept, the map).
	Network clustermap.Network `json:"network"`
}

// ErrRemoved is returned by Watch when the manager says this node was
// removed from the cluster.
var ErrRemoved = errors.New("this node was removed from the cluster")

// Join returns a joined agent. On first start it pins the manager's CA by
// the token's hash (before sending anything), then sends its WireGuard key,
// endpoint, name, labels, role and a CSR, retrying with backoff while the
// manager is unreachable. Later starts reuse the identity in StateDir and
// need neither the token nor the manager to be up.
func Join(ctx context.Context, cfg Config) (*Agent, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.now == nil {
		cfg.now = time.Now
	}
	if cfg.renewCheck == 0 {
		cfg.renewCheck = time.Minute
	}
	if cfg.Node.Role == "" {
		cfg.Node.Role = clustermap.RoleWorker
	}
	if cfg.StateDir == "" {
		return nil, errors.New("join: state dir is empty")
	}
	if err := cfg.Node.Validate(); err != nil {
		return nil, fmt.Errorf("join: %w", err)
	}
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("join: %w", err)
	}
	// Nodes joined the same day must not all renew at the same moment.
	a := &Agent{cfg: cfg, log: cfg.Logger.With("component", "agent"), now: cfg.now, renewFrac: 0.6 + 0.1*rand.Float64(),
		renewKick: make(chan struct{}, 1)}
	found, err := a.loadIdentity()
	if err != nil {
		return nil, err
	}
	if found {
		if cfg.Manager != "" && cfg.Manager != a.id.Manager {
			a.log.Info("using the configured manager address instead of the stored one", "configured", cfg.Manager, "stored", a.id.Manager)
			a.id.Manager = cfg.Manager
		}
		if n := a.id.Node; n.Name != cfg.Node.Name || n.Role != cfg.Node.Role {
			a.log.Warn("configured name or role differs from this node's cluster record; keeping the record (to change them, `warren node rm` the node, clear the state dir and join again)",
				"configured_name", cfg.Node.Name, "name", n.Name, "configured_role", cfg.Node.Role, "role", n.Role)
		}
		a.peer = a.identityPeer()
		a.log.Info("reusing stored identity", "node", a.id.Node.Name, "id", a.id.Node.ID, "overlay_ip", a.id.Node.OverlayIP, "manager", a.id.Manager)
		if !a.id.Network.Complete() {
			if err := a.recoverNetwork(ctx); err != nil {
				return nil, err
			}
		}
		return a, nil
	}
	if err := a.firstJoin(ctx); err != nil {
		return nil, err
	}
	return a, nil
}

func (a *Agent) path(name string) string { return filepath.Join(a.cfg.StateDir, name) }

// loadIdentity reads the stored identity; false if this node has not
// (completely) joined. The first join writes the certificate last, so a
// crash at any point leaves either every file or no certificate; any file
// missing (a crash in an older version, a lost file) also counts as not
// joined: the node joins again, as the same node while it keeps its key.
func (a *Agent) loadIdentity() (bool, error) {
	files := map[string][]byte{}
	var missing []string
	for _, f := range []string{FileTLSCert, FileTLSKey, FileCA, FileIdentity} {
		b, err := os.ReadFile(a.path(f))
		if errors.Is(err, fs.ErrNotExist) {
			missing = append(missing, f)
			continue
		}
		if err != nil {
			return false, fmt.Errorf("read %s: %w", a.path(f), err)
		}
		files[f] = b
	}
	if len(missing) > 0 {
		if len(files) > 0 && !(len(files) == 1 && files[FileTLSKey] != nil) {
			a.log.Warn("incomplete join in the state dir (interrupted first join?); joining again", "dir", a.cfg.StateDir, "missing", missing)
		}
		return false, nil
	}
	certPEM, keyPEM, caPEM := files[FileTLSCert], files[FileTLSKey], files[FileCA]
	if err := json.Unmarshal(files[FileIdentity], &a.id); err != nil {
		return false, fmt.Errorf("decode %s: %w", a.path(FileIdentity), err)
	}
	var err error
	if a.trust, err = pki.ParseCertsPEM(caPEM); err != nil {
		return false, fmt.Errorf("parse %s: %w", a.path(FileCA), err)
	}
	if a.key, err = pki.ParseKeyPEM(keyPEM); err != nil {
		return false, fmt.Errorf("parse %s: %w", a.path(FileTLSKey), err)
	}
	if a.cert, err = tls.X509KeyPair(certPEM, keyPEM); err != nil {
		return false, fmt.Errorf("node certificate and key do not match: %w", err)
	}
	return true, nil
}

func (a *Agent) firstJoin(ctx context.Context) error {
	if a.cfg.Token == "" {
		return fmt.Errorf("this node has not joined a cluster yet (no identity in %s): pass a join token (--token)", a.cfg.StateDir)
	}
	tok, err := pki.ParseToken(a.cfg.Token)
	if err != nil {
		return err
	}
	if a.cfg.Manager == "" {
		return errors.New("no manager address to join: pass --manager HOST:PORT")
	}
	if a.key, err = a.loadOrCreateKey(); err != nil {
		return err
	}
	csr, err := pki.NewCSR(a.key, a.cfg.Node.Name)
	if err != nil {
		return err
	}
	req := api.JoinRequest{
		Secret: tok.Secret, Name: a.cfg.Node.Name, Role: a.cfg.Node.Role, Labels: a.cfg.Node.Labels,
		Endpoint: a.cfg.Node.Endpoint, PublicKey: a.cfg.Node.PublicKey, CSR: csr, Relay: a.cfg.Node.Relay,
	}
	pin := apicall.Pin{CAHash: tok.CAHash, By: "the token", Advice: "the token is for another cluster, or this is not the manager you meant"}
	call := a.peerFor(pin)
	var resp api.JoinResponse
	var pinned *x509.Certificate
	var bo backoff.Backoff
	for attempt := 1; ; attempt++ {
		pinned, err = a.postJoin(ctx, call, pin, req, &resp)
		if err == nil {
			break
		}
		if apicall.Permanent(err) || ctx.Err() != nil {
			return fmt.Errorf("join %s: %w", a.cfg.Manager, err)
		}
		d := bo.Next()
		a.log.Warn("cannot reach the manager to join, retrying", "manager", a.cfg.Manager, "attempt", attempt, "retry_in", d.Round(time.Millisecond), "err", err)
		if err := backoff.Sleep(ctx, d); err != nil {
			return fmt.Errorf("join %s: gave up: %w", a.cfg.Manager, err)
		}
	}
	cert, err := x509.ParseCertificate(resp.Certificate)
	if err != nil {
		return fmt.Errorf("join: manager sent a bad certificate: %w", err)
	}
	if cert.Subject.CommonName != resp.Node.ID {
		return fmt.Errorf("join: certificate is for %q but the node record is %q", cert.Subject.CommonName, resp.Node.ID)
	}
	trust, err := bundleWith(pinned, resp.TrustBundle)
	if err != nil {
		return err
	}
	if !resp.Network.Complete() {
		return fmt.Errorf("join: the manager sent no cluster network settings (%+v): is it older than this node?", resp.Network)
	}
	a.id = identity{ClusterID: resp.ClusterID, Manager: a.cfg.Manager, Node: resp.Node, Network: resp.Network}
	// The certificate goes last: its file is what marks the join complete.
	if err := atomicfile.Write(a.path(FileCA), encodeBundle(trust), 0o644); err != nil {
		return fmt.Errorf("save cluster CA: %w", err)
	}
	a.mu.Lock()
	a.trust = trust
	a.mu.Unlock()
	if err := a.saveIdentity(); err != nil {
		return err
	}
	if err := a.saveCert(resp.Certificate); err != nil {
		return err
	}
	a.peer = a.identityPeer()
	a.selfSynced = true
	a.log.Info("joined cluster", "cluster", resp.ClusterID, "node", resp.Node.Name, "id", resp.Node.ID,
		"overlay_ip", resp.Node.OverlayIP, "block", resp.Node.ContainerBlock)
	return nil
}

// postJoin sends the join request over a connection whose CA was pinned
// during the handshake, and returns that CA.
func (a *Agent) postJoin(ctx context.Context, call apicall.Caller, pin apicall.Pin, req api.JoinRequest, out *api.JoinResponse) (*x509.Certificate, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	resp, err := call.Send(ctx, http.MethodPost, a.cfg.Manager, api.PathJoin, nil, req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if err := decode(call, resp, out); err != nil {
		return nil, err
	}
	pinned := pin.Find(resp.TLS.PeerCertificates)
	if pinned == nil {
		return nil, &apicall.CAMismatchError{Pin: pin}
	}
	return pinned, nil
}

func (a *Agent) loadOrCreateKey() (*ecdsa.PrivateKey, error) {
	if b, err := os.ReadFile(a.path(FileTLSKey)); err == nil {
		if key, err := pki.ParseKeyPEM(b); err == nil {
			return key, nil
		}
	}
	key, err := pki.NewKey()
	if err != nil {
		return nil, err
	}
	b, err := pki.EncodeKeyPEM(key)
	if err != nil {
		return nil, err
	}
	if err := atomicfile.Write(a.path(FileTLSKey), b, 0o600); err != nil {
		return nil, fmt.Errorf("save node TLS key: %w", err)
	}
	return key, nil
}

func (a *Agent) saveCert(der []byte) error {
	keyPEM, err := pki.EncodeKeyPEM(a.key)
	if err != nil {
		return err
	}
	certPEM := pki.EncodeCertPEM(der)
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return fmt.Errorf("manager's certificate does not match this node's key: %w", err)
	}
	if err := atomicfile.Write(a.path(FileTLSCert), certPEM, 0o644); err != nil {
		return fmt.Errorf("save node certificate: %w", err)
	}
	a.mu.Lock()
	a.cert = pair
	a.mu.Unlock()
	return nil
}

func (a *Agent) saveIdentity() error {
	a.mu.Lock()
	id := a.id
	a.mu.Unlock()
	id.Node.Status = "" // liveness is not identity; spare the SD card
	b, err := json.MarshalIndent(id, "", "  ")
	if err != nil {
		return fmt.Errorf("encode identity: %w", err)
	}
	if err := atomicfile.Write(a.path(FileIdentity), append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("save identity: %w", err)
	}
	return nil
}

// Self returns this node's record as last known (from the join, the cached
// map or the manager).
func (a *Agent) Self() clustermap.Node {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.id.Node
}

// Network returns the cluster-wide address plan and domain this node must
// use, whatever its own config says.
func (a *Agent) Network() clustermap.Network {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.id.Network
}

// recoverNetwork fills in the cluster's network settings for an identity
// stored before they were kept in it: from the cached map, or else from
// the first map the manager sends (retrying while it is unreachable).
func (a *Agent) recoverNetwork(ctx context.Context) error {
	m, err := a.CachedMap()
	if err != nil || m == nil || !m.Network().Complete() {
		var bo backoff.Backoff
		for {
			if m, err = a.fetchMap(ctx); err == nil && m.Network().Complete() {
				break
			}
			if err == nil {
				return fmt.Errorf("the manager's map has no cluster network settings (%+v): is it older than this node?", m.Network())
			}
			if ctx.Err() != nil {
				return fmt.Errorf("cluster network settings: %w", err)
			}
			d := bo.Next()
			a.log.Warn("need the cluster's network settings from the manager, retrying", "manager", a.managerAddr(), "retry_in", d.Round(time.Millisecond), "err", err)
			if err := backoff.Sleep(ctx, d); err != nil {
				return fmt.Errorf("cluster network settings: %w", err)
			}
		}
	}
	a.mu.Lock()
	a.id.Network = m.Network()
	a.mu.Unlock()
	return a.saveIdentity()
}

// fetchMap reads the first map of a watch stream: the current one.
func (a *Agent) fetchMap(ctx context.Context) (*clustermap.Map, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	resp, err := a.openWatch(ctx, 0)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	r := bufio.NewReaderSize(resp.Body, 256<<10)
	for {
		line, err := r.ReadBytes('\n')
		if err != nil {
			return nil, fmt.Errorf("map stream: %w", err)
		}
		if line = bytes.TrimSpace(line); len(line) == 0 {
			continue // keepalive
		}
		var m clustermap.Map
		if err := json.Unmarshal(line, &m); err != nil {
			return nil, fmt.Errorf("decode map: %w", err)
		}
		return &m, nil
	}
}

// ClusterID returns the ID of the cluster this node joined.
func (a *Agent) ClusterID() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.id.ClusterID
}

// Watch calls apply with the cached map from disk (if any), then with every
// newer map the manager pushes, caching each atomically before applying.
// While the manager is unreachable it retries with backoff and the node
// keeps the last map. It returns when ctx ends, or ErrRemoved when the
// manager says this node was removed.
func (a *Agent) Watch(ctx context.Context, apply func(*clustermap.Map)) error {
	var have uint64
	if m, err := a.CachedMap(); err != nil {
		a.log.Warn("ignoring unreadable cached map", "file", a.path(FileMap), "err", err)
	} else if m != nil {
		have = m.Version
		if have > clustermap.MaxVersion {
			// Written while a manager could be made to publish any
			// version: keep the map's content, forget its version, so the
			// manager's next map is taken.
			a.log.Warn("cached map has an absurd version: taking the manager's next map whatever its version",
				"version", have, "bound", clustermap.MaxVersion)
			have = 0
		}
		a.noteSelf(m)
		a.noteManagers(m)
		a.log.Info("restored cached map", "version", m.Version, "nodes", len(m.Nodes))
		apply(m)
	}
	go a.renewLoop(ctx)
	var bo backoff.Backoff
	for {
		connected, err := a.watchOnce(ctx, &have, apply)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if errors.Is(err, ErrRemoved) {
			return err
		}
		if connected {
			bo.Reset() // the stream worked: the next failure is a new outage
		}
		if !apicall.Permanent(err) {
			a.nextManager() // that manager is down: try another one of the map
		}
		d := bo.Next()
		if apicall.Permanent(err) {
			// Not a network problem: say so louder, but keep trying, since
			// an edge node must not give up (the clock may get fixed by NTP).
			a.log.Error("manager refuses this node, keeping the last map and retrying", "manager", a.managerAddr(), "version", have,
				"retry_in", d.Round(time.Millisecond), "err", err)
		} else {
			a.log.Warn("manager unreachable, keeping the last map and retrying", "manager", a.managerAddr(), "version", have,
				"retry_in", d.Round(time.Millisecond), "err", err)
		}
		if err := backoff.Sleep(ctx, d); err != nil {
			return err
		}
	}
}

// CachedMap reads the map cached on disk; nil if there is none.
func (a *Agent) CachedMap() (*clustermap.Map, error) {
	b, err := os.ReadFile(a.path(FileMap))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var m clustermap.Map
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, err
	}
	return &m, nil
}

// watchOnce runs one stream; connected reports whether the manager accepted it.
func (a *Agent) watchOnce(ctx context.Context, have *uint64, apply func(*clustermap.Map)) (connected bool, err error) {
	// Renew first: a node switched off past its certificate's expiry can
	// do nothing else until it has proved its key and got a new one.
	if err := a.maybeRenew(ctx); err != nil {
		if a.certExpired() {
			return false, fmt.Errorf("renew the expired certificate: %w", err)
		}
		a.log.Warn("certificate renewal failed; will retry", "err", err)
	}
	if err := a.syncSelf(ctx); err != nil {
		return false, err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	opened := a.leaf()
	resp, err := a.openWatch(ctx, *have)
	if err != nil {
		return false, err
	}
	defer func() {
		// Runs after the body is closed: a stream opened with a
		// certificate since renewed (a CA rotation) must not leave its
		// connection to be reused with the old one.
		if a.leaf() != opened {
			a.peer.HTTP.CloseIdleConnections()
		}
	}()
	defer resp.Body.Close()
	connected = true
	// The manager writes a keepalive line every keepalive period (it says
	// which); silence for three of them means the connection is dead even
	// if TCP has not noticed.
	silence := 3 * api.WatchKeepalive
	if d, err := time.ParseDuration(resp.Header.Get(api.HeaderKeepalive)); err == nil && d > 0 {
		silence = 3 * d
	}
	idle := time.AfterFunc(silence, cancel)
	defer idle.Stop()
	// Big enough to hold several maps of a large cluster, so a burst can be
	// skipped through (newerLineBuffered).
	r := bufio.NewReaderSize(resp.Body, 256<<10)
	for {
		line, err := r.ReadBytes('\n')
		if err != nil {
			if ctx.Err() != nil && idle.Stop() == false {
				err = fmt.Errorf("no data from the manager for %s", silence)
			}
			return connected, fmt.Errorf("map stream: %w", err)
		}
		idle.Reset(silence)
		line = bytes.TrimSpace(line)
		if len(line) == 0 || newerLineBuffered(r) {
			// A burst of changes (many nodes joining) queues maps faster
			// than a slow board applies them: skip to the newest one
			// already received, sparing a decode, a cache write and an apply.
			continue
		}
		var m clustermap.Map
		if err := json.Unmarshal(line, &m); err != nil {
			return connected, fmt.Errorf("decode map: %w", err)
		}
		// Only newer maps: versions increase by one per change across
		// leader changes, and a manager restored from a backup moves its
		// version up by a bounded bump (--version-bump). A version above
		// MaxVersion is never applied, so never cached.
		if m.Version > clustermap.MaxVersion {
			a.log.Warn("manager sent a map with an absurd version; ignored", "version", m.Version, "bound", clustermap.MaxVersion)
			continue
		}
		if m.Version > *have {
			if err := atomicfile.Write(a.path(FileMap), line, 0o600); err != nil {
				a.log.Error("cannot cache the map; applying it anyway", "err", err)
			}
			*have = m.Version
			a.noteSelf(&m)
			a.noteManagers(&m)
			a.noteTrust(&m)
			// A slow apply is not a silent manager.
			idle.Stop()
			apply(&m)
			idle.Reset(silence)
		}
	}
}

// newerLineBuffered reports whether r already holds another complete map
// line (the manager sends versions in increasing order).
func newerLineBuffered(r *bufio.Reader) bool {
	buf, _ := r.Peek(r.Buffered())
	i := bytes.IndexByte(buf, '\n')
	return i >= 0 && len(bytes.TrimSpace(buf[:i])) > 0
}

// noteSelf refreshes this node's record from a map.
func (a *Agent) noteSelf(m *clustermap.Map) {
	a.mu.Lock()
	n, ok := m.Node(a.id.Node.ID)
	changed := ok && (n.OverlayIP != a.id.Node.OverlayIP || n.ContainerBlock != a.id.Node.ContainerBlock || n.Endpoint != a.id.Node.Endpoint)
	if ok {
		a.id.Node = n
	}
	a.mu.Unlock()
	if changed {
		if err := a.saveIdentity(); err != nil {
			a.log.Error("save identity", "err", err)
		}
	}
}

// syncSelf tells the manager this node's current endpoint, key and labels
// once per agent (they may have changed while the node was down).
func (a *Agent) syncSelf(ctx context.Context) error {
	a.mu.Lock()
	done := a.selfSynced
	a.mu.Unlock()
	if done {
		return nil
	}
	n := a.cfg.Node
	var out clustermap.Node
	if err := a.call(ctx, http.MethodPut, api.PathSelf, api.SelfUpdate{Labels: n.Labels, Endpoint: n.Endpoint, PublicKey: n.PublicKey, Relay: n.Relay}, &out); err != nil {
		return fmt.Errorf("update own record: %w", err)
	}
	a.mu.Lock()
	a.selfSynced = true
	a.id.Node = out
	a.mu.Unlock()
	return a.saveIdentity()
}

// renewLoop renews the certificate on a timer at about two thirds of its
// lifetime, whatever the watch stream does, until ctx ends.
func (a *Agent) renewLoop(ctx context.Context) {
	var bo backoff.Backoff
	for {
		if err := a.maybeRenew(ctx); err != nil {
			if ctx.Err() != nil {
				return
			}
			d := bo.Next()
			a.log.Warn("certificate renewal failed; will retry", "retry_in", d.Round(time.Millisecond), "err", err)
			if err := backoff.Sleep(ctx, d); err != nil {
				return
			}
			continue
		}
		bo.Reset()
		wait := a.cfg.renewCheck
		if leaf := a.leaf(); leaf != nil {
			if d := pki.RenewAt(leaf, a.renewFrac).Sub(a.now()); d > 0 && d < wait {
				wait = d
			}
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-a.renewKick:
			t.Stop()
		case <-t.C:
		}
	}
}

func (a *Agent) leaf() *x509.Certificate {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.cert.Leaf
}

func (a *Agent) certExpired() bool {
	leaf := a.leaf()
	return leaf != nil && a.now().After(leaf.NotAfter)
}

// maybeRenew replaces the node certificate, keeping the same key, once
// about two thirds of its lifetime have passed. A renewed certificate is
// not renewed again within a tenth of its lifetime, so a node whose clock
// runs ahead of the manager's does not renew in a loop.
func (a *Agent) maybeRenew(ctx context.Context) error {
	a.renewMu.Lock()
	defer a.renewMu.Unlock()
	leaf := a.leaf()
	if leaf == nil {
		return nil
	}
	// A CA rotation: the current CA did not sign this certificate, so it
	// is renewed now whatever its age (it stops working when the old CA
	// is retired).
	rotated := a.needsNewCA()
	if !rotated && a.now().Before(pki.RenewAt(leaf, a.renewFrac)) {
		return nil
	}
	if !rotated && !a.lastRenew.IsZero() && time.Since(a.lastRenew) < leaf.NotAfter.Sub(pki.IssuedAt(leaf))/10 {
		return nil
	}
	csr, err := pki.NewCSR(a.key, a.cfg.Node.Name)
	if err != nil {
		return err
	}
	var out api.RenewResponse
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := a.call(ctx, http.MethodPost, api.PathRenew, api.RenewRequest{CSR: csr}, &out); err != nil {
		return fmt.Errorf("renew certificate: %w", err)
	}
	if err := a.saveCert(out.Certificate); err != nil {
		return err
	}
	a.lastRenew = time.Now()
	// Pooled connections authenticated with the old certificate; the next
	// calls present the new one.
	a.peer.HTTP.CloseIdleConnections()
	if rotated {
		a.log.Info("node certificate renewed with the cluster's new CA (CA rotation)", "expires", a.leaf().NotAfter.UTC().Format(time.RFC3339))
	} else {
		a.log.Info("node certificate renewed", "expires", a.leaf().NotAfter.UTC().Format(time.RFC3339))
	}
	return nil
}

// Report sends a heartbeat with tunnel health and task states. Call it
// periodically (well under the manager's DownAfter, e.g. a third of it).
func (a *Agent) Report(ctx context.Context, s api.NodeStatus) error {
	if s.Time.IsZero() {
		s.Time = a.now()
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := a.call(ctx, http.MethodPost, api.PathStatus, s, nil); err != nil {
		return fmt.Errorf("report status to %s: %w", a.managerAddr(), err)
	}
	return nil
}

func (a *Agent) managerAddr() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.id.Manager
}

func (a *Agent) call(ctx context.Context, method, path string, in, out any) error {
	resp, err := a.peer.Send(ctx, method, a.managerAddr(), path, nil, in)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	return decode(a.peer, resp, out)
}

// openWatch opens the map stream for maps newer than after.
func (a *Agent) openWatch(ctx context.Context, after uint64) (*http.Response, error) {
	q := url.Values{"after": {strconv.FormatUint(after, 10)}}
	resp, err := a.peer.Send(ctx, http.MethodGet, a.managerAddr(), api.PathWatch, q, nil)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		defer resp.Body.Close()
		if err := decode(a.peer, resp, nil); err != nil {
			return nil, err
		}
		return nil, fmt.Errorf("map stream: manager answered %s", resp.Status)
	}
	return resp, nil
}

// decode reads the manager's answer; a refusal that says this node was
// removed is also ErrRemoved.
func decode(call apicall.Caller, resp *http.Response, out any) error {
	err := call.Decode(resp, out)
	var ce *apicall.Error
	if errors.As(err, &ce) && ce.Status == http.StatusForbidden && strings.Contains(ce.Message, api.NodeRemoved) {
		return fmt.Errorf("%w: %w", ErrRemoved, err)
	}
	return err
}

// Certificate returns this node's current client certificate (renewals
// replace it), for other mTLS legs such as the relay's.
func (a *Agent) Certificate() *tls.Certificate {
	a.mu.Lock()
	defer a.mu.Unlock()
	c := a.cert
	return &c
}

// CAPool returns a pool holding the CAs this node trusts (two during a CA
// rotation).
func (a *Agent) CAPool() *x509.CertPool { return a.trustPool() }

// peerFor talks to managers whose certificate chains to the CA pinned by
// pin, presenting this node's certificate.
func (a *Agent) peerFor(pin apicall.Pin) apicall.Caller {
	return a.peerVerify(pin.Verify(a.now))
}

// peerVerify talks to managers that verify checks, presenting this node's
// certificate.
func (a *Agent) peerVerify(verify func(raw [][]byte) error) apicall.Caller {
	conf := apicall.MTLS(verify, func() *tls.Certificate {
		a.mu.Lock()
		defer a.mu.Unlock()
		c := a.cert // empty before the first join: the handshake sends no certificate
		return &c
	})
	return apicall.Caller{Scheme: "https", Peer: "manager", HTTP: apicall.HTTPS(conf, apicall.Deadlines{
		Dial: 10 * time.Second, KeepAlive: 15 * time.Second, Handshake: 10 * time.Second, ResponseHeader: 30 * time.Second,
	})}
}

// IsNameTaken reports whether a join failed because another node (with
// another key) holds the name: a node whose name was only derived from its
// host name can then pick a unique one.
func IsNameTaken(err error) bool {
	var ce *apicall.Error
	return errors.As(err, &ce) && ce.Status == http.StatusConflict && strings.Contains(ce.Message, api.NameTaken)
}

// JoinedNodeID is the node ID of the identity stored in stateDir by a join,
// "" if there is none (or it is unreadable): a manager that joined the
// cluster runs its Manager under this ID.
func JoinedNodeID(stateDir string) string {
	b, err := os.ReadFile(filepath.Join(stateDir, FileIdentity))
	if err != nil {
		return ""
	}
	var id identity
	if json.Unmarshal(b, &id) != nil {
		return ""
	}
	return id.Node.ID
}

// TLSIdentity is this node's certificate and the cluster CA: the node's
// log server shows the one and checks managers against the other.
func (a *Agent) TLSIdentity() (*tls.Certificate, *x509.CertPool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	c := a.cert
	pool := x509.NewCertPool()
	for _, ca := range a.trust {
		pool.AddCert(ca)
	}
	return &c, pool
}

// FetchValues asks the manager for the current values of this node's
// tasks' secrets and configs (mTLS; only those of tasks assigned to this
// node are given). They are never written to the state dir.
func (a *Agent) FetchValues(ctx context.Context, refs []api.ValueRef) ([]api.Value, error) {
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	var out api.ValuesResponse
	if err := a.call(ctx, http.MethodPost, api.PathValues, api.ValuesRequest{Refs: refs}, &out); err != nil {
		return nil, fmt.Errorf("fetch secret and config values from %s: %w", a.managerAddr(), err)
	}
	return out.Values, nil
}

package appliance

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/distribution/reference"

	"github.com/warren-appliance/warren/cluster/api"
	"github.com/warren-appliance/warren/cluster/apicall"
	"github.com/warren-appliance/warren/cluster/clustermap"
	"github.com/warren-appliance/warren/cluster/pki"
	"github.com/warren-appliance/warren/orchestrate"
)

// serveBlobs runs the node's blob server on its overlay address: the
// cluster's nodes (a node certificate chained to the cluster CA) get image
// blobs by digest from it, verified on their side. It is not on the LAN.
func serveBlobs(ctx context.Context, overlay netip.Addr, ident func() (*tls.Certificate, *x509.CertPool), h http.Handler, log *slog.Logger) error {
	return overlayServer{name: "blob server", overlay: overlay, port: api.NodeBlobsPort, ident: ident, handler: h,
		verify: func(leaf *x509.Certificate, pool *x509.CertPool) error {
			return pki.VerifyChain(leaf, pool, x509.ExtKeyUsageClientAuth, time.Now())
		}}.serve(ctx, log)
}

// blobPeers keeps one mTLS client per other node, each checking that the
// server shows that node's certificate.
type blobPeers struct {
	ident   func() (*tls.Certificate, *x509.CertPool)
	mu      sync.Mutex
	clients map[string]*http.Client // by node ID
}

func (b *blobPeers) client(nodeID string) *http.Client {
	b.mu.Lock()
	defer b.mu.Unlock()
	if c, ok := b.clients[nodeID]; ok {
		return c
	}
	conf := apicall.MTLS(func(raw [][]byte) error {
		if len(raw) == 0 {
			return errors.New("the node sent no certificate")
		}
		leaf, err := x509.ParseCertificate(raw[0])
		if err != nil {
			return err
		}
		_, pool := b.ident()
		if err := pki.VerifyChain(leaf, pool, x509.ExtKeyUsageClientAuth, time.Now()); err != nil {
			return err
		}
		if leaf.Subject.CommonName != nodeID {
			return fmt.Errorf("the certificate is node %s's, want node %s's", leaf.Subject.CommonName, nodeID)
		}
		return nil
	}, func() *tls.Certificate { c, _ := b.ident(); return c })
	// No total deadline: a blob may be large on a slow link; the pull's
	// own timeout bounds it.
	c := apicall.HTTPS(conf, apicall.Deadlines{Dial: 5 * time.Second, Handshake: 10 * time.Second, ResponseHeader: 10 * time.Minute})
	if b.clients == nil {
		b.clients = map[string]*http.Client{}
	}
	b.clients[nodeID] = c
	return c
}

// sharingFor renders the map's nodes as blob sources for node self
// (pure but for the clients): every other ready node is a peer; the
// coordinator, which fetches from the registry for the cluster, is the
// first ready manager (lowest overlay address), nil when that is self.
func sharingFor(m *clustermap.Map, selfID string, client func(nodeID string) *http.Client) orchestrate.Sharing {
	var out orchestrate.Sharing
	var co *clustermap.Node
	for i := range m.Nodes {
		n := &m.Nodes[i]
		if n.Status != clustermap.NodeReady && n.ID != selfID {
			continue
		}
		if n.Role == clustermap.RoleManager && (co == nil || n.OverlayIP.Less(co.OverlayIP)) {
			co = n
		}
	}
	peer := func(n clustermap.Node) orchestrate.SharePeer {
		return orchestrate.SharePeer{Name: n.Name, Client: client(n.ID),
			Base: "https://" + net.JoinHostPort(n.OverlayIP.String(), strconv.Itoa(api.NodeBlobsPort))}
	}
	for _, n := range m.Nodes {
		if n.ID == selfID || n.Status != clustermap.NodeReady {
			continue
		}
		out.Peers = append(out.Peers, peer(n))
	}
	if co != nil && co.ID != selfID {
		p := peer(*co)
		out.Coordinator = &p
	}
	return out
}

// guardBlobFetches lets a node make this one fetch from a registry for
// it (?fetch=1, or resolve) only for an image the map has it run: a node
// gets no private image through another node's credentials that it would
// not pull itself. Blobs this node has are served to any node that names
// their digest.
func guardBlobFetches(h http.Handler, lastMap func() *clustermap.Map) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		if q.Get("fetch") != "1" && !strings.HasSuffix(r.URL.Path, "/resolve") {
			h.ServeHTTP(w, r)
			return
		}
		if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
			http.Error(w, "no client certificate", http.StatusForbidden)
			return
		}
		nodeID := r.TLS.PeerCertificates[0].Subject.CommonName
		if !runsImage(lastMap(), nodeID, q.Get("ref")) {
			http.Error(w, fmt.Sprintf("node %s runs no task of image %q", nodeID, q.Get("ref")), http.StatusForbidden)
			return
		}
		h.ServeHTTP(w, r)
	})
}

// runsImage reports whether the map assigns node a running task of image
// ref (both normalised: "nginx" is docker.io/library/nginx:latest).
func runsImage(m *clustermap.Map, nodeID, ref string) bool {
	want, err := reference.ParseDockerRef(ref)
	if m == nil || err != nil {
		return false
	}
	images := map[string]string{}
	for _, s := range m.Services {
		images[s.Name] = s.Image
	}
	for _, t := range m.Tasks {
		if t.NodeID != nodeID || t.DesiredState != clustermap.TaskRunning {
			continue
		}
		img := t.Image
		if img == "" {
			img = images[t.Service]
		}
		if got, err := reference.ParseDockerRef(img); err == nil && got.String() == want.String() {
			return true
		}
	}
	return false
}

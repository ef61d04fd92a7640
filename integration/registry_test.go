package integration

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/warren-appliance/warren/integration/lab"
)

// privateCA makes a CA and a server certificate for ip, as a company's
// own PKI would; it returns the CA's PEM and the server's cert and key files.
func privateCA(t testing.TB, dir string, ip net.IP) (caPEM []byte, certFile, keyFile string) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "Lab Corp Root CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "registry"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IPAddresses: []net.IP{ip}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, KeyUsage: x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, _ := x509.MarshalECPrivateKey(key)
	caPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})
	certFile, keyFile = filepath.Join(dir, "server.crt"), filepath.Join(dir, "server.key")
	for f, b := range map[string][]byte{
		certFile: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		keyFile:  pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}),
		// skopeo's --dest-cert-dir takes *.crt as CAs.
		filepath.Join(dir, "certs", "ca.crt"): caPEM,
		filepath.Join(dir, "ca.pem"):          caPEM,
	} {
		os.MkdirAll(filepath.Dir(f), 0o755)
		if err := os.WriteFile(f, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return caPEM, certFile, keyFile
}

// labRegistry is Debian's docker-registry on a LAN host of the lab: its
// own instance with its own config (never the host's service), TLS from a
// private CA, htpasswd (bcrypt) auth when user is set.
type labRegistry struct {
	host    *lab.Host
	addr    string // IP:5000
	dir     string // certs/ca.crt for skopeo, ca.pem for warren
	logFile string
}

func startLabRegistry(t testing.TB, ctx context.Context, l *lab.Lab, name, user, pass string) labRegistry {
	t.Helper()
	reg, err := l.AddLANHost(name)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(reg.Dir(), "srv")
	_, certFile, keyFile := privateCA(t, dir, reg.LANIP.AsSlice())
	auth := ""
	if user != "" {
		out, err := exec.Command("htpasswd", "-Bbn", user, pass).Output()
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "htpasswd"), out, 0o644); err != nil {
			t.Fatal(err)
		}
		auth = fmt.Sprintf("auth:\n  htpasswd:\n    realm: lab-registry\n    path: %s\n", filepath.Join(dir, "htpasswd"))
	}
	config := fmt.Sprintf(`version: 0.1
log:
  level: info
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: %s
http:
  addr: 0.0.0.0:5000
  tls:
    certificate: %s
    key: %s
%s`, filepath.Join(dir, "data"), certFile, keyFile, auth)
	cfgFile := filepath.Join(dir, "config.yml")
	if err := os.WriteFile(cfgFile, []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := reg.Background("registry.log", "docker-registry", "serve", cfgFile); err != nil {
		t.Fatal(err)
	}
	r := labRegistry{host: reg, addr: net.JoinHostPort(reg.LANIP.String(), "5000"), dir: dir, logFile: filepath.Join(reg.Dir(), "registry.log")}
	if err := lab.Poll(ctx, 200*time.Millisecond, func() error {
		b, _ := os.ReadFile(r.logFile)
		if !bytes.Contains(b, []byte("listening on")) {
			return fmt.Errorf("registry not listening yet: %s", b)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return r
}

// Issue 28's lab: Debian's docker-registry (the CNCF distribution server)
// on a LAN host, TLS from a private CA, htpasswd (bcrypt) auth, reachable
// only from the manager. After `registry add --ca-file` and `registry
// login`, a 3-replica service of an image pushed there runs on all three
// nodes; the registry's access log shows every blob fetched once (the
// manager fetches for the cluster, the workers take the blobs from it
// over the mesh); the password is on no node's disk; a wrong password is
// refused as an auth failure, and a pull without login says what to do.
func TestPrivateRegistryOnePullPerCluster(t *testing.T) {
	for _, bin := range []string{"docker-registry", "skopeo", "htpasswd"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("%s is not installed (Debian: docker-registry skopeo apache2-utils)", bin)
		}
	}
	l := newLab(t)
	c := startCluster(t, l, lab.ClusterOptions{Workers: 2}) // no image tarballs: nodes must pull
	ctx := ctxFor(t, 10*time.Minute)
	m := c.Manager
	stamp := time.Now().UnixNano()
	user, pass := "ci", fmt.Sprintf("pw-%x-regmarker", stamp)

	r := startLabRegistry(t, ctx, l, "registry", user, pass)
	reg, host, dir := r.host, r.addr, r.dir
	// Only the manager reaches it; anyone else is refused at once.
	if out, err := reg.Sh(ctx, fmt.Sprintf("iptables -w -A INPUT -p tcp --dport 5000 -s %s -j ACCEPT && iptables -w -A INPUT -p tcp --dport 5000 -j REJECT --reject-with tcp-reset", m.LANIP)); err != nil {
		t.Fatalf("registry firewall: %v\n%s", err, out)
	}
	if out, err := c.Workers[0].Exec(ctx, "sh", "-c", fmt.Sprintf("skopeo inspect --insecure-policy --tls-verify=false docker://%s/x:1 2>&1; true", host)); !strings.Contains(out, "connection refused") {
		t.Fatalf("a worker reaches the registry (the test wants only the manager to): %v %s", err, out)
	}

	// Push the test image as a CI job would.
	image := host + "/team/app:1"
	tarball := imageTarball(t)
	if out, err := m.Exec(ctx, "skopeo", "copy", "--insecure-policy", "--dest-creds", user+":"+pass, "--dest-cert-dir", filepath.Join(dir, "certs"),
		"oci-archive:"+tarball, "docker://"+image); err != nil {
		t.Fatalf("skopeo push: %v\n%s", err, out)
	}

	// The cluster learns the registry and its CA; a wrong password is
	// refused naming the registry's answer; the right one is taken.
	if out, err := m.Exec(ctx, "warren", "registry", "add", host, "--ca-file", filepath.Join(dir, "ca.pem")); err != nil {
		t.Fatalf("registry add: %v\n%s", err, out)
	}
	out, err := m.Sh(ctx, fmt.Sprintf("printf %%s 'wrong-%x' | warren registry login %s --username %s --password-stdin", stamp, host, user))
	if err == nil || !strings.Contains(out, "refused the credentials") || !strings.Contains(out, "401") {
		t.Fatalf("wrong password: %v\n%s", err, out)
	}

	// Before login: a pull says it is unauthorized and what to run, on the
	// manager and on a worker (which learns it from the manager, as it
	// cannot reach the registry itself).
	for _, on := range []string{"manager-1", "worker-1"} {
		name := "early-" + on
		createServiceImage(t, c, name, image, "--constraint", "node.name=="+on, "--", "sleep", "100000")
		eventually(t, 2*time.Minute, name+": the pull without login reported as unauthorized", func() error {
			v, err := inspect(ctx, m, name)
			if err != nil {
				return err
			}
			for _, task := range v.Tasks {
				if strings.Contains(task.Error, "unauthorized") && strings.Contains(task.Error, "warren registry login "+host) {
					t.Logf("%s: %s", name, task.Error)
					return nil
				}
			}
			return fmt.Errorf("tasks: %+v", v.Tasks)
		})
		if out, err := m.Exec(ctx, "warren", "service", "rm", name); err != nil {
			t.Fatalf("service rm: %v\n%s", err, out)
		}
	}

	if out, err := m.Sh(ctx, fmt.Sprintf("printf %%s '%s' | warren registry login %s --username %s --password-stdin", pass, host, user)); err != nil {
		t.Fatalf("registry login: %v\n%s", err, out)
	}
	if out, err := m.Exec(ctx, "warren", "registry", "ls", "--json"); err != nil || !strings.Contains(out, `"logged_in": true`) || strings.Contains(out, pass) {
		t.Fatalf("registry ls: %v\n%s", err, out)
	}

	logFile := r.logFile
	before, _ := os.ReadFile(logFile)
	// Waiting (no --detach): the CLI prints the tasks' states, with the
	// bytes pulled while a node pulls.
	out, err = m.Exec(ctx, "warren", "service", "create", "app", "--image", image, "--replicas", "3", "--", "sleep", "100000")
	if err != nil {
		t.Fatalf("service create: %v\n%s", err, out)
	}
	t.Logf("service create printed:\n%s", out)
	v := waitRunning(t, c, "app", 3)
	nodes := map[string]bool{}
	for _, task := range v.Tasks {
		nodes[task.Node] = true
	}
	if len(nodes) != 3 {
		t.Fatalf("tasks on %v, want all three nodes", nodes)
	}

	// Every blob fetched from the registry once.
	after, _ := os.ReadFile(logFile)
	gets := map[string]int{}
	blobRE := regexp.MustCompile(`"GET /v2/team/app/blobs/(sha256:[0-9a-f]{64}) HTTP/[0-9.]+" (\d+)`)
	for _, mt := range blobRE.FindAllStringSubmatch(string(after[len(before):]), -1) {
		if mt[2] == "200" {
			gets[mt[1]]++
		}
	}
	if len(gets) < 2 {
		t.Fatalf("the registry served %d blobs (want the config and the layer at least):\n%s", len(gets), after[len(before):])
	}
	for d, n := range gets {
		if n != 1 {
			t.Errorf("blob %s fetched %d times from the registry, want once", d, n)
		}
	}
	t.Logf("blob GETs at the registry: %v", gets)
	// The workers, which cannot reach the registry, got the blobs from the
	// manager over the mesh.
	for _, w := range c.Workers {
		var from []string
		for _, line := range strings.Split(w.ApplianceLog(), "\n") {
			if strings.Contains(line, "blob fetched") {
				from = append(from, line)
			}
		}
		if len(from) < len(gets) || !strings.Contains(strings.Join(from, "\n"), "node manager-1") {
			t.Errorf("%s's blob fetches: %q", w.Name, from)
		}
		t.Logf("%s: %s", w.Name, strings.Join(from, "\n"))
	}

	// The password is on no node's disk (state dirs, containerd, logs).
	for _, n := range c.Nodes() {
		// The node's directory holds its root (state dir, containerd's
		// dirs, /etc/warren) and its logs (appliance, containerd).
		if files := filesContaining(t, n.Dir(), []byte(pass)); len(files) > 0 {
			t.Errorf("%s holds the registry password in %v", n.Name, files)
		}
		if strings.Contains(n.ApplianceLog(), pass) {
			t.Errorf("%s's log holds the registry password", n.Name)
		}
	}
	// A mirror of the registry (its own CA, no auth, also reachable from
	// the manager only) holds a tag the registry does not: the nodes pull
	// it through the mirror, tried before the registry.
	mir := startLabRegistry(t, ctx, l, "mirror", "", "")
	if out, err := mir.host.Sh(ctx, fmt.Sprintf("iptables -w -A INPUT -p tcp --dport 5000 -s %s -j ACCEPT && iptables -w -A INPUT -p tcp --dport 5000 -j REJECT --reject-with tcp-reset", m.LANIP)); err != nil {
		t.Fatalf("mirror firewall: %v\n%s", err, out)
	}
	if out, err := m.Exec(ctx, "skopeo", "copy", "--insecure-policy", "--dest-cert-dir", filepath.Join(mir.dir, "certs"),
		"oci-archive:"+imageTarball(t), "docker://"+mir.addr+"/team/app:mirrored"); err != nil {
		t.Fatalf("skopeo push to the mirror: %v\n%s", err, out)
	}
	if out, err := m.Exec(ctx, "warren", "registry", "add", mir.addr, "--mirror-of", host, "--ca-file", filepath.Join(mir.dir, "ca.pem")); err != nil {
		t.Fatalf("registry add --mirror-of: %v\n%s", err, out)
	}
	createServiceImage(t, c, "mirrored", host+"/team/app:mirrored", "--replicas", "3", "--", "sleep", "100000")
	waitRunning(t, c, "mirrored", 3)
	if b, _ := os.ReadFile(mir.logFile); !strings.Contains(string(b), `"HEAD /v2/team/app/manifests/mirrored`) && !strings.Contains(string(b), `"GET /v2/team/app/manifests/mirrored`) {
		t.Fatalf("the mirror was not asked for the image:\n%s", b)
	}
	// Mirrors come first: the registry itself was never asked for it.
	if b, _ := os.ReadFile(r.logFile); strings.Contains(string(b), "/v2/team/app/manifests/mirrored") {
		t.Fatalf("the registry was asked for the mirrored tag before (or beside) its mirror")
	}
}

// createServiceImage is createService with another image.
func createServiceImage(t *testing.T, c *lab.Cluster, name, image string, args ...string) {
	t.Helper()
	ctx := ctxFor(t, time.Minute)
	argv := append([]string{"service", "create", name, "--detach", "--image", image}, args...)
	if out, err := c.Manager.Exec(ctx, "warren", argv...); err != nil {
		t.Fatalf("service create: %v\n%s", err, out)
	}
}

// filesContaining lists regular files under dir holding marker.
func filesContaining(t *testing.T, dir string, marker []byte) []string {
	t.Helper()
	var out []string
	filepath.Walk(dir, func(p string, info os.FileInfo, err error) error {
		if err != nil || !info.Mode().IsRegular() {
			return nil
		}
		b, err := os.ReadFile(p)
		if err == nil && bytes.Contains(b, marker) {
			out = append(out, p)
		}
		return nil
	})
	return out
}

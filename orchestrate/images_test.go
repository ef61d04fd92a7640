package orchestrate

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/vishvananda/netlink"
	"github.com/warren-appliance/warren/cluster/clustermap"
	"github.com/warren-appliance/warren/internal/testimage"
	"github.com/warren-appliance/warren/internal/testimage/testnode"
)

// TestImportTarballs feeds the airgap importer the formats boards get:
// `ctr images export` output (gzipped here) and a docker-archive as
// `docker save` writes it.
func TestImportTarballs(t *testing.T) {
	if !testnode.Enter(t, "orchimg") {
		return
	}
	d := testnode.StartContainerd(t)
	src := t.TempDir()
	oci, err := testimage.BusyboxTarball(src, "busybox:latest")
	if err != nil {
		t.Fatal(err)
	}
	images := t.TempDir()

	// ctr export of an imported image, gzipped.
	if _, err := d.Ctr("-n", "export", "images", "import", oci); err != nil {
		t.Fatal(err)
	}
	exported := filepath.Join(src, "exported.tar")
	if _, err := d.Ctr("-n", "export", "images", "export", exported, "docker.io/library/busybox:latest"); err != nil {
		t.Fatal(err)
	}
	gzipFile(t, exported, filepath.Join(images, "busybox.tar.gz"))
	dockerArchive(t, oci, "example.org/docker-archive:v1", filepath.Join(images, "docker.tar"))
	if err := os.WriteFile(filepath.Join(images, "notes.txt"), []byte("not an image"), 0o644); err != nil {
		t.Fatal(err)
	}
	// A broken tarball (a copy cut short) is skipped, the others still load.
	if err := os.WriteFile(filepath.Join(images, "broken.tar"), []byte("truncated"), 0o644); err != nil {
		t.Fatal(err)
	}

	c, err := client.New(d.Address)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := namespaces.WithNamespace(context.Background(), "warren")
	store := newImageStore(c, images, slog.New(slog.NewTextHandler(os.Stderr, nil)))
	n, err := store.importNew(ctx)
	if err != nil || n != 2 {
		t.Fatalf("importNew: %d imported, %v; want 2", n, err)
	}
	for _, ref := range []string{"docker.io/library/busybox:latest", "example.org/docker-archive:v1"} {
		img, err := c.GetImage(ctx, ref)
		if err != nil {
			t.Fatalf("%s not imported: %v", ref, err)
		}
		if ok, err := img.IsUnpacked(ctx, ""); err != nil || !ok {
			t.Fatalf("%s not unpacked: %v", ref, err)
		}
		if _, err := store.ensure(ctx, ref); err != nil {
			t.Fatalf("ensure %s: %v", ref, err)
		}
	}
	if n, err := store.importNew(ctx); err != nil || n != 0 {
		t.Fatalf("second scan imported %d (%v); unchanged files must be skipped", n, err)
	}
}

func gzipFile(t *testing.T, from, to string) {
	t.Helper()
	data, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	zw.Write(data)
	zw.Close()
	if err := os.WriteFile(to, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

// dockerArchive rewrites an OCI image tarball of one single-layer image
// into docker-archive form: manifest.json, the config and an
// uncompressed layer.tar.
func dockerArchive(t *testing.T, ociPath, ref, to string) {
	t.Helper()
	data, err := os.ReadFile(ociPath)
	if err != nil {
		t.Fatal(err)
	}
	files := map[string][]byte{}
	tr := tar.NewReader(bytes.NewReader(data))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(tr)
		files[h.Name] = b
	}
	var index ocispec.Index
	var manifest ocispec.Manifest
	if err := json.Unmarshal(files["index.json"], &index); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(files["blobs/sha256/"+index.Manifests[0].Digest.Encoded()], &manifest); err != nil {
		t.Fatal(err)
	}
	config := files["blobs/sha256/"+manifest.Config.Digest.Encoded()]
	zr, err := gzip.NewReader(bytes.NewReader(files["blobs/sha256/"+manifest.Layers[0].Digest.Encoded()]))
	if err != nil {
		t.Fatal(err)
	}
	layer, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	dm, _ := json.Marshal([]map[string]any{{"Config": "config.json", "RepoTags": []string{ref}, "Layers": []string{"layer/layer.tar"}}})

	var out bytes.Buffer
	tw := tar.NewWriter(&out)
	for _, f := range []struct {
		name string
		data []byte
	}{{"manifest.json", dm}, {"config.json", config}, {"layer/layer.tar", layer}} {
		tw.WriteHeader(&tar.Header{Name: f.name, Mode: 0o644, Size: int64(len(f.data)), Typeflag: tar.TypeReg})
		tw.Write(f.data)
	}
	tw.Close()
	if err := os.WriteFile(to, out.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestPullFromRegistry pulls a task's image from a registry on localhost
// (plain HTTP, as Docker allows there): the path a board with network
// access takes for an image it has no tarball of.
func TestPullFromRegistry(t *testing.T) {
	if !testnode.Enter(t, "orchpull") {
		return
	}
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSetUp(lo); err != nil {
		t.Fatal(err)
	}
	n := newNode(t)
	n.cfg.ImagesDir = t.TempDir() // no tarball: the image must be pulled
	blobs, manifest := ociBlobs(t)
	var pulls atomic.Int32
	// tools/slow serves the same image once release is closed: a pull
	// that takes as long as the test wants.
	release := make(chan struct{})
	var releaseOnce sync.Once
	t.Cleanup(func() { releaseOnce.Do(func() { close(release) }) })
	mux := http.NewServeMux()
	mux.HandleFunc("/v2/", func(w http.ResponseWriter, r *http.Request) {
		path := strings.TrimPrefix(r.URL.Path, "/v2/")
		if rest, ok := strings.CutPrefix(path, "tools/slow/"); ok {
			select {
			case <-release:
			case <-r.Context().Done():
				return
			}
			path = "tools/busybox/" + rest
		}
		switch {
		case path == "":
			w.WriteHeader(http.StatusOK)
		case strings.HasPrefix(path, "tools/busybox/manifests/"):
			ref := strings.TrimPrefix(path, "tools/busybox/manifests/")
			if ref != "v1" && ref != digest.FromBytes(manifest).String() {
				http.NotFound(w, r)
				return
			}
			pulls.Add(1)
			serveBlob(w, r, ocispec.MediaTypeImageManifest, manifest)
		case strings.HasPrefix(path, "tools/busybox/blobs/"):
			d, err := digest.Parse(strings.TrimPrefix(path, "tools/busybox/blobs/"))
			if b, ok := blobs[d]; err == nil && ok {
				serveBlob(w, r, "application/octet-stream", b)
				return
			}
			http.NotFound(w, r)
		default:
			http.NotFound(w, r)
		}
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: mux}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })

	r, _ := n.start(t)
	port := ln.Addr().(*net.TCPAddr).Port
	slow := webTask("slow-1", "10.0.1.3")
	slow.Image = fmt.Sprintf("localhost:%d/tools/slow:v1", port)
	r.Apply([]TaskSpec{slow})
	waitFor(t, "slow-1 pulling", 30*time.Second, func() error {
		if s, _ := statusOf(r, "slow-1"); s.State != clustermap.TaskStarting {
			return fmt.Errorf("%+v", s)
		}
		return nil
	})

	// While that pull hangs, other tasks still start.
	spec := webTask("pulled-1", "10.0.1.2")
	spec.Image = fmt.Sprintf("localhost:%d/tools/busybox:v1", port)
	r.Apply([]TaskSpec{slow, spec})
	waitFor(t, "pulled-1 answers", 60*time.Second, answers("10.0.1.2", "hello-pulled-1"))
	if pulls.Load() == 0 {
		t.Fatal("the registry served no manifest")
	}
	if s, _ := statusOf(r, "slow-1"); s.State == clustermap.TaskRunning {
		t.Fatalf("slow-1 running before its image was served: %+v", s)
	}

	releaseOnce.Do(func() { close(release) })
	waitFor(t, "slow-1 answers once its pull ends", 60*time.Second, answers("10.0.1.3", "hello-slow-1"))
}

func serveBlob(w http.ResponseWriter, r *http.Request, mediaType string, b []byte) {
	w.Header().Set("Content-Type", mediaType)
	w.Header().Set("Docker-Content-Digest", digest.FromBytes(b).String())
	w.Header().Set("Content-Length", fmt.Sprint(len(b)))
	if r.Method != http.MethodHead {
		w.Write(b)
	}
}

// ociBlobs returns the busybox test image's blobs by digest and its
// manifest.
func ociBlobs(t *testing.T) (map[digest.Digest][]byte, []byte) {
	t.Helper()
	path, err := testimage.BusyboxTarball(t.TempDir(), "busybox")
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	blobs := map[digest.Digest][]byte{}
	var index ocispec.Index
	tr := tar.NewReader(bytes.NewReader(data))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(tr)
		if h.Name == "index.json" {
			json.Unmarshal(b, &index)
		}
		if enc, ok := strings.CutPrefix(h.Name, "blobs/sha256/"); ok && enc != "" {
			blobs[digest.NewDigestFromEncoded(digest.SHA256, enc)] = b
		}
	}
	return blobs, blobs[index.Manifests[0].Digest]
}

package testimage

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"io"
	"os"
	"testing"

	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

func readTar(t *testing.T, data []byte) map[string][]byte {
	t.Helper()
	files := map[string][]byte{}
	tr := tar.NewReader(bytes.NewReader(data))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return files
		}
		if err != nil {
			t.Fatalf("read tar: %v", err)
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatalf("read %s: %v", h.Name, err)
		}
		if h.Typeflag == tar.TypeSymlink {
			b = []byte("-> " + h.Linkname)
		}
		files[h.Name] = b
	}
}

func TestBusyboxTarballIsDeterministic(t *testing.T) {
	if _, err := os.Stat(BusyboxPath); err != nil {
		t.Skipf("busybox-static not installed: %v", err)
	}
	a, err := BusyboxTarball(t.TempDir(), "busybox")
	if err != nil {
		t.Fatal(err)
	}
	b, err := BusyboxTarball(t.TempDir(), "busybox")
	if err != nil {
		t.Fatal(err)
	}
	da, _ := os.ReadFile(a)
	db, _ := os.ReadFile(b)
	if !bytes.Equal(da, db) {
		t.Fatal("two builds of the same image differ")
	}
}

func TestBusyboxTarballLayout(t *testing.T) {
	if _, err := os.Stat(BusyboxPath); err != nil {
		t.Skipf("busybox-static not installed: %v", err)
	}
	path, err := BusyboxTarball(t.TempDir(), "example.org/tools/bb:v1")
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	files := readTar(t, data)
	blob := func(d digest.Digest) []byte {
		t.Helper()
		b, ok := files["blobs/sha256/"+d.Encoded()]
		if !ok {
			t.Fatalf("blob %s missing", d)
		}
		if digest.FromBytes(b) != d {
			t.Fatalf("blob %s has wrong content", d)
		}
		return b
	}
	if _, ok := files[ocispec.ImageLayoutFile]; !ok {
		t.Fatal("oci-layout missing")
	}
	var index ocispec.Index
	if err := json.Unmarshal(files[ocispec.ImageIndexFile], &index); err != nil {
		t.Fatalf("index.json: %v", err)
	}
	if len(index.Manifests) != 1 {
		t.Fatalf("want 1 manifest, got %d", len(index.Manifests))
	}
	md := index.Manifests[0]
	if got := md.Annotations["io.containerd.image.name"]; got != "example.org/tools/bb:v1" {
		t.Fatalf("image name annotation = %q", got)
	}
	if got := md.Annotations[ocispec.AnnotationRefName]; got != "v1" {
		t.Fatalf("ref name annotation = %q", got)
	}
	var manifest ocispec.Manifest
	if err := json.Unmarshal(blob(md.Digest), &manifest); err != nil {
		t.Fatalf("manifest: %v", err)
	}
	var config ocispec.Image
	if err := json.Unmarshal(blob(manifest.Config.Digest), &config); err != nil {
		t.Fatalf("config: %v", err)
	}
	if len(manifest.Layers) != 1 || len(config.RootFS.DiffIDs) != 1 {
		t.Fatalf("want one layer, got %d layers / %d diff ids", len(manifest.Layers), len(config.RootFS.DiffIDs))
	}
	zr, err := gzip.NewReader(bytes.NewReader(blob(manifest.Layers[0].Digest)))
	if err != nil {
		t.Fatal(err)
	}
	layer, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	if digest.FromBytes(layer) != config.RootFS.DiffIDs[0] {
		t.Fatal("diff id does not match the uncompressed layer")
	}
	rootfs := readTar(t, layer)
	bb, _ := os.ReadFile(BusyboxPath)
	if !bytes.Equal(rootfs["bin/busybox"], bb) {
		t.Fatal("bin/busybox is not the host's busybox")
	}
	for _, a := range []string{"sh", "httpd", "wget", "ping", "hostname"} {
		if got := string(rootfs["bin/"+a]); got != "-> busybox" {
			t.Errorf("bin/%s = %q, want a link to busybox", a, got)
		}
	}
}

func TestBusyboxTarballRejectsBadRef(t *testing.T) {
	if _, err := BusyboxTarball(t.TempDir(), "bad ref!"); err == nil {
		t.Fatal("want an error for an invalid reference")
	}
}

func TestBusyboxTarballWithHealthcheck(t *testing.T) {
	if _, err := os.Stat(BusyboxPath); err != nil {
		t.Skipf("busybox-static not installed: %v", err)
	}
	path, err := BusyboxTarballWithHealthcheck(t.TempDir(), "checked:v1", Healthcheck{Test: []string{"CMD-SHELL", "test -f /tmp/ok"}, Interval: 1e9, Retries: 2})
	if err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(path)
	files := readTar(t, data)
	var idx ocispec.Index
	if err := json.Unmarshal(files[ocispec.ImageIndexFile], &idx); err != nil {
		t.Fatal(err)
	}
	var man ocispec.Manifest
	if err := json.Unmarshal(files["blobs/sha256/"+idx.Manifests[0].Digest.Encoded()], &man); err != nil {
		t.Fatal(err)
	}
	raw := files["blobs/sha256/"+man.Config.Digest.Encoded()]
	var cfg struct {
		Config struct {
			Cmd         []string
			Healthcheck *Healthcheck
		} `json:"config"`
	}
	if err := json.Unmarshal(raw, &cfg); err != nil {
		t.Fatal(err)
	}
	if hc := cfg.Config.Healthcheck; hc == nil || hc.Test[1] != "test -f /tmp/ok" || hc.Retries != 2 || len(cfg.Config.Cmd) != 1 {
		t.Fatalf("config = %s", raw)
	}
	if digest.FromBytes(raw) != man.Config.Digest {
		t.Fatal("config digest does not match")
	}
}

// Package testimage builds a tiny OCI image tarball around the host's
// busybox-static binary, so tests can run real containers on machines that
// cannot reach a registry. The tarball is what `ctr images export` writes
// (OCI image layout), so containerd's importers accept it.
package testimage

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	_ "crypto/sha256" // go-digest needs the hash registered
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/distribution/reference"
	digest "github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// BusyboxPath is where Debian's busybox-static installs the binary.
const BusyboxPath = "/bin/busybox"

// Applets get a symlink to busybox in /bin, so `sh`, `httpd`, ... resolve.
var Applets = []string{
	"cat", "echo", "env", "grep", "hostname", "httpd", "id", "ifconfig", "ip",
	"kill", "ls", "mkdir", "nc", "nslookup", "ping", "ps", "rm", "sed", "sh",
	"sleep", "test", "timeout", "true", "false", "uname", "wget",
}

// epoch is the fixed timestamp of every entry: same input, same bytes.
var epoch = time.Unix(0, 0).UTC()

// File is an extra file for the image's layer, e.g. a static test tool.
type File struct {
	Path string // inside the image, without a leading slash: "bin/tool"
	Mode int64
	Data []byte
}

// BusyboxTarball writes an OCI image layout tarball named after ref into
// dir and returns its path; extra files are added to the layer. ref is normalised the way docker does
// ("busybox" -> docker.io/library/busybox:latest) and recorded in the
// index's io.containerd.image.name annotation, so an import registers the
// image under that name. The output is byte-for-byte deterministic.
func BusyboxTarball(dir string, ref string, extra ...File) (string, error) {
	return BusyboxTarballFor(dir, ref, BusyboxPath, runtime.GOARCH, extra...)
}

// BusyboxTarballFor is BusyboxTarball around another static busybox binary
// built for goarch (e.g. an arm64 one for emulated boards).
func BusyboxTarballFor(dir, ref, busyboxPath, goarch string, extra ...File) (string, error) {
	return build(dir, ref, busyboxPath, goarch, nil, extra)
}

// Healthcheck is a Docker image config's HEALTHCHECK (config.Healthcheck;
// OCI's image spec has no field for it, Docker's builders write it).
type Healthcheck struct {
	Test        []string      `json:"Test"`
	Interval    time.Duration `json:"Interval,omitempty"`
	Timeout     time.Duration `json:"Timeout,omitempty"`
	StartPeriod time.Duration `json:"StartPeriod,omitempty"`
	Retries     int           `json:"Retries,omitempty"`
}

// BusyboxTarballWithHealthcheck is BusyboxTarball with a HEALTHCHECK in
// the image config.
func BusyboxTarballWithHealthcheck(dir, ref string, hc Healthcheck, extra ...File) (string, error) {
	return build(dir, ref, BusyboxPath, runtime.GOARCH, &hc, extra)
}

func build(dir, ref, busyboxPath, goarch string, hc *Healthcheck, extra []File) (string, error) {
	named, err := reference.ParseDockerRef(ref)
	if err != nil {
		return "", fmt.Errorf("parse image ref %q: %w", ref, err)
	}
	busybox, err := os.ReadFile(busyboxPath)
	if err != nil {
		return "", fmt.Errorf("read busybox (install busybox-static): %w", err)
	}

	layerTar, err := rootfsTar(busybox, extra)
	if err != nil {
		return "", err
	}
	layerGz, err := gzipDeterministic(layerTar)
	if err != nil {
		return "", err
	}

	config := ocispec.Image{
		Platform: ocispec.Platform{Architecture: goarch, OS: "linux"},
		Config: ocispec.ImageConfig{
			Env: []string{"PATH=/bin"},
			Cmd: []string{"sh"},
		},
		RootFS: ocispec.RootFS{Type: "layers", DiffIDs: []digest.Digest{digest.FromBytes(layerTar)}},
	}
	configJSON, err := json.Marshal(config)
	if err != nil {
		return "", fmt.Errorf("marshal image config: %w", err)
	}
	if hc != nil {
		if configJSON, err = withHealthcheck(configJSON, *hc); err != nil {
			return "", err
		}
	}

	manifest := ocispec.Manifest{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: ocispec.MediaTypeImageManifest,
		Config:    descriptor(ocispec.MediaTypeImageConfig, configJSON),
		Layers:    []ocispec.Descriptor{descriptor(ocispec.MediaTypeImageLayerGzip, layerGz)},
	}
	manifestJSON, err := json.Marshal(manifest)
	if err != nil {
		return "", fmt.Errorf("marshal manifest: %w", err)
	}

	manifestDesc := descriptor(ocispec.MediaTypeImageManifest, manifestJSON)
	manifestDesc.Platform = &config.Platform
	manifestDesc.Annotations = map[string]string{
		"io.containerd.image.name": named.String(),
	}
	if tagged, ok := named.(reference.Tagged); ok {
		manifestDesc.Annotations[ocispec.AnnotationRefName] = tagged.Tag()
	}
	index := ocispec.Index{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: ocispec.MediaTypeImageIndex,
		Manifests: []ocispec.Descriptor{manifestDesc},
	}
	indexJSON, err := json.Marshal(index)
	if err != nil {
		return "", fmt.Errorf("marshal index: %w", err)
	}
	layoutJSON, err := json.Marshal(ocispec.ImageLayout{Version: ocispec.ImageLayoutVersion})
	if err != nil {
		return "", fmt.Errorf("marshal oci-layout: %w", err)
	}

	var out bytes.Buffer
	tw := tar.NewWriter(&out)
	files := []struct {
		name string
		data []byte
	}{
		{ocispec.ImageLayoutFile, layoutJSON},
		{"blobs/sha256/" + digest.FromBytes(configJSON).Encoded(), configJSON},
		{"blobs/sha256/" + digest.FromBytes(layerGz).Encoded(), layerGz},
		{"blobs/sha256/" + digest.FromBytes(manifestJSON).Encoded(), manifestJSON},
		{ocispec.ImageIndexFile, indexJSON},
	}
	for _, d := range []string{"blobs/", "blobs/sha256/"} {
		if err := tw.WriteHeader(dirHeader(d)); err != nil {
			return "", fmt.Errorf("write tar dir %s: %w", d, err)
		}
	}
	for _, f := range files {
		if err := writeFile(tw, f.name, 0o644, f.data); err != nil {
			return "", err
		}
	}
	if err := tw.Close(); err != nil {
		return "", fmt.Errorf("close image tar: %w", err)
	}

	path := filepath.Join(dir, fileName(named.String()))
	if err := os.WriteFile(path, out.Bytes(), 0o644); err != nil {
		return "", fmt.Errorf("write image tarball: %w", err)
	}
	return path, nil
}

// fileName turns a ref into a flat, readable file name.
func fileName(ref string) string {
	r := strings.NewReplacer("/", "_", ":", "_", "@", "_")
	return r.Replace(ref) + ".tar"
}

// rootfsTar is the single layer: /bin/busybox, its applet links and the
// directories a container runtime expects to mount over.
func rootfsTar(busybox []byte, extra []File) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, d := range []string{"bin/", "dev/", "etc/", "proc/", "sys/", "tmp/", "var/", "var/www/"} {
		h := dirHeader(d)
		if d == "tmp/" {
			h.Mode = 0o1777
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, fmt.Errorf("write layer dir %s: %w", d, err)
		}
	}
	if err := writeFile(tw, "bin/busybox", 0o755, busybox); err != nil {
		return nil, err
	}
	for _, a := range Applets {
		h := &tar.Header{
			Typeflag: tar.TypeSymlink, Name: "bin/" + a, Linkname: "busybox",
			Mode: 0o777, ModTime: epoch, Format: tar.FormatPAX,
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, fmt.Errorf("write applet link %s: %w", a, err)
		}
	}
	// A root user, so tools that look one up (id, httpd) find it.
	if err := writeFile(tw, "etc/passwd", 0o644, []byte("root:x:0:0:root:/:/bin/sh\n")); err != nil {
		return nil, err
	}
	if err := writeFile(tw, "etc/group", 0o644, []byte("root:x:0:\n")); err != nil {
		return nil, err
	}
	for _, f := range extra {
		if err := writeFile(tw, f.Path, f.Mode, f.Data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, fmt.Errorf("close layer tar: %w", err)
	}
	return buf.Bytes(), nil
}

func dirHeader(name string) *tar.Header {
	return &tar.Header{Typeflag: tar.TypeDir, Name: name, Mode: 0o755, ModTime: epoch, Format: tar.FormatPAX}
}

func writeFile(tw *tar.Writer, name string, mode int64, data []byte) error {
	h := &tar.Header{
		Typeflag: tar.TypeReg, Name: name, Mode: mode, Size: int64(len(data)),
		ModTime: epoch, Format: tar.FormatPAX,
	}
	if err := tw.WriteHeader(h); err != nil {
		return fmt.Errorf("write tar header %s: %w", name, err)
	}
	if _, err := tw.Write(data); err != nil {
		return fmt.Errorf("write tar data %s: %w", name, err)
	}
	return nil
}

// gzipDeterministic compresses without a file name or timestamp in the
// header, so the layer digest depends only on its content.
func gzipDeterministic(data []byte) ([]byte, error) {
	var buf bytes.Buffer
	zw, err := gzip.NewWriterLevel(&buf, gzip.BestSpeed)
	if err != nil {
		return nil, fmt.Errorf("gzip writer: %w", err)
	}
	zw.ModTime = epoch
	if _, err := zw.Write(data); err != nil {
		return nil, fmt.Errorf("gzip layer: %w", err)
	}
	if err := zw.Close(); err != nil {
		return nil, fmt.Errorf("close gzip: %w", err)
	}
	return buf.Bytes(), nil
}

func descriptor(mediaType string, data []byte) ocispec.Descriptor {
	return ocispec.Descriptor{MediaType: mediaType, Digest: digest.FromBytes(data), Size: int64(len(data))}
}

// withHealthcheck adds config.Healthcheck to an image config.
func withHealthcheck(configJSON []byte, hc Healthcheck) ([]byte, error) {
	var doc map[string]json.RawMessage
	if err := json.Unmarshal(configJSON, &doc); err != nil {
		return nil, fmt.Errorf("decode image config: %w", err)
	}
	var cfg map[string]any
	if err := json.Unmarshal(doc["config"], &cfg); err != nil {
		return nil, fmt.Errorf("decode image config: %w", err)
	}
	cfg["Healthcheck"] = hc
	raw, err := json.Marshal(cfg)
	if err != nil {
		return nil, fmt.Errorf("encode image config: %w", err)
	}
	doc["config"] = raw
	out, err := json.Marshal(doc)
	if err != nil {
		return nil, fmt.Errorf("encode image config: %w", err)
	}
	return out, nil
}

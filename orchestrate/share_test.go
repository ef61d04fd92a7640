package orchestrate

import (
	"bytes"
	"context"
	"encoding/pem"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/warren-appliance/warren/orchestrate/registry"
)

func TestPullProgressCountsBytesOfKnownBlobs(t *testing.T) {
	s := newImageStore(nil, "", slog.New(slog.DiscardHandler))
	ref := "reg.local/app:1"
	if d, tot := s.pullProgress(ref); d != 0 || tot != 0 {
		t.Fatalf("no pull: %d of %d", d, tot)
	}
	s.pulls[ref] = &pull{}
	manifest := ocispec.Descriptor{Digest: digest.FromString("m"), Size: 400}
	layer := ocispec.Descriptor{Digest: digest.FromString("l"), Size: 50 << 20}
	s.progressAdd(ref, manifest)
	s.progressDone(ref, manifest, true)
	s.progressAdd(ref, layer)
	s.progressBytes(layer.Digest, 10<<20)
	if d, tot := s.pullProgress(ref); d != 400+10<<20 || tot != 400+50<<20 {
		t.Fatalf("mid-layer: %d of %d", d, tot)
	}
	s.progressBytes(layer.Digest, -(10 << 20)) // a source's bytes thrown away
	s.progressBytes(layer.Digest, 5<<20)
	if d, _ := s.pullProgress(ref); d != 400+5<<20 {
		t.Fatalf("after a reset: %d", d)
	}
	s.progressDone(ref, layer, true)
	if d, tot := s.pullProgress(ref); d != tot {
		t.Fatalf("all in: %d of %d", d, tot)
	}
	s.pulls[ref].done = true
	s.progressForget(ref)
	if d, tot := s.pullProgress(ref); d != 0 || tot != 0 || len(s.inflight) != 0 {
		t.Fatalf("after the pull: %d of %d, %d in flight", d, tot, len(s.inflight))
	}
}

// The registry as a blob source resumes with a range request.
func TestUpstreamResumesWithRange(t *testing.T) {
	data := bytes.Repeat([]byte("0123456789abcdef"), 64<<10) // 1 MiB
	desc := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayerGzip, Digest: digest.FromBytes(data), Size: int64(len(data))}
	var ranges []string
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v2/team/app/blobs/"+desc.Digest.String() {
			http.NotFound(w, r)
			return
		}
		ranges = append(ranges, r.Header.Get("Range"))
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(data))
	}))
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "https://")
	s := newImageStore(nil, "", slog.New(slog.DiscardHandler))
	s.setRegistries([]registry.Config{{Host: host, CA: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})}})
	rc, err := (&upstream{s: s, ref: host + "/team/app:1"}).Open(context.Background(), desc, 300<<10)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(rc)
	rc.Close()
	if err != nil || !bytes.Equal(got, data[300<<10:]) {
		t.Fatalf("read %d bytes (%v), want the last %d", len(got), err, len(data)-300<<10)
	}
	if len(ranges) == 0 || ranges[len(ranges)-1] != "bytes=307200-" {
		t.Fatalf("the registry was asked %q, want a request for bytes=307200-", ranges)
	}
}

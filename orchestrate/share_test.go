package orchestrate

import (
	"log/slog"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
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

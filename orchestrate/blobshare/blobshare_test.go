package blobshare

import (
	"bytes"
	"context"
	"crypto/rand"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

func blob(t *testing.T, n int) ([]byte, ocispec.Descriptor) {
	t.Helper()
	b := make([]byte, n)
	rand.Read(b)
	return b, ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayerGzip, Digest: digest.FromBytes(b), Size: int64(n)}
}

// memStore is a node's blob store in memory.
type memStore struct {
	mu       sync.Mutex
	blobs    map[digest.Digest][]byte
	obtained []string
	get      func(desc ocispec.Descriptor) []byte
}

type nopSeekCloser struct{ *bytes.Reader }

func (nopSeekCloser) Close() error { return nil }

func (m *memStore) Open(_ context.Context, d digest.Digest) (io.ReadSeekCloser, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	b, ok := m.blobs[d]
	if !ok {
		return nil, ErrNotFound
	}
	return nopSeekCloser{bytes.NewReader(b)}, nil
}

func (m *memStore) Obtain(_ context.Context, ref string, desc ocispec.Descriptor) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.obtained = append(m.obtained, ref)
	if m.get != nil {
		m.blobs[desc.Digest] = m.get(desc)
	}
	return nil
}

func (m *memStore) Resolve(context.Context, string) (string, ocispec.Descriptor, error) {
	return "", ocispec.Descriptor{}, ErrNotFound
}

// peerServer serves st over HTTP as a node does (TLS is the node's; the
// content checks are what is under test here), counting Range headers.
func peerServer(t *testing.T, h http.Handler) (*httptest.Server, *[]string) {
	var ranges []string
	var mu sync.Mutex
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		if r.Method == http.MethodGet {
			ranges = append(ranges, r.Header.Get("Range"))
		}
		mu.Unlock()
		h.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return srv, &ranges
}

func peer(name string, srv *httptest.Server) Peer {
	return Peer{Name: name, Base: srv.URL, Client: srv.Client()}
}

func TestDigestMismatchRefused(t *testing.T) {
	data, desc := blob(t, 300<<10)
	bad := bytes.Clone(data)
	bad[1000] ^= 0xff // same size, other bytes: a lying or corrupt peer
	liar, _ := peerServer(t, Handler(&memStore{blobs: map[digest.Digest][]byte{desc.Digest: bad}}))
	honest, _ := peerServer(t, Handler(&memStore{blobs: map[digest.Digest][]byte{desc.Digest: data}}))

	sink := &MemSink{}
	if _, err := Copy(context.Background(), sink, desc, []Source{peer("liar", liar)}); err == nil || sink.Committed {
		t.Fatalf("bytes of another digest were kept (err %v)", err)
	} else if !strings.Contains(err.Error(), "digest mismatch") {
		t.Fatalf("error does not say why: %v", err)
	}

	sink = &MemSink{}
	used, err := Copy(context.Background(), sink, desc, []Source{peer("liar", liar), peer("honest", honest)})
	if err != nil || !sink.Committed || !bytes.Equal(sink.Data, data) {
		t.Fatalf("with an honest source after the liar: %v", err)
	}
	if len(used) != 1 || used[0] != "node honest" {
		t.Fatalf("bytes from %v, want the honest node only", used)
	}
}

// A peer that dies mid-blob: the next source resumes at the offset with a
// range request; the result is verified whole.
func TestPeerDiesMidBlobResumedFromAnother(t *testing.T) {
	data, desc := blob(t, 1<<20)
	half := 400 << 10
	dying := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "1048576")
		w.WriteHeader(http.StatusOK)
		w.Write(data[:half])
		w.(http.Flusher).Flush()
		conn, _, _ := w.(http.Hijacker).Hijack() // the node loses power
		conn.Close()
	}))
	t.Cleanup(dying.Close)
	other, ranges := peerServer(t, Handler(&memStore{blobs: map[digest.Digest][]byte{desc.Digest: data}}))

	sink := &MemSink{}
	used, err := Copy(context.Background(), sink, desc, []Source{peer("dying", dying), peer("other", other)})
	if err != nil || !sink.Committed || !bytes.Equal(sink.Data, data) {
		t.Fatalf("resume: %v", err)
	}
	if len(used) != 2 {
		t.Fatalf("bytes from %v, want both", used)
	}
	if len(*ranges) != 1 || (*ranges)[0] != "bytes=409600-" {
		t.Fatalf("the second source was asked %q, want one request for bytes=409600-", *ranges)
	}

	// An ingest that survived a restart resumes too.
	sink = &MemSink{Data: bytes.Clone(data[:half])}
	*ranges = nil
	if _, err := Copy(context.Background(), sink, desc, []Source{peer("other", other)}); err != nil || !bytes.Equal(sink.Data, data) {
		t.Fatalf("resumed ingest: %v", err)
	}
	if (*ranges)[0] != "bytes=409600-" {
		t.Fatalf("asked %q", *ranges)
	}
}

func TestHandlerFetchesForTheClusterOnce(t *testing.T) {
	data, desc := blob(t, 64<<10)
	st := &memStore{blobs: map[digest.Digest][]byte{}, get: func(ocispec.Descriptor) []byte { return data }}
	srv, _ := peerServer(t, Handler(st))
	p := peer("manager", srv)
	if p.Has(context.Background(), desc.Digest) {
		t.Fatal("HEAD says it has a blob it does not")
	}
	if _, err := p.Open(context.Background(), desc, 0); err != ErrNotFound {
		t.Fatalf("GET without fetch: %v, want not found", err)
	}
	p.Fetch, p.Ref = true, "reg.local/app:1"
	sink := &MemSink{}
	if _, err := Copy(context.Background(), sink, desc, []Source{p}); err != nil || !sink.Committed {
		t.Fatal(err)
	}
	sink = &MemSink{}
	if _, err := Copy(context.Background(), sink, desc, []Source{p}); err != nil || !sink.Committed {
		t.Fatal(err)
	}
	if len(st.obtained) != 1 || st.obtained[0] != "reg.local/app:1" {
		t.Fatalf("obtained %v, want once for reg.local/app:1", st.obtained)
	}
	if !peer("manager", srv).Has(context.Background(), desc.Digest) {
		t.Fatal("HEAD after the fetch")
	}
}

package orchestrate

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/leases"
	"github.com/containerd/containerd/v2/core/remotes"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/warren-appliance/warren/orchestrate/blobshare"
	"github.com/warren-appliance/warren/orchestrate/registry"
)

// One pull per cluster: a node gets each blob first from the nodes that
// have it, then from the coordinator (the node that fetches from the
// registry for the whole cluster, one flight per blob), and only then
// from the registry itself. Every blob is verified by digest when it is
// committed to containerd's content store.

// SharePeer is another node's blob server.
type SharePeer struct {
	Name   string
	Base   string       // https://overlay-ip:port
	Client *http.Client // mTLS, checking that the server is that node
}

// Sharing is how this node shares blobs with the others.
type Sharing struct {
	Peers []SharePeer // the other nodes
	// Coordinator fetches from the registry for the cluster; nil when
	// this node is the coordinator (or alone).
	Coordinator *SharePeer
}

// SetSharing sets the nodes this node gets blobs from.
func (r *Reconciler) SetSharing(s Sharing) { r.images.setSharing(s) }

// BlobHandler serves this node's blobs to the other nodes (mount it on an
// mTLS listener that takes only the cluster's nodes).
func (r *Reconciler) BlobHandler() http.Handler { return blobshare.Handler(r.images) }

func (s *imageStore) setSharing(sh Sharing) {
	s.mu.Lock()
	s.sharing = sh
	s.mu.Unlock()
}

// sharedResolver resolves at the registry, or through the coordinator
// when this node cannot reach it, and fetches through obtain.
type sharedResolver struct {
	s  *imageStore
	up remotes.Resolver
}

func (s *imageStore) pullResolver() remotes.Resolver {
	return &sharedResolver{s: s, up: s.resolver()}
}

func (r *sharedResolver) Resolve(ctx context.Context, ref string) (string, ocispec.Descriptor, error) {
	name, desc, err := r.up.Resolve(ctx, ref)
	if err == nil {
		return name, desc, nil
	}
	co := r.s.coordinator()
	if co == nil || !reachProblem(err) {
		return "", ocispec.Descriptor{}, err
	}
	p := blobshare.Peer{Name: co.Name, Base: co.Base, Client: co.Client}
	name, desc, cerr := p.Resolve(ctx, ref)
	if cerr != nil {
		// The coordinator's answer says what to fix (this node's own
		// error only that it cannot reach the registry).
		return "", ocispec.Descriptor{}, errors.Join(cerr, err)
	}
	r.s.log.Info("resolved through the coordinator: this node cannot reach the registry", "image", ref, "node", co.Name)
	return name, desc, nil
}

// reachProblem: this node cannot reach the registry (the coordinator
// may).
func reachProblem(err error) bool {
	switch registry.Classify(err) {
	case registry.Unreachable, registry.UnknownHost:
		return true
	}
	return false
}

func (r *sharedResolver) Fetcher(_ context.Context, ref string) (remotes.Fetcher, error) {
	return remotes.FetcherFunc(func(ctx context.Context, desc ocispec.Descriptor) (io.ReadCloser, error) {
		r.s.progressAdd(ref, desc)
		err := r.s.Obtain(ctx, ref, desc)
		r.s.progressDone(ref, desc, err == nil)
		if err != nil {
			return nil, err
		}
		rc, err := r.s.Open(ctx, desc.Digest)
		if errors.Is(err, blobshare.ErrNotFound) {
			return nil, fmt.Errorf("blob %s: gone from the content store right after it was fetched: %w", desc.Digest, errdefs.ErrUnavailable)
		}
		return rc, err
	}), nil
}

func (r *sharedResolver) Pusher(ctx context.Context, ref string) (remotes.Pusher, error) {
	return r.up.Pusher(ctx, ref)
}

func (s *imageStore) coordinator() *SharePeer {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.sharing.Coordinator
}

func (s *imageStore) nsCtx(ctx context.Context) context.Context {
	if _, ok := namespaces.Namespace(ctx); ok || s.namespace == "" {
		return ctx
	}
	return namespaces.WithNamespace(ctx, s.namespace)
}

type sectionReadCloser struct {
	*io.SectionReader
	c io.Closer
}

func (r sectionReadCloser) Close() error { return r.c.Close() }

// Open implements blobshare.Store: a blob of the content store.
func (s *imageStore) Open(ctx context.Context, dgst digest.Digest) (io.ReadSeekCloser, error) {
	ctx = s.nsCtx(ctx)
	cs := s.client.ContentStore()
	info, err := cs.Info(ctx, dgst)
	if errdefs.IsNotFound(err) {
		return nil, blobshare.ErrNotFound
	}
	if err != nil {
		return nil, err
	}
	ra, err := cs.ReaderAt(ctx, ocispec.Descriptor{Digest: dgst, Size: info.Size})
	if errdefs.IsNotFound(err) {
		return nil, blobshare.ErrNotFound
	}
	if err != nil {
		return nil, err
	}
	return sectionReadCloser{io.NewSectionReader(ra, 0, info.Size), ra}, nil
}

// Resolve implements blobshare.Store: at the registry, for a node that
// cannot reach it.
func (s *imageStore) Resolve(ctx context.Context, ref string) (string, ocispec.Descriptor, error) {
	if ref == "" {
		return "", ocispec.Descriptor{}, errors.New("no ref")
	}
	full, err := normalizeRef(ref)
	if err != nil {
		return "", ocispec.Descriptor{}, err
	}
	name, desc, err := s.resolver().Resolve(ctx, full)
	if err != nil {
		return "", ocispec.Descriptor{}, registry.Wrap(err, refDomain(full))
	}
	return name, desc, nil
}

// Obtain implements blobshare.Store: it gets desc into the content store,
// one flight per blob on this node (this node's pulls and other nodes'
// requests share it).
func (s *imageStore) Obtain(ctx context.Context, ref string, desc ocispec.Descriptor) error {
	ctx = s.nsCtx(ctx)
	cs := s.client.ContentStore()
	if _, err := cs.Info(ctx, desc.Digest); err == nil {
		return nil
	}
	if _, ok := leases.FromContext(ctx); !ok {
		// A fetch for another node: keep the blob an hour for the
		// others, then it may be collected unless an image holds it.
		lctx, _, err := s.client.WithLease(ctx, leases.WithExpiration(time.Hour))
		if err != nil {
			return fmt.Errorf("lease for blob %s: %w", desc.Digest, err)
		}
		ctx = lctx
	}
	_, err, _ := s.flights.Do(desc.Digest.String(), func() (any, error) {
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), pullTimeout)
		defer cancel()
		return nil, s.fetchBlob(fctx, ref, desc)
	})
	return err
}

func (s *imageStore) fetchBlob(ctx context.Context, ref string, desc ocispec.Descriptor) error {
	cs := s.client.ContentStore()
	open := func() (content.Writer, error) {
		return content.OpenWriter(ctx, cs, content.WithRef("warren-share-"+desc.Digest.String()), content.WithDescriptor(desc))
	}
	w, err := open()
	if errdefs.IsAlreadyExists(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("blob %s: %w", desc.Digest, err)
	}
	sink := &writerSink{w: w, open: open, wrote: func(n int) { s.progressBytes(desc.Digest, n) }}
	defer sink.close()
	sources := s.sources(ctx, ref, desc)
	used, err := blobshare.Copy(ctx, sink, desc, sources)
	if errdefs.IsAlreadyExists(err) {
		return nil
	}
	if err != nil {
		return err
	}
	s.log.Info("blob fetched", "digest", desc.Digest, "bytes", desc.Size, "from", used)
	s.countFetched(used)
	return nil
}

// sources lists where to get desc: the nodes that have it (asked in
// parallel), the coordinator (which fetches it for the cluster), then
// the registry.
func (s *imageStore) sources(ctx context.Context, ref string, desc ocispec.Descriptor) []blobshare.Source {
	s.mu.Lock()
	sh := s.sharing
	s.mu.Unlock()
	have := make([]bool, len(sh.Peers))
	var wg sync.WaitGroup
	for i, p := range sh.Peers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			have[i] = blobshare.Peer{Name: p.Name, Base: p.Base, Client: p.Client}.Has(ctx, desc.Digest)
		}()
	}
	wg.Wait()
	var out []blobshare.Source
	for i, p := range sh.Peers {
		if have[i] {
			out = append(out, blobshare.Peer{Name: p.Name, Base: p.Base, Client: p.Client})
		}
	}
	if co := sh.Coordinator; co != nil {
		out = append(out, blobshare.Peer{Name: co.Name, Base: co.Base, Client: co.Client, Fetch: true, Ref: ref})
	}
	return append(out, &upstream{s: s, ref: ref})
}

// upstream is the registry (or its mirrors) as a blob source.
type upstream struct {
	s   *imageStore
	ref string
}

func (u *upstream) String() string { return "registry " + refDomain(u.ref) }

func (u *upstream) Open(ctx context.Context, desc ocispec.Descriptor, offset int64) (io.ReadCloser, error) {
	if u.ref == "" {
		return nil, errors.New("no image reference to fetch from")
	}
	full, err := normalizeRef(u.ref)
	if err != nil {
		return nil, err
	}
	f, err := u.s.resolver().Fetcher(ctx, full)
	if err != nil {
		return nil, err
	}
	rc, err := f.Fetch(ctx, desc)
	if err != nil {
		return nil, err
	}
	if offset > 0 {
		if sk, ok := rc.(io.Seeker); ok {
			_, err = sk.Seek(offset, io.SeekStart) // a range request
		} else {
			_, err = io.CopyN(io.Discard, rc, offset)
		}
		if err != nil {
			rc.Close()
			return nil, err
		}
	}
	return rc, nil
}

// writerSink is a containerd content writer as a blobshare.Sink. A
// failed commit closes the writer: the next use opens the ingest again.
type writerSink struct {
	w     content.Writer
	open  func() (content.Writer, error)
	wrote func(n int) // progress
}

func (ws *writerSink) writer() (content.Writer, error) {
	if ws.w == nil {
		w, err := ws.open()
		if err != nil {
			return nil, err
		}
		ws.w = w
	}
	return ws.w, nil
}

func (ws *writerSink) Write(p []byte) (int, error) {
	w, err := ws.writer()
	if err != nil {
		return 0, err
	}
	n, err := w.Write(p)
	if ws.wrote != nil {
		ws.wrote(n)
	}
	return n, err
}

func (ws *writerSink) Offset() (int64, error) {
	w, err := ws.writer()
	if err != nil {
		return 0, err
	}
	st, err := w.Status()
	return st.Offset, err
}

func (ws *writerSink) Reset() error {
	w, err := ws.writer()
	if err != nil {
		return err
	}
	if ws.wrote != nil {
		if st, err := w.Status(); err == nil {
			ws.wrote(-int(st.Offset))
		}
	}
	return w.Truncate(0)
}

func (ws *writerSink) Commit(ctx context.Context, size int64, expected digest.Digest) error {
	w, err := ws.writer()
	if err != nil {
		return err
	}
	err = w.Commit(ctx, size, expected)
	if err != nil {
		w.Close()
		ws.w = nil
	}
	return err
}

func (ws *writerSink) close() {
	if ws.w != nil {
		ws.w.Close()
	}
}

// countFetched counts blobs by where they came from (for logs and tests).
func (s *imageStore) countFetched(used []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, u := range used {
		s.fetchedFrom[u]++
	}
}

// pullProgress is a pull's bytes so far: per image, the blobs asked for
// (their sizes add up to the total) and how much of each is in.
type pullProgress struct {
	blobs map[digest.Digest]int64 // size
	done  map[digest.Digest]bool
}

func (s *imageStore) progressAdd(ref string, desc ocispec.Descriptor) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.progress[ref]
	if p == nil {
		p = &pullProgress{blobs: map[digest.Digest]int64{}, done: map[digest.Digest]bool{}}
		s.progress[ref] = p
	}
	p.blobs[desc.Digest] = desc.Size
}

func (s *imageStore) progressDone(ref string, desc ocispec.Descriptor, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if p := s.progress[ref]; p != nil && ok {
		p.done[desc.Digest] = true
	}
}

func (s *imageStore) progressBytes(d digest.Digest, n int) {
	s.mu.Lock()
	s.inflight[d] += int64(n)
	s.mu.Unlock()
}

// pullProgress returns the bytes of ref's image pulled so far and the
// total of the blobs known so far (0, 0 when no pull of it runs).
func (s *imageStore) pullProgress(ref string) (done, total int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if pl := s.pulls[ref]; pl == nil || pl.done {
		return 0, 0
	}
	p := s.progress[ref]
	if p == nil {
		return 0, 0
	}
	for d, size := range p.blobs {
		total += size
		switch {
		case p.done[d]:
			done += size
		default:
			done += min(max(s.inflight[d], 0), size)
		}
	}
	return done, total
}

// progressForget drops a finished pull's progress.
func (s *imageStore) progressForget(ref string) {
	for d := range s.progress[ref].blobsOrNil() {
		delete(s.inflight, d)
	}
	delete(s.progress, ref)
}

func (p *pullProgress) blobsOrNil() map[digest.Digest]int64 {
	if p == nil {
		return nil
	}
	return p.blobs
}

package orchestrate

import (
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/remotes"
	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/containerd/errdefs"
	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"
	"golang.org/x/sync/singleflight"

	"github.com/warren-appliance/warren/orchestrate/registry"
)

// pullTimeout bounds one registry pull so a dead registry cannot wedge a
// task's convergence forever; the task is retried with backoff.
const pullTimeout = 5 * time.Minute

// normalizeRef turns a user's image ref into containerd's full form:
// "nginx" -> "docker.io/library/nginx:latest".
func normalizeRef(ref string) (string, error) {
	named, err := reference.ParseDockerRef(strings.TrimSpace(ref))
	if err != nil {
		return "", fmt.Errorf("invalid image reference %q: %w", ref, err)
	}
	return named.String(), nil
}

// imageStore imports airgap tarballs and makes images ready for containers.
type imageStore struct {
	client *client.Client
	dir    string
	log    *slog.Logger

	mu      sync.Mutex
	seen    map[string]fileStamp   // tarballs already handled, by path
	refLock map[string]*sync.Mutex // one look-up/unpack per ref at a time
	pulls   map[string]*pull       // background pulls, by ref

	onPulled func() // called when a background pull ends

	regs []registry.Config // added registries, with credentials (memory only)

	namespace   string // containerd namespace of calls from the blob server
	sharing     Sharing
	flights     singleflight.Group // one fetch per blob on this node
	fetchedFrom map[string]int     // blobs fetched, by source
	progress    map[string]*pullProgress
	inflight    map[digest.Digest]int64 // bytes written of blobs being fetched
}

// setRegistries replaces the registries pulls use.
func (s *imageStore) setRegistries(regs []registry.Config) {
	s.mu.Lock()
	s.regs = regs
	s.mu.Unlock()
}

// resolver is containerd's registry resolver for the added registries:
// each with its CA or plain HTTP and its credentials, mirrors first. A
// registry nobody added is spoken to as Docker does: HTTPS with the
// system's CAs (plain HTTP on localhost), anonymous token auth.
func (s *imageStore) resolver() remotes.Resolver {
	s.mu.Lock()
	regs := s.regs
	s.mu.Unlock()
	return docker.NewResolver(docker.ResolverOptions{Hosts: registry.Hosts(regs)})
}

type fileStamp struct {
	size  int64
	mtime time.Time
}

func newImageStore(c *client.Client, dir string, log *slog.Logger) *imageStore {
	return &imageStore{client: c, dir: dir, log: log, seen: map[string]fileStamp{}, refLock: map[string]*sync.Mutex{}, pulls: map[string]*pull{},
		fetchedFrom: map[string]int{}, progress: map[string]*pullProgress{}, inflight: map[digest.Digest]int64{}}
}

func isImageTarball(name string) bool {
	return strings.HasSuffix(name, ".tar") || strings.HasSuffix(name, ".tar.gz") || strings.HasSuffix(name, ".tgz")
}

// importNew imports every tarball in the images dir that is new or changed
// since the last scan and returns how many it imported. A tarball that
// fails (e.g. still being copied) is retried once it changes.
func (s *imageStore) importNew(ctx context.Context) (int, error) {
	if s.dir == "" {
		return 0, nil
	}
	entries, err := os.ReadDir(s.dir)
	if os.IsNotExist(err) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("list images dir: %w", err)
	}
	imported := 0
	for _, e := range entries {
		if e.IsDir() || !isImageTarball(e.Name()) {
			continue
		}
		info, err := e.Info()
		if err != nil {
			continue // removed while we looked
		}
		path := filepath.Join(s.dir, e.Name())
		stamp := fileStamp{info.Size(), info.ModTime()}
		s.mu.Lock()
		done := s.seen[path] == stamp
		s.seen[path] = stamp
		s.mu.Unlock()
		if done {
			continue
		}
		names, err := s.importFile(ctx, path)
		if err != nil {
			s.log.Warn("image tarball import failed", "file", path, "err", err)
			continue
		}
		imported++
		s.log.Info("imported image tarball", "file", path, "images", names)
	}
	return imported, nil
}

func (s *imageStore) importFile(ctx context.Context, path string) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open: %w", err)
	}
	defer f.Close()
	var r io.Reader = f
	if !strings.HasSuffix(path, ".tar") {
		zr, err := gzip.NewReader(f)
		if err != nil {
			return nil, fmt.Errorf("gunzip: %w", err)
		}
		defer zr.Close()
		r = zr
	}
	imgs, err := s.client.Import(ctx, r, client.WithImageRefTranslator(translateImportedName))
	if err != nil {
		return nil, fmt.Errorf("import: %w", err)
	}
	names := make([]string, 0, len(imgs))
	for _, img := range imgs {
		names = append(names, img.Name)
		// Unpack now so the first task start does not pay for it.
		if err := client.NewImage(s.client, img).Unpack(ctx, ""); err != nil {
			return names, fmt.Errorf("unpack %s: %w", img.Name, err)
		}
	}
	return names, nil
}

// translateImportedName normalises a full name found in an OCI index's
// ref.name annotation; a bare tag ("latest") names nothing useful and
// stays as it is.
func translateImportedName(name string) string {
	if !strings.ContainsAny(name, "/:") {
		return name
	}
	if full, err := normalizeRef(name); err == nil {
		return full
	}
	return name
}

// errPulling says a pull of the image is under way: the task waits for it
// without holding up the rest of the pass.
var errPulling = errors.New("pulling image")

// pull is one background registry pull.
type pull struct {
	done bool
	err  error
}

// ensure returns ref as an unpacked image. An image that is not present is
// pulled in the background: ensure returns errPulling until the pull ends
// (then onPulled is called), then the pull's error once, so the caller's
// next attempt starts a fresh pull.
func (s *imageStore) ensure(ctx context.Context, ref string) (client.Image, error) {
	s.mu.Lock()
	l := s.refLock[ref]
	if l == nil {
		l = &sync.Mutex{}
		s.refLock[ref] = l
	}
	s.mu.Unlock()
	l.Lock()
	defer l.Unlock()

	img, err := s.client.GetImage(ctx, ref)
	if errdefs.IsNotFound(err) {
		return nil, s.pullInBackground(ctx, ref)
	}
	if err != nil {
		return nil, fmt.Errorf("look up image %s: %w", ref, err)
	}
	unpacked, err := img.IsUnpacked(ctx, "")
	if err != nil {
		return nil, fmt.Errorf("check image %s: %w", ref, err)
	}
	if !unpacked {
		if err := img.Unpack(ctx, ""); err != nil {
			return nil, fmt.Errorf("unpack image %s: %w", ref, err)
		}
	}
	return img, nil
}

// pullInBackground starts or follows the pull of ref; it returns
// errPulling while one runs and the outcome of a failed one once.
func (s *imageStore) pullInBackground(ctx context.Context, ref string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if p := s.pulls[ref]; p != nil {
		if !p.done {
			return errPulling
		}
		delete(s.pulls, ref)
		if p.err != nil {
			return p.err
		}
		// Pulled, yet gone again (removed meanwhile): pull anew.
	}
	p := &pull{}
	s.pulls[ref] = p
	s.log.Info("pulling image", "image", ref)
	go func() {
		pullCtx, cancel := context.WithTimeout(ctx, pullTimeout)
		_, err := s.client.Pull(pullCtx, ref, client.WithPullUnpack, client.WithResolver(s.pullResolver()))
		cancel()
		if err != nil {
			err = fmt.Errorf("image %s is not present and pulling it failed: %w", ref, registry.Wrap(err, refDomain(ref)))
		} else {
			s.log.Info("pulled image", "image", ref)
		}
		s.mu.Lock()
		p.done, p.err = true, err
		s.progressForget(ref)
		s.mu.Unlock()
		if s.onPulled != nil {
			s.onPulled()
		}
	}()
	return errPulling
}

// refDomain is the registry of a normalised image reference.
func refDomain(ref string) string {
	named, err := reference.ParseNormalizedNamed(ref)
	if err != nil {
		return ref
	}
	return reference.Domain(named)
}

// Package blobshare fetches image blobs (layers, configs, manifests) by
// digest from several sources in turn: nodes of the cluster that have the
// blob, the node that fetches it from the registry for the whole cluster,
// then the registry. Content is addressed by digest and verified before
// use: a source is never trusted, whatever it sends is checked against
// the digest when the blob is committed. An interrupted download resumes
// where it stopped, from the next source, with a range request.
package blobshare

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// ErrNotFound: the source does not have the blob.
var ErrNotFound = errors.New("blob not found")

// Source is a place a blob can be read from.
type Source interface {
	String() string
	// Open returns desc's bytes from offset on.
	Open(ctx context.Context, desc ocispec.Descriptor, offset int64) (io.ReadCloser, error)
}

// Sink receives a blob: containerd's content writer on a node.
type Sink interface {
	io.Writer
	// Offset is how many bytes were written already (a resumed ingest).
	Offset() (int64, error)
	// Reset drops the bytes written so far.
	Reset() error
	// Commit checks size and digest of everything written and keeps the
	// blob; it fails on a mismatch.
	Commit(ctx context.Context, size int64, expected digest.Digest) error
}

// Copy writes desc into sink from the sources, in order. Each source
// continues where the previous one stopped (a range request), and the
// whole is verified by digest at commit. If that fails (some source sent
// other bytes), everything is dropped and the blob is fetched again from
// one source at a time, from the start, until one yields the right bytes.
// It returns the sources the bytes came from.
func Copy(ctx context.Context, sink Sink, desc ocispec.Descriptor, sources []Source) ([]string, error) {
	if err := desc.Digest.Validate(); err != nil {
		return nil, fmt.Errorf("blob %s: %w", desc.Digest, err)
	}
	if desc.Size < 0 {
		return nil, fmt.Errorf("blob %s: size %d", desc.Digest, desc.Size)
	}
	var errs []error
	off, err := sink.Offset()
	if err != nil || off > desc.Size {
		if err := sink.Reset(); err != nil {
			return nil, err
		}
		off = 0
	}
	var used []string
	for _, src := range sources {
		if off == desc.Size {
			break
		}
		n, err := copyFrom(ctx, sink, desc, src, off)
		if n > 0 {
			used = append(used, src.String())
		}
		off += n
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", src, err))
			if ctx.Err() != nil {
				return used, errors.Join(errs...)
			}
		}
	}
	if off == desc.Size {
		err := sink.Commit(ctx, desc.Size, desc.Digest)
		if err == nil {
			return used, nil
		}
		errs = append(errs, fmt.Errorf("bytes from %v refused: %w", used, err))
		if len(used) <= 1 && len(sources) <= 1 {
			return nil, errors.Join(errs...)
		}
	}
	// One source at a time, from the start.
	for _, src := range sources {
		if ctx.Err() != nil {
			break
		}
		if err := sink.Reset(); err != nil {
			return nil, errors.Join(append(errs, err)...)
		}
		n, err := copyFrom(ctx, sink, desc, src, 0)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", src, err))
			continue
		}
		if n != desc.Size {
			continue
		}
		if err := sink.Commit(ctx, desc.Size, desc.Digest); err != nil {
			errs = append(errs, fmt.Errorf("%s: refused: %w", src, err))
			continue
		}
		return []string{src.String()}, nil
	}
	return nil, fmt.Errorf("blob %s: no source gave it: %w", desc.Digest, errors.Join(errs...))
}

// copyFrom copies desc's bytes from offset on from src into sink (at most
// up to desc.Size) and returns how many it wrote.
func copyFrom(ctx context.Context, sink Sink, desc ocispec.Descriptor, src Source, offset int64) (int64, error) {
	rc, err := src.Open(ctx, desc, offset)
	if err != nil {
		return 0, err
	}
	defer rc.Close()
	n, err := io.Copy(sink, io.LimitReader(rc, desc.Size-offset))
	if err == nil && offset+n < desc.Size {
		err = fmt.Errorf("short: %d of %d bytes: %w", offset+n, desc.Size, io.ErrUnexpectedEOF)
	}
	return n, err
}

// MemSink is a Sink in memory (tests, and small blobs).
type MemSink struct {
	Data      []byte
	Committed bool
}

func (m *MemSink) Write(p []byte) (int, error) { m.Data = append(m.Data, p...); return len(p), nil }

// Offset implements Sink.
func (m *MemSink) Offset() (int64, error) { return int64(len(m.Data)), nil }

// Reset implements Sink.
func (m *MemSink) Reset() error { m.Data = m.Data[:0]; return nil }

// Commit implements Sink: it verifies size and digest.
func (m *MemSink) Commit(_ context.Context, size int64, expected digest.Digest) error {
	if int64(len(m.Data)) != size {
		return fmt.Errorf("size %d, want %d", len(m.Data), size)
	}
	if got := expected.Algorithm().FromBytes(m.Data); got != expected {
		return fmt.Errorf("digest mismatch: got %s, want %s", got, expected)
	}
	m.Committed = true
	return nil
}

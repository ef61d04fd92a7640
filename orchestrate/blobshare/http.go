package blobshare

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Paths of a node's blob server (mTLS, nodes of the cluster only).
const (
	// PathBlobs/{digest}: GET (Range) and HEAD a blob this node has. With
	// ?fetch=1&ref=REF&size=N&mediatype=T the node first gets it itself
	// (the one fetch from the registry for the cluster).
	PathBlobs = "/v1/blobs/"
	// PathResolve?ref=REF: GET the descriptor REF resolves to (for nodes
	// that cannot reach the registry).
	PathResolve = "/v1/resolve"
)

// Peer is another node's blob server.
type Peer struct {
	Name   string
	Base   string // https://host:port
	Client *http.Client
	// Fetch: ask the peer to get the blob itself (from the registry) when
	// it does not have it; Ref is the image reference it belongs to.
	Fetch bool
	Ref   string
}

func (p Peer) String() string {
	if p.Fetch {
		return "node " + p.Name + " (fetching for the cluster)"
	}
	return "node " + p.Name
}

func (p Peer) url(desc ocispec.Descriptor) string {
	u := p.Base + PathBlobs + desc.Digest.String()
	if p.Fetch {
		q := url.Values{"fetch": {"1"}, "ref": {p.Ref}, "size": {strconv.FormatInt(desc.Size, 10)}, "mediatype": {desc.MediaType}}
		u += "?" + q.Encode()
	}
	return u
}

// Has asks the peer whether it has the blob (HEAD).
func (p Peer) Has(ctx context.Context, dgst digest.Digest) bool {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodHead, p.Base+PathBlobs+dgst.String(), nil)
	if err != nil {
		return false
	}
	resp, err := p.Client.Do(req)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// Open implements Source with a range request from offset.
func (p Peer) Open(ctx context.Context, desc ocispec.Descriptor, offset int64) (io.ReadCloser, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.url(desc), nil)
	if err != nil {
		return nil, err
	}
	if offset > 0 {
		req.Header.Set("Range", fmt.Sprintf("bytes=%d-", offset))
	}
	resp, err := p.Client.Do(req)
	if err != nil {
		return nil, err
	}
	switch {
	case resp.StatusCode == http.StatusPartialContent && offset > 0:
		return resp.Body, nil
	case resp.StatusCode == http.StatusOK:
		if offset > 0 { // no range support: skip what we have
			if _, err := io.CopyN(io.Discard, resp.Body, offset); err != nil {
				resp.Body.Close()
				return nil, err
			}
		}
		return resp.Body, nil
	case resp.StatusCode == http.StatusNotFound:
		resp.Body.Close()
		return nil, ErrNotFound
	}
	defer resp.Body.Close()
	return nil, remoteError(p.Name, resp)
}

// RemoteError is another node's answer when it could not give a blob or
// resolve a reference (for the coordinator: the registry's problem as it
// saw it, which is what the operator must fix).
type RemoteError struct {
	Node   string
	Status string
	Msg    string
}

func (e *RemoteError) Error() string {
	return fmt.Sprintf("node %s answered %s: %s", e.Node, e.Status, e.Msg)
}

// Advice is what to fix, as the node that reaches the registry saw it.
func (e *RemoteError) Advice() string {
	return fmt.Sprintf("node %s, which reaches the registry for this node, could not: %s", e.Node, e.Msg)
}

func remoteError(name string, resp *http.Response) error {
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	return &RemoteError{Node: name, Status: resp.Status, Msg: strings.TrimSpace(string(msg))}
}

// Resolved is PathResolve's answer.
type Resolved struct {
	Name       string             `json:"name"`
	Descriptor ocispec.Descriptor `json:"descriptor"`
}

// Resolve asks the peer what ref resolves to.
func (p Peer) Resolve(ctx context.Context, ref string) (string, ocispec.Descriptor, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.Base+PathResolve+"?"+url.Values{"ref": {ref}}.Encode(), nil)
	if err != nil {
		return "", ocispec.Descriptor{}, err
	}
	resp, err := p.Client.Do(req)
	if err != nil {
		return "", ocispec.Descriptor{}, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", ocispec.Descriptor{}, remoteError(p.Name, resp)
	}
	var out Resolved
	if err := json.NewDecoder(io.LimitReader(resp.Body, 64<<10)).Decode(&out); err != nil {
		return "", ocispec.Descriptor{}, fmt.Errorf("node %s: %w", p.Name, err)
	}
	return out.Name, out.Descriptor, nil
}

// Store is what a node's blob server serves from.
type Store interface {
	// Open returns the blob if this node has it (ErrNotFound if not).
	Open(ctx context.Context, dgst digest.Digest) (io.ReadSeekCloser, error)
	// Obtain gets the blob into the store (from peers or the registry).
	Obtain(ctx context.Context, ref string, desc ocispec.Descriptor) error
	// Resolve resolves ref at the registry.
	Resolve(ctx context.Context, ref string) (string, ocispec.Descriptor, error)
}

// Handler serves a node's blobs to the other nodes.
func Handler(st Store) http.Handler {
	mux := http.NewServeMux()
	serve := func(w http.ResponseWriter, r *http.Request) {
		dgst, err := digest.Parse(r.PathValue("digest"))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		rc, err := st.Open(r.Context(), dgst)
		if errors.Is(err, ErrNotFound) && r.Method == http.MethodGet && r.URL.Query().Get("fetch") == "1" {
			q := r.URL.Query()
			n, perr := strconv.ParseInt(q.Get("size"), 10, 64)
			if perr != nil || n < 0 {
				http.Error(w, "size: not a byte count", http.StatusBadRequest)
				return
			}
			desc := ocispec.Descriptor{Digest: dgst, Size: n, MediaType: q.Get("mediatype")}
			if err := st.Obtain(r.Context(), q.Get("ref"), desc); err != nil {
				http.Error(w, err.Error(), http.StatusBadGateway)
				return
			}
			rc, err = st.Open(r.Context(), dgst)
		}
		if errors.Is(err, ErrNotFound) {
			http.Error(w, "blob not here", http.StatusNotFound)
			return
		}
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		defer rc.Close()
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Docker-Content-Digest", dgst.String())
		http.ServeContent(w, r, "", time.Time{}, rc)
	}
	mux.HandleFunc("GET "+PathBlobs+"{digest}", serve)
	mux.HandleFunc("HEAD "+PathBlobs+"{digest}", serve)
	mux.HandleFunc("GET "+PathResolve, func(w http.ResponseWriter, r *http.Request) {
		name, desc, err := st.Resolve(r.Context(), r.URL.Query().Get("ref"))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(Resolved{Name: name, Descriptor: desc})
	})
	return mux
}

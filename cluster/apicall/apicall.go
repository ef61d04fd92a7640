// Package apicall is the one HTTP caller of warren's APIs: the agent's and
// the managers' calls over mTLS (tls.go) and the CLI's over the daemon's
// unix socket. It builds the request, encodes the JSON body, and decodes
// the answer or the API's error ({"error": "..."}).
package apicall

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"

	"github.com/warren-appliance/warren/cluster/api"
	"github.com/warren-appliance/warren/cluster/pki"
)

// Caller calls one kind of peer (a manager over mTLS, or the local daemon).
type Caller struct {
	HTTP   *http.Client
	Scheme string // "https" (mTLS) or "http" (the unix socket)
	// Peer names who answers, in messages: "manager", "daemon".
	Peer string
	// Verbatim makes an API error's text the peer's message alone (the CLI
	// shows the daemon's words); otherwise it reads
	// "<peer> refused (<status>): <message>".
	Verbatim bool
}

// Error is an answer other than 2xx, with the API's explanation.
type Error struct {
	Status  int
	Message string
	// prefix is "<peer> refused (<status>): ", or "" for a verbatim caller.
	prefix string
}

func (e *Error) Error() string { return e.prefix + e.Message }

// StatusOf returns the HTTP status of an API error in err's chain, 0 if
// there is none.
func StatusOf(err error) int {
	var e *Error
	if errors.As(err, &e) {
		return e.Status
	}
	return 0
}

// URL returns the address of path (with query q) on host.
func (c *Caller) URL(host, path string, q url.Values) string {
	u := url.URL{Scheme: c.Scheme, Host: host, Path: path}
	if q != nil {
		u.RawQuery = q.Encode()
	}
	return u.String()
}

// Do sends in (JSON; no body when nil) to path on host and decodes a 2xx
// answer into out (unless nil). A peer that did not answer gives a
// *url.Error, except when the cause is this side's verdict on the peer's
// certificate (a pinned CA that does not match, a wrong clock): then that
// cause, so the reason reads first.
func (c *Caller) Do(ctx context.Context, method, host, path string, q url.Values, in, out any) error {
	resp, err := c.Send(ctx, method, host, path, q, in)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	return c.Decode(resp, out)
}

// Send is Do without reading the answer: the caller reads resp (a stream,
// its TLS state, headers) and closes its body; Decode reads it as Do does.
func (c *Caller) Send(ctx context.Context, method, host, path string, q url.Values, in any) (*http.Response, error) {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return nil, fmt.Errorf("encode request: %w", err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.URL(host, path, q), body)
	if err != nil {
		return nil, err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return nil, Reason(err)
	}
	return resp, nil
}

// Decode reads an answer: a 2xx into out (unless nil or 204), anything
// else as an *Error carrying the API's message.
func (c *Caller) Decode(resp *http.Response, out any) error {
	if resp.StatusCode/100 != 2 {
		var ae api.Error
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
		e := &Error{Status: resp.StatusCode}
		if !c.Verbatim {
			e.prefix = fmt.Sprintf("%s refused (%d): ", c.Peer, resp.StatusCode)
		}
		switch {
		case json.Unmarshal(b, &ae) == nil && ae.Error != "":
			e.Message = ae.Error
		case c.Verbatim:
			e.Message = fmt.Sprintf("%s answered %s", c.Peer, resp.Status)
		default:
			e.Message = http.StatusText(resp.StatusCode)
		}
		return e
	}
	if out == nil || resp.StatusCode == http.StatusNoContent {
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("decode %s answer: %w", c.Peer, err)
	}
	return nil
}

// Reason drops net/url's "Post \"https://...\":" prefix from an error of
// http.Client.Do when the cause is ours (pinning, clock), so the user reads
// the reason first.
func Reason(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		var cm *CAMismatchError
		var ce *pki.ClockError
		if errors.As(err, &cm) {
			return cm
		}
		if errors.As(err, &ce) {
			return ce
		}
	}
	return err
}

// Permanent reports whether retrying the call cannot help: the peer is not
// of the pinned CA, this node's clock is wrong, or the peer refused the
// request itself (4xx).
func Permanent(err error) bool {
	var cm *CAMismatchError
	var ce *pki.ClockError
	if errors.As(err, &cm) || errors.As(err, &ce) {
		return true
	}
	s := StatusOf(err)
	return s >= 400 && s < 500
}

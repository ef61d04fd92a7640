package client

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"time"

	"github.com/warren-appliance/warren/cluster/api"
	"github.com/warren-appliance/warren/cluster/apicall"
)

// LogOptions are `warren service logs`' flags.
type LogOptions struct {
	Follow bool
	Tail   int           // < 0: all
	Since  time.Duration // 0: from the start
}

// Logs streams the log lines of a service or task to got until the
// answer ends (or ctx, with Follow).
func (c *Client) Logs(ctx context.Context, target string, opts LogOptions, got func(api.LogEntry) error) error {
	q := url.Values{"target": {target}}
	if opts.Follow {
		q.Set("follow", "1")
	}
	if opts.Tail >= 0 {
		q.Set("tail", fmt.Sprint(opts.Tail))
	}
	if opts.Since > 0 {
		q.Set("since", opts.Since.String())
	}
	// No overall deadline: a followed stream lasts as long as the user wants.
	call := apicall.Caller{HTTP: apicall.Unix(c.socket, apicall.Deadlines{Dial: 5 * time.Second}), Scheme: "http", Peer: "daemon", Verbatim: true}
	resp, err := call.Send(ctx, http.MethodGet, "warren", api.PathLogs, q, nil)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			return &UnreachableError{Socket: c.socket, Err: ue.Err}
		}
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return call.Decode(resp, nil)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var e api.LogEntry
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			return fmt.Errorf("log stream: %w", err)
		}
		if err := got(e); err != nil {
			return err
		}
	}
	if err := sc.Err(); err != nil && ctx.Err() == nil {
		return fmt.Errorf("log stream: %w", err)
	}
	return nil
}

// Volumes lists the named volumes of every node; unreachable names the
// nodes that did not answer.
func (c *Client) Volumes(ctx context.Context) (vols []api.VolumeView, unreachable string, err error) {
	resp, err := c.call.Send(ctx, http.MethodGet, "warren", api.PathVolumes, nil, nil)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			return nil, "", &UnreachableError{Socket: c.socket, Err: ue.Err}
		}
		return nil, "", err
	}
	defer resp.Body.Close()
	err = c.call.Decode(resp, &vols)
	return vols, resp.Header.Get("X-Warren-Unreachable"), err
}

// RemoveVolume deletes a volume on node (every node when empty).
func (c *Client) RemoveVolume(ctx context.Context, name, node string) (api.VolumeRemoved, error) {
	var out api.VolumeRemoved
	var q url.Values
	if node != "" {
		q = url.Values{"node": {node}}
	}
	return out, c.do(ctx, http.MethodDelete, api.PathVolumes+"/"+url.PathEscape(name), q, nil, &out)
}

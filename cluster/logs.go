package cluster

import (
	"bufio"
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/warren-appliance/warren/cluster/api"
	"github.com/warren-appliance/warren/cluster/apicall"
	"github.com/warren-appliance/warren/cluster/pki"
)

// LogOptions select the lines of `warren service logs`.
type LogOptions struct {
	Follow bool
	Tail   int // per task; < 0: all
	Since  time.Time
}

// logSource is the tasks of one node a logs request reads.
type logSource struct {
	nodeID, node string
	addr         string // overlay IP : api.NodeLogsPort
	tasks        []string
}

// logSources resolves target (a service or a task name) to the nodes and
// tasks holding its lines.
func (m *Manager) logSources(target string) ([]logSource, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	_, isService := m.st.services[target]
	byNode := map[string]*logSource{}
	var order []string
	for _, t := range m.current.Tasks {
		if t.Service != target && t.Name != target {
			continue
		}
		n, ok := m.st.nodes[t.NodeID]
		if !ok || !n.OverlayIP.IsValid() {
			continue
		}
		src := byNode[t.NodeID]
		if src == nil {
			src = &logSource{nodeID: t.NodeID, node: n.Name, addr: net.JoinHostPort(n.OverlayIP.String(), strconv.Itoa(api.NodeLogsPort))}
			byNode[t.NodeID] = src
			order = append(order, t.NodeID)
		}
		src.tasks = append(src.tasks, t.Name)
	}
	if len(order) == 0 {
		if isService {
			return nil, errorf(http.StatusNotFound, "service %s has no tasks on any node", target)
		}
		return nil, errorf(http.StatusNotFound, "no service or task named %q (list them with `warren service ls` and `warren service ps NAME`)", target)
	}
	out := make([]logSource, 0, len(order))
	for _, id := range order {
		out = append(out, *byNode[id])
	}
	return out, nil
}

// Logs sends the lines of target's tasks, gathered from their nodes over
// mTLS: the stored ones merged in time order, then (Follow) new ones as
// they come, until ctx ends. A node that cannot be read is reported as an
// entry with Error, and the others go on.
func (m *Manager) Logs(ctx context.Context, target string, opts LogOptions, send func(api.LogEntry) error) error {
	srcs, err := m.logSources(target)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	type stream struct {
		stored []api.LogEntry
		synced chan struct{}
	}
	entries := make(chan api.LogEntry, 256)
	streams := make([]*stream, len(srcs))
	var wg sync.WaitGroup
	for i, src := range srcs {
		st := &stream{synced: make(chan struct{})}
		streams[i] = st
		wg.Add(1)
		go func() {
			defer wg.Done()
			syncedOnce := sync.OnceFunc(func() { close(st.synced) })
			defer syncedOnce()
			err := m.readNodeLogs(ctx, src, opts, func(e api.LogEntry) {
				e.Node = src.node
				select {
				case <-st.synced:
					select {
					case entries <- e:
					case <-ctx.Done():
					}
				default:
					if e.Synced {
						syncedOnce()
						return
					}
					st.stored = append(st.stored, e)
				}
			})
			if err != nil && ctx.Err() == nil {
				e := api.LogEntry{Node: src.node, Task: fmt.Sprint(src.tasks), Error: err.Error()}
				select {
				case <-st.synced:
					select {
					case entries <- e:
					case <-ctx.Done():
					}
				default:
					st.stored = append(st.stored, e)
				}
			}
		}()
	}
	go func() {
		wg.Wait()
		close(entries)
	}()
	var stored []api.LogEntry
	for _, st := range streams {
		select {
		case <-st.synced:
		case <-ctx.Done():
			return nil
		}
		stored = append(stored, st.stored...)
	}
	sort.SliceStable(stored, func(i, j int) bool { return stored[i].Time.Before(stored[j].Time) })
	for _, e := range stored {
		if err := send(e); err != nil {
			return nil // the caller went away
		}
	}
	if !opts.Follow {
		return nil
	}
	for e := range entries {
		if err := send(e); err != nil {
			return nil
		}
	}
	return nil
}

// readNodeLogs streams the log entries of src's tasks from its node.
func (m *Manager) readNodeLogs(ctx context.Context, src logSource, opts LogOptions, got func(api.LogEntry)) error {
	q := url.Values{"task": src.tasks}
	if opts.Follow {
		q.Set("follow", "1")
	}
	if opts.Tail >= 0 {
		q.Set("tail", strconv.Itoa(opts.Tail))
	}
	if !opts.Since.IsZero() {
		q.Set("since", opts.Since.UTC().Format(time.RFC3339Nano))
	}
	c := m.nodeClient(src.nodeID, src.addr, 0)
	defer c.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+src.addr+api.PathNodeLogs+"?"+q.Encode(), nil)
	if err != nil {
		return err
	}
	resp, err := c.Do(req)
	if err != nil {
		return fmt.Errorf("logs of node %s: %w", src.node, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("logs of node %s: %s", src.node, resp.Status)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var e api.LogEntry
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			return fmt.Errorf("logs of node %s: %w", src.node, err)
		}
		got(e)
	}
	if err := sc.Err(); err != nil && ctx.Err() == nil {
		return fmt.Errorf("logs of node %s: %w", src.node, err)
	}
	return nil
}

// handleLogs serves api.PathLogs: newline-delimited api.LogEntry values.
func (m *Manager) handleLogs(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	target := q.Get("target")
	if target == "" {
		writeError(w, errorf(http.StatusBadRequest, "name a service or a task"))
		return
	}
	opts := LogOptions{Follow: q.Get("follow") == "1", Tail: -1}
	if v := q.Get("tail"); v != "" && v != "all" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			writeError(w, errorf(http.StatusBadRequest, "--tail %q: want a number of lines or all", v))
			return
		}
		opts.Tail = n
	}
	if v := q.Get("since"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			writeError(w, errorf(http.StatusBadRequest, "--since %q: want a duration such as 10m or 1h", v))
			return
		}
		opts.Since = m.now().Add(-d)
	}
	if _, err := m.logSources(target); err != nil {
		writeError(w, err)
		return
	}
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	flusher, _ := w.(http.Flusher)
	enc := json.NewEncoder(w)
	_ = m.Logs(r.Context(), target, opts, func(e api.LogEntry) error {
		if err := enc.Encode(e); err != nil {
			return err
		}
		if flusher != nil {
			flusher.Flush()
		}
		return nil
	})
}

// nodeClient calls the server of node nodeID at addr (its overlay IP and
// api.NodeLogsPort) with this manager's certificate; the node must show
// its own node certificate, chained to the CA and issued for nodeID.
// total bounds each call (0: only the context does).
func (m *Manager) nodeClient(nodeID, addr string, total time.Duration) *http.Client {
	conf := apicall.MTLS(func(raw [][]byte) error {
		if len(raw) == 0 {
			return errors.New("the node sent no certificate")
		}
		leaf, err := x509.ParseCertificate(raw[0])
		if err != nil {
			return err
		}
		if err := pki.VerifyChain(leaf, m.caPool(), x509.ExtKeyUsageClientAuth, m.now()); err != nil {
			return err
		}
		if leaf.Subject.CommonName != nodeID {
			return fmt.Errorf("the certificate at %s is node %s's, want node %s's", addr, leaf.Subject.CommonName, nodeID)
		}
		return nil
	}, m.managerCert)
	return apicall.HTTPS(conf, apicall.Deadlines{Dial: 10 * time.Second, Handshake: 10 * time.Second, ResponseHeader: 30 * time.Second, Total: total})
}

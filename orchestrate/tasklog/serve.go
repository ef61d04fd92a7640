package tasklog

import (
	"encoding/json"
	"fmt"
	"net/http"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/warren-appliance/warren/cluster/api"
)

// followInterval is how often a followed log file is looked at.
const followInterval = 250 * time.Millisecond

// maxTasksPerRequest bounds the tasks of one request.
const maxTasksPerRequest = 256

// Handler serves api.PathNodeLogs: the stored lines of the tasks asked
// for, oldest first, then (follow=1) new lines as they are written.
// dirOf gives a task's log directory, false for a name that is not one.
func Handler(dirOf func(task string) (string, bool)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		tasks := q["task"]
		if len(tasks) == 0 || len(tasks) > maxTasksPerRequest {
			http.Error(w, fmt.Sprintf("want 1 to %d task parameters", maxTasksPerRequest), http.StatusBadRequest)
			return
		}
		opts := Options{All: true}
		if v := q.Get("tail"); v != "" && v != "all" {
			n, err := strconv.Atoi(v)
			if err != nil || n < 0 {
				http.Error(w, "tail: want a number of lines or all", http.StatusBadRequest)
				return
			}
			opts = Options{Tail: n}
		}
		if v := q.Get("since"); v != "" {
			t, err := time.Parse(time.RFC3339Nano, v)
			if err != nil {
				http.Error(w, "since: want an RFC 3339 time", http.StatusBadRequest)
				return
			}
			opts.Since = t
		}
		dirs := make(map[string]string, len(tasks))
		for _, task := range tasks {
			d, ok := dirOf(task)
			if !ok {
				http.Error(w, fmt.Sprintf("task name %q is not valid", task), http.StatusBadRequest)
				return
			}
			dirs[task] = d
		}
		var mu sync.Mutex
		enc := json.NewEncoder(w)
		flusher, _ := w.(http.Flusher)
		send := func(e api.LogEntry) error {
			mu.Lock()
			defer mu.Unlock()
			if err := enc.Encode(e); err != nil {
				return err
			}
			if flusher != nil {
				flusher.Flush()
			}
			return nil
		}
		w.Header().Set("Content-Type", "application/x-ndjson")
		var stored []api.LogEntry
		offsets := map[string]int64{}
		for _, task := range tasks {
			entries, off, err := Read(dirs[task], opts)
			if err != nil {
				stored = append(stored, api.LogEntry{Task: task, Error: err.Error()})
				continue
			}
			offsets[task] = off
			for _, e := range entries {
				stored = append(stored, api.LogEntry{Task: task, Time: e.Time, Stream: e.Stream, Text: e.Text})
			}
		}
		sort.SliceStable(stored, func(i, j int) bool { return stored[i].Time.Before(stored[j].Time) })
		for _, e := range stored {
			if send(e) != nil {
				return
			}
		}
		if send(api.LogEntry{Synced: true}) != nil || q.Get("follow") != "1" {
			return
		}
		var wg sync.WaitGroup
		for _, task := range tasks {
			wg.Add(1)
			go func() {
				defer wg.Done()
				Follow(r.Context(), dirs[task], offsets[task], followInterval, func(e Entry) error {
					return send(api.LogEntry{Task: task, Time: e.Time, Stream: e.Stream, Text: e.Text})
				})
			}()
		}
		wg.Wait()
	})
}

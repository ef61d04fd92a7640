package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/warren-appliance/warren/cluster/api"
	"github.com/warren-appliance/warren/cluster/clustermap"
)

// defaultWaitTimeout bounds how long service create/update/scale/rm wait
// for convergence; the change itself stays in force after a timeout.
const defaultWaitTimeout = 5 * time.Minute

// waitPoll is how often the waiting verbs ask the manager.
const waitPoll = 200 * time.Millisecond

// addWaitFlags adds --detach and --timeout to a verb that changes services.
func addWaitFlags(c *cobra.Command) {
	c.Flags().BoolP("detach", "d", false, "return at once instead of waiting until the tasks have converged")
	c.Flags().Duration("timeout", defaultWaitTimeout, "give up waiting after this long (exit 1, naming what is stuck); the change stays in force")
}

func detached(cmd *cobra.Command) bool {
	d, _ := cmd.Flags().GetBool("detach")
	return d
}

// progress is where a change stands: one line per task, and what is not
// converged yet.
type progress struct {
	done    bool
	running int
	want    int
	lines   map[string]string // task name@node ID -> its line
	stuck   []string          // sorted
}

// taskLine describes one task for the progress output and the timeout
// error, e.g. "web-2 on worker-1: failed: image not found".
func taskLine(t api.TaskView, image string) string {
	node := t.Node
	if node == "" {
		node = t.NodeID
	}
	state := t.State
	if t.Health != nil {
		state += " (" + t.Health.Status + ")"
	}
	if t.DesiredState == clustermap.TaskShutdown && t.State != clustermap.TaskShutdown {
		state = "stopping (" + t.State + ")"
	}
	s := fmt.Sprintf("%s on %s: %s", t.Name, node, state)
	if t.PullTotal > 0 && t.DesiredState == clustermap.TaskRunning {
		s += fmt.Sprintf(": pulling image: %s of %s", mib(t.PullDone), mib(t.PullTotal))
	}
	if t.Error != "" {
		s += ": " + t.Error
	}
	if image != "" && t.DesiredState == clustermap.TaskRunning && t.Image != image {
		s += " (still on " + t.Image + ")"
	}
	return s
}

// serviceProgress says whether v has converged: exactly its replicas
// running on its image, every retired task stopped, nothing unplaced.
func serviceProgress(v api.ServiceView) progress {
	p := progress{want: v.Replicas, lines: map[string]string{}}
	active := 0
	for _, t := range v.Tasks {
		line := taskLine(t, v.Image)
		p.lines[t.Name+"@"+t.NodeID] = line
		switch {
		case t.DesiredState == clustermap.TaskRunning:
			active++
			// A task that completed (exit 0, its restart policy done) has
			// converged as much as a running one.
			if (t.State == clustermap.TaskRunning || t.State == clustermap.TaskComplete) && t.Image == v.Image &&
				(t.Health == nil || t.Health.Status == clustermap.HealthHealthy) {
				p.running++
				continue
			}
			p.stuck = append(p.stuck, line)
		case t.State != clustermap.TaskShutdown:
			p.stuck = append(p.stuck, line)
		}
	}
	if v.Unplaced != "" {
		p.stuck = append(p.stuck, v.Name+": "+v.Unplaced)
	} else if active < v.Replicas {
		p.stuck = append(p.stuck, fmt.Sprintf("%s: %d of %d replicas not scheduled yet", v.Name, v.Replicas-active, v.Replicas))
	}
	slices.Sort(p.stuck)
	p.done = len(p.stuck) == 0 && p.running == v.Replicas && !v.Updating
	return p
}

// removalProgress says whether the tasks of a removed service have all
// stopped (the manager forgets each once its node reports it stopped).
func removalProgress(tasks []api.TaskView) progress {
	p := progress{lines: map[string]string{}}
	for _, t := range tasks {
		line := taskLine(t, "")
		p.lines[t.Name+"@"+t.NodeID] = line
		p.want++
		if t.State == clustermap.TaskShutdown {
			p.running++ // counted as done on the bar
		} else {
			p.stuck = append(p.stuck, line)
		}
	}
	slices.Sort(p.stuck)
	p.done = len(p.stuck) == 0
	return p
}

// waitConverged polls until the change converges, printing each task's
// state as it changes on w (plain lines; on a terminal also a progress bar
// that is redrawn in place). verb names the goal, e.g. "web: 3 running".
func waitConverged(ctx context.Context, cmd *cobra.Command, what string, poll func(context.Context) (progress, error)) error {
	timeout, _ := cmd.Flags().GetDuration("timeout")
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	w := cmd.ErrOrStderr()
	tty := isTerminal(w)
	seen := map[string]string{}
	var last progress
	bar := false
	t := time.NewTicker(waitPoll)
	defer t.Stop()
	for {
		p, err := poll(ctx)
		if err != nil && ctx.Err() == nil {
			if bar {
				fmt.Fprint(w, "\r\x1b[2K")
			}
			return err
		}
		if err == nil {
			last = p
			keys := make([]string, 0, len(p.lines))
			for k := range p.lines {
				keys = append(keys, k)
			}
			slices.Sort(keys)
			for _, k := range keys {
				if seen[k] == p.lines[k] {
					continue
				}
				seen[k] = p.lines[k]
				if bar {
					fmt.Fprint(w, "\r\x1b[2K")
					bar = false
				}
				fmt.Fprintln(w, p.lines[k])
			}
			if tty && !p.done {
				fmt.Fprint(w, "\r\x1b[2K"+progressBar(what, p))
				bar = true
			}
			if p.done {
				if bar {
					fmt.Fprint(w, "\r\x1b[2K")
				}
				return nil
			}
		}
		select {
		case <-ctx.Done():
			if bar {
				fmt.Fprintln(w)
			}
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				stuck := last.stuck
				if len(stuck) == 0 {
					stuck = []string{"no answer from the manager"}
				}
				return fmt.Errorf("%s: not converged after %s (the change stays in force; follow with `warren service ps`): %s", what, timeout, strings.Join(stuck, "; "))
			}
			return ctx.Err()
		case <-t.C:
		}
	}
}

// progressBar is one terminal line: [=====     ] 2/3 running.
func progressBar(what string, p progress) string {
	const width = 20
	done, total := p.running, p.want
	if total == 0 {
		total = 1
	}
	filled := min(width*done/total, width)
	return fmt.Sprintf("%s [%s%s] %d/%d", what, strings.Repeat("=", filled), strings.Repeat(" ", width-filled), done, p.want)
}

// isTerminal reports whether w is a terminal (then the bar is drawn).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// mib renders a byte count for pull progress.
func mib(n int64) string {
	switch {
	case n < 1<<10:
		return fmt.Sprintf("%d B", n)
	case n < 1<<20:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
}

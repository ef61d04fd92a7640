// Package helperproc runs a test binary re-executed as a device process (a
// WireGuard device inside a network namespace of its own) and reads its
// replies: the process writes one "HELPER {json}" line per reply on stdout
// (Replier), the test reads them in order (Proc.Read) and writes its
// requests on the process's stdin; closing stdin ends it. Only tests
// import it.
package helperproc

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// replyPrefix marks a reply line on the helper's stdout; other lines are
// not replies.
const replyPrefix = "HELPER "

// Replier writes the helper side's replies.
type Replier struct{ out *bufio.Writer }

// NewReplier writes replies on w (the helper's stdout).
func NewReplier(w io.Writer) *Replier { return &Replier{out: bufio.NewWriter(w)} }

// Reply writes v as one reply line and flushes it.
func (r *Replier) Reply(v any) {
	b, _ := json.Marshal(v)
	fmt.Fprintf(r.out, "%s%s\n", replyPrefix, b)
	r.out.Flush()
}

// Proc is a running helper process, seen from the test.
type Proc struct {
	Cmd    *exec.Cmd
	stdin  io.WriteCloser
	lines  chan string
	exited chan struct{}
}

// Start starts cmd (its environment and Stderr set by the caller) with its
// stdout read for replies, and stops it when the test ends (Stop).
func Start(tb testing.TB, cmd *exec.Cmd) *Proc {
	tb.Helper()
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		tb.Fatal(err)
	}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		tb.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	p := &Proc{Cmd: cmd, stdin: stdin, lines: make(chan string, 16), exited: make(chan struct{})}
	// One goroutine reads stdout to its end and only then waits for the
	// process: Wait closes the pipe once the process exits, so waiting
	// concurrently could drop the last reply (the one to "close") unread.
	// Wait also returns only after stderr is copied to cmd.Stderr.
	go func() {
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			if s, ok := strings.CutPrefix(sc.Text(), replyPrefix); ok {
				p.lines <- s
			}
		}
		io.Copy(io.Discard, stdout) // an over-long line: keep the pipe drained
		close(p.lines)
		cmd.Wait()
		close(p.exited)
	}()
	tb.Cleanup(p.Stop)
	return p
}

// Read decodes the next reply into v: an error when the process exited or
// did not answer within 60 s.
func (p *Proc) Read(v any) error {
	select {
	case line, ok := <-p.lines:
		if !ok {
			return errors.New("device process exited")
		}
		return json.Unmarshal([]byte(line), v)
	case <-time.After(60 * time.Second):
		return errors.New("device process did not answer within 60s")
	}
}

// Stdin is the helper's stdin, where the test writes its requests.
func (p *Proc) Stdin() io.Writer { return p.stdin }

// Exited is closed once the process is reaped (its stderr then fully
// copied).
func (p *Proc) Exited() <-chan struct{} { return p.exited }

// Stop closes the helper's stdin (its signal to end) and waits for it to
// exit, killing it after 15 s.
func (p *Proc) Stop() {
	p.stdin.Close()
	select {
	case <-p.exited:
	case <-time.After(15 * time.Second):
		p.Cmd.Process.Kill()
		<-p.exited
	}
}

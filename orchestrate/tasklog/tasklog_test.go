package tasklog

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestWriterRotatesAndReadSelects(t *testing.T) {
	dir := t.TempDir()
	w, err := NewWriter(dir, 200, 3)
	if err != nil {
		t.Fatal(err)
	}
	base := time.Date(2026, 12, 6, 3, 0, 0, 0, time.UTC)
	i := 0
	w.now = func() time.Time { i++; return base.Add(time.Duration(i) * time.Second) }
	for n := 1; n <= 40; n++ {
		if err := w.Line("stdout", fmt.Sprintf("line %d", n)); err != nil {
			t.Fatal(err)
		}
	}
	w.Close()
	// At most 3 files, none over 200 bytes.
	names, _ := filepath.Glob(filepath.Join(dir, "*"))
	if len(names) != 3 {
		t.Errorf("files %v, want log, log.1, log.2", names)
	}
	for _, n := range names {
		if st, _ := os.Stat(n); st.Size() > 200 {
			t.Errorf("%s is %d bytes, over the 200 bound", n, st.Size())
		}
	}
	all, _, err := Read(dir, Options{All: true})
	if err != nil {
		t.Fatal(err)
	}
	// The newest lines are kept, in order, ending with line 40.
	if len(all) < 5 || all[len(all)-1].Text != "line 40" {
		t.Fatalf("read %d entries, last %+v", len(all), all[len(all)-1])
	}
	for j := 1; j < len(all); j++ {
		if !all[j].Time.After(all[j-1].Time) {
			t.Fatalf("entries out of order at %d: %+v", j, all[j-1:j+1])
		}
	}
	tail, _, _ := Read(dir, Options{Tail: 2})
	if len(tail) != 2 || tail[0].Text != "line 39" || tail[1].Text != "line 40" {
		t.Errorf("tail 2 = %+v", tail)
	}
	since, _, _ := Read(dir, Options{All: true, Since: base.Add(38 * time.Second)})
	if len(since) != 3 || since[0].Text != "line 38" {
		t.Errorf("since = %+v", since)
	}
	// Reopening appends (a restarted task keeps its earlier output).
	w2, err := NewWriter(dir, 200, 3)
	if err != nil {
		t.Fatal(err)
	}
	w2.Line("stderr", "after restart")
	w2.Close()
	last, _, _ := Read(dir, Options{Tail: 2})
	if len(last) != 2 || last[0].Text != "line 40" || last[1].Stream != "stderr" || last[1].Text != "after restart" {
		t.Errorf("after reopen: %+v", last)
	}
}

func TestCopySplitsLongLinesAndFollowSeesNewLines(t *testing.T) {
	dir := t.TempDir()
	w, err := NewWriter(dir, 1<<20, 2)
	if err != nil {
		t.Fatal(err)
	}
	long := strings.Repeat("x", MaxLine+10)
	if err := w.Copy("stdout", strings.NewReader("a\r\n"+long+"\nlast without newline")); err != nil {
		t.Fatal(err)
	}
	got, offset, _ := Read(dir, Options{All: true})
	if len(got) != 4 || got[0].Text != "a" || len(got[1].Text) != MaxLine || got[2].Text != "xxxxxxxxxx" || got[3].Text != "last without newline" {
		t.Fatalf("copied %d entries: first %q", len(got), got[0].Text)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	seen := make(chan string, 10)
	go Follow(ctx, dir, offset, 10*time.Millisecond, func(e Entry) error { seen <- e.Text; return nil })
	w.Line("stdout", "new one")
	select {
	case s := <-seen:
		if s != "new one" {
			t.Errorf("followed %q", s)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("follow saw nothing")
	}
	w.Close()
}

// A write error (full disk) drops lines but keeps reading, so the task
// never blocks on a full pipe.
func TestCopyDrainsWhenWritesFail(t *testing.T) {
	w, err := NewWriter(t.TempDir(), 1<<20, 2)
	if err != nil {
		t.Fatal(err)
	}
	w.f.Close() // every write now fails
	r := strings.NewReader(strings.Repeat("a line of output\n", 10000))
	if err := w.Copy("stdout", r); err == nil {
		t.Error("write errors not reported")
	}
	if r.Len() != 0 {
		t.Errorf("%d bytes left unread after write errors", r.Len())
	}
}

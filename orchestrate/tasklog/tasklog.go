// Package tasklog keeps a task's output on the node in size-bounded,
// rotated files, and reads it back for `warren service logs`.
//
// The writer runs as containerd's binary logger (the shim starts it with
// the task and feeds it the task's stdout and stderr), so output is kept
// while the daemon restarts. Each line is stored as
// "<RFC 3339 time with nanoseconds> <stdout|stderr> <text>". Files are
// written without fsync (an SD card's writes are its wear; losing the
// last lines on power loss is the price), rotated at MaxSize into
// NAME.1 .. NAME.<MaxFiles-1>, oldest dropped.
package tasklog

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

// File is the name of the current log file in a task's log directory.
const File = "log"

// MaxLine bounds one stored line; longer output is split.
const MaxLine = 16 << 10

// Defaults suited to SD cards: at most 3 files of 1 MiB per task.
const (
	DefaultMaxSize  = 1 << 20
	DefaultMaxFiles = 3
)

// Writer appends lines to dir/log and rotates it.
type Writer struct {
	dir      string
	maxSize  int64
	maxFiles int
	now      func() time.Time

	mu   sync.Mutex
	f    *os.File
	size int64
}

// NewWriter opens (appending) the log in dir.
func NewWriter(dir string, maxSize int64, maxFiles int) (*Writer, error) {
	if maxSize <= 0 {
		maxSize = DefaultMaxSize
	}
	if maxFiles < 1 {
		maxFiles = DefaultMaxFiles
	}
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("task log dir: %w", err)
	}
	w := &Writer{dir: dir, maxSize: maxSize, maxFiles: maxFiles, now: time.Now}
	if err := w.open(); err != nil {
		return nil, err
	}
	return w, nil
}

func (w *Writer) open() error {
	f, err := os.OpenFile(filepath.Join(w.dir, File), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
	if err != nil {
		return fmt.Errorf("open task log: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return fmt.Errorf("task log: %w", err)
	}
	w.f, w.size = f, st.Size()
	return nil
}

// Line stores one line of stream (stdout or stderr).
func (w *Writer) Line(stream, text string) error {
	rec := w.now().UTC().Format(time.RFC3339Nano) + " " + stream + " " + text + "\n"
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.size > 0 && w.size+int64(len(rec)) > w.maxSize {
		if err := w.rotate(); err != nil {
			return err
		}
	}
	n, err := w.f.WriteString(rec)
	w.size += int64(n)
	return err
}

// rotate shifts log.N-1 .. log.1 up, log to log.1, and starts a new log.
func (w *Writer) rotate() error {
	w.f.Close()
	base := filepath.Join(w.dir, File)
	if w.maxFiles == 1 {
		os.Remove(base)
		return w.open()
	}
	os.Remove(fmt.Sprintf("%s.%d", base, w.maxFiles-1))
	for i := w.maxFiles - 2; i >= 1; i-- {
		os.Rename(fmt.Sprintf("%s.%d", base, i), fmt.Sprintf("%s.%d", base, i+1))
	}
	if err := os.Rename(base, base+".1"); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("rotate task log: %w", err)
	}
	return w.open()
}

// Close closes the current file.
func (w *Writer) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.f.Close()
}

// Copy stores every line of r as stream until r ends. A line that cannot
// be stored (a full disk) is dropped, and reading goes on: a task must
// never block on its output because the node's disk is full. It returns
// the first write error, once r ended.
func (w *Writer) Copy(stream string, r io.Reader) error {
	br := bufio.NewReaderSize(r, MaxLine)
	var werr error
	for {
		line, err := br.ReadSlice('\n')
		if len(line) > 0 {
			if e := w.Line(stream, strings.TrimRight(string(line), "\r\n")); e != nil && werr == nil {
				werr = e
			}
		}
		switch {
		case err == nil, errors.Is(err, bufio.ErrBufferFull):
		case errors.Is(err, io.EOF):
			return werr
		default:
			return errors.Join(err, werr)
		}
	}
}

// Entry is one stored line.
type Entry struct {
	Time   time.Time
	Stream string
	Text   string
}

// Parse reads a stored line.
func Parse(line string) (Entry, bool) {
	ts, rest, ok := strings.Cut(line, " ")
	if !ok {
		return Entry{}, false
	}
	stream, text, ok := strings.Cut(rest, " ")
	if !ok {
		stream, text = rest, ""
	}
	t, err := time.Parse(time.RFC3339Nano, ts)
	if err != nil {
		return Entry{}, false
	}
	return Entry{Time: t, Stream: stream, Text: text}, true
}

// Options select what Read returns.
type Options struct {
	Tail  int       // the last Tail entries only (-1 or 0 with All: all)
	All   bool      // every entry (Tail ignored)
	Since time.Time // entries at or after Since only
}

// Read returns the stored entries of the log in dir, oldest first, as
// opts select them, and the size of the current file read (where a
// follower carries on).
func Read(dir string, opts Options) ([]Entry, int64, error) {
	base := filepath.Join(dir, File)
	var files []string
	for i := 64; i >= 1; i-- {
		p := base + "." + strconv.Itoa(i)
		if _, err := os.Stat(p); err == nil {
			files = append(files, p)
		}
	}
	files = append(files, base)
	var out []Entry
	var offset int64
	for _, p := range files {
		b, err := os.ReadFile(p)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, 0, fmt.Errorf("read task log: %w", err)
		}
		if p == base {
			// Only whole lines: a follower picks up the rest.
			if i := strings.LastIndexByte(string(b), '\n'); i >= 0 {
				b = b[:i+1]
			} else {
				b = nil
			}
			offset = int64(len(b))
		}
		for _, line := range strings.Split(strings.TrimSuffix(string(b), "\n"), "\n") {
			if e, ok := Parse(line); ok && !e.Time.Before(opts.Since) {
				out = append(out, e)
			}
		}
	}
	if !opts.All && opts.Tail >= 0 && len(out) > opts.Tail {
		out = out[len(out)-opts.Tail:]
	}
	return out, offset, nil
}

// Follow sends the entries appended to dir/log after offset until ctx
// ends, polling every interval; a rotation (the file got shorter or was
// replaced) starts over at the new file's beginning.
func Follow(ctx context.Context, dir string, offset int64, interval time.Duration, send func(Entry) error) error {
	base := filepath.Join(dir, File)
	var ino uint64
	if st, err := os.Stat(base); err == nil {
		ino = inode(st)
	}
	var partial string
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		st, err := os.Stat(base)
		if err != nil {
			continue // removed with the task, or between rotate steps
		}
		if inode(st) != ino || st.Size() < offset {
			ino, offset, partial = inode(st), 0, ""
		}
		if st.Size() == offset {
			continue
		}
		f, err := os.Open(base)
		if err != nil {
			continue
		}
		buf := make([]byte, min(st.Size()-offset, 1<<20))
		n, _ := f.ReadAt(buf, offset)
		f.Close()
		offset += int64(n)
		chunk := partial + string(buf[:n])
		lines := strings.Split(chunk, "\n")
		partial = lines[len(lines)-1]
		for _, line := range lines[:len(lines)-1] {
			if e, ok := Parse(line); ok {
				if err := send(e); err != nil {
					return err
				}
			}
		}
	}
}

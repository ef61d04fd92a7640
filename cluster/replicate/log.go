package replicate

import (
	"bytes"
	"context"
	"log/slog"
	"strings"

	"github.com/hashicorp/go-hclog"
)

// newHCLogger routes raft's hclog output to slog: one slog record per
// line, at the level hclog printed.
func newHCLogger(l *slog.Logger) hclog.Logger {
	return hclog.New(&hclog.LoggerOptions{
		Name:        "raft",
		Level:       hclog.Info,
		Output:      slogWriter{l},
		DisableTime: true,
	})
}

type slogWriter struct{ l *slog.Logger }

func (w slogWriter) Write(p []byte) (int, error) {
	for _, line := range bytes.Split(bytes.TrimSpace(p), []byte("\n")) {
		s := string(line)
		level := slog.LevelInfo
		switch {
		case strings.HasPrefix(s, "[ERROR]"):
			level = slog.LevelError
		case strings.HasPrefix(s, "[WARN]"):
			level = slog.LevelWarn
		case strings.HasPrefix(s, "[DEBUG]"), strings.HasPrefix(s, "[TRACE]"):
			level = slog.LevelDebug
		}
		if i := strings.Index(s, "]"); i >= 0 {
			s = strings.TrimSpace(s[i+1:])
		}
		w.l.Log(context.Background(), level, s)
	}
	return len(p), nil
}

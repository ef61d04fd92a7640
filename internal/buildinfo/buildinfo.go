// Package buildinfo holds what the release build stamps into the binaries
// with -ldflags -X, and falls back to what the Go toolchain recorded.
package buildinfo

import (
	"fmt"
	"runtime"
	"runtime/debug"
	"time"
)

// Set by the Makefile: -X github.com/warren-appliance/warren/internal/buildinfo.Version=...
var (
	Version = ""
	Commit  = ""
	Date    = "" // RFC 3339, the build time
)

func init() {
	bi, ok := debug.ReadBuildInfo()
	if Version == "" {
		Version = "0.0.0-dev"
		if ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			Version = bi.Main.Version
		}
	}
	if Commit == "" && ok {
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" {
				Commit = s.Value
			}
		}
	}
	if Commit == "" {
		Commit = "unknown"
	}
}

// BuildTime is the stamped build date, or the zero time for a dev build.
func BuildTime() time.Time {
	t, err := time.Parse(time.RFC3339, Date)
	if err != nil {
		return time.Time{}
	}
	return t
}

// String is the one-paragraph answer to --version.
func String(program string) string {
	date := Date
	if date == "" {
		date = "unknown"
	}
	return fmt.Sprintf("%s %s\ncommit: %s\nbuilt: %s\ngo: %s\nplatform: %s/%s\n",
		program, Version, Commit, date, runtime.Version(), runtime.GOOS, runtime.GOARCH)
}

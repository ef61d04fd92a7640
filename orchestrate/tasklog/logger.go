package tasklog

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"sync"

	"github.com/containerd/containerd/v2/core/runtime/v2/logging"
)

// LoggerName is the name (a link to the warren binary) under which it
// runs as containerd's binary logger of a task.
const LoggerName = "warren-task-logger"

// LoggerArgs are the logger's settings as the log URI's query carries
// them; the shim passes them as "key value" argument pairs.
func LoggerArgs(dir string, maxSize int64, maxFiles int) map[string]string {
	return map[string]string{"dir": dir, "max-size": strconv.FormatInt(maxSize, 10), "max-files": strconv.Itoa(maxFiles)}
}

// Main runs the logger: it stores the task's stdout and stderr (fds 3 and
// 4, from the shim) until both end. It does not return.
func Main(args []string) {
	kv := map[string]string{}
	for i := 0; i+1 < len(args); i += 2 {
		kv[args[i]] = args[i+1]
	}
	maxSize, _ := strconv.ParseInt(kv["max-size"], 10, 64)
	maxFiles, _ := strconv.Atoi(kv["max-files"])
	dir := kv["dir"]
	logging.Run(func(_ context.Context, cfg *logging.Config, ready func() error) error {
		if dir == "" {
			return fmt.Errorf("%s: no dir argument", LoggerName)
		}
		w, err := NewWriter(dir, maxSize, maxFiles)
		if err != nil {
			return err
		}
		defer w.Close()
		if err := ready(); err != nil {
			return err
		}
		var wg sync.WaitGroup
		errs := make([]error, 2)
		for i, s := range []struct {
			name string
			r    interface{ Read([]byte) (int, error) }
		}{{"stdout", cfg.Stdout}, {"stderr", cfg.Stderr}} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				errs[i] = w.Copy(s.name, s.r)
			}()
		}
		wg.Wait()
		for _, err := range errs {
			if err != nil {
				fmt.Fprintf(os.Stderr, "%s %s: %v\n", LoggerName, cfg.ID, err)
			}
		}
		return nil
	})
	os.Exit(0)
}

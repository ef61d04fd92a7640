package appliance

import (
	"strings"
	"testing"
)

// One daemon per state dir: a second start (the unit while `warren worker
// start` runs in a terminal) is refused with what to do, and the lock is
// free again once the first one ends.
func TestStateDirLockIsExclusive(t *testing.T) {
	dir := t.TempDir()
	unlock, err := lockStateDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := lockStateDir(dir); err == nil || !strings.Contains(err.Error(), "systemctl stop warren-appliance") {
		t.Fatalf("a second daemon on the same state dir: %v", err)
	}
	unlock()
	again, err := lockStateDir(dir)
	if err != nil {
		t.Fatalf("the lock is not released: %v", err)
	}
	again()
}

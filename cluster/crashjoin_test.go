package cluster

import (
	"github.com/warren-appliance/warren/cluster/agent"

	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Finding 8: a crash at any point of the first join leaves either "not
// joined" (the next start joins again, as the same node since the key is
// kept) or "joined". Each case is the set of files a crash left behind.
func TestFirstJoinCrashAtAnyPointJoinsAgainAsTheSameNode(t *testing.T) {
	tm := startManager(t)
	all := []string{agent.FileTLSKey, agent.FileCA, agent.FileIdentity, agent.FileTLSCert}
	for _, left := range [][]string{
		{agent.FileTLSKey},                                        // key written, nothing answered yet
		{agent.FileTLSKey, agent.FileCA},                          // CA saved
		{agent.FileTLSKey, agent.FileCA, agent.FileIdentity},      // identity saved, certificate not yet
		{agent.FileTLSKey, agent.FileTLSCert},                     // the order before the fix: certificate, then a crash
		{agent.FileTLSKey, agent.FileTLSCert, agent.FileCA},       // ditto, one step later
		{agent.FileTLSKey, agent.FileTLSCert, agent.FileIdentity}, // a lost CA file
	} {
		t.Run(strings.Join(left, "+"), func(t *testing.T) {
			cfg := agentConfig(t, tm, "worker-"+strings.ReplaceAll(strings.ReplaceAll(strings.Join(left, "-"), ".", ""), "_", ""))
			first := join(t, cfg).Self()
			for _, f := range all {
				if !contains(left, f) {
					if err := os.Remove(filepath.Join(cfg.StateDir, f)); err != nil {
						t.Fatal(err)
					}
				}
			}
			again := join(t, cfg).Self()
			if again.ID != first.ID || again.OverlayIP != first.OverlayIP {
				t.Fatalf("after the crash the node joined as %+v, was %+v", again, first)
			}
			for _, f := range all {
				if _, err := os.Stat(filepath.Join(cfg.StateDir, f)); err != nil {
					t.Fatalf("after joining again: %v", err)
				}
			}
		})
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

package packaging_test

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// The shipped alert rules load in Prometheus and fire in promtool's rule
// unit tests (prometheus/alerts_test.yml): a stale handshake, a node down,
// tasks not as desired, NAT or policy sync failing, managers without quorum.
func TestAlertRules(t *testing.T) {
	requireTool(t, "promtool", "prometheus")
	dir := filepath.Join(repoRoot, "packaging", "prometheus")
	for _, args := range [][]string{
		{"check", "rules", "alerts.yml"},
		{"test", "rules", "alerts_test.yml"},
	} {
		cmd := exec.Command("promtool", args...)
		cmd.Dir = dir
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	tests := readRepoFile(t, "packaging/prometheus/alerts_test.yml")
	for _, alert := range []string{"WireGuardHandshakeStale", "WarrenNodeDown", "WarrenTasksNotAsDesired", "WarrenNATSyncFailing", "WarrenPolicySyncFailing", "WarrenManagerQuorumLost"} {
		if !strings.Contains(tests, "alertname: "+alert+"\n        exp_alerts:\n          - exp_labels:") {
			t.Errorf("alerts_test.yml has no case where %s fires", alert)
		}
	}
}

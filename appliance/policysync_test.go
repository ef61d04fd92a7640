package appliance

import (
	"errors"
	"io"
	"log/slog"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/warren-appliance/warren/cluster/clustermap"
	"github.com/warren-appliance/warren/metrics"
	"github.com/warren-appliance/warren/netpolicy"
)

// failingPolicies is a policy syncer whose syncs fail, as iptables does
// when the ipset module is missing.
type failingPolicies struct{ calls int }

func (f *failingPolicies) Sync(netpolicy.Rules) (netpolicy.SyncStats, error) {
	f.calls++
	return netpolicy.SyncStats{}, errors.New("ipset: kernel module missing")
}

// A failed policy sync is counted in
// warren_reconcile_errors_total{reconciler="policy"} (the alert
// WarrenPolicySyncFailing watches it) and marked for the canary's retry.
func TestPolicySyncFailureCounted(t *testing.T) {
	pol := &failingPolicies{}
	n := &node{log: slog.New(slog.NewTextHandler(io.Discard, nil)), met: metrics.New(metrics.Sources{}), pol: pol}
	n.syncPolicies(&clustermap.Map{Version: 3})
	n.syncPolicies(&clustermap.Map{Version: 3})
	rec := httptest.NewRecorder()
	n.met.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if want := `warren_reconcile_errors_total{reconciler="policy"} 2` + "\n"; !strings.Contains(rec.Body.String(), want) {
		t.Fatalf("after 2 failed syncs, /metrics lacks %q", want)
	}
	if pol.calls != 2 || !n.polFailed {
		t.Fatalf("calls %d, polFailed %v: want the failure kept for the retry", pol.calls, n.polFailed)
	}
}

package cluster

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/warren-appliance/warren/cluster/api"
	"github.com/warren-appliance/warren/cluster/clustermap"
	"github.com/warren-appliance/warren/cluster/internal/clustertest"
)

// Finding 5: 30 reports with a 900 KB error text made 30 commits and 30
// new ~1 MB maps. Error texts are bounded and not in the map (nodes do not
// act on them), and a node's state changes are rate limited.
func TestReportFloodMakesNoNewMapsAndFewWrites(t *testing.T) {
	tm := startManager(t)
	a := join(t, agentConfig(t, tm, "worker-1"))
	spec := api.ServiceSpec{Name: "web", Image: "img", Replicas: intp(1), Constraints: []string{"node.name==worker-1"}}
	if _, err := tm.m.CreateService(spec); err != nil {
		t.Fatal(err)
	}
	task := tm.m.Map().TasksOn(a.Self().ID)[0]
	report := func(i int) error {
		return a.Report(context.Background(), NodeStatus{Tasks: []api.TaskStatus{{
			Name: task.Name, State: clustermap.TaskFailed, Image: task.Image,
			Error: fmt.Sprintf("attempt %d: %s", i, strings.Repeat("x", 900<<10)),
		}}})
	}
	if err := report(0); err != nil {
		t.Fatal(err)
	}
	// The manager's clock stands still: the limiter refills nothing, so
	// the bound below does not depend on how fast this machine is.
	frozen := time.Now()
	tm.m.mu.Lock()
	tm.m.now = func() time.Time { return frozen }
	tm.m.mu.Unlock()
	version, writes := tm.m.Map().Version, tm.m.store.Writes()
	refused := 0
	for i := 1; i <= 30; i++ {
		if err := report(i); err != nil {
			if !strings.Contains(err.Error(), "429") {
				t.Fatalf("report %d: %v", i, err)
			}
			refused++
		}
	}
	if v := tm.m.Map().Version; v != version {
		t.Errorf("30 reports that changed only an error text moved the map from version %d to %d", version, v)
	}
	if w := tm.m.store.Writes() - writes; w > reportBurst+1 {
		t.Errorf("30 reports made %d store writes, want at most %d (rate limit)", w, reportBurst+1)
	}
	if refused == 0 {
		t.Error("no report was refused by the rate limit")
	}
	for _, m := range tm.m.Map().Tasks {
		if m.Error != "" {
			t.Errorf("task %s carries an error text in the map (%d bytes)", m.Name, len(m.Error))
		}
	}
	v, err := tm.m.Service("web")
	if err != nil {
		t.Fatal(err)
	}
	if e := v.Tasks[0].Error; len(e) > maxErrorText || !strings.HasPrefix(e, "attempt ") {
		t.Errorf("stored error text is %d bytes (%.20q...), want at most %d", len(e), e, maxErrorText)
	}
	t.Logf("30 reports: %d refused, %d writes, map version %d", refused, tm.m.store.Writes()-writes, tm.m.Map().Version)
}

func TestReportAndJoinFieldsAreBounded(t *testing.T) {
	tm := startManager(t)
	secret := tokenSecret(t, tm.workerToken())
	manyLabels := map[string]string{}
	for i := range api.MaxLabels + 1 {
		manyLabels[fmt.Sprintf("k%d", i)] = "v"
	}
	for what, labels := range map[string]map[string]string{
		"too many labels":  manyLabels,
		"long label key":   {strings.Repeat("k", 64): "v"},
		"long label value": {"k": strings.Repeat("v", 254)},
	} {
		req, _ := rawJoinRequest(t, secret, "n1", clustermap.RoleWorker, clustertest.WGKey(t))
		req.Labels = labels
		if status, msg := nodeAPICall(t, tm.addr, http.MethodPost, api.PathJoin, req, nil); status != http.StatusBadRequest || !strings.Contains(msg, "label") {
			t.Errorf("join with %s: %d %q, want 400 naming labels", what, status, msg)
		}
	}
	a := join(t, agentConfig(t, tm, "worker-1"))
	manyPeers := make([]api.PeerHealth, maxTunnelEntries+1)
	for i := range manyPeers {
		manyPeers[i].PublicKey = clustertest.WGKey(t)
	}
	for what, st := range map[string]NodeStatus{
		"unknown state":  {Tasks: []api.TaskStatus{{Name: "web-1", State: "exploded"}}},
		"long task name": {Tasks: []api.TaskStatus{{Name: strings.Repeat("t", 300), State: "running"}}},
		"long image":     {Tasks: []api.TaskStatus{{Name: "web-1", State: "running", Image: strings.Repeat("i", 2000)}}},
		"too many peers": {Tunnel: manyPeers},
		"bad peer key":   {Tunnel: []api.PeerHealth{{PublicKey: "not a key"}}},
	} {
		err := a.Report(context.Background(), st)
		if err == nil || !strings.Contains(err.Error(), "400") {
			t.Errorf("report with %s: %v, want 400", what, err)
		}
	}
}

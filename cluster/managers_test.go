package cluster

import (
	"net/http"
	"testing"
	"time"

	"github.com/warren-appliance/warren/cluster/agent"
	"github.com/warren-appliance/warren/cluster/api"
)

// One undecodable entry in the Raft log (appended by a manager that still
// spoke Raft) panicked every manager on apply, and again at every restart.
func TestBadRaftEntryIsRefusedAndTheManagerStaysUp(t *testing.T) {
	tm := startManager(t)
	for _, data := range [][]byte{{1, '{', 'x'}, {0x7f}, []byte(`` + "\x01" + `{"put":{"nodes":{"n":"bm90IGpzb24="}}}`)} {
		f := tm.m.replica.Raft.Apply(data, 5*time.Second)
		if err := f.Error(); err != nil {
			t.Fatalf("commit: %v", err)
		}
		if resp, _ := f.Response().(error); resp == nil {
			t.Errorf("entry %q: applied without an error", data)
		}
	}
	if _, err := tm.m.CreateService(apiSpec("web", 1)); err != nil {
		t.Fatalf("write after bad entries: %v", err)
	}
	tm.restart() // the log replays the bad entries
	if got := tm.m.Map(); len(got.Services) != 1 || len(got.Nodes) != 1 {
		t.Fatalf("after restart: %+v", got)
	}
	if _, err := tm.m.CreateService(apiSpec("db", 1)); err != nil {
		t.Fatalf("write after restart: %v", err)
	}
}

func TestNodeKeyFileIsTheAgents(t *testing.T) {
	if nodeKeyFile != agent.FileTLSKey {
		t.Fatalf("nodeKeyFile %q, agent.FileTLSKey %q", nodeKeyFile, agent.FileTLSKey)
	}
}

// A node call a follower forwards without a client certificate (a join,
// or a caller that sent none) must not run as the follower itself: the
// leader saw the follower's manager certificate on the connection.
func TestForwardedCallWithoutNodeCertificateIsAnonymous(t *testing.T) {
	tm := startManager(t)
	mcert := tm.m.managerCert()
	for _, path := range []string{api.PathStatus, api.PathSelf} {
		method := http.MethodPost
		body := `{}`
		if path == api.PathSelf {
			method, body = http.MethodPut, `{"endpoint":"192.0.2.99:51820"}`
		}
		if got := internalCall(t, tm.addr, method, pathInternalNode+path, body, nil, mcert); got != http.StatusUnauthorized {
			t.Errorf("%s %s forwarded without a node certificate: %d, want 401", method, path, got)
		}
	}
	if ep := tm.m.Self().Endpoint.String(); ep == "192.0.2.99:51820" {
		t.Errorf("the forwarded call changed the manager's own endpoint")
	}
}

// A manager the operator demoted must stay a non-voter: it may not promote
// itself through /v1/internal/raft/promote, nor again when it restarts
// (its joinRaft used to ask for a vote at every start).
func TestDemotedManagerDoesNotPromoteItself(t *testing.T) {
	hs := startHA(t, 3)
	leader := leaderOf(hs)
	f := followersOf(hs)[0]
	if code, body := adminDo(leader.m, http.MethodPost, "/v1/nodes/"+f.name+"/demote", nil); code != http.StatusNoContent {
		t.Fatalf("demote: %d %s", code, body)
	}
	self := `{"id":"` + f.m.selfID + `","addr":"` + f.addr + `"}`
	if got := internalCall(t, leader.addr, http.MethodPost, pathInternalPromote, self, nil, f.m.managerCert()); got != http.StatusConflict {
		t.Errorf("self-promotion of a demoted manager: %d, want 409", got)
	}
	f.kill()
	f.start()
	select {
	case <-f.m.joinDone:
	case <-time.After(60 * time.Second):
		t.Fatal("the restarted manager's Raft join did not finish")
	}
	if _, voter := leader.m.raftSuffrage(f.m.selfID); voter {
		t.Fatalf("the demoted manager votes again after a restart")
	}
	// The operator's promote still works, and lifts the demotion.
	if code, body := adminDo(leader.m, http.MethodPost, "/v1/nodes/"+f.name+"/promote", nil); code != http.StatusNoContent {
		t.Fatalf("promote: %d %s", code, body)
	}
	if _, voter := leader.m.raftSuffrage(f.m.selfID); !voter {
		t.Fatal("not a voter after the operator's promote")
	}
}

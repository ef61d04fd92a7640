package cluster

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/warren-appliance/warren/cluster/agent"
	"github.com/warren-appliance/warren/cluster/api"
	"github.com/warren-appliance/warren/cluster/client"
	"github.com/warren-appliance/warren/cluster/clustermap"
	"github.com/warren-appliance/warren/cluster/pki"
)

// adminClient serves m's admin API on a unix socket, as the daemon does.
func adminClient(t *testing.T, m *Manager) *client.Client {
	sock := filepath.Join(t.TempDir(), "warren.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: m.AdminHandler()}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return client.New(sock)
}

func wantAPIError(t *testing.T, err error, status int, text string) {
	t.Helper()
	ae, ok := err.(*client.Error)
	if !ok || ae.Status != status || !strings.Contains(ae.Message, text) {
		t.Fatalf("got error %#v (%v), want status %d containing %q", err, err, status, text)
	}
	t.Logf("refused as expected (%d): %s", ae.Status, ae.Message)
}

func intp(n int) *int { return &n }

func TestServicesCreateScaleRemoveWithVIPs(t *testing.T) {
	tm := startManager(t)
	join(t, agentConfig(t, tm, "worker-1"))
	c := adminClient(t, tm.m)
	ctx := context.Background()

	web, err := c.CreateService(ctx, api.ServiceSpec{Name: "web", Image: "nginx:alpine", Replicas: intp(3),
		Env: []string{"A=1"}, Ports: []string{"8080:80", "5353:53/udp"}, Command: []string{"httpd", "-f"}})
	if err != nil {
		t.Fatal(err)
	}
	if web.VIP.String() != "10.1.0.1" || len(web.Tasks) != 3 || web.Replicas != 3 {
		t.Fatalf("web = %+v, want VIP 10.1.0.1 and 3 tasks", web)
	}
	if web.Ports[1] != (clustermap.Port{Protocol: "udp", Target: 53, Published: 5353}) {
		t.Fatalf("ports = %+v", web.Ports)
	}
	for _, task := range web.Tasks {
		if task.Node == "" || !task.IP.IsValid() || task.State != clustermap.TaskPending || task.Image != "nginx:alpine" {
			t.Fatalf("task %+v: want a node, an IP, pending, the service image", task)
		}
	}
	db, err := c.CreateService(ctx, api.ServiceSpec{Name: "db", Image: "redis"})
	if err != nil {
		t.Fatal(err)
	}
	if db.VIP.String() != "10.1.0.2" || db.Replicas != 1 {
		t.Fatalf("db = %+v, want VIP 10.1.0.2 and the default of 1 replica", db)
	}

	versionBefore := tm.m.Map().Version
	_, err = c.CreateService(ctx, api.ServiceSpec{Name: "web", Image: "other"})
	wantAPIError(t, err, http.StatusConflict, `service "web" already exists`)
	_, err = c.CreateService(ctx, api.ServiceSpec{Name: "web2", Image: "x", Ports: []string{"8080:8080"}})
	wantAPIError(t, err, http.StatusConflict, `host port 8080/tcp is already published by service "web"`)
	_, err = c.CreateService(ctx, api.ServiceSpec{Name: "Bad_Name", Image: "x"})
	wantAPIError(t, err, http.StatusBadRequest, "service name")
	_, err = c.CreateService(ctx, api.ServiceSpec{Name: "neg", Image: "x", Replicas: intp(-1)})
	wantAPIError(t, err, http.StatusBadRequest, "replicas -1")
	_, err = c.CreateService(ctx, api.ServiceSpec{Name: "port", Image: "x", Ports: []string{"80"}})
	wantAPIError(t, err, http.StatusBadRequest, "HOST:CONTAINER")
	_, err = c.CreateService(ctx, api.ServiceSpec{Name: "cons", Image: "x", Constraints: []string{"node.zone==a"}})
	wantAPIError(t, err, http.StatusBadRequest, `constraint node.zone==a: unknown field`)
	_, err = c.CreateService(ctx, api.ServiceSpec{Name: "env", Image: "x", Env: []string{"NOEQUALS"}})
	wantAPIError(t, err, http.StatusBadRequest, "KEY=VALUE")
	_, err = c.CreateService(ctx, api.ServiceSpec{Name: "noimage"})
	wantAPIError(t, err, http.StatusBadRequest, "--image")
	if v := tm.m.Map().Version; v != versionBefore {
		t.Fatalf("refused creates changed the map: version %d -> %d", versionBefore, v)
	}
	if list, _ := c.Services(ctx); len(list) != 2 {
		t.Fatalf("%d services after refused creates, want 2", len(list))
	}

	web, err = c.ScaleService(ctx, "web", 1)
	if err != nil {
		t.Fatal(err)
	}
	running := 0
	for _, task := range web.Tasks {
		if task.DesiredState == clustermap.TaskRunning {
			running++
		}
	}
	if web.Replicas != 1 || running != 1 {
		t.Fatalf("after scale to 1: %+v", web)
	}
	_, err = c.ScaleService(ctx, "nope", 1)
	wantAPIError(t, err, http.StatusNotFound, `no service named "nope"`)

	// A global service runs one task per eligible node and is not scaled;
	// its workload settings come back in the view.
	agent, err := c.CreateService(ctx, api.ServiceSpec{Name: "agent", Image: "x", Workload: clustermap.Workload{Mode: clustermap.ModeGlobal,
		Restart: &clustermap.RestartPolicy{Condition: clustermap.RestartOnFailure, MaxAttempts: 2}}})
	if err != nil {
		t.Fatal(err)
	}
	if agent.Mode != clustermap.ModeGlobal || agent.Restart == nil || agent.Restart.MaxAttempts != 2 {
		t.Fatalf("agent view lost its workload: %+v", agent.Workload)
	}
	_, err = c.ScaleService(ctx, "agent", 3)
	wantAPIError(t, err, http.StatusBadRequest, "service agent is global")
	_, err = c.CreateService(ctx, api.ServiceSpec{Name: "g2", Image: "x", Replicas: intp(2), Workload: clustermap.Workload{Mode: clustermap.ModeGlobal}})
	wantAPIError(t, err, http.StatusBadRequest, "--replicas does not apply to --mode global")
	if err := c.RemoveService(ctx, "agent"); err != nil {
		t.Fatal(err)
	}

	if err := c.RemoveService(ctx, "web"); err != nil {
		t.Fatal(err)
	}
	_, err = c.Service(ctx, "web")
	wantAPIError(t, err, http.StatusNotFound, "no service")
	// The removed service's tasks are told to stop, and its VIP is free again.
	for _, task := range tm.m.Map().Tasks {
		if task.Service == "web" && task.DesiredState != clustermap.TaskShutdown {
			t.Fatalf("task %s of the removed service still desired %s", task.Name, task.DesiredState)
		}
	}
	again, err := c.CreateService(ctx, api.ServiceSpec{Name: "api", Image: "x"})
	if err != nil {
		t.Fatal(err)
	}
	if again.VIP.String() != "10.1.0.1" {
		t.Fatalf("new service got VIP %v, want the released 10.1.0.1", again.VIP)
	}
}

func TestServiceUnplacedSaysWhy(t *testing.T) {
	tm := startManager(t)
	c := adminClient(t, tm.m)
	v, err := c.CreateService(context.Background(), api.ServiceSpec{Name: "edge", Image: "x", Replicas: intp(2),
		Constraints: []string{"node.labels.zone==nowhere"}})
	if err != nil {
		t.Fatal(err)
	}
	if len(v.Tasks) != 0 || !strings.Contains(v.Unplaced, "2 of 2 replicas unplaced") || !strings.Contains(v.Unplaced, "node.labels.zone==nowhere") {
		t.Fatalf("unplaced service = %+v", v)
	}
	t.Logf("ps explains: %s", v.Unplaced)
}

func TestAdminNodesTokensAndInfo(t *testing.T) {
	tm := startManager(t)
	join(t, agentConfig(t, tm, "worker-1"))
	c := adminClient(t, tm.m)
	ctx := context.Background()
	nodes, err := c.Nodes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(nodes) != 2 || nodes[0].Name != "manager-1" || !nodes[0].Self || nodes[1].OverlayIP.String() != "10.0.0.2" {
		t.Fatalf("nodes = %+v", nodes)
	}
	// The JSON field names the CLI documents.
	raw, _ := json.Marshal(nodes[1])
	for _, k := range []string{`"name"`, `"role"`, `"overlay_ip"`, `"container_block"`, `"status"`} {
		if !strings.Contains(string(raw), k) {
			t.Fatalf("node JSON lacks %s: %s", k, raw)
		}
	}
	n, err := c.Node(ctx, "worker-1")
	if err != nil || n.ContainerBlock.String() != "10.0.2.0/24" {
		t.Fatalf("inspect worker-1 = %+v, %v", n, err)
	}
	_, err = c.Node(ctx, "ghost")
	wantAPIError(t, err, http.StatusNotFound, `no node named "ghost"`)
	err = c.RemoveNode(ctx, "worker-1", false)
	wantAPIError(t, err, http.StatusConflict, "--force")

	old, err := c.JoinToken(ctx, "worker", false)
	if err != nil {
		t.Fatal(err)
	}
	rotated, err := c.JoinToken(ctx, "worker", true)
	if err != nil || rotated.Token == old.Token {
		t.Fatalf("rotate: %+v, %v", rotated, err)
	}
	oldTok, _ := pki.ParseToken(old.Token)
	newTok, _ := pki.ParseToken(rotated.Token)
	if oldTok.CAHash != newTok.CAHash {
		t.Fatal("rotation must keep the CA hash")
	}
	_, err = c.JoinToken(ctx, "admin", false)
	wantAPIError(t, err, http.StatusBadRequest, "want worker or manager")

	info, err := c.ClusterInfo(ctx)
	if err != nil || info.Nodes != 2 || info.ID != tm.m.ClusterID() || info.CAHash != oldTok.CAHash {
		t.Fatalf("info = %+v, %v", info, err)
	}
}

func TestCLIReachErrorNamesTheSocket(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "absent.sock")
	_, err := client.New(sock).Nodes(context.Background())
	if err == nil || !strings.Contains(err.Error(), "cannot reach the warren daemon at "+sock+": is warren-appliance running?") {
		t.Fatalf("error = %v", err)
	}
}

// nodeAPIGet calls the node API with the given TLS client certificates.
func nodeAPIGet(t *testing.T, addr, path string, certs []tls.Certificate) (int, string) {
	tr := &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true, Certificates: certs}}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Get("https://" + addr + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var e api.Error
	json.NewDecoder(resp.Body).Decode(&e)
	return resp.StatusCode, e.Error
}

func TestNodeAPIRefusesClientWithoutCertificate(t *testing.T) {
	tm := startManager(t)
	status, msg := nodeAPIGet(t, tm.addr, api.PathWatch, nil)
	if status != http.StatusUnauthorized || !strings.Contains(msg, "needs the node's client certificate") {
		t.Fatalf("no certificate: %d %q", status, msg)
	}
	t.Logf("refused as expected (%d): %s", status, msg)
}

func TestNodeAPIRefusesForeignCACertificate(t *testing.T) {
	tm := startManager(t)
	victim := join(t, agentConfig(t, tm, "worker-1")).Self()
	// Another cluster's CA signs a certificate naming a real member.
	foreign, err := pki.NewCA("foreign", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	key, _ := pki.NewKey()
	csr, _ := pki.NewCSR(key, "evil")
	cert, err := foreign.SignNode(csr, victim.ID, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	pair := tls.Certificate{Certificate: [][]byte{cert.Raw}, PrivateKey: key}
	status, msg := nodeAPIGet(t, tm.addr, api.PathWatch, []tls.Certificate{pair})
	if status != http.StatusUnauthorized || !strings.Contains(msg, "not valid for this cluster") {
		t.Fatalf("foreign CA: %d %q", status, msg)
	}
	t.Logf("refused as expected (%d): %s", status, msg)
}

func TestNodeCanReportOnlyItsOwnTasks(t *testing.T) {
	tm := startManager(t)
	a1 := join(t, agentConfig(t, tm, "worker-1"))
	join(t, agentConfig(t, tm, "worker-2"))
	if _, err := tm.m.CreateService(api.ServiceSpec{Name: "web", Image: "x", Replicas: intp(3)}); err != nil {
		t.Fatal(err)
	}
	var all []api.TaskStatus
	for _, task := range tm.m.Map().Tasks {
		all = append(all, api.TaskStatus{Name: task.Name, State: clustermap.TaskRunning, Image: "x"})
	}
	if err := a1.Report(context.Background(), NodeStatus{Tasks: all}); err != nil {
		t.Fatal(err)
	}
	for _, task := range tm.m.Map().Tasks {
		own := task.NodeID == a1.Self().ID
		if own != (task.State == clustermap.TaskRunning) {
			t.Fatalf("task %s on %s is %s after worker-1 reported every task running", task.Name, task.NodeID, task.State)
		}
	}
}

func TestJoinAsManagerNeedsManagerToken(t *testing.T) {
	tm := startManager(t)
	cfg := agentConfig(t, tm, "manager-2")
	cfg.Node.Role = clustermap.RoleManager
	_, err := agent.Join(context.Background(), cfg)
	if err == nil || !strings.Contains(err.Error(), "this is a worker join token but the node asked to join as manager") {
		t.Fatalf("manager join with a worker token: %v", err)
	}
	_, cfg.Token = tm.m.JoinTokens()
	if n := join(t, cfg).Self(); n.Role != clustermap.RoleManager || n.OverlayIP.String() != "10.0.0.2" {
		t.Fatalf("second manager = %+v", n)
	}
}

func TestNodeViewShowsClockOffset(t *testing.T) {
	tm := startManager(t)
	a := join(t, agentConfig(t, tm, "worker-1"))
	if err := a.Report(context.Background(), NodeStatus{Time: time.Now().Add(-time.Hour)}); err != nil {
		t.Fatal(err)
	}
	v, err := tm.m.Node("worker-1")
	if err != nil {
		t.Fatal(err)
	}
	if v.ClockOffsetSeconds > -3590 || v.ClockOffsetSeconds < -3610 {
		t.Fatalf("clock offset = %v s, want about -3600", v.ClockOffsetSeconds)
	}
}

// `warren node drain`: the node's tasks are placed elsewhere and it gets
// no new ones; `activate` undoes it.
func TestDrainNodeMovesItsTasks(t *testing.T) {
	tm := startManager(t)
	w := join(t, agentConfig(t, tm, "worker-1"))
	c := adminClient(t, tm.m)
	ctx := context.Background()
	if _, err := c.CreateService(ctx, api.ServiceSpec{Name: "web", Image: "x", Replicas: intp(4)}); err != nil {
		t.Fatal(err)
	}
	onNode := func(id string) (running, retiring int) {
		for _, task := range tm.m.Map().Tasks {
			if task.NodeID != id {
				continue
			}
			if task.DesiredState == clustermap.TaskRunning {
				running++
			} else {
				retiring++
			}
		}
		return
	}
	wid := w.Self().ID
	if r, _ := onNode(wid); r != 2 {
		t.Fatalf("worker-1 runs %d of 4 tasks before the drain, want 2", r)
	}
	v, err := c.SetNodeAvailability(ctx, "worker-1", true)
	if err != nil || v.Availability != "drain" {
		t.Fatalf("drain: %+v, %v", v, err)
	}
	if r, s := onNode(wid); r != 0 || s != 2 {
		t.Fatalf("after the drain worker-1 has %d running and %d retiring tasks, want 0 and 2", r, s)
	}
	if r, _ := onNode(tm.m.Self().ID); r != 4 {
		t.Fatalf("the manager runs %d tasks after the drain, want all 4", r)
	}
	if _, err := c.CreateService(ctx, api.ServiceSpec{Name: "more", Image: "x", Replicas: intp(2)}); err != nil {
		t.Fatal(err)
	}
	if r, _ := onNode(wid); r != 0 {
		t.Fatalf("a drained node got %d new tasks", r)
	}
	nodes, _ := c.Nodes(ctx)
	for _, n := range nodes {
		if want := map[bool]string{true: "drain", false: "active"}[n.Name == "worker-1"]; n.Availability != want {
			t.Errorf("node %s availability %q, want %q", n.Name, n.Availability, want)
		}
	}
	if v, err := c.SetNodeAvailability(ctx, "worker-1", false); err != nil || v.Availability != "active" {
		t.Fatalf("activate: %+v, %v", v, err)
	}
	_, err = c.SetNodeAvailability(ctx, "ghost", true)
	wantAPIError(t, err, http.StatusNotFound, `no node named "ghost"`)
}

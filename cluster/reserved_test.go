package cluster

import (
	"context"
	"net/http"
	"strings"
	"testing"

	"github.com/warren-appliance/warren/cluster/api"
)

// Finding 10: --publish took the appliance's own ports (the WireGuard port,
// whose DNAT partitions the mesh as conntrack entries expire; the API
// port; DNS). They are refused, naming the port and what uses it.
func TestPublishRefusesTheAppliancesOwnPorts(t *testing.T) {
	tm := startManager(t)
	tm.cfg.ReservedPorts = []ReservedPort{{Port: 9586, Protocol: "tcp", What: "the metrics listener"}}
	tm.restart()
	wc := agentConfig(t, tm, "worker-1") // WireGuard on 51820 too
	wc.Node.Relay = "192.0.2.10:7947"    // and a relay on 7947
	join(t, wc)
	apiPort := tm.addr[strings.LastIndex(tm.addr, ":")+1:]
	for _, c := range []struct{ publish, want string }{
		{"51820:80/udp", "51820/udp"},
		{apiPort + ":80", apiPort + "/tcp"},
		{"53:53/udp", "53/udp"},
		{"53:53", "53/tcp"},
		{"7946:80", "7946/tcp"}, // the configured api_listen port
		{"9586:80", "9586/tcp"}, // added by the integrator
		{"7947:80/udp", "7947/udp"},
		{"7947:80", "7947/tcp"},
	} {
		spec := api.ServiceSpec{Name: "web", Image: "img", Ports: []string{c.publish}}
		_, err := adminClient(t, tm.m).CreateService(context.Background(), spec)
		wantAPIError(t, err, http.StatusConflict, "host port "+c.want+" is reserved")
	}
	// Other protocols of those ports, and other ports, are fine.
	if _, err := tm.m.CreateService(api.ServiceSpec{Name: "web", Image: "img", Ports: []string{"51820:80/tcp", "8080:80"}}); err != nil {
		t.Fatal(err)
	}
	if len(tm.m.Map().Services) != 1 {
		t.Fatal("a refused service was created")
	}
}

// Managers reach every node's task log server (service logs, volumes) on
// its overlay address: publishing that port would DNAT them to a task.
func TestPublishRefusesTheTaskLogPort(t *testing.T) {
	tm := startManager(t)
	_, err := adminClient(t, tm.m).CreateService(context.Background(), api.ServiceSpec{Name: "web", Image: "img", Ports: []string{"7947:80"}})
	wantAPIError(t, err, http.StatusConflict, "host port 7947/tcp is reserved")
	wantAPIError(t, err, http.StatusConflict, "task log server")
}

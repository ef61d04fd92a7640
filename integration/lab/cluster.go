package lab

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"
)

// ClusterOptions shape a lab cluster of one manager and some workers.
type ClusterOptions struct {
	Workers int
	// Managers is the number of managers joined (`role = "manager"` with
	// the manager token) after manager-1 creates the cluster.
	Managers int
	// Images are tarballs dropped into every node's images_dir before start.
	Images []string
	// ManagerExtra and WorkerExtra are TOML appended to each node's config
	// (whole tables other than [node], [cluster], [wireguard] and [runtime],
	// which the lab writes, e.g. "[network]\ndns_domain = \"lab.test\"\n").
	ManagerExtra string
	WorkerExtra  string
	// ClusterExtra is appended inside every node's [cluster] table.
	ClusterExtra string
	// ManagerWireGuardExtra is appended inside the manager's [wireguard]
	// table (e.g. "subnet = \"172.16.0.0/24\"\n").
	ManagerWireGuardExtra string
	// WorkersBehindNAT puts each worker alone behind its own NAT router
	// (router-N for worker-N, see Router), with no advertise_address: the
	// default config of a board at another site.
	WorkersBehindNAT bool
	// NamePrefix starts every node's name ("b-" makes b-manager-1,
	// b-worker-1), so several clusters share one lab and its LAN.
	NamePrefix string
}

// Cluster is a running lab cluster.
type Cluster struct {
	Manager  *Node   // manager-1, which created the cluster
	Managers []*Node // the managers that joined it
	Workers  []*Node
	// Routers are the workers' NAT routers (WorkersBehindNAT), in order.
	Routers []*Router
}

// Nodes returns the managers then the workers.
func (c *Cluster) Nodes() []*Node {
	return append(append([]*Node{c.Manager}, c.Managers...), c.Workers...)
}

// NodeView is the part of `warren node ls --json` the lab waits on.
type NodeView struct {
	Name           string `json:"name"`
	Role           string `json:"role"`
	Status         string `json:"status"`
	ManagerStatus  string `json:"manager_status"`
	OverlayIP      string `json:"overlay_ip"`
	ContainerBlock string `json:"container_block"`
}

// StartCluster brings up a manager (`warren-appliance` with role manager,
// creating the cluster) and workers joined with the worker token the
// manager prints, each with its own containerd, and waits until the
// manager lists every node as ready.
func (l *Lab) StartCluster(ctx context.Context, opts ClusterOptions) (*Cluster, error) {
	c := &Cluster{}
	m, err := l.addClusterNode(ctx, opts.NamePrefix+"manager-1", opts.Images)
	if err != nil {
		return nil, err
	}
	c.Manager = m
	cfg := fmt.Sprintf("[node]\nname = \""+opts.NamePrefix+"manager-1\"\nrole = \"manager\"\nadvertise_address = %q\n\n[cluster]\n%s\n[wireguard]\nmode = \"tun\"\n%s\n[runtime]\ncgroup_parent = %q\n\n%s",
		m.LANIP, opts.ClusterExtra, opts.ManagerWireGuardExtra, m.CgroupParent(), opts.ManagerExtra)
	if err := m.WriteConfig(cfg); err != nil {
		return nil, err
	}
	if err := m.StartAppliance("warren-appliance"); err != nil {
		return nil, err
	}
	var token string
	if err := Poll(ctx, 200*time.Millisecond, func() error {
		out, err := m.Exec(ctx, "warren", "cluster", "join-token", "worker", "-q")
		token = strings.TrimSpace(out)
		return err
	}); err != nil {
		return nil, fmt.Errorf("manager never answered join-token: %w", err)
	}
	if opts.Managers > 0 {
		var mtoken string
		if err := Poll(ctx, 200*time.Millisecond, func() error {
			out, err := m.Exec(ctx, "warren", "cluster", "join-token", "manager", "-q")
			mtoken = strings.TrimSpace(out)
			return err
		}); err != nil {
			return nil, fmt.Errorf("manager never answered join-token manager: %w", err)
		}
		for i := 2; i <= opts.Managers+1; i++ {
			name := fmt.Sprintf("%smanager-%d", opts.NamePrefix, i)
			n, err := l.addClusterNode(ctx, name, opts.Images)
			if err != nil {
				return nil, err
			}
			cfg := fmt.Sprintf("[node]\nname = %q\nrole = \"manager\"\nadvertise_address = %q\n\n[cluster]\nmanager = \"%s:7946\"\ntoken = %q\n%s\n[wireguard]\nmode = \"tun\"\n\n[runtime]\ncgroup_parent = %q\n\n%s",
				name, n.LANIP, m.LANIP, mtoken, opts.ClusterExtra, n.CgroupParent(), opts.ManagerExtra)
			if err := n.WriteConfig(cfg); err != nil {
				return nil, err
			}
			if err := n.StartAppliance("warren-appliance"); err != nil {
				return nil, err
			}
			c.Managers = append(c.Managers, n)
		}
	}
	for i := 1; i <= opts.Workers; i++ {
		name := fmt.Sprintf("%sworker-%d", opts.NamePrefix, i)
		var r *Router
		if opts.WorkersBehindNAT {
			if r, err = l.AddRouter(fmt.Sprintf("router-%d", i)); err != nil {
				return nil, err
			}
			c.Routers = append(c.Routers, r)
		}
		w, err := l.addClusterNodeBehind(ctx, name, r, opts.Images)
		if err != nil {
			return nil, err
		}
		advertise := fmt.Sprintf("advertise_address = %q\n", w.LANIP)
		if r != nil {
			advertise = "" // the default: the source address of its default route
		}
		cfg := fmt.Sprintf("[node]\nname = %q\nrole = \"worker\"\n%s\n[cluster]\nmanager = \"%s:7946\"\ntoken = %q\n%s\n[wireguard]\nmode = \"tun\"\n\n[runtime]\ncgroup_parent = %q\n\n%s",
			name, advertise, m.LANIP, token, opts.ClusterExtra, w.CgroupParent(), opts.WorkerExtra)
		if err := w.WriteConfig(cfg); err != nil {
			return nil, err
		}
		if err := w.StartAppliance("warren-appliance"); err != nil {
			return nil, err
		}
		c.Workers = append(c.Workers, w)
	}
	if err := Poll(ctx, 250*time.Millisecond, func() error {
		nodes, err := c.NodeList(ctx)
		if err != nil {
			return err
		}
		ready := 0
		for _, n := range nodes {
			if n.Status == "ready" {
				ready++
			}
		}
		if want := 1 + opts.Managers + opts.Workers; ready != want {
			return fmt.Errorf("%d of %d nodes ready: %+v", ready, want, nodes)
		}
		return nil
	}); err != nil {
		return c, fmt.Errorf("cluster did not come up: %w", err)
	}
	return c, nil
}

// NodeList runs `warren node ls --json` on the manager.
func (c *Cluster) NodeList(ctx context.Context) ([]NodeView, error) {
	return c.NodeListOn(ctx, c.Manager)
}

// NodeListOn runs `warren node ls --json` on node n (a manager).
func (c *Cluster) NodeListOn(ctx context.Context, n *Node) ([]NodeView, error) {
	out, err := n.Exec(ctx, "warren", "node", "ls", "--json")
	if err != nil {
		return nil, err
	}
	var nodes []NodeView
	if err := json.Unmarshal([]byte(out), &nodes); err != nil {
		return nil, fmt.Errorf("node ls --json: %w: %s", err, out)
	}
	return nodes, nil
}

func (l *Lab) addClusterNode(ctx context.Context, name string, images []string) (*Node, error) {
	return l.addClusterNodeBehind(ctx, name, nil, images)
}

// addClusterNodeBehind is addClusterNode behind router r (nil: on the LAN).
func (l *Lab) addClusterNodeBehind(ctx context.Context, name string, r *Router, images []string) (*Node, error) {
	var n *Node
	var err error
	if r != nil {
		n, err = l.AddNodeBehind(name, r)
	} else {
		n, err = l.AddNode(name)
	}
	if err != nil {
		return nil, err
	}
	for _, img := range images {
		if err := n.AddImage(img); err != nil {
			return nil, err
		}
	}
	if err := n.StartContainerd(ctx); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return n, nil
}

// AddWorker joins one more worker, name, to a running cluster (a board
// that joins later) and waits until the manager lists it as ready.
func (l *Lab) AddWorker(ctx context.Context, c *Cluster, name string, images []string) (*Node, error) {
	out, err := c.Manager.Exec(ctx, "warren", "cluster", "join-token", "worker", "-q")
	if err != nil {
		return nil, fmt.Errorf("join-token: %w", err)
	}
	token := strings.TrimSpace(out)
	w, err := l.addClusterNode(ctx, name, images)
	if err != nil {
		return nil, err
	}
	cfg := fmt.Sprintf("[node]\nname = %q\nrole = \"worker\"\nadvertise_address = %q\n\n[cluster]\nmanager = \"%s:7946\"\ntoken = %q\n\n[wireguard]\nmode = \"tun\"\n\n[runtime]\ncgroup_parent = %q\n",
		name, w.LANIP, c.Manager.LANIP, token, w.CgroupParent())
	if err := w.WriteConfig(cfg); err != nil {
		return nil, err
	}
	if err := w.StartAppliance("warren-appliance"); err != nil {
		return nil, err
	}
	c.Workers = append(c.Workers, w)
	err = Poll(ctx, 250*time.Millisecond, func() error {
		nodes, err := c.NodeList(ctx)
		if err != nil {
			return err
		}
		for _, n := range nodes {
			if n.Name == name && n.Status == "ready" {
				return nil
			}
		}
		return fmt.Errorf("%s not ready: %+v", name, nodes)
	})
	return w, err
}

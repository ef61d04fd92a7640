package appliance

import (
	"errors"
	"io"
	"log/slog"
	"net/netip"
	"slices"
	"testing"

	"github.com/warren-appliance/warren/cluster/clustermap"
	"github.com/warren-appliance/warren/configs"
	"github.com/warren-appliance/warren/hostfw"
	"github.com/warren-appliance/warren/metrics"
	"github.com/warren-appliance/warren/nat"
	"github.com/warren-appliance/warren/netpolicy"
	"github.com/warren-appliance/warren/orchestrate"
)

// recordingPolicies is the real netpolicy applier over a fake firewall,
// noting when it ran.
type recordingPolicies struct {
	*netpolicy.Applier
	log *[]string
}

func (p recordingPolicies) Sync(r netpolicy.Rules) (netpolicy.SyncStats, error) {
	*p.log = append(*p.log, "policies")
	return p.Applier.Sync(r)
}

// fakeTasks checks, when it is asked to start tasks, that each one's
// address is already in the policy set that selects it.
type fakeTasks struct {
	t   *testing.T
	fw  *hostfw.Fake
	log *[]string
	// known is what the reconciler says it runs; applied, the names of
	// the last Apply.
	known   []orchestrate.TaskStatus
	applied []string
}

func (f *fakeTasks) Status() []orchestrate.TaskStatus { return f.known }

func (f *fakeTasks) Apply(specs []orchestrate.TaskSpec) {
	*f.log = append(*f.log, "tasks")
	f.applied = nil
	for _, s := range specs {
		f.applied = append(f.applied, s.Name)
	}
	set := f.fw.SetMembers(netpolicy.SetName("tasks app=api"))
	for _, s := range specs {
		if !set[netip.PrefixFrom(s.IP, 32)] {
			f.t.Errorf("task %s starts before its address is in its policy set (%v)", s.Name, set)
		}
	}
}

type fakeNAT struct {
	log      *[]string
	services []nat.Service
	err      error
}

func (f *fakeNAT) Sync(s []nat.Service, _ nat.Options) error {
	*f.log = append(*f.log, "nat")
	f.services = s
	return f.err
}

func quietNode() *node {
	return &node{log: slog.New(slog.NewTextHandler(io.Discard, nil)), met: metrics.New(metrics.Sources{}), cfg: &configs.Loaded{}}
}

func policyMap() *clustermap.Map {
	return &clustermap.Map{
		Version:  7,
		Services: []clustermap.Service{{Name: "api", VIP: netip.MustParseAddr("10.1.0.1"), Labels: map[string]string{"app": "api"}}},
		Tasks: []clustermap.Task{{Name: "api-1", Service: "api", NodeID: "n1", IP: netip.MustParseAddr("10.0.1.2"),
			DesiredState: clustermap.TaskRunning}},
		Policies: []clustermap.Policy{{Name: "api-policy", PodSelector: clustermap.LabelSelector{MatchLabels: map[string]string{"app": "api"}},
			PolicyTypes: []string{clustermap.PolicyIngress}}},
	}
}

// fakeEngineNode is a node whose per-map engine runs the real policy
// applier over the firewall fake, with fake tasks and NAT that note when
// they run (in tasks.log).
func fakeEngineNode(t *testing.T) (*node, *hostfw.Fake, *fakeTasks, *fakeNAT) {
	f := hostfw.NewFake()
	fw := hostfw.NewSyncer(f, nil)
	log := &[]string{}
	n := quietNode()
	n.fw = fw
	n.pol = recordingPolicies{netpolicy.NewApplier(fw), log}
	tasks := &fakeTasks{t: t, fw: f, log: log}
	natFake := &fakeNAT{log: log}
	n.tasks, n.nat = tasks, natFake
	return n, f, tasks, natFake
}

// The per-map engine applies policies, then tasks, then the service
// rules: a task starts with its address in its policy sets, and its
// endpoint gets VIP traffic only once it is set up.
func TestApplyOrderPoliciesTasksNAT(t *testing.T) {
	n, f, tasks, natFake := fakeEngineNode(t)
	log := tasks.log

	m := policyMap()
	n.applyRules(m, []orchestrate.TaskSpec{{Name: "api-1", Service: "api", IP: netip.MustParseAddr("10.0.1.2")}})
	if want := []string{"policies", "tasks", "nat"}; !slices.Equal(*log, want) {
		t.Fatalf("apply order %v, want %v", log, want)
	}
	if len(natFake.services) != 1 || natFake.services[0].Name != "api" {
		t.Fatalf("nat got %+v", natFake.services)
	}
	if got := f.Rules("mangle", "FORWARD"); len(got) != 1 {
		t.Fatalf("mangle FORWARD = %q, want the policy hook", got)
	}
}

// When the policies cannot be written, a task the node does not run yet
// is held back (never started, so never reported running nor put behind
// its VIP) while the tasks it runs keep going; the map is applied again
// shortly, and once the policies are in, the held task starts.
func TestPolicyFailureHoldsNewTasks(t *testing.T) {
	n, f, tasks, _ := fakeEngineNode(t)
	tasks.known = []orchestrate.TaskStatus{{Name: "api-1"}}
	m := policyMap()
	m.Tasks = append(m.Tasks, clustermap.Task{Name: "api-2", Service: "api", NodeID: "n1", IP: netip.MustParseAddr("10.0.1.3"),
		DesiredState: clustermap.TaskRunning})
	specs := []orchestrate.TaskSpec{{Name: "api-1", Service: "api", IP: netip.MustParseAddr("10.0.1.2")},
		{Name: "api-2", Service: "api", IP: netip.MustParseAddr("10.0.1.3")}}

	f.FailRestore = errors.New("iptables-restore: line 3 failed")
	n.applyRules(m, specs)
	if n.retryTimer == nil {
		t.Fatal("held tasks but no retry of the map scheduled")
	}
	n.retryTimer.Stop()
	n.retryTimer = nil
	if !slices.Equal(tasks.applied, []string{"api-1"}) {
		t.Fatalf("with the policies unwritten the reconciler got %v, want only the running api-1", tasks.applied)
	}
	n.applyRules(m, specs)
	if !slices.Equal(tasks.applied, []string{"api-1", "api-2"}) || n.retryTimer != nil {
		t.Fatalf("with the policies written the reconciler got %v (retry %v), want api-1 and api-2", tasks.applied, n.retryTimer != nil)
	}
}

// A failed NAT sync is retried by the canary's slow tick, not the quick
// one; the quick one runs the firewall canary only.
type countingCanary struct{ quick, slow int }

func (c *countingCanary) Check(slow bool) (bool, error) {
	if slow {
		c.slow++
	} else {
		c.quick++
	}
	return false, nil
}

func TestCanaryTickRetriesFailedSyncs(t *testing.T) {
	var log []string
	n := quietNode()
	canary := &countingCanary{}
	n.fw = canary
	natFake := &fakeNAT{log: &log, err: errors.New("xtables lock")}
	n.nat = natFake
	f := hostfw.NewFake()
	n.pol = recordingPolicies{netpolicy.NewApplier(hostfw.NewSyncer(f, nil)), &log}
	n.canaryTick(false) // no map yet: nothing
	if canary.quick+canary.slow != 0 {
		t.Fatal("canary ran before the first map")
	}
	n.last = policyMap()
	n.syncNAT(n.last)
	log = nil
	for i := 1; i <= canarySlowEvery; i++ {
		n.canaryTick(i%canarySlowEvery == 0)
	}
	if canary.quick != canarySlowEvery-1 || canary.slow != 1 {
		t.Fatalf("quick %d, slow %d checks", canary.quick, canary.slow)
	}
	if !slices.Equal(log, []string{"nat"}) {
		t.Fatalf("retries %v, want the failed nat sync once", log)
	}
	natFake.err = nil
	n.canaryTick(true)
	n.canaryTick(true)
	if !slices.Equal(log, []string{"nat", "nat"}) || n.natFailed {
		t.Fatalf("retries %v (failed %v), want one more and then none", log, n.natFailed)
	}
}

// Package scheduler decides where the replicas of each service run and which
// overlay IP each one gets. It is a pure function of the cluster's nodes,
// services and current tasks: the manager calls it on every change and
// publishes the result in the cluster map.
package scheduler

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/warren-appliance/warren/cluster/clustermap"
	"github.com/warren-appliance/warren/internal/dockerflags"
	"github.com/warren-appliance/warren/internal/netaddr"
)

// Plan returns the full desired task list and, for every service that is
// short of replicas, a human reason (service name -> reason).
//
//   - Existing placements that are still valid (node present and not down,
//     constraints still met, IP inside the node's block) are kept with their
//     reported state.
//   - Missing replicas go to eligible ready nodes: fewest tasks of that
//     service first, then fewest tasks overall, ties by node name.
//   - Slots are stable: a service of N replicas has <service>-1..N; scaling
//     down removes the highest slots.
//   - A task to remove stays in the list with DesiredState "shutdown", and
//     keeps its IP reserved, until its node reports it shut down or the node
//     is down or gone. Tasks of a down or gone node are placed elsewhere.
//   - A new task gets the lowest free IP of its node's ContainerBlock,
//     skipping the network address, the bridge's first address, the
//     broadcast address and every IP still held by a task in the list.
//
// Nodes whose status is neither ready nor down keep their tasks but get no
// new ones. A drained node (Availability "drain") gets no new tasks and its
// tasks are retired and placed elsewhere.
func Plan(nodes []clustermap.Node, services []clustermap.Service, current []clustermap.Task) (tasks []clustermap.Task, unplaced map[string]string) {
	p := newPlanner(nodes, services)
	p.sortCurrent(current)
	p.keepValid()
	p.placeMissing()
	slices.SortFunc(p.out, compareTasks)
	return p.out, p.unplaced
}

type slotKey struct {
	service string
	slot    int
}

type planner struct {
	nodes    []clustermap.Node // sorted by name, then ID
	nodeByID map[string]clustermap.Node
	services []clustermap.Service // sorted by name
	svcByNm  map[string]clustermap.Service

	running  map[string][]clustermap.Task  // desired running, by service
	retiring map[slotKey][]clustermap.Task // desired shutdown, still holding an IP
	out      []clustermap.Task             // kept tasks (retiring ones are added last)
	held     map[netip.Addr]bool           // IPs of every task in the result
	missing  map[string][]int              // slots to place, by service
	perSvc   map[string]map[string]int     // node ID -> service -> running tasks
	total    map[string]int                // node ID -> running tasks
	cons     map[string]constraintsOrError // by service
	unplaced map[string]string
	reserved map[string]clustermap.ResourceAmounts // node ID -> reservations of its tasks
}

type constraintsOrError struct {
	list []Constraint
	err  error
}

func newPlanner(nodes []clustermap.Node, services []clustermap.Service) *planner {
	p := &planner{
		nodes:    slices.Clone(nodes),
		nodeByID: make(map[string]clustermap.Node, len(nodes)),
		services: slices.Clone(services),
		svcByNm:  make(map[string]clustermap.Service, len(services)),
		running:  map[string][]clustermap.Task{},
		retiring: map[slotKey][]clustermap.Task{},
		held:     map[netip.Addr]bool{},
		missing:  map[string][]int{},
		perSvc:   map[string]map[string]int{},
		total:    map[string]int{},
		cons:     map[string]constraintsOrError{},
		unplaced: map[string]string{},
		reserved: map[string]clustermap.ResourceAmounts{},
	}
	slices.SortFunc(p.nodes, func(a, b clustermap.Node) int {
		return cmp.Or(cmp.Compare(a.Name, b.Name), cmp.Compare(a.ID, b.ID))
	})
	for _, n := range p.nodes {
		p.nodeByID[n.ID] = n
	}
	slices.SortFunc(p.services, func(a, b clustermap.Service) int { return cmp.Compare(a.Name, b.Name) })
	for _, s := range p.services {
		p.svcByNm[s.Name] = s
		list, err := parseConstraints(s.Constraints)
		p.cons[s.Name] = constraintsOrError{list, err}
	}
	return p
}

// nodeLive reports whether the task's node still exists and is not down:
// only then does the task still hold its IP there.
func (p *planner) nodeLive(id string) (clustermap.Node, bool) {
	n, ok := p.nodeByID[id]
	return n, ok && n.Status != clustermap.NodeDown
}

// sortCurrent splits the current tasks into running ones (by service) and
// retiring ones, dropping the tasks whose IP is released.
func (p *planner) sortCurrent(current []clustermap.Task) {
	cur := slices.Clone(current)
	slices.SortStableFunc(cur, compareTasks)
	for _, t := range cur {
		_, live := p.nodeLive(t.NodeID)
		if !live {
			continue // node down or gone: its tasks are gone with it
		}
		_, serviceExists := p.svcByNm[t.Service]
		switch {
		case t.DesiredState == clustermap.TaskShutdown && t.State == clustermap.TaskShutdown:
			// Shut down and reported so: IP released.
		case t.DesiredState == clustermap.TaskShutdown || !serviceExists:
			p.retire(t)
		default:
			p.running[t.Service] = append(p.running[t.Service], t)
		}
	}
}

func (p *planner) retire(t clustermap.Task) {
	t.DesiredState = clustermap.TaskShutdown
	k := slotKey{t.Service, t.Slot}
	p.retiring[k] = append(p.retiring[k], t)
}

// keepValid keeps each service's valid placements, retires the rest and
// records which slots still need a node. It runs for every service before
// anything is placed, so spreading sees all kept tasks.
func (p *planner) keepValid() {
	// Reserve every IP still in use before any task claims a new one.
	var keep []clustermap.Task
	for _, s := range p.services {
		replicas := max(s.Replicas, 0)
		cons := p.cons[s.Name]
		taken := map[int]bool{}
		onNode := map[string]bool{}
		for _, t := range p.running[s.Name] {
			node, _ := p.nodeLive(t.NodeID)
			switch {
			case s.IsGlobal() && (t.Slot < 1 || taken[t.Slot] || onNode[t.NodeID]):
				p.retire(t) // a second task of a global service on a node
			case !s.IsGlobal() && (t.Slot < 1 || t.Slot > replicas || taken[t.Slot]):
				p.retire(t) // scaled down, or a duplicate of its slot
			case cons.err == nil && !matchesAll(cons.list, node):
				p.retire(t) // constraints changed: move it
			case node.Availability == clustermap.NodeDrain:
				p.retire(t) // the node is being drained: move it
			default:
				taken[t.Slot] = true
				onNode[t.NodeID] = true
				keep = append(keep, t)
			}
		}
		if s.IsGlobal() {
			continue // placeGlobal finds the nodes without a task
		}
		for slot := 1; slot <= replicas; slot++ {
			if !taken[slot] {
				p.missing[s.Name] = append(p.missing[s.Name], slot)
			}
		}
	}
	for _, ts := range p.retiring {
		for _, t := range ts {
			if p.usableIP(t.NodeID, t.IP) {
				p.held[t.IP] = true
			}
			p.reserveN(t.NodeID, t.Service, 1) // still running until it stops
		}
	}
	var badIP []clustermap.Task
	for _, t := range keep {
		if !p.usableIP(t.NodeID, t.IP) || p.held[t.IP] {
			badIP = append(badIP, t)
			continue
		}
		p.held[t.IP] = true
		p.accept(t)
	}
	// A kept task whose IP is outside its block or taken twice gets a
	// fresh IP on the same node (or moves if that block is full).
	for _, t := range badIP {
		if ip, ok := p.freeIP(p.nodeByID[t.NodeID]); ok {
			t.IP = ip
			t.State, t.Error = clustermap.TaskPending, ""
			p.held[ip] = true
			p.accept(t)
			continue
		}
		p.missing[t.Service] = append(p.missing[t.Service], t.Slot)
	}
}

func (p *planner) accept(t clustermap.Task) {
	p.out = append(p.out, t)
	p.reserveN(t.NodeID, t.Service, 1)
	if p.perSvc[t.NodeID] == nil {
		p.perSvc[t.NodeID] = map[string]int{}
	}
	p.perSvc[t.NodeID][t.Service]++
	p.total[t.NodeID]++
}

// placeMissing places every missing slot, service by service in name order.
func (p *planner) placeMissing() {
	for _, s := range p.services {
		if s.IsGlobal() {
			p.placeGlobal(s)
			continue
		}
		slots := p.missing[s.Name]
		slices.Sort(slots)
		cons := p.cons[s.Name]
		if cons.err != nil {
			if len(slots) > 0 {
				p.unplaced[s.Name] = fmt.Sprintf("%d of %d replicas unplaced: bad constraint: %v", len(slots), s.Replicas, cons.err)
			}
			continue
		}
		var failed int
		for _, slot := range slots {
			if p.revive(s.Name, slot, cons.list) {
				continue
			}
			node, ok := p.pickNode(s.Name, cons.list)
			if !ok {
				failed++
				continue
			}
			ip, _ := p.freeIP(node) // pickNode only returns nodes with a free IP
			p.held[ip] = true
			p.accept(clustermap.Task{
				Name:         TaskName(s.Name, slot),
				Service:      s.Name,
				Slot:         slot,
				NodeID:       node.ID,
				IP:           ip,
				DesiredState: clustermap.TaskRunning,
				State:        clustermap.TaskPending,
			})
		}
		if failed > 0 {
			p.unplaced[s.Name] = fmt.Sprintf("%d of %d replicas unplaced: %s", failed, s.Replicas, p.whyNoNode(s.Name, cons.list))
		}
	}
	for _, ts := range p.retiring {
		p.out = append(p.out, ts...)
	}
}

// placeGlobal gives every eligible node without a task of global service
// s one, on the lowest slot no task of s holds (kept or retiring).
func (p *planner) placeGlobal(s clustermap.Service) {
	cons := p.cons[s.Name]
	if cons.err != nil {
		p.unplaced[s.Name] = fmt.Sprintf("global service not placed: bad constraint: %v", cons.err)
		return
	}
	has := map[string]bool{}
	taken := map[int]bool{}
	for _, t := range p.out {
		if t.Service == s.Name {
			has[t.NodeID] = true
			taken[t.Slot] = true
		}
	}
	for k := range p.retiring {
		if k.service == s.Name {
			taken[k.slot] = true
		}
	}
	slot := 1
	var noRoom, full int
	for _, n := range p.nodes {
		if has[n.ID] || !placeable(n) || !matchesAll(cons.list, n) {
			continue
		}
		if !p.fits(n, s.Name) {
			noRoom++
			continue
		}
		ip, ok := p.freeIP(n)
		if !ok {
			full++
			continue
		}
		for taken[slot] {
			slot++
		}
		taken[slot] = true
		p.held[ip] = true
		p.accept(clustermap.Task{Name: TaskName(s.Name, slot), Service: s.Name, Slot: slot, NodeID: n.ID, IP: ip,
			DesiredState: clustermap.TaskRunning, State: clustermap.TaskPending})
	}
	var parts []string
	if noRoom > 0 {
		parts = append(parts, fmt.Sprintf("%d eligible nodes without room for the reservation (%s)", noRoom, formatAmounts(p.reservation(s.Name))))
	}
	if full > 0 {
		parts = append(parts, fmt.Sprintf("%d eligible nodes without a free IP in their container block", full))
	}
	if len(parts) > 0 {
		p.unplaced[s.Name] = "global service not on every eligible node: " + strings.Join(parts, ", ")
	}
}

// revive turns a retiring task of the same slot back into a running one
// when its node would take it: no churn when a scale-down is undone.
func (p *planner) revive(service string, slot int, cons []Constraint) bool {
	k := slotKey{service, slot}
	for i, t := range p.retiring[k] {
		node, live := p.nodeLive(t.NodeID)
		if !live || !placeable(node) || !matchesAll(cons, node) || !p.usableIP(t.NodeID, t.IP) {
			continue
		}
		p.reserveN(t.NodeID, service, -1) // counted while retiring; accept counts it again
		p.retiring[k] = slices.Delete(p.retiring[k], i, i+1)
		t.DesiredState = clustermap.TaskRunning
		p.accept(t)
		return true
	}
	return false
}

// reservation is what one task of service sets aside on its node.
func (p *planner) reservation(service string) clustermap.ResourceAmounts {
	if r := p.svcByNm[service].Resources; r != nil {
		return r.Reservations
	}
	return clustermap.ResourceAmounts{}
}

// reserve counts n tasks of service against a node's capacity (n < 0:
// takes them back).
func (p *planner) reserveN(nodeID, service string, n int64) {
	r := p.reservation(service)
	u := p.reserved[nodeID]
	u.MemoryBytes += n * r.MemoryBytes
	u.NanoCPUs += n * r.NanoCPUs
	p.reserved[nodeID] = u
}

// fits reports whether one more task of service fits n's capacity next to
// the reservations already there. A node that has not reported a capacity
// takes only tasks without reservations of that kind.
func (p *planner) fits(n clustermap.Node, service string) bool {
	r := p.reservation(service)
	u := p.reserved[n.ID]
	if r.MemoryBytes > 0 && u.MemoryBytes+r.MemoryBytes > n.Capacity.MemoryBytes {
		return false
	}
	if r.NanoCPUs > 0 && u.NanoCPUs+r.NanoCPUs > n.Capacity.NanoCPUs {
		return false
	}
	return true
}

// placeable reports whether new tasks may go to n: ready and not drained.
func placeable(n clustermap.Node) bool {
	return n.Status == clustermap.NodeReady && n.Availability != clustermap.NodeDrain
}

// pickNode chooses the eligible node with the fewest tasks of service, then
// the fewest tasks overall, then the smallest name (p.nodes is sorted).
func (p *planner) pickNode(service string, cons []Constraint) (clustermap.Node, bool) {
	var best clustermap.Node
	found := false
	for _, n := range p.nodes {
		if !placeable(n) || !matchesAll(cons, n) || !p.fits(n, service) {
			continue
		}
		if _, ok := p.freeIP(n); !ok {
			continue
		}
		if !found || p.perSvc[n.ID][service] < p.perSvc[best.ID][service] ||
			(p.perSvc[n.ID][service] == p.perSvc[best.ID][service] && p.total[n.ID] < p.total[best.ID]) {
			best, found = n, true
		}
	}
	return best, found
}

// whyNoNode explains, node by node category, why no node took a replica.
func (p *planner) whyNoNode(service string, cons []Constraint) string {
	if len(p.nodes) == 0 {
		return "no nodes in the cluster"
	}
	var notReady, drained, mismatch, full, noRoom int
	for _, n := range p.nodes {
		switch {
		case n.Status != clustermap.NodeReady:
			notReady++
		case n.Availability == clustermap.NodeDrain:
			drained++
		case !matchesAll(cons, n):
			mismatch++
		case !p.fits(n, service):
			noRoom++
		default:
			if _, ok := p.freeIP(n); !ok {
				full++
			}
		}
	}
	var parts []string
	if notReady > 0 {
		parts = append(parts, fmt.Sprintf("%d not ready", notReady))
	}
	if drained > 0 {
		parts = append(parts, fmt.Sprintf("%d drained", drained))
	}
	if mismatch > 0 {
		exprs := make([]string, len(cons))
		for i, c := range cons {
			exprs[i] = c.String()
		}
		parts = append(parts, fmt.Sprintf("%d not matching %s", mismatch, strings.Join(exprs, " && ")))
	}
	if noRoom > 0 {
		parts = append(parts, fmt.Sprintf("%d without room for the reservation (%s)", noRoom, formatAmounts(p.reservation(service))))
	}
	if full > 0 {
		parts = append(parts, fmt.Sprintf("%d without a free IP in their container block", full))
	}
	return fmt.Sprintf("no eligible node (%d nodes: %s)", len(p.nodes), strings.Join(parts, ", "))
}

// usableIP reports whether ip is a task address of node id's block.
func (p *planner) usableIP(nodeID string, ip netip.Addr) bool {
	n, ok := p.nodeByID[nodeID]
	if !ok || !ip.IsValid() {
		return false
	}
	first, last, ok := hostRange(n.ContainerBlock)
	return ok && ip.Compare(first) >= 0 && ip.Compare(last) <= 0
}

// freeIP returns the lowest task address of n's block not held by a task.
func (p *planner) freeIP(n clustermap.Node) (netip.Addr, bool) {
	first, last, ok := hostRange(n.ContainerBlock)
	if !ok {
		return netip.Addr{}, false
	}
	for ip := first; ip.IsValid() && ip.Compare(last) <= 0; ip = ip.Next() {
		if !p.held[ip] {
			return ip, true
		}
	}
	return netip.Addr{}, false
}

// hostRange is the range of task addresses of a block: after the network
// address and the bridge's first address, before the broadcast address.
func hostRange(block netip.Prefix) (first, last netip.Addr, ok bool) {
	if !block.IsValid() {
		return first, last, false
	}
	block = block.Masked()
	first = netaddr.Bridge(block).Next()
	last = netaddr.Last(block).Prev()
	if !first.IsValid() || !last.IsValid() || !block.Contains(first) || first.Compare(last) > 0 {
		return first, last, false
	}
	return first, last, true
}

// TaskName is the name of slot of service: <service>-<slot>.
func TaskName(service string, slot int) string {
	return fmt.Sprintf("%s-%d", service, slot)
}

// compareTasks orders by service, slot, running before shutdown, node.
func compareTasks(a, b clustermap.Task) int {
	return cmp.Or(
		cmp.Compare(a.Service, b.Service),
		cmp.Compare(a.Slot, b.Slot),
		cmp.Compare(desiredRank(a), desiredRank(b)),
		cmp.Compare(a.NodeID, b.NodeID),
	)
}

func desiredRank(t clustermap.Task) int {
	if t.DesiredState == clustermap.TaskShutdown {
		return 1
	}
	return 0
}

// formatAmounts writes a reservation as the flags that set it read.
func formatAmounts(a clustermap.ResourceAmounts) string {
	var parts []string
	if a.MemoryBytes > 0 {
		parts = append(parts, "memory "+dockerflags.FormatBytes(a.MemoryBytes))
	}
	if a.NanoCPUs > 0 {
		parts = append(parts, "cpu "+dockerflags.FormatCPUs(a.NanoCPUs))
	}
	return strings.Join(parts, ", ")
}

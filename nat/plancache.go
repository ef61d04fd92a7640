package nat

import (
	"reflect"
	"slices"
)

// partCache keeps each service's planned rules between syncs, so a sync
// after one change plans one service instead of all of them.
type partCache struct {
	opts     Options
	services map[string]plannedService
}

type plannedService struct {
	service Service // a copy: callers may reuse their slices
	part    ruleset
}

// plan is plan(services, opts), reusing the parts of unchanged services.
func (c *partCache) plan(services []Service, opts Options) ruleset {
	if c.services == nil || !reflect.DeepEqual(c.opts, opts) {
		c.opts = opts
		c.opts.NodeAddresses = slices.Clone(opts.NodeAddresses)
		c.services = map[string]plannedService{}
	}
	ctx := newPlanContext(opts)
	seen := make(map[string]bool, len(services))
	rs := assemble(services, ctx, func(s Service) ruleset {
		seen[s.Name] = true
		if cached, ok := c.services[s.Name]; ok && sameService(cached.service, s) {
			return cached.part
		}
		part := planService(s, ctx)
		s.Ports = slices.Clone(s.Ports)
		s.Endpoints = slices.Clone(s.Endpoints)
		c.services[s.Name] = plannedService{service: s, part: part}
		return part
	})
	for name := range c.services {
		if !seen[name] {
			delete(c.services, name)
		}
	}
	return rs
}

func sameService(a, b Service) bool {
	return a.Name == b.Name && a.VIP == b.VIP && a.Affinity == b.Affinity &&
		slices.Equal(a.Ports, b.Ports) && slices.Equal(a.Endpoints, b.Endpoints)
}

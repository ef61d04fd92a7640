package nat

import (
	"testing"

	"github.com/warren-appliance/warren/internal/netnstest"
)

// Short names for the shared namespace helpers; this package's namespaces
// are named wnat<pid>-<n>-<role>.
var (
	requireRoot = netnstest.RequireRoot
	mustRun     = netnstest.MustRun
	inNetns     = netnstest.In
	mustInNetns = netnstest.MustIn
	nsRun       = netnstest.Run
	splitRule   = netnstest.SplitRule
)

func newNetns(tb testing.TB, role string) string { return netnstest.New(tb, "wnat", role) }

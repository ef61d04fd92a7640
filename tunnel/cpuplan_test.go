package tunnel

import (
	"runtime"
	"testing"
)

func TestPlanGoThreads(t *testing.T) {
	for _, c := range []struct{ cores, want int }{
		{1, 1}, {2, 1}, // one thread: the hand-offs between threads cost more than they give
		{3, 3}, {4, 4}, {8, 8}, // not measured: Go's default
	} {
		if got := PlanGoThreads(c.cores); got != c.want {
			t.Errorf("PlanGoThreads(%d) = %d, want %d", c.cores, got, c.want)
		}
	}
}

func TestSetGoThreadsUnlessSet(t *testing.T) {
	before := runtime.GOMAXPROCS(0)
	t.Cleanup(func() { runtime.GOMAXPROCS(before) })

	t.Setenv("GOMAXPROCS", "2")
	runtime.GOMAXPROCS(2)
	if threads, planned := SetGoThreadsUnlessSet(); planned || threads != 2 || runtime.GOMAXPROCS(0) != 2 {
		t.Errorf("with GOMAXPROCS=2 set: %d threads, planned %v; want the operator's 2, not planned", threads, planned)
	}

	t.Setenv("GOMAXPROCS", "")
	for _, cores := range []int{2, 4} {
		runtime.GOMAXPROCS(cores)
		threads, planned := SetGoThreadsUnlessSet()
		if want := PlanGoThreads(cores); !planned || threads != want || runtime.GOMAXPROCS(0) != want {
			t.Errorf("on %d cores: %d threads (runtime %d), planned %v; want %d, planned", cores, threads, runtime.GOMAXPROCS(0), planned, want)
		}
	}
}

package tunnel

import (
	"os"
	"runtime"
)

// PlanGoThreads chooses how many threads may run the daemon's Go code at
// once (GOMAXPROCS) on a board where Go would by default use cores of them
// (the CPUs the process may run on, or fewer under a cgroup CPU limit).
//
// wireguard-go hands every batch from goroutine to goroutine (the TUN
// reader, a parallel encryption worker, the peer's sequential sender, and
// the same three on receive). With a second P, each hand-off wakes another
// thread, which spins looking for work and takes the packets to the other
// core; on a board of two cores, which the kernel's half of the data path
// and the services the node runs share with the daemon, that costs more
// than the parallel crypto gives back. Measured on a 2-core machine
// (tunnel/BENCHMARKS.md, "One thread on a two-core board"): on one thread
// the appliance spent 0.64-0.78 of wireguard-go's CPU per bit and carried
// 1.14-1.40x its throughput, on two 0.92-0.99 and 0.85-1.24x; wireguard-go
// itself on one thread gains as much. Threads blocked in a system call do
// not count against the limit, so the kernel's work (TUN reads and writes,
// sendmmsg, recvmmsg) still runs beside it. Larger boards keep Go's
// default: not measured here, and a Pi's crypto, without Poly1305
// assembly, needs its cores.
func PlanGoThreads(cores int) int {
	if cores <= 2 {
		return 1
	}
	return cores
}

// SetGoThreadsUnlessSet applies PlanGoThreads to this process unless the
// operator chose with GOMAXPROCS, and returns the threads now in effect and
// whether the plan set them. Process-wide, so it is for the daemon's main.
func SetGoThreadsUnlessSet() (threads int, planned bool) {
	if os.Getenv("GOMAXPROCS") != "" {
		return runtime.GOMAXPROCS(0), false
	}
	current := runtime.GOMAXPROCS(0)
	threads = PlanGoThreads(current)
	if threads != current {
		// Setting it stops the runtime from following a cgroup CPU limit
		// that changes later, so only where the plan differs.
		runtime.GOMAXPROCS(threads)
	}
	return threads, true
}

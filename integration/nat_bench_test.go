package integration

import (
	"context"
	"fmt"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/warren-appliance/warren/integration/lab"
)

// peerPathRE matches the path engine's log line when a peer's path is set:
// searched is the time from this node's first probe of the search (for a
// new peer: the pair's first packet from this side) to the path.
var peerPathRE = regexp.MustCompile(`msg="peer path" .*peer=(\S+) path=direct .*searched=(\S+)`)

// directAfter returns how long node n searched before it first had a
// direct path to peer, from its log.
func directAfter(n *lab.Node, peer string) (time.Duration, bool) {
	for _, line := range strings.Split(n.ApplianceLog(), "\n") {
		m := peerPathRE.FindStringSubmatch(line)
		if m == nil || m[1] != peer {
			continue
		}
		if d, err := time.ParseDuration(m[2]); err == nil {
			return d, true
		}
	}
	return 0, false
}

const natPathSamples = 3

// BenchmarkNATPathSetup (issue 24): the time from a new pair's first packet
// to a working direct path across two NATs (two workers, each behind its
// own port-keeping NAT router), against the same for a pair across one NAT
// (the manager on the LAN and a worker), in the same run; the slower side of
// each pair counts (a path works once both sides use it). Each sample is a
// fresh lab cluster: the pair's search includes STUN discovery, the
// candidates' trip through the manager's map and the hole punch. Also the
// time from the manager listing every node ready until the first worker
// pings the second over the overlay.
func BenchmarkNATPathSetup(b *testing.B) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	var twoNATs, oneNAT, ping []time.Duration
	b.ResetTimer()
	for i := 0; i < natPathSamples; i++ {
		l, err := lab.New(lab.Options{Dir: b.TempDir(), BinDir: binDir()})
		if err != nil {
			b.Fatal(err)
		}
		c, err := l.StartCluster(ctx, lab.ClusterOptions{Workers: 2, WorkersBehindNAT: true})
		if err != nil {
			l.Close()
			b.Fatal(err)
		}
		w1, w2, m := c.Workers[0], c.Workers[1], c.Manager
		started := time.Now() // every node ready
		var pinged time.Duration
		if err := lab.Poll(ctx, 50*time.Millisecond, func() error {
			if pinged == 0 {
				if _, err := w1.Exec(ctx, "ping", "-c1", "-W1", "10.0.0.3"); err != nil {
					return err
				}
				pinged = time.Since(started)
			}
			for _, p := range [][2]*lab.Node{{w1, w2}, {w2, w1}, {w1, m}, {m, w1}} {
				if _, ok := directAfter(p[0], p[1].Name); !ok {
					return fmt.Errorf("%s has no direct path to %s yet", p[0].Name, p[1].Name)
				}
			}
			return nil
		}); err != nil {
			l.Close()
			b.Fatal(err)
		}
		side := func(x, y *lab.Node) time.Duration {
			a, _ := directAfter(x, y.Name)
			c, _ := directAfter(y, x.Name)
			return max(a, c)
		}
		twoNATs = append(twoNATs, side(w1, w2))
		oneNAT = append(oneNAT, side(m, w1))
		ping = append(ping, pinged)
		l.Close()
	}
	b.StopTimer()
	median := func(d []time.Duration) time.Duration {
		s := slices.Clone(d)
		slices.Sort(s)
		return s[len(s)/2]
	}
	b.ReportMetric(median(twoNATs).Seconds(), "s/path-across-two-NATs")
	b.ReportMetric(median(oneNAT).Seconds(), "s/baseline-path-across-one-NAT")
	fmt.Fprintf(os.Stderr, "NAT path setup, median of %d fresh clusters: first probe to direct path across two NATs %.2fs (all %v), across one NAT (manager on the LAN) %.2fs (all %v); worker-1 pings worker-2 %.2fs after every node is ready (all %v)\n",
		natPathSamples, median(twoNATs).Seconds(), twoNATs, median(oneNAT).Seconds(), oneNAT, median(ping).Seconds(), ping)
}

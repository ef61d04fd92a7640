package dns

import (
	"fmt"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	miekg "github.com/miekg/dns"
)

// Load: a batch is benchWorkers clients, each with its own UDP socket,
// sending benchPerWorker queries one after the other. One benchmark
// iteration is benchRounds batches to each server, interleaved, so both
// see the same background load (the machine is shared) and a single
// iteration (-benchtime 1x) is already a fair comparison.
const (
	benchWorkers   = 8
	benchPerWorker = 32
	benchRounds    = 16
)

// fixedAnswer is the baseline: the least a miekg/dns handler can do, one
// prebuilt A record for whatever is asked.
func fixedAnswer(w miekg.ResponseWriter, r *miekg.Msg) {
	m := new(miekg.Msg)
	m.SetReply(r)
	m.Answer = append(m.Answer, &miekg.A{
		Hdr: miekg.RR_Header{Name: r.Question[0].Name, Rrtype: miekg.TypeA, Class: miekg.ClassINET, Ttl: 60},
		A:   net.IPv4(10, 1, 0, 5).To4(),
	})
	w.WriteMsg(m)
}

// benchRecords is a cluster of 100 services with 3 tasks each.
func benchRecords() Records {
	r := Records{
		Domain:       "warren.local",
		Services:     map[string]netip.Addr{},
		Tasks:        map[string]netip.Addr{},
		ServiceTasks: map[string][]netip.Addr{},
	}
	vip := netip.MustParseAddr("10.1.0.0")
	task := netip.MustParseAddr("10.0.1.1")
	for i := range 100 {
		name := fmt.Sprintf("svc%d", i)
		vip = vip.Next()
		r.Services[name] = vip
		for slot := 1; slot <= 3; slot++ {
			task = task.Next()
			r.Tasks[fmt.Sprintf("%s-%d", name, slot)] = task
			r.ServiceTasks[name] = append(r.ServiceTasks[name], task)
		}
	}
	return r
}

// loadClient holds one UDP socket per worker to a server.
type loadClient struct {
	conns []*miekg.Conn
}

func newLoadClient(b *testing.B, addr string) *loadClient {
	lc := &loadClient{}
	for range benchWorkers {
		co, err := miekg.Dial("udp", addr)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { co.Close() })
		lc.conns = append(lc.conns, co)
	}
	return lc
}

// batch sends benchWorkers*benchPerWorker queries for name and returns the
// wall time they took; every answer must carry wantAnswers records.
func (lc *loadClient) batch(b *testing.B, name string, wantAnswers int) time.Duration {
	var wg sync.WaitGroup
	errs := make(chan error, len(lc.conns))
	start := time.Now()
	for w, co := range lc.conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			m := new(miekg.Msg)
			m.SetQuestion(name, miekg.TypeA)
			for i := range benchPerWorker {
				m.Id = uint16(w<<10 | i)
				co.SetDeadline(time.Now().Add(10 * time.Second))
				if err := co.WriteMsg(m); err != nil {
					errs <- err
					return
				}
				resp, err := co.ReadMsg()
				if err != nil {
					errs <- err
					return
				}
				if resp.Id != m.Id || len(resp.Answer) != wantAnswers {
					errs <- fmt.Errorf("%s: id %d answers %d, want id %d answers %d", name, resp.Id, len(resp.Answer), m.Id, wantAnswers)
					return
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
	return elapsed
}

// compare runs the same load against a and base, alternating which goes
// first, and reports both rates and their ratio (above 1: a is faster).
func compare(b *testing.B, label string, a, base func() time.Duration) {
	// One untimed batch each first: sockets, buffers and goroutines warm,
	// so a single timed iteration (-benchtime 1x) compares like with like.
	a()
	base()
	var ta, tb time.Duration
	iterations := 0
	for b.Loop() {
		iterations++
		for round := range benchRounds {
			if round%2 == 0 {
				ta += a()
				tb += base()
			} else {
				tb += base()
				ta += a()
			}
		}
	}
	n := float64(iterations * benchRounds * benchWorkers * benchPerWorker)
	qa, qb := n/ta.Seconds(), n/tb.Seconds()
	b.ReportMetric(qa, label+"-q/s")
	b.ReportMetric(qb, "baseline-q/s")
	b.ReportMetric(qa/qb, "ratio")
	b.Logf("%s: %.0f q/s, trivial fixed-answer miekg handler: %.0f q/s, ratio %.2f (%d queries each, %d clients)",
		label, qa, qb, qa/qb, int(n), benchWorkers)
}

// BenchmarkAnswerFromRecords: the server answering <service>.<domain> from
// a 100-service zone vs a trivial handler returning a fixed answer.
func BenchmarkAnswerFromRecords(b *testing.B) {
	s, addr := startServer(b, Config{Logger: quietLogger()})
	s.Update(benchRecords())
	base := startPlainServer(b, "127.0.0.1:0", miekg.HandlerFunc(fixedAnswer))
	ours, trivial := newLoadClient(b, addr), newLoadClient(b, base)
	compare(b, "records",
		func() time.Duration { return ours.batch(b, "svc42.warren.local.", 1) },
		func() time.Duration { return trivial.batch(b, "svc42.warren.local.", 1) })
}

// BenchmarkAnswerTasksList: tasks.<service>.<domain> (3 records) from the
// same zone vs the same trivial handler.
func BenchmarkAnswerTasksList(b *testing.B) {
	s, addr := startServer(b, Config{Logger: quietLogger()})
	s.Update(benchRecords())
	base := startPlainServer(b, "127.0.0.1:0", miekg.HandlerFunc(fixedAnswer))
	ours, trivial := newLoadClient(b, addr), newLoadClient(b, base)
	compare(b, "tasks-list",
		func() time.Duration { return ours.batch(b, "tasks.svc42.warren.local.", 3) },
		func() time.Duration { return trivial.batch(b, "tasks.svc42.warren.local.", 1) })
}

// BenchmarkForwarded: a name outside the domain through our server to the
// trivial handler as upstream, vs asking that handler directly: the cost
// of the extra hop.
func BenchmarkForwarded(b *testing.B) {
	base := startPlainServer(b, "127.0.0.1:0", miekg.HandlerFunc(fixedAnswer))
	_, addr := startServer(b, Config{Upstreams: []string{base}, Logger: quietLogger()})
	ours, direct := newLoadClient(b, addr), newLoadClient(b, base)
	compare(b, "forwarded",
		func() time.Duration { return ours.batch(b, "example.com.", 1) },
		func() time.Duration { return direct.batch(b, "example.com.", 1) })
}

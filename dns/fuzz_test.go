package dns

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	miekg "github.com/miekg/dns"
)

// FuzzHandler feeds arbitrary messages to the handler, past the server's
// own header filter, with forwarding to a fake upstream on loopback. The
// first byte picks the transport (odd: TCP). Seeds: testdata/fuzz/FuzzHandler.
func FuzzHandler(f *testing.F) {
	up := startFakeUpstream(f, "", answerA("192.0.2.70"))
	s, _ := startServer(f, Config{Upstreams: []string{up.addr}, ForwardTimeout: 500 * time.Millisecond, Logger: quietLogger()})
	s.Update(sampleRecords)
	z := s.zone.Load()

	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) == 0 {
			return
		}
		overTCP := data[0]&1 == 1
		req := new(miekg.Msg)
		if err := req.Unpack(data[1:]); err != nil {
			return // the server answers FORMERR before the handler sees it
		}
		resp := s.handler.respond(req, overTCP, netip.Addr{})
		if req.Response {
			if resp != nil {
				t.Fatal("answered a response")
			}
			return
		}
		if resp == nil {
			t.Fatal("no reply to a query")
		}
		if !resp.Response || resp.Id != req.Id {
			t.Fatalf("reply header: qr=%v id=%d, request id %d", resp.Response, resp.Id, req.Id)
		}
		packed, err := resp.Pack()
		if err != nil {
			t.Fatalf("reply does not pack: %v\n%v", err, resp)
		}
		if !overTCP {
			limit := miekg.MinMsgSize
			if opt := req.IsEdns0(); opt != nil {
				limit = maxUDPResponse
			}
			if len(packed) > limit {
				t.Fatalf("UDP reply of %d bytes, limit %d", len(packed), limit)
			}
		}
		if req.Opcode != miekg.OpcodeQuery || len(req.Question) != 1 || resp.Rcode != miekg.RcodeSuccess {
			return
		}
		// Known names inside the zone answer exactly their records.
		q := req.Question[0]
		name := strings.ToLower(q.Name)
		set, known := z.names[name]
		if !known || q.Qtype != miekg.TypeA || q.Qclass != miekg.ClassINET || resp.Truncated {
			return
		}
		var want, got []netip.Addr
		want = aAddrs(set.a)
		got = aAddrs(resp.Answer)
		slices.SortFunc(want, netip.Addr.Compare)
		slices.SortFunc(got, netip.Addr.Compare)
		if !slices.Equal(got, want) {
			t.Fatalf("%s: answered %v, records hold %v", q.Name, got, want)
		}
	})
}

// FuzzCompileZone builds zones from arbitrary service and task names: no
// panic, valid names are served with their address, invalid ones are
// reported, never served.
func FuzzCompileZone(f *testing.F) {
	f.Add("nginx", "nginx-1", byte(0), byte(5))
	f.Add("Web", "web", byte(1), byte(1))
	f.Add("bad.name", "ok", byte(2), byte(3))
	f.Add("", "x\x00y", byte(255), byte(255))
	f.Add(strings.Repeat("a", 63), strings.Repeat("b", 64), byte(9), byte(9))
	f.Fuzz(func(t *testing.T, svc, task string, a, b byte) {
		vip := netip.AddrFrom4([4]byte{10, 1, a, b})
		tip := netip.AddrFrom4([4]byte{10, 0, a, b})
		z, problems := compileZone("warren.local.", Records{
			Services:     map[string]netip.Addr{svc: vip},
			Tasks:        map[string]netip.Addr{task: tip},
			ServiceTasks: map[string][]netip.Addr{svc: {tip}},
		}, 1)

		served := func(name string, want netip.Addr) {
			t.Helper()
			resp := new(miekg.Msg)
			resp.SetQuestion(name, miekg.TypeA)
			z.answer(resp, name, miekg.TypeA)
			if got := aAddrs(resp.Answer); len(got) != 1 || got[0] != want {
				t.Fatalf("%q: %v, want %s", name, got, want)
			}
			if _, err := resp.Pack(); err != nil {
				t.Fatalf("%q: answer does not pack: %v", name, err)
			}
		}
		wantProblems := 0
		if validLabel(svc) {
			served(strings.ToLower(svc)+".warren.local.", vip)
			served("tasks."+strings.ToLower(svc)+".warren.local.", tip)
		} else {
			wantProblems += 2 // the service and its tasks name
		}
		switch {
		case !validLabel(task):
			wantProblems++
		case validLabel(svc) && strings.EqualFold(svc, task):
			wantProblems++ // the service keeps the name
		default:
			served(strings.ToLower(task)+".warren.local.", tip)
		}
		if len(problems) != wantProblems {
			t.Fatalf("svc %q task %q: problems %v, want %d", svc, task, problems, wantProblems)
		}
		// Nothing invalid made it into the zone.
		for name := range z.names {
			if _, ok := miekg.IsDomainName(name); !ok || strings.ToLower(name) != name {
				t.Fatalf("zone holds %q", name)
			}
		}
	})
}

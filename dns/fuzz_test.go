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
		resp := s.handler.respond(req, overTCP)
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

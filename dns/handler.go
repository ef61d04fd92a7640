package dns

import (
	"context"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync/atomic"
	"time"

	miekg "github.com/miekg/dns"
)

// maxUDPResponse caps UDP answers at the DNS Flag Day 2020 size: larger
// answers are truncated (TC) and the client retries over TCP, rather than
// sending fragmented datagrams through the overlay.
const maxUDPResponse = 1232

// handler answers one query: from the zone inside the domain, by
// forwarding outside it.
type handler struct {
	zone           *atomic.Pointer[zone]
	fwd            *forwarder
	forwardTimeout time.Duration
	baseCtx        context.Context // cancelled when the server closes
	log            *slog.Logger
	onAnswer       func(rcode string) // may be nil
	allow          []netip.Prefix     // Config.Allow
	refused        atomic.Int64       // queries dropped by the source check
}

// sourceIP is a client's address (zero if it has none).
func sourceIP(addr net.Addr) netip.Addr {
	var ip netip.Addr
	switch a := addr.(type) {
	case *net.UDPAddr:
		ip, _ = netip.AddrFromSlice(a.IP)
	case *net.TCPAddr:
		ip, _ = netip.AddrFromSlice(a.IP)
	}
	return ip.Unmap()
}

// allowed reports whether a query from addr may be answered.
func (h *handler) allowed(addr net.Addr) bool {
	clients := h.zone.Load().clients
	if len(h.allow) == 0 && len(clients) == 0 {
		return true
	}
	ip := sourceIP(addr)
	for _, p := range h.allow {
		if p.Contains(ip) {
			return true
		}
	}
	for _, p := range clients {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// ServeDNS implements miekg.Handler.
func (h *handler) ServeDNS(w miekg.ResponseWriter, req *miekg.Msg) {
	_, overTCP := w.RemoteAddr().(*net.TCPAddr)
	if !h.allowed(w.RemoteAddr()) {
		if h.onAnswer != nil {
			h.onAnswer("ignored")
		}
		if h.refused.Add(1)%1000 == 1 {
			h.log.Info("ignoring queries from outside the node and the cluster's ranges", "remote", w.RemoteAddr(), "ignored", h.refused.Load())
		}
		if overTCP {
			w.Close()
		}
		return
	}
	resp := h.respond(req, overTCP, sourceIP(w.RemoteAddr()))
	if resp == nil {
		return
	}
	if h.onAnswer != nil {
		h.onAnswer(rcodeName(resp.Rcode))
	}
	if err := w.WriteMsg(resp); err != nil {
		h.log.Debug("write response", "remote", w.RemoteAddr(), "err", err)
	}
}

// respond builds the reply to req, or nil when nothing must be sent (req is
// itself a response: answering could feed a reflection loop).
func (h *handler) respond(req *miekg.Msg, overTCP bool, src netip.Addr) *miekg.Msg {
	if req.Response {
		return nil
	}
	if req.Opcode != miekg.OpcodeQuery {
		return h.finish(req, errorReply(req, miekg.RcodeNotImplemented), overTCP)
	}
	if len(req.Question) != 1 {
		return h.finish(req, errorReply(req, miekg.RcodeFormatError), overTCP)
	}
	if opt := req.IsEdns0(); opt != nil && opt.Version() != 0 {
		// RFC 6891 6.1.3: unknown EDNS version.
		resp := errorReply(req, miekg.RcodeBadVers)
		resp.SetEdns0(maxUDPResponse, false)
		return h.finish(req, resp, overTCP)
	}

	q := req.Question[0]
	name := strings.ToLower(q.Name)
	z := h.zone.Load()

	if h.fwd.catchProbe(name) {
		return h.finish(req, errorReply(req, miekg.RcodeServerFailure), overTCP)
	}

	if z.inZone(name) {
		// Only IN data, and no zone transfers: the records come from the
		// cluster map, not from a primary/secondary setup.
		if (q.Qclass != miekg.ClassINET && q.Qclass != miekg.ClassANY) || q.Qtype == miekg.TypeAXFR || q.Qtype == miekg.TypeIXFR {
			return h.finish(req, errorReply(req, miekg.RcodeRefused), overTCP)
		}
		resp := newReply(req)
		z.answer(resp, name, q.Qtype)
		return h.finish(req, resp, overTCP)
	}
	if q.Qtype == miekg.TypePTR && q.Qclass == miekg.ClassINET {
		if ptr, ok := z.lookupPTR(name); ok {
			resp := newReply(req)
			resp.Authoritative = true
			resp.Answer = append(resp.Answer, ptr)
			return h.finish(req, resp, overTCP)
		}
	}
	return h.finish(req, h.forward(req, overTCP, src), overTCP)
}

func (h *handler) forward(req *miekg.Msg, overTCP bool, src netip.Addr) *miekg.Msg {
	ctx, cancel := context.WithTimeout(h.baseCtx, h.forwardTimeout)
	defer cancel()
	resp, err := h.fwd.forward(ctx, req, overTCP, src)
	if err != nil {
		// Debug only: a dead upstream would otherwise log once per query;
		// the forwarder logs lasting conditions (loops, no upstream) once.
		h.log.Debug("forward failed", "name", req.Question[0].Name, "err", err)
		return errorReply(req, miekg.RcodeServerFailure)
	}
	resp.Id = req.Id
	return resp
}

// finish fits resp to the client: an OPT record when the query had one,
// and truncation to what the transport carries.
func (h *handler) finish(req, resp *miekg.Msg, overTCP bool) *miekg.Msg {
	reqOpt := req.IsEdns0()
	if reqOpt != nil && resp.IsEdns0() == nil {
		resp.SetEdns0(maxUDPResponse, false)
	}
	size := miekg.MaxMsgSize
	if !overTCP {
		size = miekg.MinMsgSize
		if reqOpt != nil {
			size = int(reqOpt.UDPSize())
		}
		size = min(max(size, miekg.MinMsgSize), maxUDPResponse)
	}
	// Truncate also picks compression: only when the answer needs it to fit.
	resp.Truncate(size)
	return resp
}

func newReply(req *miekg.Msg) *miekg.Msg {
	resp := new(miekg.Msg)
	resp.SetReply(req)
	resp.RecursionAvailable = true
	return resp
}

func errorReply(req *miekg.Msg, rcode int) *miekg.Msg {
	resp := new(miekg.Msg)
	resp.Id = req.Id
	resp.Response = true
	resp.Opcode = req.Opcode
	resp.RecursionDesired = req.RecursionDesired
	resp.CheckingDisabled = req.CheckingDisabled
	resp.RecursionAvailable = true
	resp.Rcode = rcode
	if len(req.Question) == 1 {
		resp.Question = []miekg.Question{req.Question[0]}
	}
	return resp
}

// rcodeName is rc in lower case, "badvers" for 16 (which miekg names
// BADSIG, the TSIG meaning of the same number).
func rcodeName(rc int) string {
	if rc == miekg.RcodeBadVers {
		return "badvers"
	}
	if n, ok := miekg.RcodeToString[rc]; ok {
		return strings.ToLower(n)
	}
	return "other"
}

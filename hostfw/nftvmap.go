package hostfw

import (
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// VIP dispatch as a verdict map. nat renders one rule per service port
// (`-d VIP/32 -p tcp -m tcp --dport 80 ... -j WARREN-SVC-X`, as
// kube-proxy's iptables mode): iptables walks them one by one. In the
// nftables backend a run of such rules becomes one rule,
//
//	ip daddr . meta l4proto . th dport vmap { 10.1.0.5 . tcp . 80 : jump nat-WARREN-SVC-X, ... }
//
// one hash lookup per packet whatever the number of services (what
// kube-proxy's nftables mode does with its service-ips map). The keys are
// exact and distinct, so a packet matches at most one rule of the run and
// the order inside it does not matter; a key repeated later in a run can
// never match in iptables either, and is dropped.

// vipJump is one rule of the dispatch form: its key and target chain.
type vipJump struct {
	key     [12]byte // ipv4_addr . inet_proto . inet_service, each padded to 4 bytes
	target  string
	comment string
}

// parseVIPJump recognises exactly `-d A[/32] -p tcp|udp -m tcp|udp
// --dport N [-m comment --comment C] -j WARREN-...`, in that order.
func parseVIPJump(a []string) (vipJump, bool) {
	var j vipJump
	if len(a) != 10 && len(a) != 14 {
		return j, false
	}
	if a[0] != "-d" || a[2] != "-p" || a[4] != "-m" || a[5] != a[3] || a[6] != "--dport" {
		return j, false
	}
	p, err := ip4(a[1])
	if err != nil || p.Bits() != 32 {
		return j, false
	}
	proto := map[string]byte{"tcp": unix.IPPROTO_TCP, "udp": unix.IPPROTO_UDP}[a[3]]
	port, err := strconv.ParseUint(a[7], 10, 16)
	if proto == 0 || err != nil || port == 0 {
		return j, false
	}
	rest := a[8:]
	if len(rest) == 6 {
		if rest[0] != "-m" || rest[1] != "comment" || rest[2] != "--comment" {
			return j, false
		}
		j.comment, rest = rest[3], rest[4:]
	}
	if rest[0] != "-j" || ownerOf(rest[1]) == "" {
		return j, false
	}
	j.target = rest[1]
	addr := p.Addr().As4()
	copy(j.key[:4], addr[:])
	j.key[4] = proto
	j.key[8], j.key[9] = byte(port>>8), byte(port)
	return j, true
}

// nftOut is one nft rule of a chain, with the anonymous set or verdict
// map it looks up (nil for a plain rule).
type nftOut struct {
	exprs    []expr.Any
	userData []byte
	set      *nftables.Set
	elems    []nftables.SetElement
}

// chainRules translates a chain's rules: each run of VIP jumps becomes
// one verdict-map rule, each run of two or more rules that differ only in
// their exact destination (`-d A/32`) and comment becomes one rule
// matching a set of those addresses (nat's "has no other ports" REJECTs),
// every other rule is translated as it is. newID numbers the anonymous
// sets and maps within the batch.
func (c *nftCtx) chainRules(rules []string, newID func() uint32) ([]nftOut, error) {
	args := make([][]string, len(rules)) // each rule split once
	for i, r := range rules {
		args[i] = splitArgs(r)
	}
	var out []nftOut
	for i := 0; i < len(rules); {
		if run := vipRun(args[i:]); len(run) > 0 {
			out = append(out, c.vipMap(run, newID()))
			i += len(run)
			continue
		}
		if rest, addrs, n := addrRun(args[i:]); n >= 2 {
			o, err := c.addrSetRule(rest, addrs, newID())
			if err != nil {
				return nil, err
			}
			out = append(out, o)
			i += n
			continue
		}
		ex, ud, err := c.translateArgs(rules[i], args[i])
		if err != nil {
			return nil, err
		}
		out = append(out, nftOut{exprs: ex, userData: ud})
		i++
	}
	return out, nil
}

// vipRun is the longest run of VIP jumps at the start of rules.
func vipRun(rules [][]string) []vipJump {
	var run []vipJump
	for _, r := range rules {
		j, ok := parseVIPJump(r)
		if !ok {
			break
		}
		run = append(run, j)
	}
	return run
}

// vipMap is the verdict-map rule of a run (a repeated key keeps its
// first target, as iptables's first match would).
func (c *nftCtx) vipMap(run []vipJump, id uint32) nftOut {
	set := &nftables.Set{
		Table: c.table, Name: "__map%d", ID: id, Anonymous: true, Constant: true, IsMap: true, Concatenation: true,
		KeyType:  nftables.MustConcatSetType(nftables.TypeIPAddr, nftables.TypeInetProto, nftables.TypeInetService),
		DataType: nftables.TypeVerdict,
	}
	seen := map[[12]byte]bool{}
	var elems []nftables.SetElement
	for _, j := range run {
		if seen[j.key] {
			continue
		}
		seen[j.key] = true
		elems = append(elems, nftables.SetElement{Key: j.key[:], Comment: j.comment,
			VerdictData: &expr.Verdict{Kind: expr.VerdictJump, Chain: nftChainName(c.family, j.target)}})
	}
	ex := ipv4Only([]expr.Any{
		// The key fills three 32-bit registers: NFT_REG32_00 (daddr, the
		// first word of register 1), _01 and _02.
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4},
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: unix.NFT_REG32_01},
		&expr.Payload{DestRegister: unix.NFT_REG32_02, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Lookup{SourceRegister: 1, SetName: set.Name, SetID: id, IsDestRegSet: true, DestRegister: unix.NFT_REG_VERDICT},
	})
	return nftOut{exprs: ex, set: set, elems: elems}
}

// destAddr is a rule's exact destination and the rule's other arguments
// but its comment (ok false: no single exact destination).
func destAddr(a []string) (rest []string, addr [4]byte, comment string, ok bool) {
	keep := make([]string, 0, len(a))
	found := false
	for i := 0; i < len(a); i++ {
		switch {
		case a[i] == "-d" && i+1 < len(a) && !found && (i == 0 || a[i-1] != "!"):
			p, err := ip4(a[i+1])
			if err != nil || p.Bits() != 32 {
				return nil, addr, "", false
			}
			addr, found = p.Addr().As4(), true
			i++
		case a[i] == "-m" && i+3 < len(a) && a[i+1] == "comment" && a[i+2] == "--comment":
			comment = a[i+3]
			i += 3
		case a[i] == "-d":
			return nil, addr, "", false
		default:
			keep = append(keep, a[i])
		}
	}
	return keep, addr, comment, found
}

// addrRun is the longest run at the start of rules that differ only in
// their exact destination and comment: the shared rest, each destination
// with its comment, and the run's length.
func addrRun(rules [][]string) (rest []string, elems []nftables.SetElement, n int) {
	seen := map[[4]byte]bool{}
	for i, r := range rules {
		rr, addr, comment, ok := destAddr(r)
		if !ok || (i > 0 && !slices.Equal(rr, rest)) {
			break
		}
		rest, n = rr, i+1
		if !seen[addr] { // a repeated address adds nothing
			seen[addr] = true
			elems = append(elems, nftables.SetElement{Key: addr[:], Comment: comment})
		}
	}
	return rest, elems, n
}

// addrSetRule is rest matched for destinations in an anonymous set.
func (c *nftCtx) addrSetRule(rest []string, addrs []nftables.SetElement, id uint32) (nftOut, error) {
	ex, ud, err := c.translateArgs(strings.Join(rest, " "), rest)
	if err != nil {
		return nftOut{}, err
	}
	set := &nftables.Set{Table: c.table, Name: "__set%d", ID: id, Anonymous: true, Constant: true, KeyType: nftables.TypeIPAddr}
	match := ipv4Only([]expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4},
		&expr.Lookup{SourceRegister: 1, SetName: set.Name, SetID: id},
	})
	return nftOut{exprs: append(match, ex...), userData: ud, set: set, elems: addrs}, nil
}

// addOut queues a translated rule of chain ch: its verdict map first (the
// rule refers to it; the map's jumps need their chains already queued).
func addOut(c *nftables.Conn, t *nftables.Table, ch *nftables.Chain, o nftOut) error {
	if o.set != nil {
		if err := c.AddSet(o.set, o.elems); err != nil {
			return fmt.Errorf("%s: verdict map: %w", ch.Name, err)
		}
	}
	c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: o.exprs, UserData: o.userData})
	return nil
}

package hostfw

import (
	"bufio"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

func testCtx(family string) *nftCtx {
	t := &nftables.Table{Family: nftables.TableFamilyINet, Name: NftTable}
	return &nftCtx{table: t, family: family, sets: map[string]*nftables.Set{
		"WARREN-PS-A":  {Table: t, Name: "WARREN-PS-A", ID: 1},
		"recent-SEP-1": {Table: t, Name: "recent-SEP-1", ID: 2, Timeout: 600 * time.Second},
	}}
}

// One construct per case: the expressions it must become.
func TestTranslateConstructs(t *testing.T) {
	be16 := func(v uint16) []byte { return []byte{byte(v >> 8), byte(v)} }
	v4 := []expr.Any{&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1}, &expr.Cmp{Register: 1, Data: []byte{unix.NFPROTO_IPV4}}}
	acc := &expr.Verdict{Kind: expr.VerdictAccept}
	cases := []struct {
		family, rule string
		want         []expr.Any
	}{
		{"filter", "-j ACCEPT", []expr.Any{acc}},
		{"filter", "-j DROP", []expr.Any{&expr.Verdict{Kind: expr.VerdictDrop}}},
		{"filter", "-j RETURN", []expr.Any{&expr.Verdict{Kind: expr.VerdictReturn}}},
		{"filter", "-j REJECT", []expr.Any{&expr.Reject{Type: unix.NFT_REJECT_ICMP_UNREACH, Code: 3}}},
		{"nat", "-j WARREN-SVC-X", []expr.Any{&expr.Verdict{Kind: expr.VerdictJump, Chain: "nat-WARREN-SVC-X"}}},
		{"filter", "-p tcp -m tcp --dport 8080 -j ACCEPT", []expr.Any{
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1}, &expr.Cmp{Register: 1, Data: []byte{6}},
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2}, &expr.Cmp{Register: 1, Data: be16(8080)}, acc}},
		{"filter", "-p icmp -m icmp --icmp-type echo-request -j ACCEPT", []expr.Any{
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1}, &expr.Cmp{Register: 1, Data: []byte{1}},
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Len: 1}, &expr.Cmp{Register: 1, Data: []byte{8}}, acc}},
		{"filter", "-s 10.0.1.5/32 -j ACCEPT", []expr.Any{
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4}, &expr.Cmp{Register: 1, Data: []byte{10, 0, 1, 5}}, acc}},
		{"filter", "! -d 127.0.0.0/8 -j ACCEPT", []expr.Any{
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: []byte{255, 0, 0, 0}, Xor: []byte{0, 0, 0, 0}},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte{127, 0, 0, 0}}, acc}},
		{"filter", "-i veth+ -o warren0 -j ACCEPT", []expr.Any{
			&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1}, &expr.Cmp{Register: 1, Data: []byte("veth")},
			&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1}, &expr.Cmp{Register: 1, Data: append([]byte("warren0"), make([]byte, 9)...)}, acc}},
		{"filter", "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT", []expr.Any{
			&expr.Ct{Key: expr.CtKeySTATE, Register: 1},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: u32(expr.CtStateBitRELATED | expr.CtStateBitESTABLISHED), Xor: u32(0)},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: u32(0)}, acc}},
		{"filter", "-m conntrack --ctstate DNAT -j ACCEPT", []expr.Any{
			&expr.Ct{Key: expr.CtKeySTATUS, Register: 1},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: u32(ipsDstNAT), Xor: u32(0)},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: u32(0)}, acc}},
		{"mangle", "-m set ! --match-set WARREN-PS-A src -j DROP", []expr.Any{
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4},
			&expr.Lookup{SourceRegister: 1, SetName: "WARREN-PS-A", SetID: 1, Invert: true}, &expr.Verdict{Kind: expr.VerdictDrop}}},
		{"nat", "-m mark --mark 0x40000/0x40000 -j RETURN", []expr.Any{
			&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: u32(0x40000), Xor: u32(0)},
			&expr.Cmp{Register: 1, Data: u32(0x40000)}, &expr.Verdict{Kind: expr.VerdictReturn}}},
		{"nat", "-j MARK --or-mark 0x40000", []expr.Any{&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: u32(^uint32(0x40000)), Xor: u32(0x40000)},
			&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: 1}}},
		{"nat", "-j MARK --xor-mark 0x40000", []expr.Any{&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: u32(0xffffffff), Xor: u32(0x40000)},
			&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: 1}}},
		{"nat", "! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j WARREN-NODEPORTS", []expr.Any{
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: []byte{255, 0, 0, 0}, Xor: []byte{0, 0, 0, 0}},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte{127, 0, 0, 0}},
			&expr.Fib{Register: 1, FlagDADDR: true, ResultADDRTYPE: true}, &expr.Cmp{Register: 1, Data: u32(unix.RTN_LOCAL)},
			&expr.Verdict{Kind: expr.VerdictJump, Chain: "nat-WARREN-NODEPORTS"}}},
		{"nat", "-m statistic --mode random --probability 0.3333333333 -j WARREN-SEP-1", []expr.Any{
			&expr.Numgen{Register: 1, Modulus: 3, Type: unix.NFT_NG_RANDOM}, &expr.Cmp{Register: 1, Data: u32(0)},
			&expr.Verdict{Kind: expr.VerdictJump, Chain: "nat-WARREN-SEP-1"}}},
		{"nat", "-m recent --name SEP-1 --rcheck --seconds 600 --reap -j WARREN-SEP-1", []expr.Any{
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4},
			&expr.Lookup{SourceRegister: 1, SetName: "recent-SEP-1", SetID: 2},
			&expr.Verdict{Kind: expr.VerdictJump, Chain: "nat-WARREN-SEP-1"}}},
		{"nat", `-p tcp -m comment --comment "web-1" -m recent --name SEP-1 --set -m tcp -j DNAT --to-destination 10.0.1.5:8080`, []expr.Any{
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1}, &expr.Cmp{Register: 1, Data: []byte{6}},
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4},
			&expr.Dynset{SrcRegKey: 1, SetName: "recent-SEP-1", SetID: 2, Operation: unix.NFT_DYNSET_OP_UPDATE, Timeout: 600 * time.Second},
			&expr.Immediate{Register: 1, Data: []byte{10, 0, 1, 5}}, &expr.Immediate{Register: 2, Data: be16(8080)},
			&expr.NAT{Type: expr.NATTypeDestNAT, Family: unix.NFPROTO_IPV4, RegAddrMin: 1, RegProtoMin: 2, Specified: true}}},
		{"filter", "-p udp -m udp --dport 5000:5010 -j ACCEPT", []expr.Any{
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1}, &expr.Cmp{Register: 1, Data: []byte{17}},
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
			&expr.Range{Register: 1, FromData: be16(5000), ToData: be16(5010)}, acc}},
		{"nat", "-j DNAT --to-destination 10.0.2.2", []expr.Any{&expr.Immediate{Register: 1, Data: []byte{10, 0, 2, 2}},
			&expr.NAT{Type: expr.NATTypeDestNAT, Family: unix.NFPROTO_IPV4, RegAddrMin: 1}}},
		{"nat", "-j MASQUERADE --random-fully", []expr.Any{&expr.Masq{FullyRandom: true}}},
		{"nat", "-s 10.0.1.0/24 -j MASQUERADE", []expr.Any{
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: []byte{255, 255, 255, 0}, Xor: []byte{0, 0, 0, 0}},
			&expr.Cmp{Register: 1, Data: []byte{10, 0, 1, 0}}, &expr.Masq{}}},
	}
	for _, c := range cases {
		for _, e := range c.want {
			if pl, ok := e.(*expr.Payload); ok && pl.Base == expr.PayloadBaseNetworkHeader {
				c.want = append(append([]expr.Any{}, v4...), c.want...)
				break
			}
		}
		got, _, err := testCtx(c.family).translate(c.rule)
		if err != nil {
			t.Errorf("%s: %v", c.rule, err)
			continue
		}
		if !reflect.DeepEqual(got, c.want) {
			t.Errorf("%s:\n got %#v\nwant %#v", c.rule, got, c.want)
		}
	}
}

// Anything outside the subset is an error naming it, never dropped.
func TestTranslateRefusesUnknown(t *testing.T) {
	for _, rule := range []string{
		"-m limit --limit 5/s -j ACCEPT",
		"-p sctp -j ACCEPT",
		"-j LOG --log-prefix x",
		"-j DNAT --to-destination 10.0.0.1:80 --persistent",
		"-j ACCEPT --foo",
		"-m conntrack --ctstate UNTRACKED -j ACCEPT",
		"-m conntrack --ctstate DNAT,ESTABLISHED -j ACCEPT",
		"-m statistic --mode random --probability 0.3 -j ACCEPT",
		"-m set --match-set WARREN-PS-NOPE src -j ACCEPT",
		"-s fe80::1 -j ACCEPT",
		"--dport 80 -j ACCEPT",
		"-m tcp -j ACCEPT",
		"! -j ACCEPT",
		"-j ACCEPT -s 10.0.0.1",
	} {
		if _, _, err := testCtx("filter").translate(rule); err == nil {
			t.Errorf("%q translated", rule)
		}
	}
	if _, _, err := testCtx("nat").translate("-j REJECT"); err == nil {
		t.Error("REJECT in nat translated")
	}
}

var setRE = regexp.MustCompile(`--match-set (\S+)`)

// Every rule the renderers' golden files hold (nat and netpolicy) has an
// nftables form.
func TestTranslateGoldenFiles(t *testing.T) {
	files, _ := filepath.Glob("../nat/testdata/*.golden")
	more, _ := filepath.Glob("../netpolicy/testdata/*.golden")
	files = append(files, more...)
	if len(files) < 5 {
		t.Fatalf("golden files: %v", files)
	}
	for _, f := range files {
		fh, err := os.Open(f)
		if err != nil {
			t.Fatal(err)
		}
		chains := map[string]Chains{}
		var sets []Set
		table := ""
		sc := bufio.NewScanner(fh)
		n := 0
		for sc.Scan() {
			l := sc.Text()
			switch {
			case strings.HasPrefix(l, "*"):
				table = l[1:]
				chains[table] = Chains{}
			case strings.HasPrefix(l, ":"):
				name, _, _ := strings.Cut(l[1:], " ")
				chains[table][name] = chains[table][name]
			case strings.HasPrefix(l, "-A "):
				name, rule, _ := strings.Cut(l[3:], " ")
				chains[table][name] = append(chains[table][name], rule)
				for _, m := range setRE.FindAllStringSubmatch(rule, -1) {
					sets = append(sets, Set{Name: m[1]})
				}
				n++
			}
		}
		fh.Close()
		p, err := buildNft(chains, nil, sets)
		if err != nil {
			t.Errorf("%s: %v", f, err)
			continue
		}
		got := 0 // a verdict map stands for one rule per element
		for _, r := range p.rules {
			if r.set != nil {
				got += len(r.elems)
			} else {
				got++
			}
		}
		if got != n {
			t.Errorf("%s: %d rules became %d", f, n, got)
		}
	}
}

func TestSetElementsMergeAndEnds(t *testing.T) {
	var ps []netip.Prefix
	for _, s := range []string{"10.0.1.5/32", "10.0.0.0/16", "10.2.0.0/24", "10.2.1.0/24", "0.0.0.0/0"} {
		ps = append(ps, netip.MustParsePrefix(s))
	}
	if got := setElements(ps); len(got) != 1 || !reflect.DeepEqual(got[0].Key, []byte{0, 0, 0, 0}) {
		t.Fatalf("0.0.0.0/0 with others: %+v", got)
	}
	got := setElements(ps[:4])
	want := []nftables.SetElement{
		{Key: []byte{10, 0, 0, 0}}, {Key: []byte{10, 1, 0, 0}, IntervalEnd: true},
		{Key: []byte{10, 2, 0, 0}}, {Key: []byte{10, 2, 2, 0}, IntervalEnd: true},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %+v", got)
	}
}

func TestForwardOpen(t *testing.T) {
	for rules, want := range map[string]bool{
		"-P FORWARD ACCEPT": true,
		"-P FORWARD ACCEPT\n-A FORWARD -m comment --comment \"warren task forwarding\" -j WARREN-TASK-FORWARD": true,
		"-P FORWARD DROP": false,
		"-P FORWARD ACCEPT\n-A FORWARD -j DOCKER-USER": false,
		"": false,
	} {
		var l []string
		if rules != "" {
			l = strings.Split(rules, "\n")
		}
		if got := forwardOpen(l); got != want {
			t.Errorf("%q: %v", rules, got)
		}
	}
}

func TestVIPJumpsBecomeOneVerdictMap(t *testing.T) {
	rules := []string{
		`-m comment --comment "canary" -j WARREN-CANARY`,
		`-d 10.1.0.5/32 -p tcp -m tcp --dport 80 -m comment --comment "web:tcp/80 virtual IP" -j WARREN-SVC-A`,
		`-d 10.1.0.6/32 -p udp -m udp --dport 53 -j WARREN-SVC-B`,
		`-d 10.1.0.5/32 -p tcp -m tcp --dport 80 -j WARREN-SVC-C`, // repeated key: never matched in iptables
		`! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j WARREN-NODEPORTS`,
		`-d 10.1.0.7/32 -p tcp -m tcp --dport 443 -j WARREN-SVC-D`,
	}
	id := uint32(0)
	outs, err := testCtx("nat").chainRules(rules, func() uint32 { id++; return id })
	if err != nil {
		t.Fatal(err)
	}
	var shape []int // -1: a plain rule; n: a verdict map of n elements
	for _, o := range outs {
		if o.set == nil {
			shape = append(shape, -1)
			continue
		}
		shape = append(shape, len(o.elems))
	}
	if !reflect.DeepEqual(shape, []int{-1, 2, -1, 1}) {
		t.Fatalf("rules became %v, want [plain, map of 2, plain, map of 1]", shape)
	}
	m := outs[1]
	if m.set.ID != 1 || !m.set.Anonymous || !m.set.IsMap || m.set.DataType != nftables.TypeVerdict {
		t.Errorf("map %+v", m.set)
	}
	want := []nftables.SetElement{
		{Key: []byte{10, 1, 0, 5, unix.IPPROTO_TCP, 0, 0, 0, 0, 80, 0, 0}, Comment: "web:tcp/80 virtual IP",
			VerdictData: &expr.Verdict{Kind: expr.VerdictJump, Chain: "nat-WARREN-SVC-A"}},
		{Key: []byte{10, 1, 0, 6, unix.IPPROTO_UDP, 0, 0, 0, 0, 53, 0, 0},
			VerdictData: &expr.Verdict{Kind: expr.VerdictJump, Chain: "nat-WARREN-SVC-B"}},
	}
	if !reflect.DeepEqual(m.elems, want) {
		t.Errorf("elements %+v, want %+v", m.elems, want)
	}
	if l, ok := m.exprs[len(m.exprs)-1].(*expr.Lookup); !ok || l.SetID != 1 || !l.IsDestRegSet || l.DestRegister != unix.NFT_REG_VERDICT {
		t.Errorf("last expression %#v, want a verdict lookup in map 1", m.exprs[len(m.exprs)-1])
	}
	for _, r := range []string{
		`-d 10.1.0.0/24 -p tcp -m tcp --dport 80 -j WARREN-SVC-A`,    // not one address
		`-d 10.1.0.5/32 -p tcp -m tcp --dport 80:90 -j WARREN-SVC-A`, // a range
		`-d 10.1.0.5/32 -p tcp -m tcp --dport 80 -j ACCEPT`,          // not a jump to ours
		`-d 10.1.0.5/32 -m comment --comment "web has no other ports" -j REJECT`,
		`-s 10.1.0.5/32 -p tcp -m tcp --dport 80 -j WARREN-SVC-A`,
	} {
		if _, ok := parseVIPJump(r); ok {
			t.Errorf("%s: taken for a VIP jump", r)
		}
	}
}

func TestDestinationRunBecomesOneSetRule(t *testing.T) {
	rules := []string{
		`-d 10.1.0.5/32 -m comment --comment "web has no other ports" -j REJECT`,
		`-d 10.1.0.6/32 -m comment --comment "db has no other ports" -j REJECT`,
		`-d 10.1.0.5/32 -j REJECT`,
		`-d 10.1.0.7/32 -p tcp -j REJECT`, // another rest: a run of its own (one rule: plain)
		`-d 10.1.0.8/32 -j ACCEPT`,
	}
	id := uint32(0)
	outs, err := testCtx("filter").chainRules(rules, func() uint32 { id++; return id })
	if err != nil {
		t.Fatal(err)
	}
	if len(outs) != 3 || outs[0].set == nil || outs[1].set != nil || outs[2].set != nil {
		t.Fatalf("rules became %+v, want [set rule, plain, plain]", outs)
	}
	want := []nftables.SetElement{{Key: []byte{10, 1, 0, 5}, Comment: "web has no other ports"}, {Key: []byte{10, 1, 0, 6}, Comment: "db has no other ports"}}
	if !reflect.DeepEqual(outs[0].elems, want) || outs[0].set.IsMap || !outs[0].set.Anonymous {
		t.Errorf("set %+v elements %+v, want %+v", outs[0].set, outs[0].elems, want)
	}
	plain, _, err := testCtx("filter").translate("-j REJECT")
	if err != nil {
		t.Fatal(err)
	}
	if got := outs[0].exprs[len(outs[0].exprs)-len(plain):]; !reflect.DeepEqual(got, plain) {
		t.Errorf("the set rule ends in %#v, want the shared rest %#v", got, plain)
	}
	for _, r := range []string{`! -d 10.1.0.5/32 -j REJECT`, `-d 10.1.0.0/24 -j REJECT`, `-d 10.1.0.5/32 -d 10.1.0.6/32 -j REJECT`} {
		if _, _, _, ok := destAddr(r); ok {
			t.Errorf("%s: taken for an exact destination", r)
		}
	}
}

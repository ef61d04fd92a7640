package hostfw

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"
)

// The translator from iptables rule text to nftables expressions covers
// exactly the subset the rule builders of nat, netpolicy and orchestrate
// emit (see nftrule_test.go, which runs it over their golden files):
//
//	-p tcp|udp|icmp, -m tcp|udp|icmp|comment|conntrack|set|recent|statistic|mark|addrtype,
//	[!] -s/-d CIDR, -i/-o IFACE[+], --dport N[:M], --icmp-type echo-request,
//	--comment TEXT, --ctstate STATE[,STATE] (NEW, ESTABLISHED, RELATED, INVALID, or DNAT/SNAT alone),
//	[!] --match-set NAME src|dst, --mark V[/M], [!] --dst-type LOCAL,
//	--mode random --probability 1/n, --name N --set | --rcheck --seconds S [--reap],
//	-j ACCEPT|DROP|RETURN|REJECT|WARREN-*, -j DNAT --to-destination IP[:PORT],
//	-j MASQUERADE [--random-fully], -j MARK --or-mark|--xor-mark|--set-mark V.
//
// Anything else is an error naming the argument: nothing is dropped.

// nftCtx is what translating a rule needs: the table, the sets by name
// (policy sets and the "recent" sets of session affinity) and how chain
// names map into the one table.
type nftCtx struct {
	table  *nftables.Table
	sets   map[string]*nftables.Set
	family string // the iptables table the rule is in: filter, nat, mangle
}

// nftChainName is an iptables chain of table as a chain of table inet
// warren: chains of different iptables tables share the nft table, and
// the same name can live in two of them (WARREN-SERVICES in nat and
// filter).
func nftChainName(table, chain string) string { return table + "-" + chain }

// recentSetName is the nft set holding the sources an "-m recent --name"
// list would hold.
func recentSetName(name string) string { return "recent-" + name }

func ifname(name string) []byte {
	if strings.HasSuffix(name, "+") {
		return []byte(strings.TrimSuffix(name, "+")) // a prefix: compare only its bytes
	}
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, name)
	return b
}

// recentTimeouts collects, from every rule of every chain, how long each
// "-m recent" list remembers a source (the --seconds of its --rcheck).
func recentTimeouts(rules []string) (map[string]time.Duration, error) {
	out := map[string]time.Duration{}
	for _, r := range rules {
		if !strings.Contains(r, "--name") {
			continue // no recent list: skip the split (most rules)
		}
		a := splitArgs(r)
		name, secs := "", 0
		for i := 0; i+1 < len(a); i++ {
			switch a[i] {
			case "--name":
				name = a[i+1]
			case "--seconds":
				n, err := strconv.Atoi(a[i+1])
				if err != nil || n <= 0 {
					return nil, fmt.Errorf("rule %q: --seconds %q is not a positive number", r, a[i+1])
				}
				secs = n
			}
		}
		if name == "" {
			continue
		}
		if _, ok := out[name]; !ok {
			out[name] = 0
		}
		if secs > 0 {
			out[name] = time.Duration(secs) * time.Second
		}
	}
	for name, d := range out {
		if d == 0 {
			return nil, fmt.Errorf("recent list %s is set but never checked with --rcheck --seconds: no timeout to give its nft set", name)
		}
	}
	return out, nil
}

func ip4(s string) (netip.Prefix, error) {
	if !strings.Contains(s, "/") {
		s += "/32"
	}
	p, err := netip.ParsePrefix(s)
	if err != nil || !p.Addr().Is4() {
		return netip.Prefix{}, fmt.Errorf("%q is not an IPv4 address or prefix", s)
	}
	return p.Masked(), nil
}

func u32(v uint32) []byte { return binaryutil.NativeEndian.PutUint32(v) }

func parseMark(s string) (uint32, error) {
	v, err := strconv.ParseUint(s, 0, 32)
	if err != nil {
		return 0, fmt.Errorf("mark %q: %w", s, err)
	}
	return uint32(v), nil
}

// translate turns one rule (the arguments after "-A CHAIN") into nft
// expressions. The rule is IPv4: the base chains of table inet warren
// only jump to our chains for IPv4 packets.
func (c *nftCtx) translate(rule string) ([]expr.Any, []byte, error) {
	return c.translateArgs(rule, splitArgs(rule))
}

// translateArgs is translate of a rule already split into its arguments.
func (c *nftCtx) translateArgs(rule string, args []string) ([]expr.Any, []byte, error) {
	t := &ruleTranslation{c: c, a: args}
	if err := t.run(); err != nil {
		return nil, nil, fmt.Errorf("nftables: rule %q: %w", rule, err)
	}
	ex := t.ex
	for _, e := range ex {
		if pl, ok := e.(*expr.Payload); ok && pl.Base == expr.PayloadBaseNetworkHeader {
			// The IPv4 header, in an inet table: say so first, as nft does
			// (and `nft list` then prints "ip saddr", not "@nh,96,32").
			ex = ipv4Only(ex)
			break
		}
	}
	var ud []byte
	if t.comment != "" {
		ud = userdata.AppendString(nil, userdata.TypeComment, t.comment)
	}
	return ex, ud, nil
}

// ipv4Only is ex behind `meta nfproto ipv4`: in an inet table the
// IPv4 header's fields mean something only for IPv4 packets (and with it
// `nft list` prints "ip saddr", not "@nh,96,32").
func ipv4Only(ex []expr.Any) []expr.Any {
	return append([]expr.Any{&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.NFPROTO_IPV4}}}, ex...)
}

// ruleTranslation is one rule's translation under way: its arguments,
// where it is in them, and what the options so far said.
type ruleTranslation struct {
	c          *nftCtx
	a          []string
	i          int
	ex         []expr.Any
	comment    string
	proto      string // -p's value
	recentName string // -m recent's --name
	neg        bool   // the option at hand is negated
}

// arg is the option's value (false: none left).
func (t *ruleTranslation) arg() (string, bool) {
	if t.i+1 >= len(t.a) {
		return "", false
	}
	t.i++
	return t.a[t.i], true
}

func (t *ruleTranslation) cmpOp() expr.CmpOp {
	if t.neg {
		return expr.CmpOpNeq
	}
	return expr.CmpOpEq
}

// run reads every option in turn; the target ends the rule.
func (t *ruleTranslation) run() error {
	pendingNeg := false
	for ; t.i < len(t.a); t.i++ {
		opt := t.a[t.i]
		if opt == "!" {
			pendingNeg = true
			continue
		}
		t.neg, pendingNeg = pendingNeg, false
		if opt == "-j" {
			return t.jump()
		}
		handled, err := t.match(opt)
		if !handled && err == nil {
			handled, err = t.module(opt)
		}
		if err != nil {
			return err
		}
		if !handled {
			return fmt.Errorf("unsupported argument %q", opt)
		}
	}
	if pendingNeg {
		return errors.New("a dangling !")
	}
	return nil
}

// jump is -j TARGET [its options]: the last thing in a rule.
func (t *ruleTranslation) jump() error {
	v, ok := t.arg()
	if t.neg {
		return errors.New("! before -j")
	}
	if !ok {
		return errors.New("-j without a target")
	}
	tail, err := t.c.target(v, t.a[t.i+1:])
	if err != nil {
		return err
	}
	t.ex = append(t.ex, tail...)
	t.i = len(t.a)
	return nil
}

// match is the packet matches: protocol, addresses, interfaces, ports,
// ICMP type, comment, conntrack state, sets, mark, address type.
func (t *ruleTranslation) match(opt string) (bool, error) {
	add := func(e []expr.Any, err error) (bool, error) {
		t.ex = append(t.ex, e...)
		return true, err
	}
	switch opt {
	case "-p":
		v, _ := t.arg()
		e, err := protoExprs(v, t.cmpOp())
		t.proto = v
		return add(e, err)
	case "-m":
		v, _ := t.arg()
		switch v {
		case "tcp", "udp", "icmp":
			if v != t.proto {
				return true, fmt.Errorf("-m %s without -p %s", v, v)
			}
		case "comment", "conntrack", "set", "recent", "statistic", "mark", "addrtype":
		default:
			return true, fmt.Errorf("unsupported match module %q", v)
		}
		return true, nil
	case "-s", "-d":
		v, _ := t.arg()
		e, err := addrExprs(opt == "-d", v, t.cmpOp())
		if err != nil {
			return true, fmt.Errorf("%s: %w", opt, err)
		}
		return add(e, nil)
	case "-i", "-o":
		v, _ := t.arg()
		key := expr.MetaKeyIIFNAME
		if opt == "-o" {
			key = expr.MetaKeyOIFNAME
		}
		return add([]expr.Any{&expr.Meta{Key: key, Register: 1}, &expr.Cmp{Op: t.cmpOp(), Register: 1, Data: ifname(v)}}, nil)
	case "--dport":
		v, _ := t.arg()
		e, ok := dportExprs(v)
		if !ok || (t.proto != "tcp" && t.proto != "udp") || t.neg {
			return true, fmt.Errorf("--dport %q needs -p tcp|udp and a port or a range LOW:HIGH", v)
		}
		return add(e, nil)
	case "--icmp-type":
		v, _ := t.arg()
		if v != "echo-request" || t.proto != "icmp" || t.neg {
			return true, fmt.Errorf("--icmp-type %q: only echo-request with -p icmp", v)
		}
		return add([]expr.Any{&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 0, Len: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{8}}}, nil)
	case "--comment":
		t.comment, _ = t.arg()
		return true, nil
	case "--ctstate":
		v, _ := t.arg()
		return add(ctstateExprs(v, t.neg))
	case "--match-set":
		return t.matchSet()
	case "--mark":
		v, _ := t.arg()
		e, err := markExprs(v, t.cmpOp())
		if err != nil {
			return true, fmt.Errorf("--mark %q", v)
		}
		return add(e, nil)
	case "--dst-type":
		v, _ := t.arg()
		if v != "LOCAL" {
			return true, fmt.Errorf("--dst-type %q: only LOCAL", v)
		}
		return add([]expr.Any{&expr.Fib{Register: 1, FlagDADDR: true, ResultADDRTYPE: true},
			&expr.Cmp{Op: t.cmpOp(), Register: 1, Data: u32(unix.RTN_LOCAL)}}, nil)
	}
	return false, nil
}

// matchSet is --match-set NAME src|dst: a lookup in the nft set.
func (t *ruleTranslation) matchSet() (bool, error) {
	name, _ := t.arg()
	dir, _ := t.arg()
	set := t.c.sets[name]
	if set == nil {
		return true, fmt.Errorf("set %q is not declared", name)
	}
	off := uint32(12)
	switch dir {
	case "src":
	case "dst":
		off = 16
	default:
		return true, fmt.Errorf("--match-set %s %q: only src or dst", name, dir)
	}
	t.ex = append(t.ex, &expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: 4},
		&expr.Lookup{SourceRegister: 1, SetName: set.Name, SetID: set.ID, Invert: t.neg})
	return true, nil
}

// module is the options of -m statistic (a random draw) and -m recent
// (session affinity's source lists, as dynamic nft sets).
func (t *ruleTranslation) module(opt string) (bool, error) {
	switch opt {
	case "--mode":
		if v, _ := t.arg(); v != "random" {
			return true, fmt.Errorf("statistic --mode %q: only random", v)
		}
	case "--probability":
		v, _ := t.arg()
		e, err := probabilityExprs(v)
		if err != nil {
			return true, err
		}
		t.ex = append(t.ex, e...)
	case "--name":
		t.recentName, _ = t.arg()
	case "--set", "--rcheck":
		set := t.c.sets[recentSetName(t.recentName)]
		if t.recentName == "" || set == nil {
			return true, fmt.Errorf("%s without a known --name", opt)
		}
		t.ex = append(t.ex, &expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4})
		if opt == "--set" {
			t.ex = append(t.ex, &expr.Dynset{SrcRegKey: 1, SetName: set.Name, SetID: set.ID, Operation: unix.NFT_DYNSET_OP_UPDATE, Timeout: set.Timeout})
		} else {
			t.ex = append(t.ex, &expr.Lookup{SourceRegister: 1, SetName: set.Name, SetID: set.ID})
		}
	case "--seconds":
		t.arg() // the set's timeout (recentTimeouts)
	case "--reap":
		// nft set elements expire by themselves
	default:
		return false, nil
	}
	return true, nil
}

// protoExprs matches the layer 4 protocol (-p tcp|udp|icmp).
func protoExprs(v string, op expr.CmpOp) ([]expr.Any, error) {
	var n byte
	switch v {
	case "tcp":
		n = unix.IPPROTO_TCP
	case "udp":
		n = unix.IPPROTO_UDP
	case "icmp":
		n = unix.IPPROTO_ICMP
	default:
		return nil, fmt.Errorf("unsupported protocol %q", v)
	}
	return []expr.Any{&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1}, &expr.Cmp{Op: op, Register: 1, Data: []byte{n}}}, nil
}

// addrExprs matches the IPv4 source (or destination, dst) against an
// address or prefix (-s, -d).
func addrExprs(dst bool, v string, op expr.CmpOp) ([]expr.Any, error) {
	p, err := ip4(v)
	if err != nil {
		return nil, err
	}
	off := uint32(12)
	if dst {
		off = 16
	}
	ex := []expr.Any{&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: 4}}
	if p.Bits() < 32 {
		m := binary.BigEndian.AppendUint32(nil, math.MaxUint32<<(32-p.Bits()))
		ex = append(ex, &expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: m, Xor: []byte{0, 0, 0, 0}})
	}
	return append(ex, &expr.Cmp{Op: op, Register: 1, Data: p.Addr().AsSlice()}), nil
}

// dportExprs matches the TCP/UDP destination port: PORT or LOW:HIGH.
func dportExprs(v string) ([]expr.Any, bool) {
	lo, hi, isRange := strings.Cut(v, ":")
	if !isRange {
		hi = lo
	}
	n, err1 := strconv.ParseUint(lo, 10, 16)
	m, err2 := strconv.ParseUint(hi, 10, 16)
	if err1 != nil || err2 != nil || m < n {
		return nil, false
	}
	ex := []expr.Any{&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2}}
	if isRange {
		return append(ex, &expr.Range{Op: expr.CmpOpEq, Register: 1,
			FromData: binaryutil.BigEndian.PutUint16(uint16(n)), ToData: binaryutil.BigEndian.PutUint16(uint16(m))}), true
	}
	return append(ex, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(uint16(n))}), true
}

// ctstateExprs matches conntrack states (NEW, ESTABLISHED, RELATED,
// INVALID) or NAT statuses (DNAT, SNAT), not both: (ct & mask) != 0, or
// == 0 when negated.
func ctstateExprs(v string, neg bool) ([]expr.Any, error) {
	var state, status uint32
	for _, s := range strings.Split(v, ",") {
		switch s {
		case "NEW":
			state |= expr.CtStateBitNEW
		case "ESTABLISHED":
			state |= expr.CtStateBitESTABLISHED
		case "RELATED":
			state |= expr.CtStateBitRELATED
		case "INVALID":
			state |= expr.CtStateBitINVALID
		case "DNAT":
			status |= ipsDstNAT
		case "SNAT":
			status |= ipsSrcNAT
		default:
			return nil, fmt.Errorf("unsupported --ctstate %q", s)
		}
	}
	key, mask := expr.CtKeySTATE, state
	if status != 0 {
		if state != 0 {
			return nil, errors.New("--ctstate mixing DNAT/SNAT with connection states")
		}
		key, mask = expr.CtKeySTATUS, status
	}
	op := expr.CmpOpNeq // (ct & mask) != 0: one of the states
	if neg {
		op = expr.CmpOpEq
	}
	return []expr.Any{&expr.Ct{Key: key, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: u32(mask), Xor: u32(0)},
		&expr.Cmp{Op: op, Register: 1, Data: u32(0)}}, nil
}

// markExprs matches the packet mark: VALUE or VALUE/MASK.
func markExprs(v string, op expr.CmpOp) ([]expr.Any, error) {
	val, mask := v, "0xffffffff"
	if x, y, ok := strings.Cut(v, "/"); ok {
		val, mask = x, y
	}
	vv, err := parseMark(val)
	if err != nil {
		return nil, err
	}
	mm, err := parseMark(mask)
	if err != nil {
		return nil, err
	}
	return []expr.Any{&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: u32(mm), Xor: u32(0)},
		&expr.Cmp{Op: op, Register: 1, Data: u32(vv & mm)}}, nil
}

// probabilityExprs is statistic --mode random --probability 1/n: a random
// number mod n is 0 (zero is the same in any byte order).
func probabilityExprs(v string) ([]expr.Any, error) {
	p, err := strconv.ParseFloat(v, 64)
	if err != nil || p <= 0 || p > 1 {
		return nil, fmt.Errorf("--probability %q", v)
	}
	n := math.Round(1 / p)
	if math.Abs(1/n-p) > 1e-6 {
		return nil, fmt.Errorf("--probability %s is not 1/n", v)
	}
	return []expr.Any{&expr.Numgen{Register: 1, Modulus: uint32(n), Type: unix.NFT_NG_RANDOM},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: u32(0)}}, nil
}

// target translates "-j TARGET [options]".
func (c *nftCtx) target(t string, opts []string) ([]expr.Any, error) {
	only := func(allowed ...string) error {
		for j := 0; j < len(opts); j++ {
			ok := false
			for _, al := range allowed {
				if opts[j] == al {
					ok = true
				}
			}
			if !ok {
				return fmt.Errorf("-j %s: unsupported option %q", t, opts[j])
			}
			if opts[j] != "--random-fully" {
				j++ // its value
			}
		}
		return nil
	}
	switch t {
	case "ACCEPT", "DROP", "RETURN":
		if err := only(); err != nil {
			return nil, err
		}
		k := map[string]expr.VerdictKind{"ACCEPT": expr.VerdictAccept, "DROP": expr.VerdictDrop, "RETURN": expr.VerdictReturn}[t]
		return []expr.Any{&expr.Verdict{Kind: k}}, nil
	case "REJECT":
		if err := only(); err != nil {
			return nil, err
		}
		if c.family == "nat" {
			return nil, fmt.Errorf("-j REJECT in the nat table")
		}
		// iptables' default: ICMP port unreachable.
		return []expr.Any{&expr.Reject{Type: unix.NFT_REJECT_ICMP_UNREACH, Code: 3}}, nil
	case "MASQUERADE":
		if err := only("--random-fully"); err != nil {
			return nil, err
		}
		return []expr.Any{&expr.Masq{FullyRandom: len(opts) == 1}}, nil
	case "DNAT":
		if len(opts) != 2 || opts[0] != "--to-destination" {
			return nil, fmt.Errorf("-j DNAT needs exactly --to-destination IP[:PORT]")
		}
		dst := opts[1]
		var addr netip.Addr
		port := uint64(0)
		if ap, err := netip.ParseAddrPort(dst); err == nil {
			addr, port = ap.Addr(), uint64(ap.Port())
		} else if ad, err := netip.ParseAddr(dst); err == nil {
			addr = ad
		} else {
			return nil, fmt.Errorf("--to-destination %q", dst)
		}
		if !addr.Is4() {
			return nil, fmt.Errorf("--to-destination %q is not IPv4", dst)
		}
		ex := []expr.Any{&expr.Immediate{Register: 1, Data: addr.AsSlice()}}
		n := &expr.NAT{Type: expr.NATTypeDestNAT, Family: unix.NFPROTO_IPV4, RegAddrMin: 1}
		if port != 0 {
			ex = append(ex, &expr.Immediate{Register: 2, Data: binaryutil.BigEndian.PutUint16(uint16(port))})
			n.RegProtoMin, n.Specified = 2, true
		}
		return append(ex, n), nil
	case "MARK":
		if len(opts) != 2 {
			return nil, fmt.Errorf("-j MARK needs one of --or-mark, --xor-mark, --set-mark")
		}
		v, err := parseMark(opts[1])
		if err != nil {
			return nil, err
		}
		var mask, xor uint32
		switch opts[0] {
		case "--or-mark":
			mask, xor = ^v, v
		case "--xor-mark":
			mask, xor = math.MaxUint32, v
		case "--set-mark":
			mask, xor = 0, v
		default:
			return nil, fmt.Errorf("-j MARK: unsupported option %q", opts[0])
		}
		return []expr.Any{&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: u32(mask), Xor: u32(xor)},
			&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: 1}}, nil
	}
	if strings.HasPrefix(t, ChainPrefix) {
		if err := only(); err != nil {
			return nil, err
		}
		return []expr.Any{&expr.Verdict{Kind: expr.VerdictJump, Chain: nftChainName(c.family, t)}}, nil
	}
	return nil, fmt.Errorf("unsupported target %q", t)
}

// Conntrack status bits (linux/netfilter/nf_conntrack_common.h).
const (
	ipsSrcNAT = 1 << 4
	ipsDstNAT = 1 << 5
)

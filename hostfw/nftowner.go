package hostfw

import (
	"encoding/binary"
	"fmt"
	"sync"

	"github.com/google/nftables"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// Table ownership. A firewall reload on an nftables host runs `nft flush
// ruleset` (nftables.service, most firewall scripts): that would take
// table inet warren, and with it every policy, away until the canary's
// next check. So the table is created owned (NFT_TABLE_F_OWNER, Linux
// 5.12): only the netlink socket that made it may change it, and `nft
// flush ruleset` passes it by. And persistent (NFT_TABLE_F_PERSIST, Linux
// 6.9): when the owner goes (the daemon stops or restarts), the table
// stays, with no owner, until the next daemon claims it; rules do not
// vanish with the process, as with iptables. firewalld does the same
// (NftablesTableOwner). Where the kernel has no persistent tables the
// table is made as before, owned by nobody.
const (
	nftTableOwner   = 0x2 // NFT_TABLE_F_OWNER
	nftTablePersist = 0x4 // NFT_TABLE_F_PERSIST
)

// ownTables is false only in tests that play a kernel without owned
// persistent tables.
var ownTables = true

// tableOwners holds, per network namespace (by inode), this process's
// socket that owns table inet warren there (nil: the kernel cannot). One
// per namespace: every Syncer of the process there writes through it.
var tableOwners = struct {
	sync.Mutex
	byNetns map[uint64]*nfSocket
}{byNetns: map[uint64]*nfSocket{}}

// netnsID is the inode of the calling thread's network namespace.
func netnsID() (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat("/proc/thread-self/ns/net", &st); err != nil {
		return 0, fmt.Errorf("network namespace: %w", err)
	}
	return st.Ino, nil
}

// ownerSocket is the process's owning socket in the calling thread's
// network namespace, opened on first use after checking that the kernel
// makes owned persistent tables (nil, nil: it does not).
func ownerSocket() (*nfSocket, error) {
	id, err := netnsID()
	if err != nil {
		return nil, err
	}
	tableOwners.Lock()
	defer tableOwners.Unlock()
	if s, ok := tableOwners.byNetns[id]; ok {
		return s, nil
	}
	if !ownTables {
		return nil, nil
	}
	s, err := openNfSocket()
	if err != nil {
		return nil, err
	}
	if probeOwnedTable(s) != nil {
		s.close()
		s = nil
	}
	tableOwners.byNetns[id] = s
	return s, nil
}

// probeOwnedTable makes and deletes an owned persistent table in one
// transaction: an older kernel refuses the flags.
func probeOwnedTable(s *nfSocket) error {
	b, err := newNftBatch()
	if err != nil {
		return err
	}
	b.tableFlags = nftTableOwner | nftTablePersist
	t := &nftables.Table{Family: nftables.TableFamilyINet, Name: NftTable + "-probe"}
	b.conn.AddTable(t)
	b.conn.DelTable(t)
	return b.commit(s)
}

// existingOwner is the process's owning socket in the calling thread's
// network namespace, if it has opened one.
func existingOwner() *nfSocket {
	id, err := netnsID()
	if err != nil {
		return nil
	}
	tableOwners.Lock()
	defer tableOwners.Unlock()
	return tableOwners.byNetns[id]
}

// releaseOwner closes the process's owning socket in the calling thread's
// network namespace, as the process's exit would: the table stays, with
// no owner, for the next one to claim. For tests of restarts.
func releaseOwner() {
	id, err := netnsID()
	if err != nil {
		return
	}
	tableOwners.Lock()
	defer tableOwners.Unlock()
	if s := tableOwners.byNetns[id]; s != nil {
		s.close()
	}
	delete(tableOwners.byNetns, id)
}

// withTableFlags sets NFTA_TABLE_FLAGS in every NEWTABLE message of msgs
// to flags (google/nftables always writes 0).
func withTableFlags(msgs []netlink.Message, flags uint32) error {
	for i, m := range msgs {
		if m.Header.Type != netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8|unix.NFT_MSG_NEWTABLE) || len(m.Data) < 4 {
			continue
		}
		ad, err := netlink.NewAttributeDecoder(m.Data[4:])
		if err != nil {
			return fmt.Errorf("decode table message: %w", err)
		}
		ae := netlink.NewAttributeEncoder()
		for ad.Next() {
			if ad.Type() == unix.NFTA_TABLE_FLAGS {
				ae.Bytes(unix.NFTA_TABLE_FLAGS, binary.BigEndian.AppendUint32(nil, flags))
			} else {
				ae.Bytes(ad.Type(), ad.Bytes())
			}
		}
		if err := ad.Err(); err != nil {
			return fmt.Errorf("decode table message: %w", err)
		}
		data, err := ae.Encode()
		if err != nil {
			return fmt.Errorf("encode table message: %w", err)
		}
		msgs[i].Data = append(append([]byte{}, m.Data[:4]...), data...)
	}
	return nil
}

// tableFlagsOf is a listed table's flags. google/nftables v0.3.0 decodes
// the (big-endian) attribute in the host's byte order: turn it back.
func tableFlagsOf(t *nftables.Table) uint32 {
	return binary.BigEndian.Uint32(binary.NativeEndian.AppendUint32(nil, t.Flags))
}

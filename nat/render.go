package nat

import (
	"bytes"
	"maps"
	"slices"
)

// Render returns the complete iptables-restore input (nat and filter
// tables) for services: every chain this package owns, declared and
// filled, for use with --noflush. It is deterministic: services, ports and
// endpoints are sorted, chains are written in name order. It is the
// dry-run text of `warren network vips --render`.
func Render(services []Service, opts Options) []byte {
	return restoreText(plan(services, opts), nil, nil)
}

// restoreText writes the transaction that moves the kernel from applied to
// desired. With applied == nil every desired chain is written (a full
// sync); otherwise only the chains whose rules changed. Chains in applied
// but not desired, and the extra chains in stale (found in the kernel by a
// full sync), are flushed and deleted at the end, after the rules that
// referenced them are gone. A table with nothing to do is left out; an
// empty result means there is nothing to do at all.
func restoreText(desired, applied ruleset, stale map[string][]string) []byte {
	var buf bytes.Buffer
	for _, table := range tables {
		want := desired[table]
		var write, remove []string
		for _, chain := range slices.Sorted(maps.Keys(want)) {
			if applied != nil {
				if have, ok := applied[table][chain]; ok && slices.Equal(have, want[chain]) {
					continue
				}
			}
			write = append(write, chain)
		}
		for chain := range applied[table] {
			if _, ok := want[chain]; !ok {
				remove = append(remove, chain)
			}
		}
		for _, chain := range stale[table] {
			if _, ok := want[chain]; !ok && !slices.Contains(remove, chain) {
				remove = append(remove, chain)
			}
		}
		slices.Sort(remove)
		if len(write) == 0 && len(remove) == 0 {
			continue
		}

		buf.WriteString("*" + table + "\n")
		// Declaring a chain creates it, or flushes it if it exists.
		for _, chain := range append(slices.Clone(write), remove...) {
			buf.WriteString(":" + chain + " - [0:0]\n")
		}
		for _, chain := range write {
			for _, rule := range want[chain] {
				buf.WriteString("-A " + chain + " " + rule + "\n")
			}
		}
		for _, chain := range remove {
			buf.WriteString("-X " + chain + "\n")
		}
		buf.WriteString("COMMIT\n")
	}
	return buf.Bytes()
}

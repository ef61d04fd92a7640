// Package iptbackend finds the iptables variant (nf_tables or legacy) the host
// already uses. Rules written to the other backend would not see the host's
// (a DROP policy there still drops what we accept), so every package that
// writes rules must agree on this choice.
package iptbackend

import (
	"bufio"
	"bytes"
	"os"
	"os/exec"
	"slices"
	"strings"
)

// Detect returns the iptables command to use: the variant holding the
// caller's own chain (table, chain) when exactly one does (a restart);
// otherwise the one with more rules, as kube-proxy's iptables-wrapper
// decides; with no rules anywhere, the host's default `iptables`.
func Detect(table, chain string) string {
	var ours []string
	for _, c := range []string{"iptables-nft", "iptables-legacy"} {
		if c == "iptables-legacy" && !slices.Contains(LegacyTables(), table) {
			continue // asking would create the legacy table
		}
		if path, err := exec.LookPath(c); err == nil && exec.Command(path, "-w", "5", "-t", table, "-S", chain, "1").Run() == nil {
			ours = append(ours, c)
		}
	}
	if c := pick(ours, CountRules("iptables-nft-save"), CountRules("iptables-legacy-save")); c != "" {
		return c
	}
	for _, c := range []string{"iptables", "iptables-nft", "iptables-legacy"} {
		if _, err := exec.LookPath(c); err == nil {
			return c
		}
	}
	return "iptables"
}

// pick is Detect's decision: ours lists the variants holding the caller's
// chain; the counts are -1 for a missing variant. "" means undecided.
func pick(ours []string, nftRules, legacyRules int) string {
	switch {
	case len(ours) == 1:
		return ours[0]
	case legacyRules > nftRules:
		return "iptables-legacy"
	case nftRules > legacyRules:
		return "iptables-nft"
	}
	return ""
}

// LegacyTables lists the legacy (x_tables) tables this network namespace
// has; listing any other with iptables-legacy would create it.
// thread-self, not self: the calling thread may have entered a namespace.
func LegacyTables() []string {
	names, err := os.ReadFile("/proc/thread-self/net/ip_tables_names")
	if err != nil {
		return nil
	}
	return strings.Fields(string(names))
}

// CountRules is the number of rules a save tool (iptables-nft-save, ...)
// prints, or -1 when it cannot run.
func CountRules(save string) int {
	path, err := exec.LookPath(save)
	if err != nil {
		return -1
	}
	out, err := exec.Command(path).Output()
	if err != nil {
		return -1
	}
	n := 0
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 0, 64*1024), 1024*1024)
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), "-A ") {
			n++
		}
	}
	return n
}

package iptbackend

import "testing"

func TestPick(t *testing.T) {
	for _, c := range []struct {
		ours        []string
		nft, legacy int
		want        string
	}{
		{nil, 0, 0, ""},
		{nil, -1, -1, ""},
		{nil, 12, 0, "iptables-nft"},
		{nil, 3, 40, "iptables-legacy"},
		{nil, 5, -1, "iptables-nft"},
		{[]string{"iptables-legacy"}, 50, 2, "iptables-legacy"}, // ours win over counts
		{[]string{"iptables-nft", "iptables-legacy"}, 1, 9, "iptables-legacy"},
	} {
		if got := pick(c.ours, c.nft, c.legacy); got != c.want {
			t.Errorf("pick(%v, %d, %d) = %q, want %q", c.ours, c.nft, c.legacy, got, c.want)
		}
	}
}

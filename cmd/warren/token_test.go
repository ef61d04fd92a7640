package main

import (
	"slices"
	"testing"
)

// --token is moved out of the command line of the two verbs that take it,
// in both spellings; nothing else is touched.
func TestWithoutToken(t *testing.T) {
	for _, tc := range []struct {
		args, rest []string
		token      string
		ok         bool
	}{
		{[]string{"worker", "start", "--manager", "m:7946", "--token", "WRN-1-x"}, []string{"worker", "start", "--manager", "m:7946"}, "WRN-1-x", true},
		{[]string{"manager", "join", "--token=WRN-1-y", "--manager", "m:7946"}, []string{"manager", "join", "--manager", "m:7946"}, "WRN-1-y", true},
		{[]string{"--socket", "/s", "worker", "start", "--token-file", "/t"}, nil, "", false},
		{[]string{"worker", "start", "--manager", "m:7946"}, nil, "", false},
		{[]string{"service", "create", "x", "--image", "i", "--", "sh", "--token", "z"}, nil, "", false},
		{[]string{"cluster", "join-token", "worker"}, nil, "", false},
	} {
		rest, token, ok := withoutToken(tc.args)
		if ok != tc.ok || token != tc.token || (ok && !slices.Equal(rest, tc.rest)) {
			t.Errorf("withoutToken(%q) = %q, %q, %v; want %q, %q, %v", tc.args, rest, token, ok, tc.rest, tc.token, tc.ok)
		}
	}
}

package api

import (
	"reflect"
	"testing"
)

func TestNormalizeCapabilities(t *testing.T) {
	got, err := NormalizeCapabilities("--cap-add", []string{"net_raw", " NET_ADMIN", "CAP_NET_RAW", "all"})
	if err != nil || !reflect.DeepEqual(got, []string{"ALL", "CAP_NET_ADMIN", "CAP_NET_RAW"}) {
		t.Fatalf("got %v, %v", got, err)
	}
	if got, err := NormalizeCapabilities("--cap-add", nil); err != nil || got != nil {
		t.Fatalf("none: %v, %v", got, err)
	}
	if _, err := NormalizeCapabilities("--cap-drop", []string{"CAP_FLY"}); err == nil || err.Error() != `--cap-drop: unknown capability "CAP_FLY": want a Linux capability such as NET_RAW or NET_ADMIN, or ALL` {
		t.Fatalf("unknown capability: %v", err)
	}
}

// As Docker's service update: an added capability leaves the drop list,
// a dropped one leaves the add list.
func TestUpdateCapabilities(t *testing.T) {
	add, drop := UpdateCapabilities([]string{"CAP_NET_RAW", "CAP_SYS_TIME"}, []string{"CAP_CHOWN"}, []string{"CAP_CHOWN"}, []string{"CAP_NET_RAW"})
	if !reflect.DeepEqual(add, []string{"CAP_CHOWN", "CAP_SYS_TIME"}) || !reflect.DeepEqual(drop, []string{"CAP_NET_RAW"}) {
		t.Fatalf("add %v drop %v", add, drop)
	}
}

package testnode

import (
	"strings"
	"testing"

	"github.com/warren-appliance/warren/internal/testimage"
)

// TestCtrImportsBusyboxTarball checks the test image against the real
// consumer: containerd's own `ctr images import`, then runs it.
func TestCtrImportsBusyboxTarball(t *testing.T) {
	if !Enter(t, "tnode") {
		return
	}
	d := StartContainerd(t)
	tarball, err := testimage.BusyboxTarball(t.TempDir(), "busybox:1.0")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.Ctr("-n", "tnode", "images", "import", tarball); err != nil {
		t.Fatal(err)
	}
	out, err := d.Ctr("-n", "tnode", "images", "list", "-q")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "docker.io/library/busybox:1.0") {
		t.Fatalf("imported image not listed: %q", out)
	}
	out, err = d.Ctr("-n", "tnode", "run", "--rm", "docker.io/library/busybox:1.0", "probe", "sh", "-c", "echo hello from $(hostname)")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "hello from") {
		t.Fatalf("container output %q", out)
	}
}

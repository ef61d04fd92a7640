package dns

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"testing"
	"time"

	miekg "github.com/miekg/dns"
	"github.com/vishvananda/netns"
)

// inNetns runs fn on an OS thread moved into the named network namespace.
// Sockets fn creates stay in that namespace wherever they are used later.
// The thread is never unlocked, so it dies with the goroutine instead of
// going back to the pool in the wrong namespace.
func inNetns(t *testing.T, name string, fn func() error) error {
	t.Helper()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		ns, err := netns.GetFromName(name)
		if err != nil {
			errc <- fmt.Errorf("open netns %s: %w", name, err)
			return
		}
		defer ns.Close()
		if err := netns.Set(ns); err != nil {
			errc <- fmt.Errorf("enter netns %s: %w", name, err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

func run(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%v: %v: %s", args, err, out)
	}
}

// The node's resolver listens on the bridge address, which may appear only
// after the daemon starts it: with FreeBind, Start succeeds first and the
// server answers once the address exists. Runs in a namespace of its own.
func TestFreeBindServesOnceAddressAppears(t *testing.T) {
	requireRoot(t)
	name := fmt.Sprintf("wdns%d", os.Getpid())
	run(t, "ip", "netns", "add", name)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", name).Run() })
	run(t, "ip", "-n", name, "link", "set", "lo", "up")
	bridgeIP := "10.77.0.1"

	// No upstream: this test is about the listener.
	noUpstreams := t.TempDir() + "/resolv.conf"
	if err := os.WriteFile(noUpstreams, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := Config{Listen: []string{bridgeIP + ":53"}, ResolvConf: noUpstreams, Logger: testLogger(t)}

	// Without FreeBind the bind fails: the address is not there yet.
	err := inNetns(t, name, func() error {
		s, err := NewServer(cfg)
		if err != nil {
			return err
		}
		defer s.Close()
		if s.Start() == nil {
			return fmt.Errorf("bind to an absent address without FreeBind succeeded")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}

	var s *Server
	err = inNetns(t, name, func() error {
		cfg.FreeBind = true
		var err error
		if s, err = NewServer(cfg); err != nil {
			return err
		}
		return s.Start()
	})
	if s != nil {
		t.Cleanup(func() { s.Close() })
	}
	if err != nil {
		t.Fatalf("Start before the address exists: %v", err)
	}
	s.Update(sampleRecords)

	run(t, "ip", "-n", name, "addr", "add", bridgeIP+"/24", "dev", "lo")

	for _, network := range []string{"udp", "tcp"} {
		var co *miekg.Conn
		if err := inNetns(t, name, func() error {
			var err error
			co, err = miekg.DialTimeout(network, bridgeIP+":53", 10*time.Second)
			return err
		}); err != nil {
			t.Fatalf("%s dial in the namespace: %v", network, err)
		}
		m := new(miekg.Msg)
		m.SetQuestion("tasks.nginx.warren.local.", miekg.TypeA)
		co.SetDeadline(time.Now().Add(10 * time.Second))
		if err := co.WriteMsg(m); err != nil {
			t.Fatal(err)
		}
		resp, err := co.ReadMsg()
		co.Close()
		if err != nil {
			t.Fatalf("%s query: %v", network, err)
		}
		if got := aAddrs(resp.Answer); len(got) != 2 || got[0] != netip.MustParseAddr("10.0.1.2") {
			t.Fatalf("%s answer %v", network, resp.Answer)
		}
	}
}

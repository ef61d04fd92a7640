package health

import (
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/warren-appliance/warren/cluster/clustermap"
)

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func probe(at time.Duration, code int) Result {
	return Result{Start: t0.Add(at), End: t0.Add(at + 10*time.Millisecond), ExitCode: code, Output: "out"}
}

func TestNextRetriesMakeUnhealthy(t *testing.T) {
	c := Config{Interval: time.Second, Timeout: time.Second, Retries: 2}
	s := Start()
	s = Next(s, c, t0, probe(time.Second, 0))
	if s.Status != clustermap.HealthHealthy {
		t.Fatalf("after a success: %s", s.Status)
	}
	s = Next(s, c, t0, probe(2*time.Second, 1))
	if s.Status != clustermap.HealthHealthy || s.FailingStreak != 1 {
		t.Fatalf("one failure of two retries: %s streak %d", s.Status, s.FailingStreak)
	}
	s = Next(s, c, t0, probe(3*time.Second, 1))
	if s.Status != clustermap.HealthUnhealthy || s.FailingStreak != 2 {
		t.Fatalf("two failures of two retries: %s streak %d", s.Status, s.FailingStreak)
	}
	s = Next(s, c, t0, probe(4*time.Second, 0))
	if s.Status != clustermap.HealthHealthy || s.FailingStreak != 0 {
		t.Fatalf("a success after unhealthy: %s streak %d", s.Status, s.FailingStreak)
	}
}

func TestNextStartingToUnhealthyWithoutStartPeriod(t *testing.T) {
	c := Config{Interval: time.Second, Timeout: time.Second, Retries: 3}
	s := Start()
	for i := 1; i <= 2; i++ {
		s = Next(s, c, t0, probe(time.Duration(i)*time.Second, 1))
		if s.Status != clustermap.HealthStarting {
			t.Fatalf("failure %d: %s, want starting", i, s.Status)
		}
	}
	s = Next(s, c, t0, probe(3*time.Second, 1))
	if s.Status != clustermap.HealthUnhealthy {
		t.Fatalf("third failure: %s", s.Status)
	}
}

func TestNextStartPeriodIgnoresFailuresUntilFirstSuccess(t *testing.T) {
	c := Config{Interval: time.Second, Timeout: time.Second, Retries: 1, StartPeriod: 10 * time.Second}
	s := Start()
	for i := 1; i < 10; i++ {
		s = Next(s, c, t0, probe(time.Duration(i)*time.Second, 1))
		if s.Status != clustermap.HealthStarting || s.FailingStreak != 0 {
			t.Fatalf("failure at %ds inside the start period: %s streak %d", i, s.Status, s.FailingStreak)
		}
	}
	if len(s.Log) != MaxLogEntries {
		t.Fatalf("log keeps %d entries, want %d", len(s.Log), MaxLogEntries)
	}
	// After the start period a failure counts.
	if s2 := Next(s, c, t0, probe(11*time.Second, 1)); s2.Status != clustermap.HealthUnhealthy {
		t.Fatalf("failure after the start period: %s", s2.Status)
	}
	// A success inside the start period ends it: later failures count.
	s = Next(s, c, t0, probe(5*time.Second, 0))
	if s = Next(s, c, t0, probe(6*time.Second, 1)); s.Status != clustermap.HealthUnhealthy {
		t.Fatalf("failure after a success inside the start period: %s", s.Status)
	}
}

func TestNextTruncatesOutput(t *testing.T) {
	r := probe(time.Second, 1)
	r.Output = strings.Repeat("x", MaxOutputLen+10)
	s := Next(Start(), Config{Retries: 3}, t0, r)
	if len(s.Log[0].Output) != MaxOutputLen || s.LastFailure() == "" {
		t.Fatalf("output %d bytes", len(s.Log[0].Output))
	}
}

func TestResolve(t *testing.T) {
	img := &clustermap.HealthCheck{Test: []string{"CMD", "check"}, Interval: 5 * time.Second, Retries: 2}
	cases := []struct {
		name     string
		svc, img *clustermap.HealthCheck
		want     Config
		ok       bool
	}{
		{"none at all", nil, nil, Config{}, false},
		{"image only", nil, img, Config{Test: []string{"CMD", "check"}, Interval: 5 * time.Second, Timeout: DefaultTimeout, Retries: 2}, true},
		{"disabled", &clustermap.HealthCheck{Test: []string{"NONE"}}, img, Config{}, false},
		{"image NONE", nil, &clustermap.HealthCheck{Test: []string{"NONE"}}, Config{}, false},
		{"flags override some", &clustermap.HealthCheck{Interval: time.Second, Timeout: 2 * time.Second}, img,
			Config{Test: []string{"CMD", "check"}, Interval: time.Second, Timeout: 2 * time.Second, Retries: 2}, true},
		{"service command", &clustermap.HealthCheck{Test: []string{"CMD-SHELL", "wget -q -O- localhost"}, Retries: 4}, img,
			Config{Test: []string{"CMD-SHELL", "wget -q -O- localhost"}, Interval: 5 * time.Second, Timeout: DefaultTimeout, Retries: 4}, true},
		{"defaults", &clustermap.HealthCheck{Test: []string{"CMD-SHELL", "true"}}, nil,
			Config{Test: []string{"CMD-SHELL", "true"}, Interval: DefaultInterval, Timeout: DefaultTimeout, Retries: DefaultRetries}, true},
		{"timings without command or image", &clustermap.HealthCheck{Interval: time.Second}, nil, Config{}, false},
	}
	for _, c := range cases {
		got, ok := Resolve(c.svc, c.img)
		if ok != c.ok || !reflect.DeepEqual(got, c.want) {
			t.Errorf("%s: got %+v %v, want %+v %v", c.name, got, ok, c.want, c.ok)
		}
	}
}

func TestValidateAndCommand(t *testing.T) {
	bad := []*clustermap.HealthCheck{
		{Test: []string{"CMD-SHELL", " "}},
		{Test: []string{"RUN", "x"}},
		{Test: []string{"NONE", "x"}},
		{Interval: time.Millisecond},
		{Retries: -1},
	}
	for _, h := range bad {
		if err := Validate(h); err == nil {
			t.Errorf("Validate(%+v) accepted", h)
		}
	}
	if err := Validate(&clustermap.HealthCheck{Test: []string{"CMD-SHELL", "true"}, Interval: time.Second}); err != nil {
		t.Fatal(err)
	}
	if got, _ := Command([]string{"CMD-SHELL", "wget -q localhost"}); !reflect.DeepEqual(got, []string{"/bin/sh", "-c", "wget -q localhost"}) {
		t.Fatalf("CMD-SHELL: %q", got)
	}
	if got, _ := Command([]string{"CMD", "/bin/check", "-v"}); !reflect.DeepEqual(got, []string{"/bin/check", "-v"}) {
		t.Fatalf("CMD: %q", got)
	}
}

func TestFromImageConfig(t *testing.T) {
	raw := `{"architecture":"amd64","config":{"Cmd":["sh"],"Healthcheck":{"Test":["CMD-SHELL","test -f /ok"],"Interval":1000000000,"Retries":2}}}`
	h, err := FromImageConfig([]byte(raw))
	if err != nil {
		t.Fatal(err)
	}
	want := &clustermap.HealthCheck{Test: []string{"CMD-SHELL", "test -f /ok"}, Interval: time.Second, Retries: 2}
	if !reflect.DeepEqual(h, want) {
		t.Fatalf("got %+v", h)
	}
	if h, err := FromImageConfig([]byte(`{"config":{"Cmd":["sh"]}}`)); err != nil || h != nil {
		t.Fatalf("no healthcheck: %+v %v", h, err)
	}
}

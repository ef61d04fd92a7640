package main

import (
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"

	"github.com/warren-appliance/warren/cluster/api"
	"github.com/warren-appliance/warren/cluster/clustermap"
)

func healthCmd(t *testing.T, args ...string) *cobra.Command {
	t.Helper()
	c := &cobra.Command{Use: "x"}
	addHealthFlags(c)
	if err := c.ParseFlags(args); err != nil {
		t.Fatal(err)
	}
	return c
}

func TestHealthSpecFromFlags(t *testing.T) {
	c := healthCmd(t, "--health-cmd", "wget -q localhost", "--health-interval", "1s", "--health-retries", "2",
		"--update-order", "stop-first", "--update-parallelism", "2", "--rollback-monitor", "10s")
	got, err := healthSpecFromFlags(c, api.HealthSpec{})
	if err != nil {
		t.Fatal(err)
	}
	want := api.HealthSpec{
		HealthCheck:    &clustermap.HealthCheck{Test: []string{"CMD-SHELL", "wget -q localhost"}, Interval: time.Second, Retries: 2},
		UpdateConfig:   &clustermap.UpdateConfig{Order: "stop-first", Parallelism: 2},
		RollbackConfig: &clustermap.UpdateConfig{Monitor: 10 * time.Second},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %+v %+v %+v", got.HealthCheck, got.UpdateConfig, got.RollbackConfig)
	}
	if !healthFlagsChanged(c) || healthFlagsChanged(healthCmd(t)) {
		t.Fatal("healthFlagsChanged")
	}

	// update: given flags change the current settings, the rest stay.
	cur := want
	got, err = healthSpecFromFlags(healthCmd(t, "--health-timeout", "3s", "--update-delay", "5s"), cur)
	if err != nil {
		t.Fatal(err)
	}
	if got.HealthCheck.Test[1] != "wget -q localhost" || got.HealthCheck.Timeout != 3*time.Second || got.HealthCheck.Retries != 2 ||
		got.UpdateConfig.Delay != 5*time.Second || got.UpdateConfig.Order != "stop-first" || got.RollbackConfig != nil {
		t.Fatalf("merged: %+v %+v %+v", got.HealthCheck, got.UpdateConfig, got.RollbackConfig)
	}
	got, _ = healthSpecFromFlags(healthCmd(t, "--no-healthcheck"), cur)
	if !got.HealthCheck.Disabled() {
		t.Fatalf("--no-healthcheck: %+v", got.HealthCheck)
	}

	for _, bad := range [][]string{
		{"--no-healthcheck", "--health-cmd", "true"},
		{"--health-cmd", " "},
		{"--update-order", "sideways"},
		{"--rollback-failure-action", "rollback"},
		{"--update-max-failure-ratio", "2"},
	} {
		if _, err := healthSpecFromFlags(healthCmd(t, bad...), api.HealthSpec{}); err == nil {
			t.Errorf("%s accepted", strings.Join(bad, " "))
		}
	}
}

package hostfw

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"os/exec"
	"slices"
	"strings"

	"github.com/warren-appliance/warren/internal/iptbackend"
)

// bridgeHooks are the bridge built-in chains that may jump to BridgeChain.
var bridgeHooks = []string{"INPUT", "FORWARD"}

// Cleanup removes every rule, chain and set warren owns on this host (for
// --cleanup and the package's purge): the hooks in the built-in chains,
// the WARREN-* chains of every table, the WARREN-PS-* sets and the bridge
// chain. It cleans the detected iptables variant and then the other one,
// so a host that switched between nft and legacy is left clean too (legacy
// tables that were never loaded are not touched: listing would create
// them). A second run finds nothing to do.
func Cleanup(log *slog.Logger) error {
	if log == nil {
		log = slog.Default()
	}
	r, err := Detect()
	if err != nil {
		return err
	}
	var errs []error
	if err := DeleteNftTable(); err != nil {
		errs = append(errs, err)
	}
	if err := CleanupRunner(r, tables); err != nil {
		errs = append(errs, err)
	}
	other, otherTables := "iptables-legacy", iptbackend.LegacyTables()
	if r.backend == "legacy" {
		other, otherTables = "iptables-nft", tables
	}
	otherTables = slices.DeleteFunc(slices.Clone(otherTables), func(t string) bool { return !slices.Contains(tables, t) })
	if _, err := exec.LookPath(other); err == nil && len(otherTables) > 0 {
		if x, err := NewIptables(other); err != nil {
			errs = append(errs, err)
		} else if err := cleanupTables(x, otherTables); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", other, err))
		}
	}
	if len(errs) == 0 {
		log.Info("removed all warren firewall rules")
	}
	return errors.Join(errs...)
}

// CleanupRunner removes everything of warren's that r reaches in tables.
func CleanupRunner(r Runner, tables []string) error {
	var errs []error
	if err := cleanupTables(r, tables); err != nil {
		errs = append(errs, err)
	}
	sets, err := r.Sets()
	if err != nil {
		errs = append(errs, err)
	}
	for name := range sets {
		if err := r.DestroySet(name); err != nil {
			errs = append(errs, fmt.Errorf("destroy set %s: %w", name, err))
		}
	}
	if err := removeBridge(r, bridgeHooks); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// cleanupTables deletes the hooks to WARREN-* chains and those chains, in
// one restore transaction per table.
func cleanupTables(r Runner, tables []string) error {
	var buf bytes.Buffer
	for _, t := range tables {
		var lines []string
		for _, c := range builtinChains[t] {
			rules, err := r.List(t, c)
			if err != nil {
				return fmt.Errorf("list %s %s: %w", t, c, err)
			}
			for _, rule := range rules[min(1, len(rules)):] {
				if targetsOurs(rule) {
					lines = append(lines, "-D "+c+" "+strings.TrimPrefix(rule, "-A "+c+" "))
				}
			}
		}
		names, err := r.ListChains(t)
		if err != nil {
			return fmt.Errorf("list %s chains: %w", t, err)
		}
		var owned []string
		for _, c := range names {
			if ownerOf(c) != "" {
				owned = append(owned, c)
			}
		}
		if len(lines) == 0 && len(owned) == 0 {
			continue
		}
		buf.WriteString("*" + t + "\n")
		for _, c := range owned {
			buf.WriteString(":" + c + " - [0:0]\n")
		}
		for _, l := range lines {
			buf.WriteString(l + "\n")
		}
		for _, c := range owned {
			buf.WriteString("-X " + c + "\n")
		}
		buf.WriteString("COMMIT\n")
	}
	if buf.Len() == 0 {
		return nil
	}
	if err := r.Restore(buf.Bytes()); err != nil {
		return fmt.Errorf("delete warren chains: %w", err)
	}
	return nil
}

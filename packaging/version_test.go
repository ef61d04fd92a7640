package packaging_test

import (
	"fmt"
	"strings"
	"testing"
)

func printVersion(t *testing.T, describe string) (string, error) {
	t.Helper()
	out, err := runErr("sh", "build.sh", "--print-version", describe)
	return strings.TrimSpace(out), err
}

func TestPackageVersionFromGitDescribe(t *testing.T) {
	for describe, want := range map[string]string{
		"":                        "0.0.0~dev",
		"0.0.0-dev":               "0.0.0~dev",
		"1.2.3":                   "1.2.3",
		"v1.2.3":                  "1.2.3",
		"1.2.3-dirty":             "1.2.3+dirty",
		"v1.2.3-4-gabcdef0":       "1.2.3+4.gabcdef0",
		"v1.2.3-4-gabcdef0-dirty": "1.2.3+4.gabcdef0.dirty",
		"1.2.3-rc.1":              "1.2.3~rc.1",
		"1.2.3-rc1-4-gabcdef0":    "1.2.3~rc1+4.gabcdef0",
		"1.2.3_beta":              "1.2.3~beta",
		"abcdef0":                 "0.0.0~git.abcdef0",
		"d4ec9b7-dirty":           "0.0.0~git.d4ec9b7+dirty",
		"1234567":                 "0.0.0~git.1234567",
	} {
		got, err := printVersion(t, describe)
		if err != nil {
			t.Errorf("--print-version %q: %v: %s", describe, err, got)
			continue
		}
		if got != want {
			t.Errorf("--print-version %q = %q, want %q", describe, got, want)
		}
	}
}

func TestPackageVersionRejectsNonNumeric(t *testing.T) {
	if out, err := printVersion(t, "release-candidate"); err == nil {
		t.Fatalf("--print-version release-candidate succeeded with %q", out)
	}
}

// Upgrades only work if dpkg and rpm order the versions of successive builds
// the way git history does.
func TestPackageVersionsOrderLikeHistory(t *testing.T) {
	requireTool(t, "dpkg", "dpkg")
	requireTool(t, "rpm", "rpm")
	history := []string{"abcdef0", "v0.1.0-rc.1", "v0.1.0-rc.1-2-gabcdef0", "v0.1.0", "v0.1.0-3-g1234abc",
		"v0.1.0-3-g1234abc-dirty", "v0.1.0-12-g5678def", "v0.1.1", "v0.10.0", "v1.0.0"}
	var versions []string
	for _, d := range history {
		v, err := printVersion(t, d)
		if err != nil {
			t.Fatalf("--print-version %q: %v", d, err)
		}
		versions = append(versions, v)
	}
	for i := 1; i < len(versions); i++ {
		older, newer := versions[i-1], versions[i]
		if _, err := runErr("dpkg", "--compare-versions", older, "lt", newer); err != nil {
			t.Errorf("dpkg orders %s (%s) not before %s (%s)", older, history[i-1], newer, history[i])
		}
		cmp := strings.TrimSpace(run(t, "rpm", "--eval", fmt.Sprintf(`%%{lua: print(rpm.vercmp(%q, %q))}`, older, newer)))
		if cmp != "-1" {
			t.Errorf("rpm vercmp(%s, %s) = %s, want -1", older, newer, cmp)
		}
	}
}

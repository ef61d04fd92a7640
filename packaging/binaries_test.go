package packaging_test

import (
	"debug/buildinfo"
	"debug/elf"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

var elfMachine = map[string]elf.Machine{
	"amd64": elf.EM_X86_64,
	"arm64": elf.EM_AARCH64,
	"arm":   elf.EM_ARM,
}

// The packaged binaries must be static (no dynamic loader on the target is
// assumed) and the armhf ones ARMv6 code, which every Raspberry Pi runs.
func TestPackagedBinariesAreStaticForTheirArchitecture(t *testing.T) {
	requireTool(t, "dpkg-deb", "dpkg")
	needPackages(t)
	for _, tg := range targets {
		t.Run(tg.debArch, func(t *testing.T) {
			root := extractDeb(t, tg.debFile())
			for _, b := range []string{"warren-appliance", "warren"} {
				path := filepath.Join(root, "usr/bin", b)
				f, err := elf.Open(path)
				if err != nil {
					t.Fatal(err)
				}
				defer f.Close()
				if f.Machine != elfMachine[tg.goarch] {
					t.Errorf("%s: ELF machine %v, want %v", b, f.Machine, elfMachine[tg.goarch])
				}
				for _, p := range f.Progs {
					if p.Type == elf.PT_INTERP || p.Type == elf.PT_DYNAMIC {
						t.Errorf("%s: has %v; want a static binary", b, p.Type)
					}
				}
				info, err := buildinfo.ReadFile(path)
				if err != nil {
					t.Fatal(err)
				}
				settings := map[string]string{}
				for _, s := range info.Settings {
					settings[s.Key] = s.Value
				}
				if settings["CGO_ENABLED"] != "0" {
					t.Errorf("%s: CGO_ENABLED=%q, want 0", b, settings["CGO_ENABLED"])
				}
				if tg.goarch == "arm" && settings["GOARM"] != "6" {
					t.Errorf("%s: GOARM=%q, want 6 so it runs on a Pi Zero and Pi 1", b, settings["GOARM"])
				}
			}
		})
	}
}

// build.sh refuses binaries that would put the wrong code in a package:
// here a GOARM=7 build, which a Pi Zero cannot run.
func TestBuildRejectsNonARMv6Binaries(t *testing.T) {
	dir := t.TempDir()
	main := filepath.Join(dir, "main.go")
	writeFile(t, main, "package main\n\nfunc main() {}\n")
	for _, goarch := range []string{"amd64", "arm64", "arm"} {
		for _, b := range []string{"warren-appliance", "warren"} {
			cmd := exec.Command("go", "build", "-o", filepath.Join(dir, "bin", "linux-"+goarch, b), main)
			cmd.Dir = dir
			cmd.Env = append(cmd.Environ(), "GO111MODULE=off", "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+goarch, "GOARM=7")
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("go build: %v\n%s", err, out)
			}
		}
	}
	out, err := buildPackages("1.0.0", filepath.Join(dir, "bin"), filepath.Join(dir, "dist"), nil)
	if err == nil {
		t.Fatalf("build.sh packaged GOARM=7 binaries:\n%s", out)
	}
	if !strings.Contains(string(out), "GOARM=6") {
		t.Errorf("build.sh failed without naming GOARM=6:\n%s", out)
	}
	if entries, _ := filepath.Glob(filepath.Join(dir, "dist", "*")); len(entries) != 0 {
		t.Errorf("build.sh wrote %v before refusing", entries)
	}
}

// Every architecture's binaries start, print the build's version and accept
// the example configs and the shipped /etc/warren/warren.toml; foreign ones
// run under qemu-user-static, called explicitly (no binfmt needed).
func TestPackagedBinariesRunVersionAndCheck(t *testing.T) {
	requireTool(t, "dpkg-deb", "dpkg")
	needPackages(t)
	examples, err := filepath.Glob(filepath.Join(repoRoot, "configs/examples/*.toml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, tg := range targets {
		t.Run(tg.debArch, func(t *testing.T) {
			if tg.qemu != "" {
				requireTool(t, tg.qemu, "qemu-user-static")
			}
			root := extractDeb(t, tg.debFile())
			exe := func(b string, args ...string) (string, error) {
				path := filepath.Join(root, "usr/bin", b)
				if tg.qemu == "" {
					return runErr(path, args...)
				}
				return runErr(tg.qemu, append([]string{path}, args...)...)
			}
			for _, b := range []string{"warren-appliance", "warren"} {
				out, err := exe(b, "--version")
				if err != nil {
					t.Fatalf("%s --version: %v\n%s", b, err, out)
				}
				for _, want := range []string{b + " " + testDescribe, "platform: linux/" + tg.goarch} {
					if !strings.Contains(out, want) {
						t.Errorf("%s --version lacks %q:\n%s", b, want, out)
					}
				}
			}
			// The worker example's token_file is /etc/warren/token: point it
			// at a file that exists here.
			dir := t.TempDir()
			token := filepath.Join(dir, "token")
			writeFile(t, token, "WRN-1-"+strings.Repeat("0f", 32)+"-abcdefghijklmnopqrstuvwxyz\n")
			var configs []string
			for _, ex := range examples {
				cfg := filepath.Join(dir, filepath.Base(ex))
				writeFile(t, cfg, strings.ReplaceAll(readFile(t, ex), "/etc/warren/token", token))
				configs = append(configs, cfg)
			}
			for _, cfg := range configs {
				if out, err := exe("warren-appliance", "--check", "--config", cfg); err != nil {
					t.Errorf("warren-appliance --check --config %s: %v\n%s", cfg, err, out)
				}
			}
			// The shipped config on a board nothing set up yet: --check
			// says which command to run, as start does.
			shipped := filepath.Join(dir, "shipped.toml")
			writeFile(t, shipped, strings.Replace(readFile(t, filepath.Join(root, "etc/warren/warren.toml")), "[node]\n", "[node]\nstate_dir = \""+filepath.Join(dir, "state")+"\"\n", 1))
			if out, err := exe("warren-appliance", "--check", "--config", shipped); err == nil || !strings.Contains(out, "warren cluster init") {
				t.Errorf("--check of the shipped config on a fresh board: want exit 2 naming `warren cluster init`, got %v\n%s", err, out)
			}
		})
	}
}

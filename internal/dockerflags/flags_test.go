package dockerflags

import (
	"strings"
	"testing"

	"github.com/warren-appliance/warren/cluster/clustermap"
)

func TestParseMemory(t *testing.T) {
	good := map[string]int64{
		"32M": 32 << 20, "32m": 32 << 20, "32MB": 32 << 20, "32MiB": 32 << 20, "1.5G": 3 << 29, "512k": 512 << 10,
		"1048576": 1 << 20, "2g": 2 << 30, "100b": 100,
	}
	for in, want := range good {
		got, err := ParseMemory(in)
		if err != nil || got != want {
			t.Errorf("ParseMemory(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "M", "-1M", "0", "32X", "1.5.5G", "32 MB extra", "abc"} {
		if n, err := ParseMemory(in); err == nil {
			t.Errorf("ParseMemory(%q) = %d, want an error", in, n)
		} else if !strings.Contains(err.Error(), "memory size") {
			t.Errorf("ParseMemory(%q) error %q does not say what it is about", in, err)
		}
	}
}

func TestParseCPUs(t *testing.T) {
	good := map[string]int64{"0.5": 5e8, "1": 1e9, "2": 2e9, "1.25": 1_250_000_000, ".5": 5e8, "0.000000001": 1}
	for in, want := range good {
		got, err := ParseCPUs(in)
		if err != nil || got != want {
			t.Errorf("ParseCPUs(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "0", "-1", "half", "1/2", "1e3", "0.0000000001", "99999999999999999999"} {
		if n, err := ParseCPUs(in); err == nil {
			t.Errorf("ParseCPUs(%q) = %d, want an error", in, n)
		}
	}
	if got := FormatCPUs(5e8); got != "0.5" {
		t.Errorf("FormatCPUs(5e8) = %q", got)
	}
}

func TestParseMount(t *testing.T) {
	good := map[string]clustermap.Mount{
		"type=volume,source=data,target=/var/lib/db":          {Type: "volume", Source: "data", Target: "/var/lib/db"},
		"source=data,target=/data":                            {Type: "volume", Source: "data", Target: "/data"},
		"type=volume,src=my_vol.1,dst=/data,readonly":         {Type: "volume", Source: "my_vol.1", Target: "/data", ReadOnly: true},
		"type=bind,source=/etc/app,target=/etc/app,ro=true":   {Type: "bind", Source: "/etc/app", Target: "/etc/app", ReadOnly: true},
		"type=bind,source=/srv,destination=/srv,readonly=0":   {Type: "bind", Source: "/srv", Target: "/srv"},
		"type=tmpfs,target=/tmp":                              {Type: "tmpfs", Target: "/tmp"},
		"type=tmpfs,target=/run/cache,tmpfs-size=16M":         {Type: "tmpfs", Target: "/run/cache", TmpfsSize: 16 << 20},
		`type=bind,"source=/mnt/a,b",target=/x`:               {Type: "bind", Source: "/mnt/a,b", Target: "/x"},
		"Type=tmpfs,Target=/scratch,tmpfs-size=1048576":       {Type: "tmpfs", Target: "/scratch", TmpfsSize: 1 << 20},
		"type=volume,source=a,target=/data,readonly=false,ro": {Type: "volume", Source: "a", Target: "/data", ReadOnly: true},
	}
	for in, want := range good {
		got, err := ParseMount(in)
		if err != nil || got != want {
			t.Errorf("ParseMount(%q) = %+v, %v; want %+v", in, got, err, want)
		}
	}
	bad := map[string]string{
		"type=volume,source=data":                         "target is missing",
		"type=volume,target=/data":                        "volume name",
		"type=volume,source=../x,target=/data":            "volume name",
		"type=volume,source=data,target=data":             "clean absolute path",
		"type=volume,source=data,target=/data/../etc":     "clean absolute path",
		"type=volume,source=data,target=/":                "hide the image",
		"type=bind,source=relative,target=/x":             "absolute host path",
		"type=bind,target=/x":                             "absolute host path",
		"type=tmpfs,source=x,target=/tmp":                 "takes no source",
		"type=volume,source=a,target=/d,tmpfs-size=1M":    "only for type=tmpfs",
		"type=tmpfs,target=/tmp,tmpfs-size=lots":          "tmpfs-size",
		"type=nfs,source=a,target=/d":                     `type "nfs"`,
		"type=volume,source=a,target=/d,volume-driver=x":  `unknown field "volume-driver"`,
		"type=volume,source=a,target=/d,readonly=perhaps": "want true or false",
		"type=volume,source=a,target":                     `not KEY=VALUE`,
	}
	for in, want := range bad {
		_, err := ParseMount(in)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseMount(%q) error = %v, want one containing %q", in, err, want)
		}
	}
	m := clustermap.Mount{Type: "tmpfs", Target: "/tmp", TmpfsSize: 1024, ReadOnly: true}
	if back, err := ParseMount(FormatMount(m)); err != nil || back != m {
		t.Errorf("FormatMount round trip: %q -> %+v, %v", FormatMount(m), back, err)
	}
}

func TestFormatBytes(t *testing.T) {
	for n, want := range map[int64]string{512: "512 B", 32 << 20: "32 MiB", 3 << 29: "1.5 GiB", 1536: "1.5 KiB"} {
		if got := FormatBytes(n); got != want {
			t.Errorf("FormatBytes(%d) = %q, want %q", n, got, want)
		}
	}
}

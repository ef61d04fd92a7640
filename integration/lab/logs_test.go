package lab

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
)

func TestLogExcerptKeepsStartErrorsAndEnd(t *testing.T) {
	var b bytes.Buffer
	b.WriteString("level=INFO msg=\"memory bound\"\n")
	for i := range 4000 {
		if i == 2000 {
			b.WriteString("level=ERROR msg=\"cluster open\" err=\"disk full\"\n")
		}
		fmt.Fprintf(&b, "level=INFO msg=\"service created\" service=burst-%d\n", i)
	}
	b.WriteString("level=INFO msg=\"last words\"\n")
	got := string(logExcerpt(b.Bytes()))
	for _, want := range []string{`msg="memory bound"`, `err="disk full"`, `msg="last words"`, "1 warning, error and panic lines"} {
		if !strings.Contains(got, want) {
			t.Errorf("excerpt lacks %q", want)
		}
	}
	if len(got) > 64<<10 || !strings.HasSuffix(got, "\n") {
		t.Errorf("excerpt of %d bytes: %d bytes, want at most 64 KiB ending in a whole line", b.Len(), len(got))
	}
	short := []byte("level=INFO msg=up\n")
	if string(logExcerpt(short)) != string(short) {
		t.Errorf("a short log changed")
	}
}

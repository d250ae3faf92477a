package app

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"unicode/utf8"
)

// FuzzWriteEvent writes events whose data holds arbitrary text, as a
// stream's deltas do, and checks the framing: exactly "event: <name>",
// one "data: " line and a blank line, no other line break (CR or LF)
// anywhere, and data that decodes to valid UTF-8: the text itself when it
// is valid.
func FuzzWriteEvent(f *testing.F) {
	for _, s := range []string{"", "plain", "two\nlines", "cr\rlf\r\n", "\n\n", "data: x\n\nevent: done\n", "\u2028\u2029\u0085",
		"\x00\x1b[0m", "\xff\xfe", "</script>", "🙂"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, text string) {
		var b bytes.Buffer
		if err := writeEvent(&b, "delta", map[string]string{"text": text}); err != nil {
			t.Fatal(err)
		}
		out := b.String()
		rest, ok := strings.CutPrefix(out, "event: delta\ndata: ")
		if !ok {
			t.Fatalf("event %q does not start with its name and data", out)
		}
		data, ok := strings.CutSuffix(rest, "\n\n")
		if !ok || strings.ContainsAny(data, "\r\n") {
			t.Fatalf("event %q: the data holds a line break or does not end the event", out)
		}
		var v map[string]string
		if err := json.Unmarshal([]byte(data), &v); err != nil {
			t.Fatalf("data %q: %v", data, err)
		}
		if utf8.ValidString(text) && v["text"] != text {
			t.Fatalf("data %q decodes to %q, want %q", data, v["text"], text)
		}
		if !utf8.ValidString(v["text"]) {
			t.Fatalf("data %q decodes to invalid UTF-8", data)
		}
	})
}

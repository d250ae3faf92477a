package threads

import (
	"testing"
	"time"
)

// TestMessageEncodingWithIDs checks that a message's ID, whatever its
// bytes, and its content come back from the list entry as they went in,
// and that truncated entries are refused.
func TestMessageEncodingWithIDs(t *testing.T) {
	at := time.UnixMilli(1_700_000_000_123).UTC()
	for _, m := range []Message{
		{Role: RoleUser, Content: "plain", Time: at},
		{Role: RoleAssistant, Content: "a:b|c", Time: at, ID: "turn-1/a"},
		{Role: RoleSystem, Content: "", Time: at, ID: "id:with|bars:12|"},
		{Role: RoleUser, Content: "|3|abc:", Time: at, ID: "é"},
	} {
		enc := encodeMessage(m, 0)
		got, err := decodeMessage(enc)
		if err != nil || got != m {
			t.Errorf("decode(encode(%+v)) = %+v, %v", m, got, err)
		}
	}
	for _, bad := range []string{"u1|", "u1|x|id:c", "u1|5|ab:c", "u1|2|abc", "u1|0|:c", "x1:c"} {
		if m, err := decodeMessage(bad); err == nil {
			t.Errorf("decode(%q) = %+v; want an error", bad, m)
		}
	}
}

package chat

import (
	"strings"
	"testing"
)

func TestNormalizeQuestion(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"What is this video about?", "what is this video about"},
		{"  what is THIS video about ?? ", "what is this video about"},
		{"What\tis\nthis  video about!?!", "what is this video about"},
		{"Summarise this…", "summarise this"},
		{"Was ist das？", "was ist das"},
		{"STRASSE oder Straße", "strasse oder strasse"},
		{"re\u0301sume\u0301", "r\u00e9sum\u00e9"},
		{"What is C#?", "what is c#"},
		{"C++ vs C", "c++ vs c"},
		{"what's new, really?", "what's new, really"},
		{"???", ""},
	} {
		if got := normalizeQuestion(c.in); got != c.want {
			t.Errorf("normalizeQuestion(%q) = %q, want %q", c.in, got, c.want)
		}
	}
	if normalizeQuestion("What is C#?") == normalizeQuestion("What is C?") {
		t.Error("C# and C are one question")
	}
}

func TestAnswerPieces(t *testing.T) {
	for _, s := range []string{"short", strings.Repeat("word ", 200), strings.Repeat("é", 300), strings.Repeat("x", 1000)} {
		var b strings.Builder
		n := 0
		for rest := s; rest != ""; n++ {
			p := answerPiece(rest)
			if p == "" || len(p) > answerDeltaBytes {
				t.Fatalf("piece of %d bytes", len(p))
			}
			b.WriteString(p)
			rest = rest[len(p):]
		}
		if b.String() != s {
			t.Fatalf("pieces do not make up the reply")
		}
		if want := (len(s) + answerDeltaBytes - 1) / answerDeltaBytes; n < want || n > 2*want {
			t.Errorf("%d bytes in %d pieces", len(s), n)
		}
	}
}

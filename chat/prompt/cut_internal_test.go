package prompt

import (
	"math/rand/v2"
	"strings"
	"testing"
	"unicode/utf8"

	tiktoken "github.com/pkoukk/tiktoken-go"
)

// palette holds runes of every kind the pre-tokenizers tell apart.
var palette = []string{
	"a", "e", "s", "t", "x", "Q", "R", "é", "ü", "ñ", "ж", "Ω", "ا", "ש", "न", "ि", "ก", "ั", "光", "合", "は", "한",
	"0", "7", "9", "٣", "₂", "½",
	".", ",", ";", ":", "!", "?", "'", "\"", "(", ")", "[", "]", "-", "/", "…", "。", "，", "«", "→", "$", "#",
	" ", " ", " ", "  ", "\t", "\n", "\r\n", "\n\n", "\u00a0", "\u3000",
	"🎉", "\u200d", "'s", "'ll", "the", "The", "HTTP", "ATP", "rubisco",
}

func randomText(r *rand.Rand, n int) string {
	var b strings.Builder
	for range n {
		b.WriteString(palette[r.IntN(len(palette))])
	}
	return b.String()
}

// encoders returns tiktoken-go's own encoders, to check counts against.
func encoders(t *testing.T) map[string]*tiktoken.Tiktoken {
	t.Helper()
	m := map[string]*tiktoken.Tiktoken{}
	for _, enc := range []string{O200kBase, Cl100kBase, P50kBase, R50kBase} {
		m[enc] = oracleOf(t, enc)
	}
	return m
}

// A clean cut leaves every encoding's count, and Estimate's, unchanged.
func TestCleanCutsKeepCounts(t *testing.T) {
	t.Parallel()
	encs := encoders(t)
	r := rand.New(rand.NewPCG(1, 2))
	strs, cuts := 300, 0
	if testing.Short() {
		strs = 60
	}
	for range strs {
		s := randomText(r, 4+r.IntN(24))
		whole := map[string]int{}
		for name, tk := range encs {
			whole[name] = len(tk.EncodeOrdinary(s))
		}
		for i := 1; i < len(s); i++ {
			if !utf8.RuneStart(s[i]) {
				continue
			}
			prev, _ := utf8.DecodeLastRuneInString(s[:i])
			next, _ := utf8.DecodeRuneInString(s[i:])
			if !cleanCut(prev, next) {
				continue
			}
			cuts++
			for name, tk := range encs {
				if a, b := len(tk.EncodeOrdinary(s[:i])), len(tk.EncodeOrdinary(s[i:])); a+b != whole[name] {
					t.Errorf("%s: %q | %q: %d + %d tokens, whole %d", name, s[:i], s[i:], a, b, whole[name])
				}
			}
			if a, b, w := (Estimate{}).Count(s[:i]), (Estimate{}).Count(s[i:]), (Estimate{}).Count(s); a+b != w {
				t.Errorf("Estimate: %q | %q: %d + %d, whole %d", s[:i], s[i:], a, b, w)
			}
		}
	}
	if cuts < strs {
		t.Fatalf("only %d clean cuts in %d texts", cuts, strs)
	}
}

// The rendering of a timed transcript joins lines as "…text\n" + "[m:ss] …":
// that join keeps counts too.
func TestLineJoinsKeepCounts(t *testing.T) {
	t.Parallel()
	encs := encoders(t)
	r := rand.New(rand.NewPCG(3, 4))
	n := 200
	if testing.Short() {
		n = 40
	}
	for range n {
		a := strings.Join(strings.Fields(randomText(r, 2+r.IntN(12))), " ")
		if a == "" {
			continue
		}
		a += "\n"
		b := "[12:30] " + strings.Join(strings.Fields(randomText(r, 1+r.IntN(12))), " ")
		for name, tk := range encs {
			if x, y, w := len(tk.EncodeOrdinary(a)), len(tk.EncodeOrdinary(b)), len(tk.EncodeOrdinary(a+b)); x+y != w {
				t.Errorf("%s: %q | %q: %d + %d tokens, whole %d", name, a, b, x, y, w)
			}
		}
		if x, y, w := (Estimate{}).Count(a), (Estimate{}).Count(b), (Estimate{}).Count(a+b); x+y != w {
			t.Errorf("Estimate: %q | %q: %d + %d, whole %d", a, b, x, y, w)
		}
	}
}

func TestNextCut(t *testing.T) {
	for _, c := range []struct {
		s     string
		limit int
		n     int
		clean bool
	}{
		{"short", 10, 5, true},
		{"hello world again", 8, 5, true},     // before the space
		{"hello, world", 5, 5, true},          // letter then comma
		{"aaaaaaaaaaaa", 5, 5, false},         // no clean place: a rune boundary
		{"光光光光光", 7, 6, false},                // a rune boundary, not inside a rune
		{"光光光。光", 11, 9, true},                // letter then 。
		{"\U0001F389\U0001F389", 2, 4, false}, // at least one rune
		{"ab  cd", 4, 2, true},                // after the letter, not inside the spaces
		{"don't stop", 4, 4, false},           // never next to an apostrophe
	} {
		n, clean := nextCut(c.s, c.limit)
		if n != c.n || clean != c.clean {
			t.Errorf("nextCut(%q, %d) = %d, %v; want %d, %v", c.s, c.limit, n, clean, c.n, c.clean)
		}
	}
}

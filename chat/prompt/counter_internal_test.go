package prompt

import (
	"go/build"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"unicode"
	"unicode/utf8"

	"github.com/dlclark/regexp2"
	tiktoken "github.com/pkoukk/tiktoken-go"
)

// The counters are checked against tiktoken-go, token ID by token ID.

var counterEncodings = []string{O200kBase, Cl100kBase}

// pair returns the counter of enc and tiktoken-go's encoder of it.
func pair(t testing.TB, enc string) (*counter, *tiktoken.Tiktoken) {
	t.Helper()
	tok, err := ForEncoding(enc)
	if err != nil {
		t.Fatal(err)
	}
	c, ok := tok.(*counter)
	if !ok {
		t.Fatalf("ForEncoding(%s) is a %T", enc, tok)
	}
	return c, oracleOf(t, enc)
}

var (
	oracleMu  sync.Mutex
	oracleMap = map[string]*tiktoken.Tiktoken{}
)

// oracleOf returns tiktoken-go's encoder of enc, loaded once from the
// vocabularies embedded by tiktoken-go-loader.
func oracleOf(t testing.TB, enc string) *tiktoken.Tiktoken {
	t.Helper()
	oracleMu.Lock()
	defer oracleMu.Unlock()
	if tk := oracleMap[enc]; tk != nil {
		return tk
	}
	installLoader()
	tk, err := tiktoken.GetEncoding(enc)
	if err != nil {
		t.Fatal(err)
	}
	oracleMap[enc] = tk
	return tk
}

// pieces returns the pieces c's pre-tokenizer cuts text into.
func (c *counter) pieces(text string) []string {
	if !utf8.ValidString(text) {
		text = string([]rune(text))
	}
	var ps []string
	for i := 0; i < len(text); {
		e := c.piece(text, i)
		ps = append(ps, text[i:e])
		i = e
	}
	return ps
}

// same reports whether c encodes text into the token IDs tiktoken-go
// does, and counts them, reporting an error when not.
func same(t testing.TB, c *counter, tk *tiktoken.Tiktoken, text string) bool {
	t.Helper()
	want := tk.EncodeOrdinary(text)
	var got []int
	n := c.encode(text, &got)
	if n == len(want) && slices.Equal(got, want) && c.Count(text) == n {
		return true
	}
	show := text
	if len(show) > 300 {
		show = show[:300] + "…"
	}
	var wantToks []string
	for _, id := range want {
		wantToks = append(wantToks, tk.Decode([]int{id}))
	}
	t.Errorf("%s: %q: %d tokens, tiktoken-go %d\n got  %v\n want %v\n pieces %q\n tiktoken-go's tokens %q",
		c.name, show, n, len(want), got, want, c.pieces(text), wantToks)
	return false
}

// tricky holds texts on the edges of the patterns' classes.
var tricky = []string{
	"", "a", " ", "  ", "   ", "\n", "\r\n", "\r", "\n\n\n", " \n ", "\t", "\t\t", "\t\n", " \r", "\r \n",
	"hello  ", "hello\t\n", "end   \n  start", "a \n b", "a  \n\n  b", "a\t\tb", "a \t b", "  \r\n\r\n  x",
	"\n \n", "x  ", "x   \n", " ?", "  ?", " 1", "  1", " \u0301", "  \u0301", "\t\u0301", "\n\u0301",
	" é", "  é", "line one  \r\nline two\t\r\n\r\n\tindented  \n", "trailing spaces   ",
	// Contractions, in every case, after letters or not, and near misses.
	"don't", "DON'T", "Don'T", "I'm", "I'M", "we'll", "WE'LL", "We'Ll", "we'lL", "you're", "YOU'RE",
	"you'Re", "they've", "THEY'VE", "he'd", "HE'D", "it's", "IT'S", "'s", "'S", "'t", "'T", "'re",
	"'RE", "'rE", "'ve", "'VE", "'m", "'M", "'ll", "'LL", "'lL", "'d", "'D", "'", "''", "'''s",
	"x's'", "ma'am", "rock'n'roll", "'tis", "'Twas", "it’s", "IT’S", "don’t", "O'Neil", "l'homme",
	"dell'arte", "'ll've", "'sa", "'Sam", "'re'", "'r", "'l", "'v", "'e", "a'", "A'", "ABC'S",
	"ABC's", "ABCdef's", "éte's", "Éte'S", "日本's", "1's", "1'S", " 's", " 'S", "\n's", ".'s",
	"'ſ", "'ſt", "caſ'ſ", "Kelvin'K", "'\u212a", "'İ", "'ı", "x'ſa", "aſ's",
	// Numbers.
	"1", "12", "123", "1234", "1234567", "3.14159", "1,000,000", "-42", "+1 (555) 010-9999",
	"0x1F", "٣٤٥٦", "१२३४", "²³", "½¼", "Ⅻ", "①②③④", "𝟙𝟚𝟛𝟜", "12abc", "abc123", "v1.2.3",
	"x²", "ab½cd", "2024-03-01T12:00:00Z", "$1,234.56", "1e-10", "١٢٣abc",
	// URLs, paths, slashes.
	"https://example.com/path/to/page?query=1&x=y#frag", "http://a.b/c//d///",
	"file:///C:/Users/x", "user@example.com", "//comment", "a/b/c", "/\n/", ".../\n//\r\n/",
	"?/\n/", ".\n/\n", "!\r\n/", "x/\ny", "a//b", "(/)\n\n//", " /", " //\n",
	// Emoji.
	"🎉", "👍🏽", "👨‍👩‍👧‍👦", "🇫🇷", "❤️", "☺︎", "🏳️‍🌈", "😀😃😄", "a😀b", " 😀", "😀\n", "x\ufe0f", "🎉🎉 party",
	// Scripts.
	"光合作用是植物利用光能的过程。", "日本語のテキスト、カタカナとひらがな。", "ｶﾀｶﾅ", "한국어 텍스트입니다",
	"中文，标点！", "ー", "々", "〇", "ーーー", "ラーメン", "مرحبا بالعالم", "السَّلَامُ عَلَيْكُمْ", "٣ كتب",
	"می\u200cخواهم", "नमस्ते दुनिया", "हिन्दी", "क्षत्रिय", "שָׁלוֹם", "ภาษาไทยไม่มีช่องว่าง", "Привет, МИР!",
	"Σίσυφος", "ΣΊΣΥΦΟΣ", "ԱՐԱՐԱՏ", "ქართული", "አማርኛ", "தமிழ்", "ᏣᎳᎩ", "ꦗꦮ",
	// Marks.
	"e\u0301", "E\u0301", "\u0301", "\u0301\u0301a", "a\u0301\u0302b", "\u0301A", "\u0301AB",
	"A\u0301B", "AB\u0301", "ab\u0301CD", "\u20dd", "a\u20dd", "\u0903", "क\u0903", ".\u0301",
	"!\u0301a", "1\u0301", "\u0301'S", "A\u0301's", "\u0301\n", " \u0301\u0301 ",
	// Letter case classes.
	"HTTPServer", "XMLHttpRequest", "iPhone", "McDonald", "ǅemal", "ǅ", "ǈ", "ǲ", "ᾈ", "ʰello",
	"ˆ", "ABCʰ", "ABʰCD", "aʰB", "ºª", "µ", "ß", "ẞ", "İstanbul", "𝐀𝐁𝐂", "𝐚𝐛𝐜", "𐐀𐐨", "AbCdEf",
	"aBcDeF", "ABCDEFghijKLM", "ʰʰA", "Aʰa", "ǅǅ", "ǅa'S", "ALLCAPS'LL", "x ABC", " ABC", "\tDEF",
	// White space of every kind.
	"\u00a0", "a\u00a0b", "a\u00a0\u00a0b", "\u2003\u2003x", "\u3000", "日本\u3000語", "\u205f",
	"\u1680", "\u0085", "a\u0085b", "\u2028\u2029", "\v\f", "a\v\fb", " \u00a0 \n\u00a0x", "\u200b",
	"\ufeff", "\u180e", "\u00a0\n", "\u3000\u3000x", "x\u2009y", "\u202f", " \u00a0", "\u00a0 ",
	"  \u00a0x", "\u00a0\u00a0\u00a0", "x \u00a0", "\u0085\u0085a",
	// Invalid UTF-8 and U+FFFD.
	"\xff", "\xfe\xff", "a\xffb", "\xc3", "\xc3(", "\xe2\x82", "\xed\xa0\x80", "\xf4\x90\x80\x80",
	"hello \xff world", "\xffhello", "\x80\x80\x80", "é\xe9", "\uFFFD", "\uFFFDa", " \xff", "\xff\n",
	"caf\xe9 au lait", "\xff'S", "1\xff2",
	// Special-token markers, controls, other categories.
	"<|endoftext|>", "<|fim_prefix|>x<|fim_suffix|>", "<|endofprompt|>", "\x00", "\x00\x01\x1f",
	"\u007f", "\u00ad", "soft\u00adhyphen", "\ue000", "\u0378", "\uffff", "\U0010ffff", "\U000e0001",
	"_", "__init__", "foo_bar", "a‿b", "‿",
	// Code.
	"func main() {\n\tfmt.Println(\"hi\")\n}\n", "if (x == y) { return; }", "a+=b;", "x->y",
	"#include <stdio.h>", "    indented", "\t\tindented\n", "    \n    \n", "CONSTANT_VALUE",
	"camelCaseName", "kebab-case", "a::b", "$$$", "!!!???", "...", "—", "–", "“quoted”",
	"«quoted»", "(paren)", "[bracket]", "{\"json\": [1, 2, 3]}", "=====", "-----\n", "***", "~~~",
	"```go\n", "/* c */", "// comment\n",
}

// newCodePoints are letters, marks and numbers assigned after Unicode
// 15.0.0, which Go's unicode package (and so tiktoken-go, and this
// package) does not know.
var newCodePoints = []string{
	"\U0002EBF0\U0002EBF1", // CJK Unified Ideographs Extension I (15.1)
	"\u1C89\u1C8A",         // Cyrillic TJE (16.0, Lu and Ll)
	"\U00016D40\U00016D41", // Kirat Rai (16.0)
	"\U0001E5D0\U0001E5D1", // Ol Onal (16.0)
	"\u0897",               // Arabic pepet (16.0, Mn)
	"\U0001FAE9",           // an emoji (16.0, So)
	"\U0001CCF0\U0001CCF9", // outlined digits (16.0, Nd)
}

func TestCountTrickyTexts(t *testing.T) {
	t.Parallel()
	r := rand.New(rand.NewPCG(7, 7))
	texts := slices.Clone(tricky)
	for _, s := range newCodePoints {
		texts = append(texts, s, "a"+s+"b", "A"+s, s+"'s", " "+s)
	}
	// Pairs and triples, so that each text meets others on both sides.
	n := len(texts)
	for range 2 * n {
		texts = append(texts, texts[r.IntN(n)]+texts[r.IntN(n)], texts[r.IntN(n)]+texts[r.IntN(n)]+texts[r.IntN(n)])
	}
	compareAll(t, texts)
}

// compareAll checks every text with both counters, in parallel
// subtests.
func compareAll(t *testing.T, texts []string) {
	t.Helper()
	bytes := 0
	for _, s := range texts {
		bytes += len(s)
	}
	t.Logf("%d texts, %d bytes, each compared with both encodings", len(texts), bytes)
	for _, enc := range counterEncodings {
		t.Run(enc, func(t *testing.T) {
			t.Parallel()
			c, tk := pair(t, enc)
			fails := 0
			for _, s := range texts {
				if !same(t, c, tk, s) {
					if fails++; fails == 10 {
						t.Fatalf("%s: too many differences", enc)
					}
				}
			}
		})
	}
}

func TestCountSamples(t *testing.T) {
	t.Parallel()
	files, err := filepath.Glob("testdata/sample/*.txt")
	if err != nil || len(files) == 0 {
		t.Fatalf("no samples: %v", err)
	}
	var texts []string
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		s := string(b)
		texts = append(texts, s, strings.ReplaceAll(s, "\n", "\r\n"), strings.ReplaceAll(s, " ", "  "),
			strings.ReplaceAll(s, "\n", " \n\t"), strings.ToUpper(s), strings.ReplaceAll(s, "'", "’"))
		texts = append(texts, strings.Split(s, "\n")...)
	}
	compareAll(t, texts)
}

// goCorpus returns texts from Go's source tree: paragraphs of doc
// comments, source files (code, and tests full of odd Unicode and
// invalid UTF-8 in literals) and text files. With -short, a tenth of it.
func goCorpus(t *testing.T) []string {
	root := filepath.Join(build.Default.GOROOT, "src")
	paragraphs, files := 2000, 250
	if testing.Short() {
		paragraphs, files = 200, 25
	}
	var texts []string
	nDocs, nFiles := 0, 0
	odd := map[string]bool{ // packages whose tests hold much non-ASCII text
		"strings": true, "bytes": true, "unicode": true, "utf8": true, "utf16": true, "html": true,
		"regexp": true, "strconv": true, "fmt": true, "json": true, "scanner": true, "norm": true,
		"template": true, "xml": true, "csv": true, "mime": true, "idna": true, "printer": true,
	}
	_ = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(path, ".go") {
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return nil
		}
		src := string(b)
		if nFiles < files && (odd[filepath.Base(filepath.Dir(path))] || nFiles%8 == 0) {
			texts = append(texts, src[:min(len(src), 5000)])
			nFiles++
		} else if nFiles < files {
			nFiles++
		}
		for block := range strings.SplitSeq(src, "\n\n") {
			if nDocs >= paragraphs {
				break
			}
			var p strings.Builder
			for l := range strings.SplitSeq(block, "\n") {
				l = strings.TrimSpace(l)
				if !strings.HasPrefix(l, "// ") {
					p.Reset()
					break
				}
				p.WriteString(l[3:])
				p.WriteByte('\n')
			}
			if p.Len() >= 40 {
				texts = append(texts, p.String())
				nDocs++
			}
		}
		if nDocs >= paragraphs && nFiles >= files {
			return fs.SkipAll
		}
		return nil
	})
	for _, f := range []string{"testdata/Isaac.Newton-Opticks.txt", "compress/testdata/e.txt", "regexp/testdata/re2-search.txt"} {
		b, err := os.ReadFile(filepath.Join(root, f))
		if err != nil {
			continue
		}
		limit := 40000
		if testing.Short() {
			limit = 4000
		}
		b = b[:min(len(b), limit)]
		for len(b) > 0 {
			n := min(len(b), 3000)
			texts = append(texts, string(b[:n]))
			b = b[n:]
		}
	}
	if len(texts) < 100 {
		t.Skipf("only %d texts under %s", len(texts), root)
	}
	return texts
}

func TestCountGoCorpus(t *testing.T) {
	t.Parallel()
	compareAll(t, goCorpus(t))
}

// patterns are the pre-tokenizers' regular expressions, as tiktoken-go
// v0.1.8 compiles them (encoding.go).
var patterns = map[string]string{
	O200kBase: strings.Join([]string{
		`[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?`,
		`[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?`,
		`\p{N}{1,3}`,
		` ?[^\s\p{L}\p{N}]+[\r\n/]*`,
		`\s*[\r\n]+`,
		`\s+(?!\S)`,
		`\s+`,
	}, "|"),
	Cl100kBase: `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`,
}

// compiled returns the compiled pattern of enc.
var compiled = func() func(enc string) *regexp2.Regexp {
	var once sync.Once
	var m map[string]*regexp2.Regexp
	return func(enc string) *regexp2.Regexp {
		once.Do(func() {
			m = map[string]*regexp2.Regexp{}
			for enc, p := range patterns {
				m[enc] = regexp2.MustCompile(p, regexp2.None)
			}
		})
		return m[enc]
	}
}()

// regexpPieces returns the pieces re cuts text into, as tiktoken-go
// finds them.
func regexpPieces(t testing.TB, re *regexp2.Regexp, text string) []string {
	runes := []rune(text)
	var ps []string
	m, err := re.FindRunesMatch(runes)
	for ; m != nil && err == nil; m, err = re.FindNextMatch(m) {
		ps = append(ps, string(runes[m.Index:m.Index+m.Length]))
	}
	if err != nil {
		t.Fatal(err)
	}
	return ps
}

// The pre-tokenizers cut texts where regexp2 running the patterns does,
// piece by piece.
func TestPiecesMatchRegexp2(t *testing.T) {
	t.Parallel()
	texts := append(slices.Clone(tricky), randomTexts(11, 4000)...)
	for _, enc := range counterEncodings {
		t.Run(enc, func(t *testing.T) {
			t.Parallel()
			c, _ := pair(t, enc)
			re := compiled(enc)
			fails := 0
			for _, s := range texts {
				if got, want := c.pieces(s), regexpPieces(t, re, s); !slices.Equal(got, want) {
					t.Errorf("%s: %q: pieces\n %q\nregexp2\n %q", enc, s, got, want)
					if fails++; fails == 10 {
						t.FailNow()
					}
				}
			}
		})
	}
}

// A generator of random texts, drawing runes from every general category
// of Unicode, from the runes the patterns single out and from invalid
// UTF-8, in runs of the same kind and mixed.

// kinds holds the kinds of atom the generator draws from, each a function
// returning one.
var kinds = func() []func(r *rand.Rand) string {
	lit := func(ss ...string) func(r *rand.Rand) string {
		return func(r *rand.Rand) string { return ss[r.IntN(len(ss))] }
	}
	var ks []func(r *rand.Rand) string
	// Every general category, with ASCII letters and digits weighed up.
	for _, name := range []string{
		"Lu", "Ll", "Lt", "Lm", "Lo", "Mn", "Mc", "Me", "Nd", "Nl", "No",
		"Pc", "Pd", "Ps", "Pe", "Pi", "Pf", "Po", "Sm", "Sc", "Sk", "So",
		"Zs", "Zl", "Zp", "Cc", "Cf", "Co",
	} {
		tab := unicode.Categories[name]
		ks = append(ks, func(r *rand.Rand) string { return string(randomRune(r, tab)) })
	}
	ks = append(ks,
		lit("a", "b", "e", "s", "t", "r", "v", "m", "l", "d", "x", "the", "and", "ing", "tion"),
		lit("A", "S", "T", "R", "V", "M", "L", "D", "X", "THE", "And", "HTTP"),
		lit("0", "1", "7", "42", "123", "2024", "3.14"),
		lit("'", "'", "'s", "'S", "'t", "'T", "'re", "'RE", "'Re", "'ve", "'VE", "'m", "'M", "'ll", "'LL", "'lL", "'d", "'D", "’", "'ſ", "'\u212a"),
		lit(" ", " ", " ", "  ", "   ", "\t", "\n", "\r", "\r\n", "\n\n", " \n", "\u00a0", "\u3000", "\u2009", "\u0085", "\v", "\f"),
		lit("/", "//", ".", ",", "!", "?", "-", "(", ")", "\"", "{", "}", "=", "...", "—", "。", "、"),
		lit("\xff", "\xc3", "\xe2\x82", "\xed\xa0\x80", "\x80", "\uFFFD"),
		lit("\u0301", "\u0308", "\u200d", "\u200c", "\ufe0f", "\U0001F3FD"),
		lit("😀", "🎉", "👍", "🇫", "🇷", "❤"),
		lit("光", "合", "作", "用", "は", "カ", "ー", "한", "ก", "ั", "न", "ि", "्", "ا", "ل", "َ", "ש", "ж", "Ж", "é", "É", "ß", "ǅ", "ʰ", "º"),
		func(r *rand.Rand) string { return newCodePoints[r.IntN(len(newCodePoints))] },
		func(r *rand.Rand) string { return string(rune(r.IntN(0x110000))) }, // anything, unassigned mostly
	)
	return ks
}()

// randomRune returns a rune of tab, every one equally likely.
func randomRune(r *rand.Rand, tab *unicode.RangeTable) rune {
	total := 0
	for _, x := range tab.R16 {
		total += (int(x.Hi)-int(x.Lo))/int(x.Stride) + 1
	}
	for _, x := range tab.R32 {
		total += (int(x.Hi)-int(x.Lo))/int(x.Stride) + 1
	}
	k := r.IntN(total)
	for _, x := range tab.R16 {
		n := (int(x.Hi)-int(x.Lo))/int(x.Stride) + 1
		if k < n {
			return rune(int(x.Lo) + k*int(x.Stride))
		}
		k -= n
	}
	for _, x := range tab.R32 {
		n := (int(x.Hi)-int(x.Lo))/int(x.Stride) + 1
		if k < n {
			return rune(int(x.Lo) + k*int(x.Stride))
		}
		k -= n
	}
	panic("unreachable")
}

// randomTexts returns n texts, deterministic for a seed: each a few runs
// of atoms, a run repeating atoms of one kind (or one atom) so that the
// pieces of the patterns form and end in every way.
func randomTexts(seed uint64, n int) []string {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	texts := make([]string, n)
	var b strings.Builder
	for i := range texts {
		b.Reset()
		for range 1 + r.IntN(12) {
			kind := kinds[r.IntN(len(kinds))]
			atom := kind(r)
			for range 1 + r.IntN(4) {
				if r.IntN(3) == 0 {
					atom = kind(r)
				}
				b.WriteString(atom)
			}
		}
		texts[i] = b.String()
	}
	return texts
}

func TestCountRandomTexts(t *testing.T) {
	t.Parallel()
	n := 6000
	if testing.Short() {
		n = 1500
	}
	compareAll(t, randomTexts(1, n))
}

// Pieces longer than smallPiece are merged with a heap: that merge and
// the one in place agree on every piece they both can merge, and with
// tiktoken-go on long ones.
func TestMergeLargeAgreesWithMergeSmall(t *testing.T) {
	t.Parallel()
	c, _ := pair(t, O200kBase)
	r := rand.New(rand.NewPCG(3, 3))
	alphabets := []string{"abcdefghijklmnopqrstuvwxyz", "aaaaab", " ", "光合作用植物", "ภาษาไทย", "=-=*", "\xff\x00\x80é"}
	for range 3000 {
		a := []rune(alphabets[r.IntN(len(alphabets))])
		var b strings.Builder
		for range 2 + r.IntN(smallPiece-1) {
			b.WriteRune(a[r.IntN(len(a))])
		}
		p := b.String()
		if len(p) > smallPiece {
			p = p[:smallPiece]
		}
		if len(p) < 2 {
			continue
		}
		var small, large []int
		ns := c.ranks.mergeSmall(p, &small)
		nl := c.ranks.mergeLarge(p, &large)
		if ns != nl || !slices.Equal(small, large) || ns != len(small) {
			t.Fatalf("%q: mergeSmall %d %v, mergeLarge %d %v", p, ns, small, nl, large)
		}
	}
}

func TestCountLongPieces(t *testing.T) {
	t.Parallel()
	texts := []string{
		strings.Repeat("a", 5000),
		strings.Repeat("ab", 700),
		strings.Repeat(" ", 3000) + "x",
		strings.Repeat("\n", 2000),
		strings.Repeat("=", 2500) + "\n",
		strings.Repeat("光合作用是植物利用光能的过程", 60),
		strings.Repeat("ภาษาไทยไม่มีช่องว่าง", 40),
		strings.Repeat("Supercalifragilistic", 100),
		strings.Repeat("ABCDEFGHIJ", 200) + "'S",
		strings.Repeat("\u0301", 700),
		strings.Repeat("😀", 500),
	}
	r := rand.New(rand.NewPCG(5, 5))
	for _, size := range []int{65, 100, 200, 500, 1000, 3000} {
		var b strings.Builder
		for b.Len() < size {
			b.WriteByte("etaoinshrdlu"[r.IntN(12)])
		}
		texts = append(texts, b.String())
	}
	compareAll(t, texts)
}

// A piece over maxPiece is merged in parts: the count stays within a
// token or two per part of the piece's exact merge (mergeLarge's, which
// agrees with tiktoken-go on long pieces).
func TestCountOutsizedPiece(t *testing.T) {
	t.Parallel()
	c, _ := pair(t, O200kBase)
	for _, s := range []string{
		strings.Repeat("abcdefghij", maxPiece/10+500),
		strings.Repeat("光合作用是植物利用光能的过程", maxPiece/40+1),
		strings.Repeat(" ", maxPiece+1),
	} {
		got, exact := c.Count(s), c.ranks.mergeLarge(s, nil)
		if d, parts := got-exact, (len(s)+maxPiece-1)/maxPiece; d < -2*parts || d > 2*parts {
			t.Errorf("Count of a %d-byte piece = %d, exact %d", len(s), got, exact)
		}
	}
}

func FuzzCountMatchesTiktoken(f *testing.F) {
	for _, s := range tricky {
		f.Add(s)
	}
	for _, s := range randomTexts(99, 200) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if len(s) > 4<<10 { // tiktoken-go's merge takes time quadratic in a piece's length
			return
		}
		for _, enc := range counterEncodings {
			c, tk := pair(t, enc)
			if got, want := c.pieces(s), regexpPieces(t, compiled(enc), s); !slices.Equal(got, want) {
				t.Errorf("%s: %q: pieces\n %q\nregexp2\n %q", enc, s, got, want)
			}
			same(t, c, tk, s)
		}
	})
}

// The class table agrees with Go's unicode package, which regexp2 asks,
// on every rune.
func TestClassTable(t *testing.T) {
	t.Parallel()
	cls := classes()
	cat := func(name string, r rune) bool { return unicode.Is(unicode.Categories[name], r) }
	for r := rune(0); r <= unicode.MaxRune; r++ {
		var want uint8
		switch {
		case !unicode.In(r, unicode.L, unicode.M, unicode.N):
		case cat("Lu", r) || cat("Lt", r):
			want = clUpper
		case cat("Ll", r):
			want = clLower
		case cat("Lm", r) || cat("Lo", r):
			want = clOther
		case cat("M", r):
			want = clMark
		case cat("N", r):
			want = clNumber
		}
		if want&clLetter != 0 && !cat("L", r) {
			t.Fatalf("%U: in a letter category but not in L", r)
		}
		if unicode.IsSpace(r) {
			want |= clSpace
		}
		if r == '\r' || r == '\n' {
			want |= clNewline
		}
		got := cls.of(r)
		if r < utf8.RuneSelf && cls.bytes[r] != got {
			t.Fatalf("%U: ASCII class %#x, class %#x", r, cls.bytes[r], got)
		}
		if got != want {
			t.Fatalf("%U: class %#x, want %#x", r, got, want)
		}
	}
	t.Logf("class table: %d blocks, %d bytes; Unicode %s", len(cls.blocks)>>8, len(cls.blocks)+2*len(cls.index)+len(cls.bytes), unicode.Version)
}

// Only ASCII capitals lower to the letters of the contractions, as
// contraction assumes: U+017F (ſ), which folds to s, does not lower to it.
func TestContractionLetters(t *testing.T) {
	t.Parallel()
	for r := rune(0); r <= unicode.MaxRune; r++ {
		if l := unicode.ToLower(r); r != l && strings.ContainsRune("'strevmld", l) && !('A' <= r && r <= 'Z') {
			t.Errorf("%U lowers to %q", r, l)
		}
	}
	for b := range 256 {
		if l := byte(b) | 0x20; strings.IndexByte("strevmld", l) >= 0 && byte(b) != l && byte(b) != l-0x20 {
			t.Errorf("byte %#x|0x20 is %q", b, l)
		}
	}
}

// Code points assigned after Go's Unicode version are no letters here, as
// they are none for tiktoken-go: the counts are tiktoken-go's, though
// OpenAI's tiktoken, whose Unicode tables are newer, may count them
// otherwise.
func TestNewCodePointsFollowGoUnicode(t *testing.T) {
	t.Parallel()
	if unicode.Version != "15.0.0" {
		t.Logf("Unicode %s: the code points below may be known", unicode.Version)
	}
	for _, s := range newCodePoints {
		for _, r := range s {
			if unicode.Version == "15.0.0" && classes().of(r) != 0 {
				t.Errorf("%U: class %#x, want none (unassigned in Unicode 15.0.0)", r, classes().of(r))
			}
		}
	}
	var texts []string
	for _, s := range newCodePoints {
		texts = append(texts, s, "word"+s, s+"word", "WORD"+s+"'s", " "+s+" ")
	}
	compareAll(t, texts)
}

func TestCountAllocations(t *testing.T) {
	const question = "Why does the Calvin cycle stop at night if it doesn't use light directly? I'm confused about it all."
	for _, enc := range counterEncodings {
		c, _ := pair(t, enc)
		texts := []string{question, strings.Repeat(question, 2)}
		if !raceEnabled { // with -race, sync.Pool drops buffers at random
			for _, f := range []string{"zh.txt", "th.txt", "ja.txt"} { // pieces over smallPiece
				b, err := os.ReadFile(filepath.Join("testdata/sample", f))
				if err != nil {
					t.Fatal(err)
				}
				texts = append(texts, string(b))
			}
		}
		for _, s := range texts {
			if a := testing.AllocsPerRun(50, func() { c.Count(s) }); a != 0 {
				t.Errorf("%s: Count(%.20q) allocates %v times", enc, s, a)
			}
		}
	}
}

func TestRankTable(t *testing.T) {
	for _, enc := range counterEncodings {
		c, _ := pair(t, enc)
		tab := c.ranks
		// The displacement of each token from the slot of its hash.
		total, longest := 0, 0
		for i, e := range tab.slots {
			if e == 0 {
				continue
			}
			off, n := int(e>>40), int(uint8(e>>8))
			d := int((uint64(i) - hash(tab.arena[off:off+n])) & tab.mask)
			total += d
			longest = max(longest, d)
		}
		t.Logf("%s: %d tokens in %d slots, %.1f MB; displacement mean %.2f, longest %d",
			enc, tab.size, len(tab.slots), float64(tab.bytes())/1e6, float64(total)/float64(tab.size), longest)
		if tab.size*2 > len(tab.slots) || total > tab.size || longest > 64 {
			t.Errorf("%s: %d tokens in %d slots, displacement total %d, longest %d", enc, tab.size, len(tab.slots), total, longest)
		}
		for _, s := range []string{"", "\x00\x00\x00", strings.Repeat("z", 300)} {
			if r := tab.rank(s); r != noRank {
				t.Errorf("%s: rank(%q) = %d", enc, s, r)
			}
		}
	}
	for _, s := range []string{"hello", " world", "\n", "ing"} {
		o, _ := pair(t, O200kBase)
		if r := o.ranks.rank(s); r == noRank {
			t.Errorf("rank(%q): none", s)
		}
	}
}

package prompt_test

import (
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/chatscale/chatscale/chat/prompt"
	"github.com/chatscale/chatscale/contextcache"
)

// The notes Window adds: at the start of a windowed excerpt, at the end
// of one cut after the beginning.
const (
	fuzzHeadNote = "[Transcript excerpt, "
	fuzzTailLine = "[… transcript cut here; the rest is not shown]"
	fuzzTailMid  = " …\n" + fuzzTailLine
)

// fuzzDoc builds a document from fuzzer input: text split at '|' into
// segments, each starting starts[i] seconds after the previous one (a
// byte over 0xf0 steps back instead, so that segments can come out of
// order); with no start bytes, the text without segments.
func fuzzDoc(text string, starts []byte) contextcache.Document {
	doc := contextcache.Document{CourseID: "c", VideoURL: "v"}
	if len(starts) == 0 {
		doc.Text = text
		return doc
	}
	var at time.Duration
	for i, part := range strings.Split(text, "|") {
		step := time.Duration(starts[i%len(starts)]) * time.Second
		if starts[i%len(starts)] > 0xf0 {
			step = -step / 8
		}
		at = max(0, at+step)
		doc.Segments = append(doc.Segments, contextcache.Segment{Start: at, End: at + step/2, Text: part})
		doc.Text += part + " "
	}
	return doc
}

// FuzzTranscriptWindow cuts excerpts of arbitrary transcripts, with each
// of the package's tokenizers, and checks what Window documents: an
// excerpt's Tokens is at most the budget and at least the tokenizer's
// count of its Text; the Text is valid UTF-8 (invalid input becomes
// U+FFFD); two positions in the same chunk give the same excerpt, byte
// for byte; an excerpt cut after the beginning is a prefix of the whole
// rendering followed by the cut note.
func FuzzTranscriptWindow(f *testing.F) {
	f.Add("Goroutines are cheap.|Channels connect them.|Select waits on several.", []byte{0, 40, 90}, uint8(1), int64(70), int64(100), 20, false)
	f.Add("Goroutines are cheap.|Channels connect them.|Select waits on several.", []byte{0, 40, 90}, uint8(1), int64(-5), int64(3), 12, true)
	f.Add("plain text without segments, long enough to be cut somewhere in the middle of it", []byte{}, uint8(2), int64(0), int64(0), 8, false)
	f.Add(strings.Repeat("averyveryverylongwordwithoutanybreak", 60), []byte{}, uint8(0), int64(0), int64(0), 30, false)
	f.Add(strings.Repeat("x|", 50), []byte{5, 250, 30, 0}, uint8(1), int64(600), int64(610), 40, true)
	f.Add("日本語のテキスト。|Ελληνικά κείμενα.|🙂🙂🙂 emoji|مرحبا بالعالم", []byte{10, 200, 1}, uint8(1), int64(200), int64(239), 15, true)
	f.Add("bad \xff\xfe utf8|\xc0 more|ok", []byte{1, 2, 3}, uint8(0), int64(2), int64(3), 5, true)
	f.Add("", []byte{}, uint8(0), int64(0), int64(0), 0, false)
	f.Add("  |\t\n|   ", []byte{1}, uint8(1), int64(1), int64(1), 1, true)

	tokenizers := []prompt.Tokenizer{prompt.Estimate{}}
	for _, enc := range []string{"o200k_base", "cl100k_base"} {
		tok, err := prompt.ForEncoding(enc)
		if err != nil {
			f.Fatal(err)
		}
		tokenizers = append(tokenizers, tok)
	}

	f.Fuzz(func(t *testing.T, text string, starts []byte, chunkSel uint8, pos1, pos2 int64, budget int, hasPos bool) {
		if len(text) > 1<<14 || len(starts) > 64 {
			return
		}
		doc := fuzzDoc(text, starts)
		chunk := []time.Duration{time.Minute, 2 * time.Minute, 30 * time.Second, 7 * time.Second}[chunkSel%4]
		p1, p2 := time.Duration(pos1%(1<<20))*time.Second, time.Duration(pos2%(1<<20))*time.Second
		budget %= 1 << 12
		for _, tok := range tokenizers {
			tr := prompt.Prepare(doc, tok, chunk)
			whole := tr.Window(0, false, 1<<30)
			if whole.Cut || whole.Tokens != tr.Tokens() || !utf8.ValidString(whole.Text) {
				t.Fatalf("%v: the whole transcript: %+v, Tokens() %d", tok, whole, tr.Tokens())
			}
			if n := tok.Count(whole.Text); n > whole.Tokens {
				t.Fatalf("%v: the whole transcript counts %d tokens, Tokens says %d", tok, n, whole.Tokens)
			}
			e := tr.Window(p1, hasPos, budget)
			if !utf8.ValidString(e.Text) {
				t.Fatalf("%v: Window(%v, %v, %d) is not valid UTF-8: %q", tok, p1, hasPos, budget, e.Text)
			}
			if e.Text != whole.Text && e.Tokens > max(budget, 0) {
				t.Fatalf("%v: Window(%v, %v, %d) has %d tokens, over the budget", tok, p1, hasPos, budget, e.Tokens)
			}
			if n := tok.Count(e.Text); n > e.Tokens {
				t.Fatalf("%v: Window(%v, %v, %d) counts %d tokens, its Tokens says %d: %q", tok, p1, hasPos, budget, n, e.Tokens, e.Text)
			}
			if e.Text == "" && e.Tokens != 0 {
				t.Fatalf("%v: an empty excerpt of %d tokens", tok, e.Tokens)
			}
			if e.Cut && e.Text != "" && !strings.HasPrefix(e.Text, fuzzHeadNote) {
				// Cut after the beginning: a prefix of the rendering, then
				// the note.
				body, ok := strings.CutSuffix(e.Text, fuzzTailMid)
				if !ok {
					body, ok = strings.CutSuffix(e.Text, fuzzTailLine)
				}
				if !ok || !strings.HasPrefix(whole.Text, body) {
					t.Fatalf("%v: Window(%v, %v, %d) = %q: not a prefix of the rendering and the cut note", tok, p1, hasPos, budget, e.Text)
				}
			}
			// The prefix is stable within a chunk: a fresh Transcript (no
			// remembered excerpt) at another position of the same chunk
			// gives the same excerpt.
			if hasPos && p1/chunk == p2/chunk && (p1 >= 0) == (p2 >= 0) {
				e2 := prompt.Prepare(doc, tok, chunk).Window(p2, true, budget)
				if e2 != e {
					t.Fatalf("%v: positions %v and %v of one %v chunk, budget %d: excerpts differ:\n%+v\n%+v", tok, p1, p2, chunk, budget, e, e2)
				}
			}
			// The same call again, remembered, gives the same excerpt.
			if again := tr.Window(p1, hasPos, budget); again != e {
				t.Fatalf("%v: Window(%v, %v, %d) changed when repeated:\n%+v\n%+v", tok, p1, hasPos, budget, e, again)
			}
		}
	})
}

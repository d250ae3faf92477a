package prompt_test

import (
	"fmt"
	"math"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
	"unsafe"

	"github.com/chatscale/chatscale/chat/prompt"
	"github.com/chatscale/chatscale/contextcache"
)

const cutNote = "[… transcript cut here; the rest is not shown]"

// whole returns the uncut rendering of t.
func whole(t *prompt.Transcript) string { return t.Window(0, false, math.MaxInt).Text }

// clock formats d as the notes do.
func clock(d time.Duration) string {
	s := int(d / time.Second)
	if s >= 3600 {
		return fmt.Sprintf("%d:%02d:%02d", s/3600, s/60%60, s%60)
	}
	return fmt.Sprintf("%d:%02d", s/60, s%60)
}

func parseClock(m, s string) time.Duration {
	var mm, ss int
	fmt.Sscan(m, &mm)
	fmt.Sscan(s, &ss)
	return time.Duration(mm)*time.Minute + time.Duration(ss)*time.Second
}

func TestRendering(t *testing.T) {
	doc := lecture(30, 13*time.Second)
	tr := prompt.Prepare(doc, prompt.Estimate{}, 0)
	text := whole(tr)
	lines := strings.Split(strings.TrimSuffix(text, "\n"), "\n")
	stamp := regexp.MustCompile(`^\[(\d+):(\d\d)\] `)
	var starts []string
	for _, l := range lines {
		m := stamp.FindStringSubmatch(l)
		if m == nil {
			t.Fatalf("line without a time stamp: %q", l)
		}
		starts = append(starts, m[1]+":"+m[2])
	}
	// A line per 30 s of speech (segments every 13 s: 3 per line) and a new
	// line at each 2-minute chunk.
	want := []string{"0:00", "0:39", "1:18", "1:57", "2:10", "2:49", "3:28", "4:07", "4:46", "5:25", "6:04"}
	if !slices.Equal(starts, want) {
		t.Errorf("line stamps %v, want %v", starts, want)
	}
	// Every segment's text, in order, joined by spaces within a line.
	var segs []string
	for _, s := range doc.Segments {
		segs = append(segs, s.Text)
	}
	body := regexp.MustCompile(`(?m)^\[\d+:\d\d\] `).ReplaceAllString(text, "")
	if got := strings.Join(strings.Fields(body), " "); got != strings.Join(segs, " ") {
		t.Errorf("segment texts not rendered in order:\n%s", text)
	}
	if tr.Document().Text != doc.Text || len(tr.Document().Segments) != len(doc.Segments) {
		t.Error("Document() is not the prepared document")
	}
}

func TestWindowWholeFits(t *testing.T) {
	for name, tok := range map[string]prompt.Tokenizer{"o200k": o200k(t), "Estimate": prompt.Estimate{}} {
		doc := lecture(40, 10*time.Second)
		tr := prompt.Prepare(doc, tok, 0)
		all := whole(tr)
		if got := tok.Count(all); got != tr.Tokens() {
			t.Errorf("%s: Tokens() = %d, Count of the rendering = %d", name, tr.Tokens(), got)
		}
		for _, hasPos := range []bool{false, true} {
			e := tr.Window(3*time.Minute, hasPos, tr.Tokens())
			if e.Text != all || e.Cut || e.Tokens != tr.Tokens() || e.From != 0 || e.To != 0 {
				t.Errorf("%s: whole transcript at its own budget: %+v", name, e)
			}
		}
		if e := tr.Window(0, true, tr.Tokens()-1); !e.Cut {
			t.Errorf("%s: one token short is not cut", name)
		}
	}
}

func TestWindowIsByteIdenticalWithinAChunk(t *testing.T) {
	tok := prompt.Cached(o200k(t), 0)
	doc := lecture(200, 13500*time.Millisecond) // 45 minutes, 23 chunks
	tr := prompt.Prepare(doc, tok, 0)
	budget := tr.Tokens() / 3
	duration := doc.Segments[len(doc.Segments)-1].End
	var texts []string
	for k := 0; time.Duration(k)*prompt.DefaultChunk < duration; k++ {
		base := time.Duration(k) * prompt.DefaultChunk
		first := tr.Window(base, true, budget)
		for _, off := range []time.Duration{time.Nanosecond, time.Second, 37 * time.Second, time.Minute, prompt.DefaultChunk - time.Nanosecond} {
			if e := tr.Window(base+off, true, budget); e.Text != first.Text || e != first {
				t.Fatalf("chunk %d: excerpt at +%v differs from the one at the chunk's start", k, off)
			}
		}
		// A fresh Transcript (no memo) computes the same bytes.
		if e := prompt.Prepare(doc, tok, 0).Window(base+time.Minute, true, budget); e.Text != first.Text {
			t.Fatalf("chunk %d: a second Transcript cuts another excerpt", k)
		}
		if !first.Cut || first.Tokens > budget || first.Tokens != tok.Count(first.Text) {
			t.Fatalf("chunk %d: Cut %v, Tokens %d, budget %d, Count %d", k, first.Cut, first.Tokens, budget, tok.Count(first.Text))
		}
		// Edges on chunk boundaries, around the position.
		if first.From%prompt.DefaultChunk != 0 || (first.To%prompt.DefaultChunk != 0 && first.To != duration) {
			t.Errorf("chunk %d: edges %v–%v not on chunk boundaries", k, first.From, first.To)
		}
		if first.From > base || first.To <= base {
			t.Errorf("chunk %d: window %v–%v does not hold %v", k, first.From, first.To, base)
		}
		note := "[Transcript excerpt, " + clock(first.From) + "–" + clock(first.To) + " of " + clock(duration) + "]\n"
		if !strings.HasPrefix(first.Text, note) {
			t.Errorf("chunk %d: excerpt starts %q, want %q", k, first.Text[:min(60, len(first.Text))], note)
		}
		// It is whole lines of the rendering, from the first line of a chunk.
		body := strings.TrimPrefix(first.Text, note)
		all := whole(tr)
		at := strings.Index(all, body)
		if at < 0 || (at > 0 && all[at-1] != '\n') || !strings.HasSuffix(body, "\n") {
			t.Errorf("chunk %d: body is not whole lines of the rendering", k)
		}
		if m := regexp.MustCompile(`^\[(\d+):(\d\d)\] `).FindStringSubmatch(body); m == nil {
			t.Errorf("chunk %d: body starts %q", k, body[:20])
		} else if stamp := parseClock(m[1], m[2]); stamp < first.From || stamp >= first.From+prompt.DefaultChunk {
			t.Errorf("chunk %d: body starts at %v, not in the window's first chunk %v", k, stamp, first.From)
		}
		texts = append(texts, first.Text)
	}
	if len(texts) != 23 {
		t.Fatalf("%d chunks, want 23", len(texts))
	}
	// Windows differ from chunk to chunk, but where one edge is pinned to
	// the transcript's start or end.
	for k := 3; k < len(texts)-4; k++ {
		if texts[k] == texts[k+1] {
			t.Errorf("chunks %d and %d share an excerpt", k, k+1)
		}
	}
}

func TestWindowGrowsBeforeThenAfter(t *testing.T) {
	doc := lecture(200, 13500*time.Millisecond)
	tr := prompt.Prepare(doc, prompt.Estimate{}, 0)
	pos := 20*time.Minute + 30*time.Second // chunk 10
	windows := map[[2]time.Duration]bool{}
	for budget := 1; budget < tr.Tokens(); budget += 7 {
		e := tr.Window(pos, true, budget)
		if e.Text == "" || e.To%prompt.DefaultChunk != 0 { // empty, or the chunk cut
			continue
		}
		if e.From > 20*time.Minute || e.To < 22*time.Minute {
			t.Fatalf("budget %d: %v–%v does not hold chunk 10", budget, e.From, e.To)
		}
		windows[[2]time.Duration{e.From, e.To}] = true
	}
	// The sequence of windows as the budget grows: 20–22, 18–22, 18–24,
	// 16–24, …: before first, then after.
	m := func(d time.Duration) time.Duration { return d * time.Minute }
	for _, w := range [][2]time.Duration{{m(20), m(22)}, {m(18), m(22)}, {m(18), m(24)}, {m(16), m(24)}, {m(16), m(26)}} {
		if !windows[w] {
			t.Errorf("no window %v–%v among %v", w[0], w[1], windows)
		}
	}
	if windows[[2]time.Duration{m(20), m(24)}] {
		t.Error("grew after before growing before")
	}
}

func TestWindowTokensNeverExceedBudget(t *testing.T) {
	docs := map[string]contextcache.Document{
		"segments":    lecture(60, 10*time.Second),
		"no segments": {Text: strings.Repeat(samples(t)["en.txt"], 2)},
		"non-Latin":   {Text: samples(t)["zh.txt"] + samples(t)["ja.txt"] + samples(t)["th.txt"] + samples(t)["ru.txt"]},
	}
	toks := map[string]prompt.Tokenizer{"o200k": o200k(t), "cl100k": cl100k(t), "Estimate": prompt.Estimate{}}
	for tname, tok := range toks {
		for dname, doc := range docs {
			tr := prompt.Prepare(doc, prompt.Cached(tok, 0), 0)
			verify := prompt.Cached(tok, 0)
			all := whole(tr)
			if got := verify.Count(all); got != tr.Tokens() {
				t.Errorf("%s, %s: Tokens() = %d, Count = %d", tname, dname, tr.Tokens(), got)
			}
			step := 1
			if tname != "Estimate" && testing.Short() {
				step = 5
			}
			prevBody := ""
			for budget := -1; budget <= tr.Tokens()+3; budget += step {
				for _, pos := range []time.Duration{-1, 0, 3 * time.Minute, 9*time.Minute + 59*time.Second, time.Hour} {
					for _, hasPos := range []bool{false, true} {
						e := tr.Window(pos, hasPos, budget)
						if e.Tokens > max(budget, 0) {
							t.Fatalf("%s, %s, budget %d, pos %v/%v: Tokens %d", tname, dname, budget, pos, hasPos, e.Tokens)
						}
						if got := verify.Count(e.Text); got != e.Tokens {
							t.Fatalf("%s, %s, budget %d, pos %v/%v: Tokens %d, Count(Text) %d\n%s", tname, dname, budget, pos, hasPos, e.Tokens, got, e.Text)
						}
						if !utf8.ValidString(e.Text) {
							t.Fatalf("%s, %s, budget %d: invalid UTF-8", tname, dname, budget)
						}
						if e.Cut != (budget < tr.Tokens()) {
							t.Fatalf("%s, %s, budget %d: Cut %v", tname, dname, budget, e.Cut)
						}
						if e.Text == "" && e.Tokens != 0 {
							t.Fatalf("empty excerpt with %d tokens", e.Tokens)
						}
					}
				}
				// The beginning only grows with the budget.
				if e := tr.Window(0, false, budget); e.Cut && e.Text != "" {
					body, ok := strings.CutSuffix(e.Text, cutNote)
					if !ok || !strings.HasPrefix(all, strings.TrimSuffix(body, " …\n")) {
						t.Fatalf("%s, %s, budget %d: beginning %q", tname, dname, budget, e.Text)
					}
					if len(body) < len(prevBody) {
						t.Fatalf("%s, %s, budget %d: beginning shrank", tname, dname, budget)
					}
					prevBody = body
				}
			}
		}
	}
}

func TestWindowBeginning(t *testing.T) {
	doc := lecture(60, 10*time.Second)
	tr := prompt.Prepare(doc, prompt.Estimate{}, 0)
	all := whole(tr)
	e := tr.Window(5*time.Minute, false, tr.Tokens()/2)
	if !e.Cut || e.From != 0 || e.To != 0 {
		t.Fatalf("%+v", e)
	}
	body, ok := strings.CutSuffix(e.Text, cutNote)
	if !ok {
		t.Fatalf("no cut note at the end: %q", e.Text)
	}
	body = strings.TrimSuffix(body, " …\n")
	if !strings.HasPrefix(all, body) || len(body) < len(all)/3 {
		t.Fatalf("beginning %d of %d bytes is not a prefix", len(body), len(all))
	}
	// It ends after a segment.
	ends := false
	for _, s := range doc.Segments {
		if strings.HasSuffix(strings.TrimSuffix(body, "\n"), s.Text) {
			ends = true
		}
	}
	if !ends {
		t.Errorf("beginning does not end after a segment: …%q", body[len(body)-40:])
	}
}

func TestWindowPositionPastTheEnd(t *testing.T) {
	doc := lecture(60, 10*time.Second) // 0–10:00, chunks 0 to 4
	tr := prompt.Prepare(doc, prompt.Estimate{}, 0)
	budget := tr.Tokens() / 4
	last := tr.Window(8*time.Minute, true, budget)
	for _, pos := range []time.Duration{10 * time.Minute, 3 * time.Hour, math.MaxInt64} {
		if e := tr.Window(pos, true, budget); e.Text != last.Text {
			t.Errorf("pos %v: not the last chunk's excerpt", pos)
		}
	}
	if last.To != doc.Segments[59].End || last.From > 8*time.Minute {
		t.Errorf("last window %v–%v", last.From, last.To)
	}
	first := tr.Window(0, true, budget)
	if e := tr.Window(-time.Hour, true, budget); e.Text != first.Text {
		t.Error("a negative position is not the first chunk")
	}
}

func TestWindowWithoutSegments(t *testing.T) {
	text := strings.Repeat(samples(t)["en.txt"], 3)
	doc := contextcache.Document{Text: text}
	tr := prompt.Prepare(doc, o200k(t), time.Minute)
	if got := whole(tr); got != text {
		t.Fatal("the whole transcript is not Document.Text")
	}
	if tr.Tokens() != o200k(t).Count(text) {
		t.Errorf("Tokens() = %d, want %d", tr.Tokens(), o200k(t).Count(text))
	}
	budget := tr.Tokens() / 3
	e := tr.Window(10*time.Minute, true, budget)
	if e != tr.Window(0, false, budget) {
		t.Error("a position changes the excerpt of a transcript without segments")
	}
	body, ok := strings.CutSuffix(e.Text, " …\n"+cutNote)
	if !ok || !strings.HasPrefix(text, body) || e.From != 0 || e.To != 0 || !e.Cut {
		t.Fatalf("%+v", e)
	}
	if e.Tokens > budget || e.Tokens < budget-80 { // blocks of about 256 bytes
		t.Errorf("Tokens %d for budget %d", e.Tokens, budget)
	}
}

func TestWindowCutsAChunkThatDoesNotFit(t *testing.T) {
	tok := o200k(t)
	doc := lecture(60, 5*time.Second) // 24 segments a chunk
	tr := prompt.Prepare(doc, tok, 0)
	budget := 150 // a chunk takes about 600
	e := tr.Window(2*time.Minute+10*time.Second, true, budget)
	if !e.Cut || e.Tokens > budget || e.Tokens != tok.Count(e.Text) || e.Tokens < budget-60 {
		t.Fatalf("Tokens %d, budget %d, Count %d", e.Tokens, budget, tok.Count(e.Text))
	}
	if e.From != 2*time.Minute || e.To >= 4*time.Minute || e.To <= e.From {
		t.Errorf("window %v–%v", e.From, e.To)
	}
	if !strings.HasPrefix(e.Text, "[Transcript excerpt, 2:00–"+clock(e.To)+" of ") {
		t.Errorf("note: %q", e.Text[:50])
	}
	if !strings.HasSuffix(strings.TrimSuffix(e.Text, "\n"), ".") { // after a whole segment
		t.Errorf("not cut after a segment: …%q", e.Text[len(e.Text)-30:])
	}
	for _, pos := range []time.Duration{2 * time.Minute, 3 * time.Minute, 4*time.Minute - 1} {
		if x := tr.Window(pos, true, budget); x.Text != e.Text {
			t.Errorf("pos %v: another excerpt", pos)
		}
	}

	// One huge segment of Chinese with no space: cut inside it, on a rune
	// boundary.
	zh := strings.Repeat(strings.TrimSpace(samples(t)["zh.txt"]), 10)
	doc = contextcache.Document{Segments: []contextcache.Segment{{Start: 0, End: time.Minute, Text: "Short."}, {Start: 3 * time.Minute, End: 4 * time.Minute, Text: zh}}}
	tr = prompt.Prepare(doc, tok, 0)
	for _, budget := range []int{30, 100, 333, 1000} {
		e := tr.Window(3*time.Minute, true, budget)
		if e.Text == "" || e.Tokens > budget || e.Tokens != tok.Count(e.Text) || !utf8.ValidString(e.Text) {
			t.Fatalf("budget %d: Tokens %d, Count %d, valid %v", budget, e.Tokens, tok.Count(e.Text), utf8.ValidString(e.Text))
		}
		_, body, _ := strings.Cut(e.Text, "\n")
		if e.From != 2*time.Minute || !strings.HasPrefix("[3:00] "+zh, body) || len(body) <= len("[3:00] ") {
			t.Fatalf("budget %d: %q", budget, e.Text)
		}
	}
}

func TestWindowOddInput(t *testing.T) {
	tok := prompt.Estimate{}
	empty := prompt.Prepare(contextcache.Document{}, tok, 0)
	for _, budget := range []int{-5, 0, 10} {
		if e := empty.Window(time.Minute, true, budget); e != (prompt.Excerpt{}) {
			t.Errorf("empty transcript, budget %d: %+v", budget, e)
		}
	}
	if empty.Tokens() != 0 {
		t.Error("empty transcript has tokens")
	}

	doc := lecture(30, 10*time.Second)
	tr := prompt.Prepare(doc, nil, -time.Second) // nil: Estimate; -1s: DefaultChunk
	if tr.Chunk() != prompt.DefaultChunk || tr.Tokens() != prompt.Prepare(doc, tok, 0).Tokens() {
		t.Error("defaults not applied")
	}
	for _, budget := range []int{math.MinInt, -1, 0} {
		if e := tr.Window(0, true, budget); e != (prompt.Excerpt{Cut: true}) {
			t.Errorf("budget %d: %+v", budget, e)
		}
	}
	if e := tr.Window(0, true, math.MaxInt); e.Cut || e.Text != whole(tr) {
		t.Error("huge budget: not the whole transcript")
	}

	// Segments out of order and overlapping render as if sorted; the
	// document's slice is left alone.
	shuffled := doc
	shuffled.Segments = slices.Clone(doc.Segments)
	slices.Reverse(shuffled.Segments)
	shuffled.Segments[3].Start = shuffled.Segments[4].Start // overlap
	before := slices.Clone(shuffled.Segments)
	sorted := shuffled
	sorted.Segments = slices.Clone(shuffled.Segments)
	slices.SortStableFunc(sorted.Segments, func(a, b contextcache.Segment) int { return int(a.Start - b.Start) })
	if whole(prompt.Prepare(shuffled, tok, 0)) != whole(prompt.Prepare(sorted, tok, 0)) {
		t.Error("out-of-order segments render differently from sorted ones")
	}
	if !slices.Equal(shuffled.Segments, before) {
		t.Error("Prepare reordered the document's segments")
	}

	// Negative times, End before Start, white space, empty segments,
	// invalid UTF-8.
	odd := contextcache.Document{Text: "fallback", Segments: []contextcache.Segment{
		{Start: -time.Minute, End: -time.Second, Text: "  before\tthe\n\nstart  "},
		{Start: time.Minute, End: 0, Text: "ends \xff before it starts"},
		{Start: 2 * time.Minute, Text: " \n\t"},
	}}
	if got, want := whole(prompt.Prepare(odd, tok, 0)), "[0:00] before the start\n[1:00] ends \uFFFD before it starts\n"; got != want {
		t.Errorf("rendering %q, want %q", got, want)
	}
	// Segments none of which has text: Document.Text.
	blank := contextcache.Document{Text: "the text", Segments: []contextcache.Segment{{Text: " "}, {}}}
	if got := whole(prompt.Prepare(blank, tok, 0)); got != "the text" {
		t.Errorf("blank segments: %q", got)
	}
	if got := whole(prompt.Prepare(contextcache.Document{Text: "bad \xff\xfe byte"}, tok, 0)); got != "bad \uFFFD byte" {
		t.Errorf("invalid UTF-8: %q", got)
	}

	// A one-nanosecond chunk: every segment its own chunk.
	tiny := prompt.Prepare(doc, tok, time.Nanosecond)
	e := tiny.Window(95*time.Second, true, tiny.Tokens()/2)
	if e.Text == "" || e.Tokens > tiny.Tokens()/2 {
		t.Errorf("1ns chunks: %+v", e)
	}
}

func TestWindowRepeatIsMemoized(t *testing.T) {
	doc := lecture(200, 13500*time.Millisecond)
	tr := prompt.Prepare(doc, o200k(t), 0)
	budget := tr.Tokens() / 3
	a := tr.Window(10*time.Minute, true, budget)
	b := tr.Window(11*time.Minute, true, budget)
	if unsafe.StringData(a.Text) != unsafe.StringData(b.Text) {
		t.Error("a repeated Window built its text again")
	}
	// A budget one token smaller leads to the same window: same text.
	if c := tr.Window(10*time.Minute, true, budget-1); c.Text != a.Text || unsafe.StringData(c.Text) != unsafe.StringData(a.Text) {
		t.Error("two budgets with one window do not share its text")
	}
	allocs := testing.AllocsPerRun(100, func() {
		_ = tr.Window(10*time.Minute+time.Second, true, budget)
		_ = tr.Window(0, false, budget)
	})
	if allocs != 0 {
		t.Errorf("repeated Window: %v allocations", allocs)
	}
}

package prompt

import (
	"cmp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/chatscale/chatscale/contextcache"
)

// DefaultChunk is the excerpt granularity of timed transcripts when
// Prepare is given none.
const DefaultChunk = 2 * time.Minute

// stampEvery is the time after which a segment starts a new stamped line
// of the rendered transcript (besides the first segment of each chunk).
const stampEvery = 30 * time.Second

// blockBytes is the size above which a segment's rendering (or, without
// segments, the transcript's text) is split into blocks counted apart,
// where an excerpt can end.
const blockBytes = 256

// joinMargin is the number of tokens added to an excerpt's Tokens for
// each place in it where two blocks meet at a rune boundary that is not a
// clean cut (see cleanCut): only in a run of more than partBytes bytes
// without one, such as a kilobyte-long "word".
const joinMargin = 2

// The notes an excerpt may carry. A head note starts a windowed excerpt
// and ends with a line break, a tail note ends an excerpt cut after its
// beginning; tailMid follows a block that does not end a line.
const (
	headNote = "[Transcript excerpt, "
	tailLine = "[… transcript cut here; the rest is not shown]"
	tailMid  = " …\n" + tailLine
)

// memoSize is the number of excerpts a Transcript remembers.
const memoSize = 8

// Excerpt is the part of a transcript that fits a token budget.
type Excerpt struct {
	// Text is the excerpt, as it goes into the prompt.
	Text string
	// Tokens is the Transcript's Tokenizer's count of Text, computed as
	// the sum of its counts of Text's parts: the notes and the blocks of
	// the rendering, counted once by Prepare. The parts meet where
	// tiktoken's pre-tokenizers end a piece, so the sum equals the count of
	// Text whole for the tokenizers of ForModel and Estimate (and Cached
	// ones of them); a Tokenizer that counts differently across such
	// joins may be off by about a token per join. Where two blocks meet
	// inside a run of over a kilobyte with no such place (a kilobyte-long
	// "word"), Tokens adds 2 tokens, so that it still bounds the count.
	Tokens int
	// Cut says Text is not the whole transcript.
	Cut bool
	// From and To are the part of the video the excerpt covers when it
	// was windowed around a position; zero otherwise.
	From, To time.Duration
}

// Transcript is one version of a video's transcript, rendered and
// tokenized once, from which Window cuts excerpts cheaply. It is safe for
// concurrent use.
//
// A transcript with segments is rendered one line per stretch of speech,
// each line starting with the time of its first segment:
//
//	[12:00] First segment's text. Second segment's text.
//	[12:31] A segment that starts 30 s or more after the line's start.
//	[14:00] The first segment of the next chunk.
//
// A new line starts with each chunk and with the first segment at least
// 30 seconds after the line's start; within a line, segments are joined
// by a space; white space inside a segment is collapsed to single spaces;
// segments are ordered by Start (a stable sort of a copy when the
// document's are not); segments with no text are left out. A transcript
// without segments (or none with text) is its Document.Text as it is.
// Invalid UTF-8 becomes U+FFFD. The title is not rendered.
type Transcript struct {
	doc      contextcache.Document
	tok      Tokenizer
	chunk    time.Duration
	text     string // the whole rendering
	units    []unit // blocks of text, in order
	cum      []int  // cum[i]: tokens of units[:i] and of the joins among them
	chunks   []span // non-empty chunks, in order; nil without segments
	duration time.Duration
	whole    Excerpt
	tailLine int // tokens of tailLine
	tailMid  int // tokens of tailMid

	mu       sync.Mutex
	memo     [memoSize]memoEntry
	memoNext int
}

// unit is a block of the rendering: an excerpt ends at a unit's end.
type unit struct {
	end    int           // offset in text
	tokens int           // its count
	to     time.Duration // the end of its segment
	segEnd bool          // it ends a segment
	clean  bool          // it ends at a clean cut
}

// span is a non-empty chunk of a timed transcript: units [first, end).
type span struct {
	k          int64 // the chunk's index: [k*chunk, (k+1)*chunk)
	first, end int
}

type memoKey struct {
	chunk  int // index in chunks, or -1 for the beginning of the transcript
	budget int
}

type memoEntry struct {
	key memoKey
	ok  bool
	p   plan
	e   Excerpt
}

// plan is an excerpt before its text is built: the head note of
// [from, to] when head, then t.text[start:end], then tail.
type plan struct {
	start, end int
	head       bool
	from, to   time.Duration
	tail       string
	tokens     int
}

// Prepare renders and tokenizes doc once. chunk is the excerpt
// granularity of timed transcripts; chunk <= 0 means DefaultChunk. A nil
// tok means Estimate{}.
func Prepare(doc contextcache.Document, tok Tokenizer, chunk time.Duration) *Transcript {
	if tok == nil {
		tok = Estimate{}
	}
	if chunk <= 0 {
		chunk = DefaultChunk
	}
	t := &Transcript{doc: doc, tok: tok, chunk: chunk}
	t.tailLine = tok.Count(tailLine)
	t.tailMid = tok.Count(tailMid)
	if !t.renderSegments() {
		t.text = validUTF8(doc.Text)
		t.addBlocks(0, len(t.text), 0, true)
	}
	t.cum = make([]int, len(t.units)+1)
	for i, u := range t.units {
		t.cum[i+1] = t.cum[i] + u.tokens
		if i > 0 && !t.units[i-1].clean {
			t.cum[i+1] += joinMargin
		}
	}
	t.whole = Excerpt{Text: t.text, Tokens: t.cum[len(t.units)]}
	return t
}

// renderSegments renders doc's segments into t.text, t.units and
// t.chunks. It returns false when there is no segment with text.
func (t *Transcript) renderSegments() bool {
	segs := t.doc.Segments
	if len(segs) == 0 {
		return false
	}
	if !slices.IsSortedFunc(segs, bySegmentStart) {
		segs = slices.Clone(segs)
		slices.SortStableFunc(segs, bySegmentStart)
	}
	type line struct {
		start, end int // in text
		segEnds    []int
		segTo      []time.Duration
		k          int64
	}
	var (
		b         strings.Builder
		lines     []line
		lineStart time.Duration
	)
	size := 0
	for _, s := range segs {
		size += len(s.Text) + 1
	}
	b.Grow(size + size/8)
	for _, s := range segs {
		text := normalizeSpace(validUTF8(s.Text))
		if text == "" {
			continue
		}
		start := max(s.Start, 0)
		to := max(s.End, start)
		t.duration = max(t.duration, to)
		k := int64(start / t.chunk)
		n := len(lines)
		if n == 0 || lines[n-1].k != k || start-lineStart >= stampEvery {
			if n > 0 {
				b.WriteByte('\n')
				lines[n-1].end = b.Len()
			}
			lines = append(lines, line{start: b.Len(), k: k})
			n++
			lineStart = start
			b.WriteByte('[')
			b.WriteString(clock(start))
			b.WriteString("] ")
		} else {
			b.WriteByte(' ')
		}
		b.WriteString(text)
		lines[n-1].segEnds = append(lines[n-1].segEnds, b.Len())
		lines[n-1].segTo = append(lines[n-1].segTo, to)
	}
	if len(lines) == 0 {
		return false
	}
	b.WriteByte('\n')
	lines[len(lines)-1].end = b.Len()
	t.text = b.String()

	for _, l := range lines {
		if c := len(t.chunks); c == 0 || t.chunks[c-1].k != l.k {
			t.chunks = append(t.chunks, span{k: l.k, first: len(t.units)})
		}
		from := l.start
		for i, end := range l.segEnds {
			if i == len(l.segEnds)-1 {
				end = l.end // the line break goes with the line's last segment
			}
			t.addBlocks(from, end, l.segTo[i], false)
			from = end
		}
		t.chunks[len(t.chunks)-1].end = len(t.units)
	}
	return true
}

func bySegmentStart(a, b contextcache.Segment) int { return cmp.Compare(a.Start, b.Start) }

// addBlocks appends the units of text[from:end], one segment's rendering
// (or the whole text without segments, every block of which then counts
// as a segment's end), split into blocks of about blockBytes at clean
// cuts.
func (t *Transcript) addBlocks(from, end int, to time.Duration, allEnds bool) {
	for from < end {
		s := t.text[from:end]
		n, clean := nextCut(s, blockBytes)
		if !clean {
			// Rather a longer block than a cut that is not clean.
			if m, ok := nextCut(s, partBytes); ok {
				n, clean = m, true
			}
		}
		last := from+n == end
		t.units = append(t.units, unit{
			end:    from + n,
			tokens: t.tok.Count(s[:n]),
			to:     to,
			segEnd: last || allEnds,
			clean:  clean,
		})
		from += n
	}
}

// Tokens returns the tokens of the whole transcript as Window renders it
// uncut.
func (t *Transcript) Tokens() int { return t.whole.Tokens }

// Document returns the document the transcript was prepared from.
func (t *Transcript) Document() contextcache.Document { return t.doc }

// Chunk returns the excerpt granularity of the transcript.
func (t *Transcript) Chunk() time.Duration { return t.chunk }

// Window returns the excerpt of the transcript that fits budget tokens:
// its Tokens, notes included, is never more than budget.
//
//   - When the whole transcript fits, it is all of it, with Cut false (an
//     empty transcript fits any budget).
//   - Else, with budget <= 0 or too small for any excerpt, it is empty,
//     with Cut true.
//   - Else, when hasPos and the transcript has segments, it is a window of
//     whole chunks around the chunk that holds pos ([k*chunk, (k+1)*chunk)
//     by segment Start; a pos before the first segment means the first
//     chunk, a pos in a stretch without speech the chunk before it, a pos
//     past the end the last chunk). The window grows a chunk at a time,
//     before first (a learner mostly asks about what was just said) and
//     then after, alternately, while it fits; a side stops growing at the
//     first chunk that does not fit. It starts with a note on the part of
//     the video it covers, such as "[Transcript excerpt, 12:00–18:00 of
//     45:10]", and its From and To are that part. Since its edges are
//     chunk boundaries, the excerpt is byte-identical for every pos within
//     one chunk and one budget, which keeps the prompt's prefix, and the
//     upstream's prompt cache, stable while the learner watches. A chunk
//     that alone does not fit is cut after its last segment that fits
//     (or, when not even its first does, after the last block of about 256
//     bytes of that segment that does, or else at the last place in its
//     first block where tiktoken's pre-tokenizer ends a piece, which is on
//     a rune boundary), the note and To then saying where the excerpt
//     ends.
//   - Else it is the beginning of the transcript that fits, cut after a
//     segment (after a block of about 256 bytes without segments or when
//     not even the first segment fits, or else inside the first block as
//     above), followed by a note saying the rest is cut: " …" when the cut
//     is inside a line, then "[… transcript cut here; the rest is not
//     shown]". As the budget varies, the text before the note stays a
//     prefix of the whole rendering, so that a cached prompt prefix still
//     serves.
//
// Window remembers its last 8 excerpts by (chunk, budget): a repeated
// call costs a short scan under a lock and no allocation. Budgets that
// lead to the same excerpt share one copy of its text. A budget that
// changes by a few tokens from turn to turn changes a windowed excerpt
// only when it crosses what a chunk needs, but each distinct budget costs
// a computation; callers that want the cache to serve may round budgets
// down to a step.
func (t *Transcript) Window(pos time.Duration, hasPos bool, budget int) Excerpt {
	if t.whole.Tokens <= budget || t.text == "" {
		return t.whole
	}
	if budget <= 0 {
		return Excerpt{Cut: true}
	}
	key := memoKey{chunk: -1, budget: budget}
	if hasPos && len(t.chunks) > 0 {
		key.chunk = t.chunkAt(pos)
	}
	t.mu.Lock()
	for i := range t.memo {
		if m := &t.memo[i]; m.ok && m.key == key {
			e := m.e
			t.mu.Unlock()
			return e
		}
	}
	t.mu.Unlock()

	var p plan
	if key.chunk >= 0 {
		p = t.around(key.chunk, budget)
	} else {
		p = t.beginning(budget)
	}

	// Budgets that lead to the same excerpt share its text.
	var e Excerpt
	t.mu.Lock()
	for i := range t.memo {
		if m := &t.memo[i]; m.ok && m.p == p {
			e = m.e
			break
		}
	}
	t.mu.Unlock()
	if e.Text == "" {
		e = t.build(p)
	}

	t.mu.Lock()
	t.memo[t.memoNext] = memoEntry{key: key, ok: true, p: p, e: e}
	t.memoNext = (t.memoNext + 1) % memoSize
	t.mu.Unlock()
	return e
}

// build returns the excerpt p plans.
func (t *Transcript) build(p plan) Excerpt {
	if p.start == p.end {
		return Excerpt{Cut: true}
	}
	e := Excerpt{Text: t.text[p.start:p.end] + p.tail, Tokens: p.tokens, Cut: true}
	if p.head {
		e.Text = t.head(p.from, p.to) + e.Text
		e.From, e.To = p.from, p.to
	}
	return e
}

// chunkAt returns the index in t.chunks of the chunk Window centres on
// for pos.
func (t *Transcript) chunkAt(pos time.Duration) int {
	k := int64(max(pos, 0) / t.chunk)
	// The first chunk after k, less one: the chunk of k, or the last one
	// before it.
	i, _ := slices.BinarySearchFunc(t.chunks, k+1, func(s span, k int64) int { return cmp.Compare(s.k, k) })
	return max(i-1, 0)
}

// rangeTokens returns the tokens of units [a, b) and of the joins among
// them.
func (t *Transcript) rangeTokens(a, b int) int {
	n := t.cum[b] - t.cum[a]
	if a > 0 && !t.units[a-1].clean {
		n -= joinMargin // the join before a is not in the range
	}
	return n
}

// around plans the excerpt windowed around chunk c.
func (t *Transcript) around(c, budget int) plan {
	first, last := c, c
	from, to := t.chunkFrom(c), t.chunkTo(c)
	body := t.chunksTokens(first, last)
	note := t.tok.Count(t.head(from, to))
	if body+note > budget {
		return t.cutChunk(c, budget)
	}
	for before, after := first > 0, last < len(t.chunks)-1; before || after; {
		if before {
			b := t.chunksTokens(first-1, last)
			n := t.tok.Count(t.head(t.chunkFrom(first-1), to))
			if b+n <= budget {
				first--
				body, note, from = b, n, t.chunkFrom(first)
				before = first > 0
			} else {
				before = false
			}
		}
		if after {
			b := t.chunksTokens(first, last+1)
			n := t.tok.Count(t.head(from, t.chunkTo(last+1)))
			if b+n <= budget {
				last++
				body, note, to = b, n, t.chunkTo(last)
				after = last < len(t.chunks)-1
			} else {
				after = false
			}
		}
	}
	return plan{
		start:  t.unitStart(t.chunks[first].first),
		end:    t.units[t.chunks[last].end-1].end,
		head:   true,
		from:   from,
		to:     to,
		tokens: note + body,
	}
}

// chunksTokens returns the tokens of chunks first to last.
func (t *Transcript) chunksTokens(first, last int) int {
	return t.rangeTokens(t.chunks[first].first, t.chunks[last].end)
}

// cutChunk plans the excerpt of chunk c alone cut to fit budget: its
// longest beginning that ends a segment, or, when not even the chunk's
// first segment fits, its longest beginning that ends a block, or else the
// longest beginning of its first block that ends at a clean cut.
func (t *Transcript) cutChunk(c, budget int) plan {
	sp := t.chunks[c]
	from := t.chunkFrom(c)
	start := t.unitStart(sp.first)
	var (
		to    time.Duration = -1
		notes int
	)
	// note returns the tokens of the head note of an excerpt ending with
	// unit end-1, and sets to.
	note := func(end int) int {
		if d := min(max(t.units[end-1].to, from), t.duration); d != to {
			to = d
			notes = t.tok.Count(t.head(from, to))
		}
		return notes
	}
	end := t.fitting(sp.first, sp.end, budget)
	for _, segOnly := range [...]bool{true, false} {
		for e := end; e > sp.first; e-- {
			if segOnly && !t.units[e-1].segEnd {
				continue
			}
			if n := note(e) + t.rangeTokens(sp.first, e); n <= budget {
				return plan{start: start, end: t.units[e-1].end, head: true, from: from, to: to, tokens: n}
			}
		}
	}
	headTokens := note(sp.first + 1)
	if j, n := t.partial(sp.first, budget-headTokens); j > 0 {
		return plan{start: start, end: start + j, head: true, from: from, to: to, tokens: headTokens + n}
	}
	return plan{}
}

// beginning plans the beginning of the transcript that fits budget with
// the tail note.
func (t *Transcript) beginning(budget int) plan {
	end := t.fitting(0, len(t.units), budget)
	for _, segOnly := range [...]bool{true, false} {
		for e := end; e > 0; e-- {
			u := t.units[e-1]
			if segOnly && !u.segEnd {
				continue
			}
			tail, note := tailMid, t.tailMid
			if t.text[u.end-1] == '\n' {
				tail, note = tailLine, t.tailLine
			}
			n := t.rangeTokens(0, e) + note
			if !u.clean {
				n += joinMargin
			}
			if n <= budget {
				return plan{end: u.end, tail: tail, tokens: n}
			}
		}
	}
	if j, n := t.partial(0, budget-t.tailMid); j > 0 {
		return plan{end: j, tail: tailMid, tokens: n + t.tailMid}
	}
	return plan{}
}

// partial returns the length and the count of the longest beginning of
// unit i that ends at a clean cut and takes at most budget tokens; 0, 0
// when there is none.
func (t *Transcript) partial(i, budget int) (int, int) {
	if budget <= 0 {
		return 0, 0
	}
	s := t.text[t.unitStart(i):t.units[i].end]
	var cuts []int
	for j, next := range s {
		if j == 0 {
			continue
		}
		prev, _ := utf8.DecodeLastRuneInString(s[:j])
		if cleanCut(prev, next) {
			cuts = append(cuts, j)
		}
	}
	// Counts grow with the length at clean cuts: search for the last fit.
	best, bestN := 0, 0
	lo, hi := 0, len(cuts)
	for lo < hi {
		m := int(uint(lo+hi) / 2)
		if n := t.tok.Count(s[:cuts[m]]); n <= budget {
			best, bestN = cuts[m], n
			lo = m + 1
		} else {
			hi = m
		}
	}
	return best, bestN
}

// fitting returns the largest end in [a, b] such that units [a, end)
// alone take at most budget tokens.
func (t *Transcript) fitting(a, b, budget int) int {
	i, _ := slices.BinarySearchFunc(t.cum[a+1:b+1], budget, func(c, budget int) int {
		if c-t.cum[a] > budget {
			return 1
		}
		return -1
	})
	return a + i
}

// unitStart returns the offset in t.text where unit i starts.
func (t *Transcript) unitStart(i int) int {
	if i == 0 {
		return 0
	}
	return t.units[i-1].end
}

func (t *Transcript) chunkFrom(c int) time.Duration {
	return time.Duration(t.chunks[c].k) * t.chunk
}

func (t *Transcript) chunkTo(c int) time.Duration {
	from := t.chunkFrom(c)
	if from > t.duration-t.chunk {
		return t.duration
	}
	return min(from+t.chunk, t.duration)
}

// head returns the head note of an excerpt covering [from, to].
func (t *Transcript) head(from, to time.Duration) string {
	return headNote + clock(from) + "–" + clock(to) + " of " + clock(t.duration) + "]\n"
}

// clock formats d as m:ss, or h:mm:ss from an hour on.
func clock(d time.Duration) string {
	s := int64(max(d, 0) / time.Second)
	h, m := s/3600, s/60%60
	s %= 60
	var b []byte
	if h > 0 {
		b = strconv.AppendInt(b, h, 10)
		b = append(b, ':')
		if m < 10 {
			b = append(b, '0')
		}
	}
	b = strconv.AppendInt(b, m, 10)
	b = append(b, ':')
	if s < 10 {
		b = append(b, '0')
	}
	b = strconv.AppendInt(b, s, 10)
	return string(b)
}

// validUTF8 returns s with each run of invalid bytes replaced by U+FFFD.
func validUTF8(s string) string {
	if utf8.ValidString(s) {
		return s
	}
	return strings.ToValidUTF8(s, "\uFFFD")
}

// normalizeSpace returns s without leading or trailing white space and
// with each inner run of white space replaced by one space; s itself when
// it is so already.
func normalizeSpace(s string) string {
	normal := true
	prevSpace := true // a leading space is not normal
	for i, r := range s {
		space := unicode.IsSpace(r)
		if space && (prevSpace || r != ' ' || i == len(s)-1) {
			normal = false
			break
		}
		prevSpace = space
	}
	if normal {
		return s
	}
	return strings.Join(strings.Fields(s), " ")
}

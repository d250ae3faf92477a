package prompt_test

import (
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chatscale/chatscale/chat/prompt"
	"github.com/chatscale/chatscale/contextcache"
)

// prepareCalls returns the number of Count calls one Prepare of doc makes.
func prepareCalls(doc contextcache.Document) int64 {
	c := &counting{tok: prompt.Estimate{}}
	prompt.Prepare(doc, c, 0)
	return c.calls.Load()
}

func TestTranscriptsPrepareOncePerVersion(t *testing.T) {
	tok := &counting{tok: prompt.Estimate{}}
	c := prompt.NewTranscripts(tok, 0, 0)
	doc := lecture(50, 10*time.Second)
	once := prepareCalls(doc)

	first := c.Get(doc)
	if tok.calls.Load() != once {
		t.Fatalf("first Get: %d counts, one Prepare makes %d", tok.calls.Load(), once)
	}
	// The same document, and an equal copy of it (as Redis or MongoDB
	// would hand out), are the same version.
	cp := doc
	cp.Text = strings.Clone(doc.Text)
	cp.Title = strings.Clone(doc.Title)
	cp.Segments = slices.Clone(doc.Segments)
	cp.UpdatedAt = doc.UpdatedAt.Local()
	for _, d := range []contextcache.Document{doc, cp, cp, doc} {
		if got := c.Get(d); got != first {
			t.Fatal("same version: another Transcript")
		}
	}
	if tok.calls.Load() != once {
		t.Fatalf("same version prepared again: %d counts", tok.calls.Load())
	}

	// A new version of any part is prepared again.
	changes := map[string]func(*contextcache.Document){
		"UpdatedAt": func(d *contextcache.Document) { d.UpdatedAt = d.UpdatedAt.Add(time.Second) },
		"Text":      func(d *contextcache.Document) { d.Text += " More." },
		"Title":     func(d *contextcache.Document) { d.Title = "Photosynthesis, part 2" },
		"Segments": func(d *contextcache.Document) {
			d.Segments = slices.Clone(d.Segments)
			d.Segments[7].Text = "A corrected segment."
		},
		"Segments length": func(d *contextcache.Document) { d.Segments = d.Segments[:len(d.Segments)-1] },
	}
	for field, change := range changes {
		v := doc
		change(&v)
		before := tok.calls.Load()
		got := c.Get(v)
		if got == first || got.Document().Title != v.Title || tok.calls.Load() == before {
			t.Errorf("%s changed: not prepared again", field)
		}
		if c.Get(v) != got {
			t.Errorf("%s changed: prepared on each Get", field)
		}
	}
	if c.Len() != 1 {
		t.Errorf("%d transcripts held for one video", c.Len())
	}
}

func TestTranscriptsConcurrentGetPreparesOnce(t *testing.T) {
	tok := &counting{tok: prompt.Estimate{}}
	c := prompt.NewTranscripts(tok, 0, 0)
	doc := lecture(200, 13*time.Second)
	start := make(chan struct{})
	got := make([]*prompt.Transcript, 32)
	var wg sync.WaitGroup
	for i := range got {
		wg.Go(func() {
			<-start
			got[i] = c.Get(doc)
		})
	}
	close(start)
	wg.Wait()
	for _, tr := range got {
		if tr != got[0] || tr == nil {
			t.Fatal("concurrent Gets got different transcripts")
		}
	}
	if n, want := tok.calls.Load(), prepareCalls(doc); n != want {
		t.Errorf("%d counts, one Prepare makes %d", n, want)
	}
}

func TestTranscriptsEvictsLeastRecentlyUsed(t *testing.T) {
	tok := &counting{tok: prompt.Estimate{}}
	c := prompt.NewTranscripts(tok, 0, 3)
	docs := make([]contextcache.Document, 5)
	for i := range docs {
		docs[i] = lecture(10+i, 10*time.Second)
		docs[i].VideoURL = "video-" + string(rune('a'+i))
	}
	for _, d := range docs[:3] {
		c.Get(d)
	}
	c.Get(docs[0]) // a, then c and b, are the most recent
	c.Get(docs[3]) // evicts b
	c.Get(docs[4]) // evicts c
	if c.Len() != 3 {
		t.Fatalf("%d held, bound 3", c.Len())
	}
	held := func(i int) bool {
		before := tok.calls.Load()
		c.Get(docs[i])
		return tok.calls.Load() == before
	}
	for _, i := range []int{0, 3, 4} { // Gets of held ones evict nothing
		if !held(i) {
			t.Errorf("video %d was evicted", i)
		}
	}
	if held(1) {
		t.Error("the least recently used video was kept")
	}
	if c.Len() != 3 {
		t.Fatalf("%d held, bound 3", c.Len())
	}
}

func TestNewTranscriptsDefaults(t *testing.T) {
	c := prompt.NewTranscripts(nil, -1, -1)
	tr := c.Get(lecture(10, time.Minute))
	if tr.Chunk() != prompt.DefaultChunk || tr.Tokens() != prompt.Prepare(lecture(10, time.Minute), prompt.Estimate{}, 0).Tokens() {
		t.Error("defaults not applied")
	}
	if c.Get(contextcache.Document{}) == nil {
		t.Error("empty document")
	}
}

package prompt

import (
	"container/list"
	"sync"
	"time"

	"github.com/chatscale/chatscale/contextcache"
)

// DefaultTranscripts is the number of prepared transcripts a Transcripts
// keeps when given a size of zero or less.
const DefaultTranscripts = 1024

// Transcripts caches prepared transcripts, so that each version of a
// video's transcript is rendered and tokenized once per process rather
// than once per turn. It is safe for concurrent use.
//
// It keeps one Transcript per (CourseID, VideoURL), the one of the latest
// version asked for, and at most size of them: beyond that it drops the
// least recently used. A Transcript holds its rendering (about the size of
// the document's text), some 60 bytes per 256 bytes of it for the counts,
// and its last 8 excerpts.
type Transcripts struct {
	tok   Tokenizer
	chunk time.Duration
	size  int

	mu  sync.Mutex
	m   map[videoKey]*list.Element // of *transcriptEntry
	lru list.List                  // front: most recently used
}

type videoKey struct{ course, video string }

type transcriptEntry struct {
	key videoKey
	// ver is the document this version is compared with, under
	// Transcripts.mu: the last copy seen of it, so that the next
	// comparison with the same copy is a pointer comparison.
	ver contextcache.Document
	// doc is the document prepared, read by once.
	doc  contextcache.Document
	once sync.Once
	t    *Transcript
}

// NewTranscripts returns a cache of transcripts prepared with tok (nil
// means Estimate{}) and chunk (<= 0 means DefaultChunk), holding at most
// size of them (<= 0 means DefaultTranscripts).
func NewTranscripts(tok Tokenizer, chunk time.Duration, size int) *Transcripts {
	if tok == nil {
		tok = Estimate{}
	}
	if chunk <= 0 {
		chunk = DefaultChunk
	}
	if size <= 0 {
		size = DefaultTranscripts
	}
	return &Transcripts{tok: tok, chunk: chunk, size: size, m: make(map[videoKey]*list.Element)}
}

// Get returns the prepared transcript of doc. It prepares doc when the
// cache has no transcript of its (CourseID, VideoURL), or one of another
// version: a version differs when its UpdatedAt, Title, Text or Segments
// differ. The comparison is cheap when doc is the copy the cache saw last
// (contextcache hands out the same Document until it reloads it): its
// strings and Segments are then compared by pointer. Concurrent Gets of a
// new version prepare it once, the others waiting for it.
func (c *Transcripts) Get(doc contextcache.Document) *Transcript {
	key := videoKey{doc.CourseID, doc.VideoURL}
	c.mu.Lock()
	var e *transcriptEntry
	if el, ok := c.m[key]; ok {
		e = el.Value.(*transcriptEntry)
		if sameVersion(e.ver, doc) {
			e.ver = doc
			c.lru.MoveToFront(el)
		} else {
			c.lru.Remove(el)
			e = nil
		}
	}
	if e == nil {
		e = &transcriptEntry{key: key, ver: doc, doc: doc}
		c.m[key] = c.lru.PushFront(e)
		for c.lru.Len() > c.size {
			old := c.lru.Remove(c.lru.Back()).(*transcriptEntry)
			delete(c.m, old.key)
		}
	}
	c.mu.Unlock()
	e.once.Do(func() { e.t = Prepare(e.doc, c.tok, c.chunk) })
	return e.t
}

// Len returns the number of transcripts held.
func (c *Transcripts) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lru.Len()
}

// sameVersion reports whether a and b are the same version of a
// transcript.
func sameVersion(a, b contextcache.Document) bool {
	if !a.UpdatedAt.Equal(b.UpdatedAt) || a.Title != b.Title || a.Text != b.Text ||
		len(a.Segments) != len(b.Segments) {
		return false
	}
	if len(a.Segments) == 0 || &a.Segments[0] == &b.Segments[0] {
		return true
	}
	for i := range a.Segments {
		if a.Segments[i] != b.Segments[i] {
			return false
		}
	}
	return true
}

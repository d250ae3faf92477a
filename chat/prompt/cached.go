package prompt

import (
	"hash/maphash"
	"math/bits"
	"sync"
)

// DefaultCachedSize is the number of counts Cached keeps when given a size
// of zero or less: about 3.5 MB.
const DefaultCachedSize = 1 << 16

// cacheSeed keys the hash of every count cache of the process.
var cacheSeed = maphash.MakeSeed()

// Cached returns a Tokenizer that memoizes tok's counts, so that texts
// that come back turn after turn (a thread's history, read anew from the
// store each turn) are tokenized once. It holds about size counts (size
// <= 0 means DefaultCachedSize), some 55 bytes each, and is safe for
// concurrent use.
//
// A count is keyed by a 64-bit hash of the text (hash/maphash, seeded
// once per process) and the text's length; two texts that share both get
// the same count, a chance of about 2^-64 per pair. The keys are spread
// over up to 64 shards, each a map behind its own lock; a full shard
// drops one of its entries, picked at random, for each new one. A hit
// costs a hash of the text and a map read under a read lock, with no
// allocation, about 50 ns for a 200-byte text. Every text but "" goes
// through the cache: ForModel's counter of o200k_base takes some 35 times
// that to count a 200-byte text, tiktoken-go's encodings thousands of
// times.
//
// When tok is nil or an Estimate, which counts a 200-byte text in about a
// microsecond without allocating, Cached returns Estimate{} itself: a
// cache would save little and hold memory. Otherwise the Tokenizer
// returned is a *CachedTokenizer.
func Cached(tok Tokenizer, size int) Tokenizer {
	switch tok.(type) {
	case nil, Estimate, *Estimate:
		return Estimate{}
	}
	if size <= 0 {
		size = DefaultCachedSize
	}
	// Shards of at least 64 entries, a power of two of them, at most 64.
	shards := 1
	if size >= 128 {
		shards = 1 << min(6, bits.Len(uint(size/64))-1)
	}
	c := &CachedTokenizer{tok: tok, shards: make([]cacheShard, shards), mask: uint64(shards - 1)}
	for i := range c.shards {
		s := &c.shards[i]
		s.max = size / shards
		if i < size%shards {
			s.max++
		}
		s.m = make(map[cacheKey]int, min(s.max, 1024))
	}
	return c
}

// CachedTokenizer is the Tokenizer Cached returns.
type CachedTokenizer struct {
	tok    Tokenizer
	shards []cacheShard
	mask   uint64
}

type cacheKey struct {
	hash uint64
	len  int
}

type cacheShard struct {
	mu  sync.RWMutex
	m   map[cacheKey]int
	max int
	_   [64]byte // keeps the shards' locks on separate cache lines
}

// Count returns the inner Tokenizer's count of text, from the cache when
// it holds it.
func (c *CachedTokenizer) Count(text string) int {
	if text == "" {
		return 0
	}
	h := maphash.String(cacheSeed, text)
	k := cacheKey{hash: h, len: len(text)}
	s := &c.shards[(h>>32)&c.mask]
	s.mu.RLock()
	n, ok := s.m[k]
	s.mu.RUnlock()
	if ok {
		return n
	}
	n = c.tok.Count(text)
	s.mu.Lock()
	if _, ok := s.m[k]; !ok && len(s.m) >= s.max {
		for old := range s.m { // map iteration starts at a random entry
			delete(s.m, old)
			break
		}
	}
	s.m[k] = n
	s.mu.Unlock()
	return n
}

// Len returns the number of counts held.
func (c *CachedTokenizer) Len() int {
	n := 0
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.RLock()
		n += len(s.m)
		s.mu.RUnlock()
	}
	return n
}

// Tokenizer returns the Tokenizer whose counts c memoizes.
func (c *CachedTokenizer) Tokenizer() Tokenizer { return c.tok }

package prompt

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"math"
	"math/bits"
	"strconv"
	"sync"
	"unicode/utf8"

	"github.com/pkoukk/tiktoken-go-loader/assets"
)

// rankTable maps the tokens of an encoding (byte strings) to their ranks,
// which are their IDs and their merge priorities. Tokens of one or two
// bytes are looked up in arrays indexed by their bytes; longer ones in a
// hash table with open addressing and linear probing, at most half full,
// over one string (arena) holding every token. A slot is a uint64: from
// the low bits up, 8 bits of the hash (0 never being a token's slot), the
// token's length (8 bits), its rank (24 bits) and its offset in arena (24
// bits). Nothing in the table is a pointer, so that the garbage collector
// has nothing to scan in it, and a look-up allocates nothing.
type rankTable struct {
	short  []uint32 // ranks of 1-byte tokens at [b], 2-byte ones at [256+b0<<8|b1]
	slots  []uint64
	mask   uint64
	arena  string
	size   int // tokens held
	maxLen int // of a token
}

// noRank is the rank of a byte string that is not a token.
const noRank = math.MaxUint32

// loadRanks reads a tiktoken vocabulary embedded by tiktoken-go-loader,
// such as "o200k_base.tiktoken": a line per token, its bytes in base64 and
// its rank.
func loadRanks(file string) (*rankTable, error) {
	data, err := assets.Assets.ReadFile(file)
	if err != nil {
		return nil, err
	}
	// entries holds each token's length, rank and offset in arena, as
	// the slots do.
	lines := bytes.Count(data, []byte{'\n'}) + 1
	entries := make([]uint64, 0, lines)
	arena := make([]byte, 0, len(data)*3/4)
	for line := range bytes.Lines(data) {
		line = bytes.TrimSuffix(line, []byte{'\n'})
		if len(line) == 0 {
			continue
		}
		sp := bytes.IndexByte(line, ' ')
		if sp < 0 {
			return nil, fmt.Errorf("%s: bad line %q", file, line)
		}
		off := len(arena)
		arena, err = base64.StdEncoding.AppendDecode(arena, line[:sp])
		if err != nil {
			return nil, fmt.Errorf("%s: %w", file, err)
		}
		n := len(arena) - off
		rank, err := strconv.Atoi(string(line[sp+1:]))
		if err != nil || rank < 0 || rank >= 1<<24 || n == 0 || n > 255 || off >= 1<<24 {
			return nil, fmt.Errorf("%s: bad line %q", file, line)
		}
		entries = append(entries, uint64(n)<<8|uint64(rank)<<16|uint64(off)<<40)
	}
	if len(entries) == 0 {
		return nil, errors.New(file + ": no tokens")
	}
	size := 1 << bits.Len(uint(2*len(entries)-1)) // at most half full
	t := &rankTable{
		short: make([]uint32, 256+1<<16),
		slots: make([]uint64, size),
		mask:  uint64(size - 1),
		arena: string(arena),
	}
	for i := range t.short {
		t.short[i] = noRank
	}
	for _, e := range entries {
		t.insert(e)
	}
	return t, nil
}

// insert adds the token of the slot e (without its hash), replacing the
// rank of an equal one.
func (t *rankTable) insert(e uint64) {
	n, rank, off := int(uint8(e>>8)), uint32(e>>16)&(1<<24-1), int(e>>40)
	tok := t.arena[off : off+n]
	t.maxLen = max(t.maxLen, n)
	switch n {
	case 1:
		t.short[tok[0]] = rank
	case 2:
		t.short[256+int(tok[0])<<8|int(tok[1])] = rank
	}
	h := hash(tok)
	slot := e | uint64(uint8(h>>56))
	for i := h & t.mask; ; i = (i + 1) & t.mask {
		old := t.slots[i]
		if old == 0 || t.equal(old, tok) {
			if old == 0 {
				t.size++
			}
			t.slots[i] = slot
			return
		}
	}
}

// equal reports whether the slot e holds the token s.
func (t *rankTable) equal(e uint64, s string) bool {
	if int(uint8(e>>8)) != len(s) {
		return false
	}
	off := int(e >> 40)
	return t.arena[off:off+len(s)] == s
}

// rank returns the rank of the token s, or noRank when s is not a token.
func (t *rankTable) rank(s string) uint32 {
	switch {
	case len(s) == 2:
		return t.short[256+int(s[0])<<8|int(s[1])]
	case len(s) == 1:
		return t.short[s[0]]
	case len(s) > t.maxLen:
		return noRank
	}
	h := hash(s)
	tag := uint8(h >> 56)
	for i := h & t.mask; ; i = (i + 1) & t.mask {
		e := t.slots[i]
		if e == 0 {
			return noRank
		}
		if uint8(e) == tag && t.equal(e, s) {
			return uint32(e>>16) & (1<<24 - 1)
		}
	}
}

// bytes returns the memory the table takes.
func (t *rankTable) bytes() int { return 4*len(t.short) + 8*len(t.slots) + len(t.arena) }

// hash returns the hash of s the table is keyed by. It needs no seed: the
// table is built once, from the vocabulary, and only looked up, so that
// no text can make a look-up probe more slots than the longest run of
// full slots the vocabulary leaves.
func hash(s string) uint64 {
	const k0, k1 = 0x9e3779b97f4a7c15, 0xbf58476d1ce4e5b9
	h := uint64(len(s)) * k0
	for len(s) > 8 {
		h = (h ^ load64(s)) * k1
		h ^= h >> 31
		s = s[8:]
	}
	// 1 to 8 bytes left, all of them in x.
	var x uint64
	if len(s) >= 4 {
		x = uint64(load32(s)) | uint64(load32(s[len(s)-4:]))<<32
	} else if len(s) > 0 {
		x = uint64(s[0]) | uint64(s[len(s)/2])<<8 | uint64(s[len(s)-1])<<16
	}
	h = (h ^ x) * k1
	h ^= h >> 32
	h *= k0
	h ^= h >> 29
	return h
}

func load64(s string) uint64 {
	_ = s[7]
	return uint64(s[0]) | uint64(s[1])<<8 | uint64(s[2])<<16 | uint64(s[3])<<24 |
		uint64(s[4])<<32 | uint64(s[5])<<40 | uint64(s[6])<<48 | uint64(s[7])<<56
}

func load32(s string) uint32 {
	_ = s[3]
	return uint32(s[0]) | uint32(s[1])<<8 | uint32(s[2])<<16 | uint32(s[3])<<24
}

// smallPiece is the length up to which a piece is merged in place, on the
// stack, in time quadratic in its length; longer pieces are merged with a
// heap, in time O(n log n), in buffers kept in a sync.Pool.
const smallPiece = 32

// maxPiece bounds the length of what is merged at once: a longer piece (a
// 64-kilobyte "word") is merged in parts, cut at rune boundaries, so that
// the memory a count takes stays bounded. Only then may a count differ
// from tiktoken's, by about a token per cut.
const maxPiece = 64 << 10

// tokens returns the number of tokens the piece p is merged into, and
// appends their ranks to *ids when ids is not nil.
func (t *rankTable) tokens(p string, ids *[]int) int {
	if r := t.rank(p); r != noRank {
		if ids != nil {
			*ids = append(*ids, int(r))
		}
		return 1
	}
	switch {
	case len(p) <= 1: // every byte is a token: not reached
		return len(p)
	case len(p) <= smallPiece:
		return t.mergeSmall(p, ids)
	case len(p) <= maxPiece:
		return t.mergeLarge(p, ids)
	}
	n := 0
	for len(p) > maxPiece {
		cut := maxPiece
		for cut > maxPiece-utf8.UTFMax && !utf8.RuneStart(p[cut]) {
			cut--
		}
		n += t.tokens(p[:cut], ids)
		p = p[cut:]
	}
	return n + t.tokens(p, ids)
}

// mergeSmall merges the piece p, 2 <= len(p) <= smallPiece, as tiktoken
// does: starting from its bytes, it merges the two adjacent parts whose
// concatenation is the token of the lowest rank (the leftmost pair among
// equals), until no two adjacent parts make a token. start holds the
// offsets where the parts start, then len(p); rank[i] is the rank of parts
// i and i+1 together.
func (t *rankTable) mergeSmall(p string, ids *[]int) int {
	var (
		start [smallPiece + 1]uint8
		rank  [smallPiece + 1]uint32
	)
	n := len(p) + 1 // entries of start
	for i := range n {
		start[i] = uint8(i)
	}
	for i := 0; i+2 < n; i++ {
		rank[i] = t.rank(p[i : i+2])
	}
	rank[n-2], rank[n-1] = noRank, noRank
	for n > 2 {
		best, b := uint32(noRank), -1
		for i, r := range rank[:n-2] {
			if r < best {
				best, b = r, i
			}
		}
		if b < 0 {
			break
		}
		// Merge parts b and b+1.
		copy(start[b+1:n-1], start[b+2:n])
		copy(rank[b+1:n-1], rank[b+2:n])
		n--
		rank[b] = noRank
		if b+2 < n {
			rank[b] = t.rank(p[start[b]:start[b+2]])
		}
		if b > 0 {
			rank[b-1] = t.rank(p[start[b-1]:start[b+1]])
		}
	}
	if ids != nil {
		for i := 0; i+1 < n; i++ {
			*ids = append(*ids, int(t.rank(p[start[i]:start[i+1]])))
		}
	}
	return n - 1
}

// mergeScratch holds the buffers of mergeLarge.
type mergeScratch struct {
	next, prev []int32
	rank       []uint32
	heap       []uint64
}

var scratchPool = sync.Pool{New: func() any { return new(mergeScratch) }}

// mergeLarge merges the piece p, len(p) >= 2, meant for the pieces over
// smallPiece, as mergeSmall does, with the parts in a linked list and the
// pairs of adjacent parts in a min-heap by (rank, offset): the heap's
// minimum is the pair mergeSmall would merge next. Parts are known by the
// offset where they start; next[a] is the offset of the part after the
// one at a (len(p) after the last), prev[a] the one before (-1 before the
// first), and rank[a] the rank of the parts at a and next[a] together,
// noRank when they make no token or once the part at a is merged into the
// one before. A heap entry whose rank is no longer rank[a] is stale and
// skipped: rank[a] only ever changes to noRank or to the rank of a longer
// byte string, which is another rank.
func (t *rankTable) mergeLarge(p string, ids *[]int) int {
	m := len(p)
	sc := scratchPool.Get().(*mergeScratch)
	defer scratchPool.Put(sc)
	if cap(sc.next) < m {
		sc.next, sc.prev, sc.rank = make([]int32, m), make([]int32, m), make([]uint32, m)
		sc.heap = make([]uint64, 0, 2*m)
	}
	next, prev, rank := sc.next[:m], sc.prev[:m], sc.rank[:m]
	h := sc.heap[:0]
	for i := range m {
		next[i], prev[i], rank[i] = int32(i+1), int32(i-1), noRank
		if i+2 <= m {
			if r := t.rank(p[i : i+2]); r != noRank {
				rank[i] = r
				h = append(h, uint64(r)<<32|uint64(i))
			}
		}
	}
	heapInit(h)
	parts := m
	for len(h) > 0 {
		var top uint64
		top, h = heapPop(h)
		r, a := uint32(top>>32), int32(top)
		if rank[a] != r {
			continue
		}
		b := next[a]
		c := next[b]
		next[a] = c
		if int(c) < m {
			prev[c] = a
		}
		rank[b] = noRank
		parts--
		rank[a] = noRank
		if int(c) < m {
			if r := t.rank(p[a:next[c]]); r != noRank {
				rank[a] = r
				h = heapPush(h, uint64(r)<<32|uint64(a))
			}
		}
		if pa := prev[a]; pa >= 0 {
			rank[pa] = t.rank(p[pa:c])
			if rank[pa] != noRank {
				h = heapPush(h, uint64(rank[pa])<<32|uint64(pa))
			}
		}
	}
	sc.heap = h
	if ids != nil {
		for a := int32(0); int(a) < m; a = next[a] {
			*ids = append(*ids, int(t.rank(p[a:next[a]])))
		}
	}
	if m > maxPieceKept {
		*sc = mergeScratch{} // do not keep the buffers of an outsized piece
	}
	return parts
}

// maxPieceKept is the length of piece whose merge buffers the pool keeps.
const maxPieceKept = 4 << 10

// heapInit orders h as a binary min-heap.
func heapInit(h []uint64) {
	for i := len(h)/2 - 1; i >= 0; i-- {
		heapDown(h, i)
	}
}

func heapPush(h []uint64, x uint64) []uint64 {
	h = append(h, x)
	for i := len(h) - 1; i > 0; {
		parent := (i - 1) / 2
		if h[parent] <= h[i] {
			break
		}
		h[parent], h[i] = h[i], h[parent]
		i = parent
	}
	return h
}

func heapPop(h []uint64) (uint64, []uint64) {
	top := h[0]
	last := len(h) - 1
	h[0] = h[last]
	h = h[:last]
	heapDown(h, 0)
	return top, h
}

func heapDown(h []uint64, i int) {
	for {
		l := 2*i + 1
		if l >= len(h) {
			return
		}
		if r := l + 1; r < len(h) && h[r] < h[l] {
			l = r
		}
		if h[i] <= h[l] {
			return
		}
		h[i], h[l] = h[l], h[i]
		i = l
	}
}

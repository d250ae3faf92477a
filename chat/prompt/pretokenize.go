package prompt

import (
	"sync"
	"unicode"
	"unicode/utf8"
)

// The pre-tokenizers below cut a text into pieces exactly as the regular
// expressions of o200k_base and cl100k_base do when tiktoken-go runs them
// with github.com/dlclark/regexp2:
//
// o200k_base:
//
//	[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?
//	|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?
//	|\p{N}{1,3}
//	| ?[^\s\p{L}\p{N}]+[\r\n/]*
//	|\s*[\r\n]+
//	|\s+(?!\S)
//	|\s+
//
// cl100k_base:
//
//	(?i:'s|'t|'re|'ve|'m|'ll|'d)
//	|[^\r\n\p{L}\p{N}]?\p{L}+
//	|\p{N}{1,3}
//	| ?[^\s\p{L}\p{N}]+[\r\n]*
//	|\s*[\r\n]+
//	|\s+(?!\S)
//	|\s+
//
// regexp2 matches runes, so invalid UTF-8 is first replaced, byte by byte,
// by U+FFFD (see counter.encode). It is a backtracking engine: at each
// position the first alternative that matches wins, quantifiers are
// greedy and give back what the rest of the alternative needs. Every
// position starts a match, so the pieces tile the text, each piece
// starting where the last one ends. Its classes come from Go's unicode
// package, as the ones below do: \p{..} is unicode.Categories, \s is
// unicode.IsSpace, and (?i) compares unicode.ToLower of the text's rune
// with the pattern's lower-case letter. Only ASCII capitals lower to the
// letters of the contractions, so U+017F, the long s, does not match the
// s of 's, as it would with case folding (U+212A, the Kelvin sign, would
// not either way: it folds to k).

// Rune classes, as bits: every rune has at most one of them but clSpace
// and clNewline, which \r and \n have both.
const (
	clUpper   uint8 = 1 << iota // Lu, Lt
	clLower                     // Ll
	clOther                     // Lm, Lo
	clMark                      // M: Mn, Mc, Me
	clNumber                    // N: Nd, Nl, No
	clSpace                     // unicode.IsSpace
	clNewline                   // \r, \n
)

// Classes of the patterns.
const (
	clLetter = clUpper | clLower | clOther // \p{L}
	clU      = clUpper | clOther | clMark  // [\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]
	clW      = clLower | clOther | clMark  // [\p{Ll}\p{Lm}\p{Lo}\p{M}]
)

// notLN reports whether a rune of class c is in [^\r\n\p{L}\p{N}], the
// optional prefix of a letter piece.
func notLN(c uint8) bool { return c&(clLetter|clNumber|clNewline) == 0 }

// notSLN reports whether a rune of class c is in [^\s\p{L}\p{N}], the
// class of punctuation pieces.
func notSLN(c uint8) bool { return c&(clLetter|clNumber|clSpace) == 0 }

// classTable maps every rune to its class: bytes for ASCII, and for any
// rune r, blocks[index[r>>8]<<8 | r&0xff], the 256-rune blocks being
// shared among the ranges of runes whose classes are the same (most of
// them). It takes about 43 KB.
type classTable struct {
	bytes  [256]uint8 // the class of ASCII bytes, clNotASCII for the others
	index  [(unicode.MaxRune + 1) >> 8]uint16
	blocks []uint8
}

// clNotASCII marks the bytes that start no ASCII rune.
const clNotASCII = 0xff

// classes returns the class table, built on first use, in about a
// millisecond.
var classes = sync.OnceValue(newClassTable)

func newClassTable() *classTable {
	all := make([]uint8, unicode.MaxRune+1)
	set := func(tab *unicode.RangeTable, bit uint8) {
		for _, r := range tab.R16 {
			for c := rune(r.Lo); c <= rune(r.Hi); c += rune(r.Stride) {
				all[c] |= bit
			}
		}
		for _, r := range tab.R32 {
			for c := rune(r.Lo); c <= rune(r.Hi); c += rune(r.Stride) {
				all[c] |= bit
			}
		}
	}
	set(unicode.Lu, clUpper)
	set(unicode.Lt, clUpper)
	set(unicode.Ll, clLower)
	set(unicode.Lm, clOther)
	set(unicode.Lo, clOther)
	set(unicode.M, clMark)
	set(unicode.N, clNumber)
	set(unicode.White_Space, clSpace)
	for c := range rune(0x100) { // unicode.IsSpace lists Latin-1's itself
		if unicode.IsSpace(c) {
			all[c] |= clSpace
		} else {
			all[c] &^= clSpace
		}
	}
	all['\r'] |= clNewline
	all['\n'] |= clNewline

	t := &classTable{}
	copy(t.bytes[:], all[:utf8.RuneSelf])
	for b := utf8.RuneSelf; b < len(t.bytes); b++ {
		t.bytes[b] = clNotASCII
	}
	ids := make(map[string]uint16)
	for b := range t.index {
		block := all[b<<8 : (b+1)<<8]
		id, ok := ids[string(block)]
		if !ok {
			id = uint16(len(t.blocks) >> 8)
			ids[string(block)] = id
			t.blocks = append(t.blocks, block...)
		}
		t.index[b] = id
	}
	return t
}

// of returns the class of the rune r, 0 <= r <= unicode.MaxRune.
func (t *classTable) of(r rune) uint8 {
	return t.blocks[int(t.index[r>>8])<<8|int(r&0xff)]
}

// at returns the class and the length of the rune that starts at s[i],
// i < len(s); s is valid UTF-8.
func (t *classTable) at(s string, i int) (uint8, int) {
	if c := t.bytes[s[i]]; c != clNotASCII {
		return c, 1
	}
	return t.atRune(s, i)
}

// atRune is at for a rune that is not ASCII.
func (t *classTable) atRune(s string, i int) (uint8, int) {
	r, n := utf8.DecodeRuneInString(s[i:])
	return t.of(r), n
}

// run returns the end of the run of runes of a class in mask that starts
// at s[i].
func (t *classTable) run(s string, i int, mask uint8) int {
	for i < len(s) {
		c, n := t.bytes[s[i]], 1
		if c == clNotASCII {
			c, n = t.atRune(s, i)
		}
		if c&mask == 0 {
			break
		}
		i += n
	}
	return i
}

// pieceO200k returns the end of the piece of o200k_base's pre-tokenizer
// that starts at s[i], i < len(s).
func (t *classTable) pieceO200k(s string, i int) int {
	c, n := t.at(s, i)
	if c&(clNumber|clNewline) == 0 {
		if e := t.lettersO200k(s, i, c, n); e > i {
			return e
		}
	}
	if c&clNumber != 0 {
		return t.numbers(s, i)
	}
	if e := t.punctuation(s, i, c, true); e > i {
		return e
	}
	return t.spaces(s, i)
}

// lettersO200k returns the end of the match of o200k_base's first two
// alternatives (the letter pieces) at s[i], whose rune is of class c and
// n bytes long; i when neither matches.
func (t *classTable) lettersO200k(s string, i int, c uint8, n int) int {
	// The optional prefix: taken first, then left out.
	var starts [2]int
	k := 0
	if notLN(c) && i+n < len(s) {
		starts[k] = i + n
		k++
	}
	if c&(clU|clW) != 0 {
		starts[k] = i
		k++
	}
	// [U]*[W]+: U* takes the whole run of U, then gives back until W+
	// can match. When the rune after the run is in W (a lower-case
	// letter), W+ is the run of W from there; else it is the last rune
	// of the run that is in W, when there is one.
	for _, st := range starts[:k] {
		j, lastW := st, -1
		for j < len(s) {
			cj, nj := t.at(s, j)
			if cj&clU == 0 {
				if cj&clW != 0 {
					return contraction(s, t.run(s, j+nj, clW))
				}
				break
			}
			j += nj
			if cj&clW != 0 {
				lastW = j
			}
		}
		if lastW >= 0 {
			return contraction(s, lastW)
		}
	}
	// [U]+[W]*
	for _, st := range starts[:k] {
		if cs, ns := t.at(s, st); cs&clU != 0 {
			return contraction(s, t.run(s, t.run(s, st+ns, clU), clW))
		}
	}
	return i
}

// pieceCl100k returns the end of the piece of cl100k_base's
// pre-tokenizer that starts at s[i], i < len(s).
func (t *classTable) pieceCl100k(s string, i int) int {
	if s[i] == '\'' {
		if e := contraction(s, i); e > i {
			return e
		}
	}
	c, n := t.at(s, i)
	if c&clLetter != 0 {
		return t.run(s, i+n, clLetter)
	}
	if notLN(c) && i+n < len(s) {
		if c1, n1 := t.at(s, i+n); c1&clLetter != 0 {
			return t.run(s, i+n+n1, clLetter)
		}
	}
	if c&clNumber != 0 {
		return t.numbers(s, i)
	}
	if e := t.punctuation(s, i, c, false); e > i {
		return e
	}
	return t.spaces(s, i)
}

// contraction returns the end of the match of
// (?i:'s|'t|'re|'ve|'m|'ll|'d) at s[i]; i when there is none.
func contraction(s string, i int) int {
	if i+1 >= len(s) || s[i] != '\'' {
		return i
	}
	// b|0x20 is the lower case of an ASCII letter; no other byte maps
	// to one of these letters, and no other rune lowers to one.
	switch s[i+1] | 0x20 {
	case 's', 't', 'm', 'd':
		return i + 2
	case 'r', 'v':
		if i+2 < len(s) && s[i+2]|0x20 == 'e' {
			return i + 3
		}
	case 'l':
		if i+2 < len(s) && s[i+2]|0x20 == 'l' {
			return i + 3
		}
	}
	return i
}

// numbers returns the end of the match of \p{N}{1,3} at s[i], which is
// a number.
func (t *classTable) numbers(s string, i int) int {
	for k := 0; k < 3 && i < len(s); k++ {
		c, n := t.at(s, i)
		if c&clNumber == 0 {
			break
		}
		i += n
	}
	return i
}

// punctuation returns the end of the match of ` ?[^\s\p{L}\p{N}]+[\r\n]*`,
// or with slash of ` ?[^\s\p{L}\p{N}]+[\r\n/]*`, at s[i], whose rune is of
// class c; i when it does not match.
func (t *classTable) punctuation(s string, i int, c uint8, slash bool) int {
	j := i
	switch {
	case notSLN(c):
	case s[i] == ' ' && i+1 < len(s):
		if c1, _ := t.at(s, i+1); !notSLN(c1) {
			return i
		}
		j++
	default:
		return i
	}
	for j < len(s) {
		cj, nj := t.at(s, j)
		if !notSLN(cj) {
			break
		}
		j += nj
	}
	for j < len(s) && (s[j] == '\r' || s[j] == '\n' || slash && s[j] == '/') {
		j++
	}
	return j
}

// spaces returns the end of the match of `\s*[\r\n]+|\s+(?!\S)|\s+` at
// s[i], which is white space: the run of white space up to its last line
// break when it has one; else the whole run when it ends the text or is a
// single rune; else the run but its last rune, which goes with the piece
// that follows.
func (t *classTable) spaces(s string, i int) int {
	j, last, afterNL, runes := i, i, -1, 0
	for j < len(s) {
		c, n := t.at(s, j)
		if c&clSpace == 0 {
			break
		}
		last = j
		j += n
		runes++
		if c&clNewline != 0 {
			afterNL = j
		}
	}
	switch {
	case afterNL >= 0:
		return afterNL
	case j == len(s) || runes == 1:
		return j
	}
	return last
}

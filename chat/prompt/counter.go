package prompt

import "unicode/utf8"

// counter counts the tokens of o200k_base or cl100k_base: a pre-tokenizer
// written for the encoding's pattern cuts the text into pieces (see
// pretokenize.go), and each piece is looked up in the encoding's ranks,
// then, when it is not a token itself, merged as tiktoken merges it.
// Counting allocates nothing but for invalid UTF-8 and pieces over
// smallPiece bytes (whose buffers come from a pool).
type counter struct {
	name  string
	o200k bool // o200k_base's pre-tokenizer, else cl100k_base's
	cls   *classTable
	ranks *rankTable
}

// newCounter loads the counter of o200k_base or cl100k_base.
func newCounter(name string) (*counter, error) {
	ranks, err := loadRanks(name + ".tiktoken")
	if err != nil {
		return nil, err
	}
	return &counter{name: name, o200k: name == O200kBase, cls: classes(), ranks: ranks}, nil
}

// Count returns the number of tokens tiktoken encodes text into, with
// special-token markers such as "<|endoftext|>" counted as the ordinary
// text they are in a message's content.
func (c *counter) Count(text string) int { return c.encode(text, nil) }

// String returns the encoding's name.
func (c *counter) String() string { return c.name }

// encode returns the number of tokens of text, appending their IDs to
// *ids when ids is not nil.
func (c *counter) encode(text string, ids *[]int) int {
	if !utf8.ValidString(text) {
		// tiktoken-go matches its pattern against []rune(text), in which
		// each byte of invalid UTF-8 is U+FFFD, and merges the UTF-8 of
		// these runes.
		text = string([]rune(text))
	}
	n := 0
	for i := 0; i < len(text); {
		e := c.piece(text, i)
		n += c.ranks.tokens(text[i:e], ids)
		i = e
	}
	return n
}

// piece returns the end of the piece of the pre-tokenizer that starts at
// text[i], i < len(text); text is valid UTF-8.
func (c *counter) piece(text string, i int) int {
	var e int
	if c.o200k {
		e = c.cls.pieceO200k(text, i)
	} else {
		e = c.cls.pieceCl100k(text, i)
	}
	if e <= i { // every position starts a piece: not reached
		_, size := utf8.DecodeRuneInString(text[i:])
		e = i + size
	}
	return e
}

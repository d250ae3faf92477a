package prompt

import (
	"fmt"
	"strconv"
	"strings"
	"sync"
	"unicode"
	"unicode/utf8"

	tiktoken "github.com/pkoukk/tiktoken-go"
	tiktoken_loader "github.com/pkoukk/tiktoken-go-loader"

	"github.com/chatscale/chatscale"
)

// Tokenizer counts the tokens of a text. Implementations are safe for
// concurrent use.
type Tokenizer interface {
	// Count returns the number of tokens of text; 0 for "".
	Count(text string) int
}

// The encodings ForEncoding knows, by their tiktoken names.
const (
	// O200kBase is the encoding of gpt-4o, gpt-4.1, gpt-4.5, gpt-5 and
	// the o-series models.
	O200kBase = tiktoken.MODEL_O200K_BASE
	// Cl100kBase is the encoding of gpt-4, gpt-3.5 and the
	// text-embedding-3 models.
	Cl100kBase = tiktoken.MODEL_CL100K_BASE
	// P50kBase is the encoding of the legacy text-davinci-002/003 and
	// code-davinci models.
	P50kBase = tiktoken.MODEL_P50K_BASE
	// P50kEdit is the encoding of the legacy edit models.
	P50kEdit = tiktoken.MODEL_P50K_EDIT
	// R50kBase is the encoding of the legacy GPT-3 models (davinci, curie,
	// babbage, ada).
	R50kBase = tiktoken.MODEL_R50K_BASE
)

// modelPrefixes maps model name prefixes to encodings, most specific
// first: the first prefix a name starts with wins. It covers what
// tiktoken-go v0.1.8's tables miss (gpt-5, the o-series, chatgpt-4o,
// Azure's "gpt-35" spelling, gpt-oss) and repeats what they have, so that
// the order is explicit instead of depending on map iteration.
var modelPrefixes = [...]struct{ prefix, encoding string }{
	{"gpt-4o", O200kBase},
	{"gpt-4.1", O200kBase},
	{"gpt-4.5", O200kBase},
	{"gpt-5", O200kBase},
	{"chatgpt-4o", O200kBase},
	{"o1", O200kBase},
	{"o3", O200kBase},
	{"o4", O200kBase},
	// gpt-oss uses o200k_harmony: o200k_base's vocabulary plus special
	// tokens, which Count never produces.
	{"gpt-oss", O200kBase},
	{"gpt-4", Cl100kBase},
	{"gpt-3.5", Cl100kBase},
	{"gpt-35", Cl100kBase},
	{"text-embedding-3", Cl100kBase},
	{"text-embedding-ada-002", Cl100kBase},
}

// EncodingForModel returns the name of the tiktoken encoding of an OpenAI
// model, or "" when the model is unknown. The name is matched without
// regard to case on its last path element ("openai/gpt-4o" and
// "deployments/gpt-4o" are gpt-4o), after a fine-tune's "ft:" prefix:
//
//   - gpt-4o*, gpt-4.1*, gpt-4.5*, gpt-5*, chatgpt-4o*, o1*, o3*, o4*,
//     gpt-oss* → o200k_base;
//   - gpt-4*, gpt-3.5*, gpt-35* (Azure), text-embedding-3*,
//     text-embedding-ada-002 → cl100k_base;
//   - the legacy completion, edit and embedding models tiktoken-go knows
//     by exact name (davinci, text-davinci-003, …) → r50k_base, p50k_base
//     or p50k_edit.
func EncodingForModel(model string) string {
	model = strings.TrimSpace(model)
	if i := strings.LastIndexByte(model, '/'); i >= 0 {
		model = model[i+1:]
	}
	model = strings.ToLower(model)
	model = strings.TrimPrefix(model, "ft:")
	for _, p := range modelPrefixes {
		if strings.HasPrefix(model, p.prefix) {
			return p.encoding
		}
	}
	if enc, ok := tiktoken.MODEL_TO_ENCODING[model]; ok && encodingIndex(enc) >= 0 {
		return enc
	}
	return ""
}

// ForModel returns the tokenizer of an OpenAI model (see
// EncodingForModel), counting tokens as tiktoken does from the
// vocabularies embedded in the binary, so that it works offline. An
// unknown model gets Estimate{} and a nil error. The error is only for a
// vocabulary that failed to load; the Tokenizer is then Estimate{}.
//
// For o200k_base and cl100k_base, the Tokenizer is the package's own
// counter (see the package documentation): its counts are tiktoken-go's,
// token for token, special-token markers counted as ordinary text, but
// for a piece of the pre-tokenizer over 64 KB (a 64-kilobyte "word"),
// merged in parts, which may be off by a token or so per part. It counts
// a 100-byte message in about a microsecond, without allocating. Loading
// takes about 60 ms and 5.9 MB of heap for o200k_base, 25 ms and 3.0 MB
// for cl100k_base.
//
// The legacy encodings count with tiktoken-go itself, whose counts are
// tiktoken's but where a run of over a kilobyte with no place where a
// piece ends (a kilobyte-long "word") is counted in parts, which may be
// off by a token per kilobyte; each takes some 50 ms and 6 MB of heap to
// load. Their first use installs tiktoken-go-loader's offline loader as
// tiktoken-go's vocabulary loader, a process-wide setting
// (tiktoken.SetBpeLoader).
//
// Each encoding is loaded once per process, on first use, and shared by
// every caller.
func ForModel(model string) (Tokenizer, error) {
	enc := EncodingForModel(model)
	if enc == "" {
		return Estimate{}, nil
	}
	return ForEncoding(enc)
}

// ForEncoding returns the tokenizer of a tiktoken encoding by name
// (O200kBase, Cl100kBase, P50kBase, P50kEdit, R50kBase), loaded as
// ForModel says. An unknown name is refused with a *chatscale.InputError
// (errors.Is(err, chatscale.ErrInvalidInput)), a vocabulary that failed to
// load with another error; the Tokenizer is then Estimate{}.
func ForEncoding(name string) (Tokenizer, error) {
	i := encodingIndex(name)
	if i < 0 {
		return Estimate{}, &chatscale.InputError{Package: "prompt", Field: "name", Reason: "unknown tiktoken encoding " + strconv.Quote(name)}
	}
	e := &encodings[i]
	e.once.Do(func() {
		if e.name == O200kBase || e.name == Cl100kBase {
			c, err := newCounter(e.name)
			if err != nil {
				e.err = fmt.Errorf("prompt: loading encoding %s: %w", e.name, err)
				return
			}
			e.tok = c
			return
		}
		installLoader()
		tk, err := tiktoken.GetEncoding(e.name)
		if err != nil {
			e.err = fmt.Errorf("prompt: loading tiktoken encoding %s: %w", e.name, err)
			return
		}
		e.tok = &bpe{name: e.name, tk: tk}
	})
	if e.err != nil {
		return Estimate{}, e.err
	}
	return e.tok, nil
}

// installLoader installs tiktoken-go-loader's offline vocabulary loader
// as tiktoken-go's, once: tiktoken.SetBpeLoader writes a global
// unguarded.
var installLoader = sync.OnceFunc(func() { tiktoken.SetBpeLoader(tiktoken_loader.NewOfflineLoader()) })

// encodings holds each encoding, loaded at most once per process.
var encodings = [...]struct {
	name string
	once sync.Once
	tok  Tokenizer
	err  error
}{
	{name: O200kBase}, {name: Cl100kBase}, {name: P50kBase}, {name: P50kEdit}, {name: R50kBase},
}

func encodingIndex(name string) int {
	for i := range encodings {
		if encodings[i].name == name {
			return i
		}
	}
	return -1
}

// bpe counts with a tiktoken-go encoding: the legacy ones, which the
// package's counter does not cover.
type bpe struct {
	name string
	tk   *tiktoken.Tiktoken
}

// partBytes bounds the part of a text given to tiktoken at once. tiktoken
// merges each pre-tokenizer piece in time quadratic in its length, so a
// long text is counted in parts cut where a piece ends (see cleanCut),
// which leaves the count unchanged. A stretch of partBytes with no such
// place (a kilobyte-long "word") is cut at a rune boundary instead, which
// keeps the time linear at the cost of maybe a token per cut.
const partBytes = 1024

// Count returns the number of tokens tiktoken-go encodes text into, with
// special-token markers such as "<|endoftext|>" counted as the ordinary
// text they are in a message's content.
func (b *bpe) Count(text string) int {
	n := 0
	for len(text) > 0 {
		cut, _ := nextCut(text, partBytes)
		n += len(b.tk.EncodeOrdinary(text[:cut]))
		text = text[cut:]
	}
	return n
}

// String returns the encoding's name.
func (b *bpe) String() string { return b.name }

// nextCut returns the length of the first part of s when s is cut into
// parts of at most limit bytes, and whether the cut is clean (see
// cleanCut; the end of s is clean). It cuts at the last clean place within
// limit bytes, or, when there is none, at the last rune boundary within
// limit bytes (at least one rune).
func nextCut(s string, limit int) (int, bool) {
	if len(s) <= limit {
		return len(s), true
	}
	// Look back from limit for a clean place, next being the rune that
	// starts at i and prev the one before it.
	i := limit
	for i > 0 && !utf8.RuneStart(s[i]) {
		i--
	}
	runeCut := i
	next, _ := utf8.DecodeRuneInString(s[i:])
	for i > 0 {
		prev, size := utf8.DecodeLastRuneInString(s[:i])
		if cleanCut(prev, next) {
			return i, true
		}
		i -= size
		next = prev
	}
	if runeCut == 0 {
		_, size := utf8.DecodeRuneInString(s)
		runeCut = size
	}
	return runeCut, false
}

// cleanCut reports whether a text holding the rune prev followed by the
// rune next can be cut between them without changing its tiktoken
// count: the count of the text is then the sum of the counts of its two
// parts. That holds where a piece of the encoding's pre-tokenizer (the
// regular expression that splits text before byte-pair merging) ends in
// the whole text, since the pieces after that place do not depend on
// the text before it. The rules are a conservative reading of the
// patterns of o200k_base, cl100k_base, p50k_base and r50k_base, in which
// no piece holds a non-space rune followed by a space or a tab, and no
// piece holds a letter followed by anything but a letter, a mark or
// (o200k_base's contractions) an apostrophe, or a number followed by
// anything but a number:
//
//   - prev is not white space and next is ' ' or '\t';
//   - prev is a letter and next is not a letter, a mark or an apostrophe;
//   - prev is a number and next is not a number.
func cleanCut(prev, next rune) bool {
	switch {
	case prev == utf8.RuneError || next == utf8.RuneError:
		return false
	case unicode.IsSpace(prev):
		return false
	case next == ' ' || next == '\t':
		return true
	case unicode.IsLetter(prev):
		return next != '\'' && !unicode.IsLetter(next) && !unicode.IsMark(next)
	case unicode.IsNumber(prev):
		return !unicode.IsNumber(next)
	}
	return false
}

// Package prompt counts tokens and cuts transcript excerpts for the turn
// pipeline, which assembles each tutor turn's prompt within token
// budgets: the system prompt and an excerpt of the video's transcript,
// then the thread's history, then the learner's new message.
//
// # Counting
//
// A [Tokenizer] counts the tokens of a text. [ForModel] returns the one of
// an OpenAI model, which counts as tiktoken does, from vocabularies
// embedded in the binary (by github.com/pkoukk/tiktoken-go-loader), so
// that counting needs no network at startup or ever; each vocabulary is
// loaded once per process, on first use, and shared. A model whose
// encoding is unknown gets [Estimate], which needs no vocabulary and leans
// high (about 1.3 times o200k_base's count on English, 1.1 to 1.7 on other
// languages, rarely under): with it a budget is rarely overrun, at the
// cost of leaving some of it unused.
//
// The package counts o200k_base and cl100k_base, the encodings of the
// current models, itself. A pre-tokenizer written for each encoding's
// regular expression cuts the text into pieces exactly where the
// expression does (without running it: a pass over the runes, their
// classes looked up in a table built from Go's unicode package); each
// piece is then looked up in the encoding's ranks (a hash table without
// pointers, from the embedded vocabulary), and a piece that is not a
// token itself is merged byte pair by byte pair as tiktoken merges it: on
// the stack for pieces of up to 32 bytes, with a heap in pooled buffers
// for longer ones. A 100-byte message takes about a microsecond, 40
// times less than with tiktoken-go, and no allocation. The ranks take 5.9 MB of heap for o200k_base and 3.0 MB for
// cl100k_base (tiktoken-go takes 24 and 12), loaded in about 60 and 25 ms;
// the table of rune classes, shared, 43 KB.
//
// The legacy encodings (p50k_base, p50k_edit, r50k_base) are counted by
// tiktoken-go (github.com/pkoukk/tiktoken-go), whose pre-tokenizer runs
// the regular expression with github.com/dlclark/regexp2: tens of
// microseconds and over a hundred allocations for a short message.
// tiktoken-go is also the reference the package's tests check the counts
// of o200k_base and cl100k_base against, token ID by token ID, on
// thousands of texts (prose in two dozen languages, Go's source and doc
// comments, random texts drawn from every Unicode category, invalid
// UTF-8) and in a fuzz test.
//
// The counts are tiktoken-go's (v0.1.8), which differ from those of
// OpenAI's own tiktoken in a few corners, where the package follows
// tiktoken-go:
//
//   - Character classes follow the Unicode version of Go's unicode package
//     (15.0.0 in Go 1.26), which regexp2 uses too; OpenAI's tiktoken
//     follows a later one, so a code point assigned since (such as the
//     CJK ideographs of Extension I, in Unicode 15.1, or the scripts new
//     in Unicode 16) is a letter or a number there and a symbol here.
//   - The contractions ("'s", "'LL", …) match without regard to case by
//     lower-casing the text's runes, so "'ſ" (a long s) is none, where
//     OpenAI's case folding makes it one.
//   - Invalid UTF-8, which OpenAI's tiktoken never sees (it encodes
//     Python strings), counts as if each invalid byte were a U+FFFD.
//
// The time of a count grows about linearly with the text's length.
// tiktoken merges a piece in time quadratic in its length, the package in
// O(n log n); a piece of over 64 KB (a 64-kilobyte "word") is merged in
// parts, to bound the memory a count takes, and may then be counted a
// token or so off per part. tiktoken-go's encodings are given texts of
// over a kilobyte in parts cut where a piece ends, which keeps their
// counts, or, in a kilobyte without such a place, at a rune boundary,
// which may be off by a token per cut.
//
// A count still costs about a microsecond per 100 bytes, and a thread's
// history comes back from the store as new strings every turn.
// [Cached] memoizes counts by a hash of the text, so that each message is
// tokenized once, however many turns carry it.
//
// # Transcript excerpts
//
// The transcript goes first in the prompt, after the system prompt, so
// that the upstream's prompt cache, which matches prompts by their prefix,
// serves it turn after turn. That works only while the excerpt stays
// byte-identical, so [Transcript.Window] cuts excerpts of a timed
// transcript at fixed chunk boundaries (every 2 minutes by default) around
// the learner's position: while the learner watches within one chunk, and
// the budget stays, every turn gets the same bytes. Without a position, or
// without timed segments, the excerpt is the beginning of the transcript,
// which stays a prefix of the whole as the budget varies.
//
// Tokenizing a long transcript takes time (about 0.7 ms for 20 KB of
// English), so it is done once per version of a transcript: [Prepare]
// renders and counts a document once, block by block, and Window then
// adds counts up instead of tokenizing. The blocks meet where tiktoken's
// pre-tokenizer ends a piece, so the sum is exact. [Transcripts] keeps the
// prepared transcripts, one per video, and prepares again only when a
// document's version changes.
//
// # Conventions
//
// The package follows the library's conventions where they apply. It has
// no Config, no Redis, no metrics and nothing to close: its constructors
// take the few settings they need as arguments, and an odd one (a nil
// Tokenizer, a chunk or size of zero or less) means the default rather
// than an error. The only input refused is an unknown encoding name in
// ForEncoding, with a *chatscale.InputError. Everything is safe for
// concurrent use.
package prompt

package chat

import (
	"context"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/chatscale/chatscale/chat/prompt"
	"github.com/chatscale/chatscale/contextcache"
	"github.com/chatscale/chatscale/threads"
)

// FuzzAssemble builds the prompt of turns with arbitrary transcripts,
// histories, questions, positions and budgets, through the Service's own
// plan and build, and checks that the prompt and the reply's maximum
// never exceed the context window (by the Service's count and by the
// tokenizer's count of the messages sent), that every message is valid
// UTF-8 when the inputs are, and that the prompt's prefix (system prompt
// and transcript excerpt) is byte-identical for two positions in one
// chunk.
func FuzzAssemble(f *testing.F) {
	f.Add("Goroutines are cheap.|Channels connect them.|Select waits on several.", []byte{0, 40, 90}, "What is select?", "earlier question\x00earlier answer", int64(70), int64(100), uint16(900), uint16(200), true, false)
	f.Add(strings.Repeat("A long transcript line about interfaces. ", 200), []byte{}, "And embedding?", "", int64(0), int64(0), uint16(400), uint16(64), false, true)
	f.Add(strings.Repeat("seg|", 120), []byte{3, 17, 250}, "q", strings.Repeat("h\x00", 30), int64(300), int64(359), uint16(2000), uint16(1000), true, true)
	f.Add("日本語のテキスト。|Ελληνικά.|🙂 emoji", []byte{10, 200}, "これは何？", "前の質問\x00前の答え", int64(5), int64(6), uint16(300), uint16(10), true, false)
	f.Add("bad \xff utf8", []byte{}, "why \xc0?", "x\x00\xfe", int64(0), int64(0), uint16(0), uint16(0), false, false)

	tok, err := prompt.ForModel("gpt-4o-mini")
	if err != nil {
		f.Fatal(err)
	}
	store, err := threads.NewMemory(threads.Config{})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { _ = store.Close() })
	cache, err := contextcache.New(contextcache.SourceFunc(func(context.Context, string, string) (contextcache.Document, error) {
		return contextcache.Document{}, contextcache.ErrNotFound
	}), contextcache.Config{})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { _ = cache.Close() })
	client, err := NewClient(NewOpenAI("http://127.0.0.1:1/v1", "sk-test", 1), Config{})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { _ = client.Close() })

	f.Fuzz(func(t *testing.T, text string, starts []byte, msg, history string, pos1, pos2 int64, window, reply uint16, hasPos, switched bool) {
		if len(text) > 1<<14 || len(history) > 1<<14 || len(starts) > 64 {
			return
		}
		cfg := ServiceConfig{
			Threads: store, Transcripts: cache, Completer: client, Model: "gpt-4o-mini", Tokenizer: tok,
			ContextWindow: 200 + int(window), MaxReplyTokens: 1 + int(reply)%(200+int(window)-1),
			TranscriptTokens: int(window) / 2, HistoryTokens: int(window) / 3, Chunk: time.Minute,
			MaxMessageBytes: 4096, MaxMessageTokens: 1024,
		}
		s, err := NewService(cfg)
		if err != nil {
			t.Fatalf("NewService: %v", err)
		}
		doc := fuzzDocument(text, starts)
		var hist []threads.Message
		if history != "" {
			for i, c := range strings.Split(history, "\x00") {
				role := threads.RoleUser
				if i%2 == 1 {
					role = threads.RoleAssistant
				}
				hist = append(hist, threads.Message{Role: role, Content: c})
			}
		}
		p1 := time.Duration(pos1%(1<<20)) * time.Second
		p2 := time.Duration(pos2%(1<<20)) * time.Second
		validIn := utf8.ValidString(msg) && utf8.ValidString(history)

		assemble := func(pos time.Duration) (*turn, bool) {
			tr := &turn{s: s, req: Request{UserID: "u", CourseID: "c", VideoURL: "v", Message: msg, Position: pos, HasPosition: hasPos},
				doc: doc, haveDoc: true,
				session: threads.Session{History: hist, VideoSwitched: switched, PreviousVideo: "w"}}
			n, err := s.validate(&tr.req)
			if err != nil {
				return nil, false
			}
			tr.msgTokens = n
			if err := tr.plan(); err != nil {
				if !strings.Contains(err.Error(), "context window") {
					t.Fatalf("plan: %v", err)
				}
				return nil, false
			}
			tr.build()
			return tr, true
		}
		tr, ok := assemble(p1)
		if !ok {
			return
		}
		b := &tr.built
		limit := cfg.ContextWindow - cfg.MaxReplyTokens
		if b.tokens > limit {
			t.Fatalf("prompt of %d tokens (Service's count) with a reply of %d, over the window of %d", b.tokens, cfg.MaxReplyTokens, cfg.ContextWindow)
		}
		counted := replyPriming
		for _, m := range b.messages {
			counted += tok.Count(m.Content) + perMessageTokens
			if validIn && !utf8.ValidString(m.Content) {
				t.Fatalf("a %s message of invalid UTF-8 from valid input: %q", m.Role, m.Content)
			}
		}
		if counted > b.tokens {
			t.Fatalf("the messages count %d tokens, the Service counted %d", counted, b.tokens)
		}
		if last := b.messages[len(b.messages)-1]; last.Content != msg {
			t.Fatalf("the last message is %q, not the question", last.Content)
		}
		if hasPos && p1/cfg.Chunk == p2/cfg.Chunk && (p1 >= 0) == (p2 >= 0) {
			tr2, ok := assemble(p2)
			if !ok {
				t.Fatalf("position %v assembles, %v of the same chunk does not", p1, p2)
			}
			if b.excerpt != tr2.built.excerpt || tr2.built.messages[0].Content != b.messages[0].Content {
				t.Fatalf("positions %v and %v of one chunk: prefixes differ:\n%+v\n%+v", p1, p2, b.excerpt, tr2.built.excerpt)
			}
		}
	})
}

// fuzzDocument builds a transcript from fuzzer input: text split at '|'
// into segments starting starts[i] seconds after the previous one (a byte
// over 0xf0 steps back), or, with no start bytes, text without segments.
func fuzzDocument(text string, starts []byte) contextcache.Document {
	doc := contextcache.Document{CourseID: "c", VideoURL: "v", Title: "Video"}
	if len(starts) == 0 {
		doc.Text = text
		return doc
	}
	var at time.Duration
	for i, part := range strings.Split(text, "|") {
		step := time.Duration(starts[i%len(starts)]) * time.Second
		if starts[i%len(starts)] > 0xf0 {
			step = -step / 8
		}
		at = max(0, at+step)
		doc.Segments = append(doc.Segments, contextcache.Segment{Start: at, End: at + time.Second, Text: part})
		doc.Text += part + " "
	}
	return doc
}

package prompt_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/chatscale/chatscale/chat/prompt"
)

var sink int

// question is a 100-byte learner question.
const question = "Why does the Calvin cycle stop at night if it doesn't use light directly? I'm confused about it all."

// message is a 200-byte tutor message.
const message = "Good question! The Calvin cycle doesn't need light itself, but it runs on the ATP and NADPH that the light reactions make. At night those run out within seconds, so the cycle slows down, and it stops."

// BenchmarkCountO200k and BenchmarkCountCl100k count texts with the
// package's counter and, as a reference, with tiktoken-go.
func BenchmarkCountO200k(b *testing.B) { benchmarkCount(b, prompt.O200kBase) }

func BenchmarkCountCl100k(b *testing.B) { benchmarkCount(b, prompt.Cl100kBase) }

func benchmarkCount(b *testing.B, enc string) {
	if len(question) != 100 || len(message) != 200 {
		b.Fatalf("question is %d bytes, message %d", len(question), len(message))
	}
	tok, err := prompt.ForEncoding(enc)
	if err != nil {
		b.Fatal(err)
	}
	tk := oracle(b, enc)
	all := samples(b)
	for _, text := range []struct{ name, s string }{
		{"question", question},
		{"message", message},
		{"en", all["en.txt"]},
		{"zh", all["zh.txt"]},
		{"code", all["code.txt"]},
	} {
		b.Run(text.name, func(b *testing.B) {
			b.Run("counter", func(b *testing.B) {
				b.ReportAllocs()
				b.SetBytes(int64(len(text.s)))
				for b.Loop() {
					sink += tok.Count(text.s)
				}
			})
			b.Run("tiktoken-go", func(b *testing.B) {
				b.ReportAllocs()
				b.SetBytes(int64(len(text.s)))
				for b.Loop() {
					sink += len(tk.EncodeOrdinary(text.s))
				}
			})
		})
	}
}

func BenchmarkCountEstimate(b *testing.B) {
	var tok prompt.Estimate
	b.ReportAllocs()
	for b.Loop() {
		sink += tok.Count(question)
	}
}

func BenchmarkCachedHit(b *testing.B) {
	tok := prompt.Cached(o200k(b), 0)
	msg := strings.Repeat(question, 2)
	tok.Count(msg)
	b.ReportAllocs()
	for b.Loop() {
		sink += tok.Count(msg)
	}
}

func BenchmarkCachedHitParallel(b *testing.B) {
	tok := prompt.Cached(o200k(b), 0)
	msgs := make([]string, 64)
	for i := range msgs {
		msgs[i] = fmt.Sprintf("%d %s", i, strings.Repeat(question, 2))[:200]
		tok.Count(msgs[i])
	}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			tok.Count(msgs[i%len(msgs)])
			i++
		}
	})
}

func BenchmarkPrepare(b *testing.B) {
	tok := o200k(b)
	doc := lecture(200, 13500*time.Millisecond)
	for i := range doc.Segments { // about 100 bytes each: 20 KB
		doc.Segments[i].Text += " Keep that in mind for the quiz."
	}
	b.Logf("%d segments, %d bytes of text", len(doc.Segments), len(prompt.Prepare(doc, prompt.Estimate{}, 0).Window(0, false, 1<<30).Text))
	b.ReportAllocs()
	for b.Loop() {
		prompt.Prepare(doc, tok, 0)
	}
}

func BenchmarkWindowRepeat(b *testing.B) {
	tr := prompt.Prepare(lecture(200, 13500*time.Millisecond), o200k(b), 0)
	budget := tr.Tokens() / 3
	tr.Window(20*time.Minute, true, budget)
	b.ReportAllocs()
	for b.Loop() {
		sink += tr.Window(21*time.Minute, true, budget).Tokens
	}
}

func BenchmarkWindowMiss(b *testing.B) {
	tr := prompt.Prepare(lecture(200, 13500*time.Millisecond), prompt.Cached(o200k(b), 0), 0)
	budget := tr.Tokens() / 3
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		i++
		sink += tr.Window(21*time.Minute, true, budget-i%1000).Tokens // a new budget each time
	}
}

func BenchmarkTranscriptsGetHit(b *testing.B) {
	c := prompt.NewTranscripts(o200k(b), 0, 0)
	doc := lecture(200, 13500*time.Millisecond)
	c.Get(doc)
	b.ReportAllocs()
	for b.Loop() {
		sink += c.Get(doc).Tokens()
	}
}

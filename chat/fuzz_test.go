package chat_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/chatscale/chatscale"
	"github.com/chatscale/chatscale/chat"
	"github.com/chatscale/chatscale/chat/prompt"
	"github.com/chatscale/chatscale/contextcache"
	"github.com/chatscale/chatscale/threads"
)

// Bounds of the Service FuzzRequestValidation runs, small so that the
// fuzzer reaches them.
const (
	fuzzMaxMessageBytes  = 256
	fuzzMaxMessageTokens = 24
)

// FuzzRequestValidation gives Ask arbitrary Requests. Each either fails
// validation with a *chat.ValidationError naming one of the Request's
// fields, matching ErrInvalidRequest and chatscale.ErrInvalidInput, or is
// a Request within every documented bound, which then gets past
// validation: the source has no transcript, so it ends in the
// *chat.UnavailableError of a missing transcript, with nothing stored.
func FuzzRequestValidation(f *testing.F) {
	f.Add("ada", "go-101", "intro", "What are goroutines?", int64(65*time.Second), true)
	f.Add("", "go-101", "intro", "q", int64(0), false)
	f.Add("ada", "", "intro", "q", int64(0), false)
	f.Add("ada", "go-101", "", "q", int64(0), false)
	f.Add("ada", "go-101", "intro", " \t\n ", int64(0), false)
	f.Add("ada", "go-101", "intro", "q", int64(-1), true)
	f.Add("ada", "go-101", "intro", "q", int64(-1), false)
	f.Add("a\xffb", "go-101", "intro", "q", int64(0), false)
	f.Add("ada", "go-101", "intro\xc0", "q", int64(0), false)
	f.Add("ada", "go-101", "intro", "caf\xe9", int64(0), false)
	f.Add(strings.Repeat("u", chat.MaxIDBytes+1), "c", "v", "q", int64(0), false)
	f.Add(strings.Repeat("é", chat.MaxIDBytes/2), "c", "v", "q", int64(0), false)
	f.Add("ada", "go-101", strings.Repeat("v", chat.MaxVideoURLBytes+1), "q", int64(0), false)
	f.Add("ada", "go-101", "intro", strings.Repeat("tokens ", 40), int64(0), false)
	f.Add("ada", "go-101", "intro", strings.Repeat("x", fuzzMaxMessageBytes), int64(0), false)
	f.Add("用户", "课程", "视频", "协程是什么？\u00a0", int64(1<<62), true)

	ctx := context.Background()
	store, err := threads.NewMemory(threads.Config{})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { _ = store.Close() })
	src := contextcache.SourceFunc(func(context.Context, string, string) (contextcache.Document, error) {
		return contextcache.Document{}, contextcache.ErrNotFound
	})
	cache, err := contextcache.New(src, contextcache.Config{})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { _ = cache.Close() })
	// The upstream is never called: no request gets past the transcript.
	client, err := chat.NewClient(chat.NewOpenAI("http://127.0.0.1:1/v1", "sk-test", 1), chat.Config{})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { _ = client.Close() })
	const model = "gpt-4o-mini"
	svc, err := chat.NewService(chat.ServiceConfig{
		Threads: store, Transcripts: cache, Completer: client, Model: model,
		MaxMessageBytes: fuzzMaxMessageBytes, MaxMessageTokens: fuzzMaxMessageTokens,
	})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { _ = svc.Close(context.Background()) })
	tok, err := prompt.ForModel(model)
	if err != nil {
		f.Fatal(err)
	}
	fields := map[string]bool{"UserID": true, "CourseID": true, "VideoURL": true, "Message": true, "Position": true}

	f.Fuzz(func(t *testing.T, user, course, video, msg string, pos int64, hasPos bool) {
		req := chat.Request{UserID: user, CourseID: course, VideoURL: video, Message: msg,
			Position: time.Duration(pos), HasPosition: hasPos}
		_, err := svc.Ask(ctx, req)
		if err == nil {
			t.Fatalf("Ask(%+v) succeeded without a transcript", req)
		}
		var ve *chat.ValidationError
		if errors.As(err, &ve) {
			if !errors.Is(err, chat.ErrInvalidRequest) || !errors.Is(err, chatscale.ErrInvalidInput) {
				t.Fatalf("Ask(%+v) = %v: a *ValidationError that is not ErrInvalidRequest and ErrInvalidInput", req, err)
			}
			if !fields[ve.Field] || ve.Reason == "" {
				t.Fatalf("Ask(%+v) = %#v: field or reason missing", req, ve)
			}
			return
		}
		// A valid request: every bound the documentation gives holds.
		for _, f := range [...]struct {
			name, v string
			max     int
		}{{"UserID", user, chat.MaxIDBytes}, {"CourseID", course, chat.MaxIDBytes}, {"VideoURL", video, chat.MaxVideoURLBytes}} {
			if f.v == "" || len(f.v) > f.max || !utf8.ValidString(f.v) {
				t.Fatalf("Ask accepted %s %q (%d bytes, valid UTF-8 %v): %v", f.name, f.v, len(f.v), utf8.ValidString(f.v), err)
			}
		}
		switch {
		case len(msg) > fuzzMaxMessageBytes || !utf8.ValidString(msg) || strings.TrimSpace(msg) == "":
			t.Fatalf("Ask accepted Message %q: %v", msg, err)
		case tok.Count(msg) > fuzzMaxMessageTokens:
			t.Fatalf("Ask accepted Message %q of %d tokens: %v", msg, tok.Count(msg), err)
		case hasPos && pos < 0:
			t.Fatalf("Ask accepted Position %v: %v", time.Duration(pos), err)
		}
		var ue *chat.UnavailableError
		if !errors.As(err, &ue) || ue.Reason != chat.ReasonNoTranscript {
			t.Fatalf("Ask(%+v) = %v; want the UnavailableError of a missing transcript", req, err)
		}
		if th, err := store.Find(ctx, user, course); !errors.Is(err, threads.ErrNotFound) {
			t.Fatalf("a refused turn left a thread: %+v, %v", th, err)
		}
	})
}

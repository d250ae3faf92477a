package mongotest_test

import (
	"context"
	"strings"
	"testing"

	"go.mongodb.org/mongo-driver/v2/bson"

	"github.com/chatscale/chatscale/chat"
	"github.com/chatscale/chatscale/contextcache"
	"github.com/chatscale/chatscale/contextcache/mongosource"
	"github.com/chatscale/chatscale/internal/testutil"
	"github.com/chatscale/chatscale/threads"
)

// TestServiceTurnWithTranscriptFromMongo runs turns through every real
// part: the transcript from the MongoDB-wire server through mongosource
// and contextcache (with Redis), the thread in Redis, the upstream a fake
// OpenAI server reached through go-openai and chat.Client.
func TestServiceTurnWithTranscriptFromMongo(t *testing.T) {
	t.Parallel()
	f := newFixture(t, mongosource.Config{})
	const video = "https://v.example/intro"
	course := f.insert(t, bson.NewObjectID(), video, "Intro to Go", "Hello world")
	env := testutil.Redis(t)
	ctx := testCtx(t)

	cache := newCache(t, f.src, contextcache.Config{Redis: env.Client, Prefix: env.Prefix})
	store, err := threads.NewRedis(env.Client, threads.Config{Prefix: env.Prefix})
	if err != nil {
		t.Fatal(err)
	}
	fake := testutil.OpenAI(t, testutil.OpenAIConfig{})
	client, err := chat.NewClient(chat.NewOpenAI(fake.URL, "sk-test", 4), chat.Config{Redis: env.Client, Prefix: env.Prefix})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = client.Close() })
	svc, err := chat.NewService(chat.ServiceConfig{Threads: store, Transcripts: cache, Completer: client, Model: "gpt-4o-mini"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = svc.Close(context.Background()) })

	req := chat.Request{UserID: "ada", CourseID: course, VideoURL: video, Message: "What is said first?"}
	r1, err := svc.Ask(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	req.Message = "And then?"
	r2, err := svc.Ask(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	ev := fake.Events()
	if len(ev) != 2 {
		t.Fatalf("upstream got %d requests, want 2", len(ev))
	}
	first, second := ev[0].Request.Messages, ev[1].Request.Messages
	if !strings.Contains(first[0].Content, `"Intro to Go"`) {
		t.Errorf("system prompt %q lacks the title stored in MongoDB", first[0].Content)
	}
	if tr := first[1].Content; !strings.Contains(tr, "Hello") || !strings.Contains(tr, "world") {
		t.Errorf("transcript message %q lacks the segments stored in MongoDB", tr)
	}
	if len(second) != 5 || second[2].Content != "What is said first?" || second[3].Content != r1.Reply || second[4].Content != "And then?" {
		t.Errorf("second turn messages = %+v", second)
	}
	if r1.TranscriptTier != contextcache.TierSource || r2.TranscriptTier != contextcache.TierL1 {
		t.Errorf("tiers = %v, %v; want source then l1", r1.TranscriptTier, r2.TranscriptTier)
	}
	if n := f.finds.Load(); n != 1 {
		t.Errorf("%d finds in MongoDB for two turns on one video, want 1", n)
	}
	hist, err := store.History(ctx, r2.ThreadID, 0)
	if err != nil || len(hist) != 4 || hist[3].Content != r2.Reply {
		t.Errorf("thread holds %d messages (%v), want both exchanges", len(hist), err)
	}
}

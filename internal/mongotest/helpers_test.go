package mongotest_test

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/event"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/chatscale/chatscale/contextcache"
	"github.com/chatscale/chatscale/contextcache/mongosource"
	"github.com/chatscale/chatscale/internal/mongotest"
	"github.com/chatscale/chatscale/internal/testutil"
)

// newClock returns an injected clock that moves only when told to, from a
// fixed start.
func newClock() *testutil.Clock {
	return testutil.NewClock(time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC))
}

// counting wraps a real Source and counts its calls. before, when set,
// runs at the start of each call.
type counting struct {
	src    contextcache.Source
	n      atomic.Int64
	before func(ctx context.Context)
}

func (c *counting) Load(ctx context.Context, courseID, videoURL string) (contextcache.Document, error) {
	c.n.Add(1)
	if c.before != nil {
		c.before(ctx)
	}
	return c.src.Load(ctx, courseID, videoURL)
}

// fixture is a mongosource.Source on the embedded MongoDB-wire server,
// with a driver command monitor that counts the find commands that reach
// it.
type fixture struct {
	env   *mongotest.Env
	coll  *mongo.Collection
	src   *mongosource.Source
	finds atomic.Int64
	// lastFind is the last find command sent.
	mu       sync.Mutex
	lastFind bson.Raw
}

// Server selection (which also bounds the wait for a pooled connection)
// gives up after fixtureSelection, so that a slow shared machine running
// many concurrent loads against the embedded server does not fail them;
// tests that stop the server use newStoppableFixture instead.
const fixtureSelection = 30 * time.Second

func newFixture(t testing.TB, cfg mongosource.Config) *fixture {
	t.Helper()
	if cfg.Timeout == 0 {
		cfg.Timeout = fixtureSelection
	}
	return newFixtureSelecting(t, cfg, fixtureSelection)
}

// newStoppableFixture is a fixture whose queries fail after about
// mongotest.SelectionTimeout (250 ms) once the server is stopped: the
// read on the cut connection fails at once, and the server selection of
// the driver's retry gives up after that long.
func newStoppableFixture(t testing.TB, cfg mongosource.Config) *fixture {
	t.Helper()
	return newFixtureSelecting(t, cfg, mongotest.SelectionTimeout)
}

func newFixtureSelecting(t testing.TB, cfg mongosource.Config, selection time.Duration) *fixture {
	t.Helper()
	f := &fixture{env: mongotest.Start(t)}
	mon := &event.CommandMonitor{Started: func(_ context.Context, e *event.CommandStartedEvent) {
		if e.CommandName == "find" {
			f.finds.Add(1)
			f.mu.Lock()
			f.lastFind = append(bson.Raw(nil), e.Command...)
			f.mu.Unlock()
		}
	}}
	client := f.env.NewClient(options.Client().SetMonitor(mon).SetServerSelectionTimeout(selection))
	// With a short selection timeout, the first operations may run before
	// the client has found the server; once it has, they select it at once.
	if err := mongotest.Ping(client, 30*time.Second); err != nil {
		t.Fatalf("ping: %v", err)
	}
	f.coll = client.Database(f.env.Database.Name()).Collection("transcripts")
	var err error
	if f.src, err = mongosource.New(f.coll, cfg); err != nil {
		t.Fatal(err)
	}
	return f
}

// insert stores a transcript with an ObjectID course and returns the
// course ID's hex form.
func (f *fixture) insert(t testing.TB, course bson.ObjectID, video, title, text string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err := f.coll.InsertOne(ctx, bson.D{
		{Key: "courseId", Value: course},
		{Key: "videoUrl", Value: video},
		{Key: "title", Value: title},
		{Key: "transcript", Value: text},
		{Key: "segments", Value: bson.A{
			bson.D{{Key: "start", Value: 0.0}, {Key: "end", Value: 1.5}, {Key: "text", Value: "Hello"}},
			bson.D{{Key: "start", Value: 1.5}, {Key: "end", Value: int32(3)}, {Key: "text", Value: "world"}},
		}},
		{Key: "updatedAt", Value: bson.NewDateTimeFromTime(time.Date(2026, 2, 1, 0, 0, 0, 0, time.UTC))},
	})
	if err != nil {
		t.Fatalf("insert: %v", err)
	}
	return course.Hex()
}

func (f *fixture) setTitle(t testing.TB, course, video, title string) {
	t.Helper()
	oid, _ := bson.ObjectIDFromHex(course)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	res, err := f.coll.UpdateOne(ctx,
		bson.D{{Key: "courseId", Value: oid}, {Key: "videoUrl", Value: video}},
		bson.D{{Key: "$set", Value: bson.D{{Key: "title", Value: title}}}})
	if err != nil || res.MatchedCount != 1 {
		t.Fatalf("update: %v (matched %v)", err, res)
	}
}

func newCache(t testing.TB, src contextcache.Source, cfg contextcache.Config) *contextcache.Cache {
	t.Helper()
	c, err := contextcache.New(src, cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

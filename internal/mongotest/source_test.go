package mongotest_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"

	"github.com/chatscale/chatscale"
	"github.com/chatscale/chatscale/contextcache"
	"github.com/chatscale/chatscale/contextcache/mongosource"
)

func TestMongoSourceLoadsProjectedDocument(t *testing.T) {
	t.Parallel()
	f := newFixture(t, mongosource.Config{})
	ctx := testCtx(t)
	oid := bson.NewObjectID()
	course := f.insert(t, oid, "https://v.example/a", "Intro", "Hello world")
	if _, err := f.coll.UpdateOne(ctx, bson.D{{Key: "videoUrl", Value: "https://v.example/a"}},
		bson.D{{Key: "$set", Value: bson.D{{Key: "unrelated", Value: strings.Repeat("z", 1000)}}}}); err != nil {
		t.Fatal(err)
	}

	d, err := f.src.Load(ctx, course, "https://v.example/a")
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	want := contextcache.Document{
		CourseID: course, VideoURL: "https://v.example/a", Title: "Intro", Text: "Hello world",
		Segments: []contextcache.Segment{
			{Start: 0, End: 1500 * time.Millisecond, Text: "Hello"},
			{Start: 1500 * time.Millisecond, End: 3 * time.Second, Text: "world"},
		},
	}
	if d.CourseID != want.CourseID || d.VideoURL != want.VideoURL || d.Title != want.Title || d.Text != want.Text ||
		len(d.Segments) != 2 || d.Segments[0] != want.Segments[0] || d.Segments[1] != want.Segments[1] ||
		!d.UpdatedAt.Equal(time.Date(2026, 2, 1, 0, 0, 0, 0, time.UTC)) {
		t.Fatalf("Load = %+v; want %+v", d, want)
	}

	f.mu.Lock()
	cmd := f.lastFind
	f.mu.Unlock()
	proj, err := cmd.LookupErr("projection")
	if err != nil {
		t.Fatalf("find command has no projection: %s", cmd)
	}
	got := map[string]bool{}
	elems, _ := proj.Document().Elements()
	for _, e := range elems {
		got[e.Key()] = true
	}
	for _, k := range []string{"_id", "title", "transcript", "segments", "updatedAt"} {
		if !got[k] {
			t.Errorf("projection %s lacks %q", proj, k)
		}
	}
	if len(got) != 5 {
		t.Errorf("projection %s; want exactly the 5 fields read", proj)
	}
	if v := cmd.Lookup("filter", "courseId"); v.Type != bson.TypeObjectID {
		t.Errorf("filter courseId is %s; want an ObjectID", v.Type)
	}
}

func TestMongoSourceMalformedObjectIDIsTypedErrorWithoutQuery(t *testing.T) {
	t.Parallel()
	f := newFixture(t, mongosource.Config{})
	ctx := testCtx(t)
	for _, id := range []string{"not-an-id", "0123456789abcdef0123456", "zz23456789abcdef01234567"} {
		_, err := f.src.Load(ctx, id, "v")
		var ie *chatscale.InputError
		if !errors.Is(err, chatscale.ErrInvalidInput) || !errors.As(err, &ie) || ie.Field != "CourseID" {
			t.Errorf("Load(%q) = %v; want a *chatscale.InputError on CourseID", id, err)
		}
	}
	if n := f.finds.Load(); n != 0 {
		t.Fatalf("%d find commands sent for malformed IDs; want 0", n)
	}

	// Through a Cache: the error is passed on and neither cached nor
	// counted as a Source failure.
	c := newCache(t, f.src, contextcache.Config{})
	if _, err := c.Get(ctx, "not-an-id", "v"); !errors.Is(err, chatscale.ErrInvalidInput) {
		t.Fatalf("Cache.Get: %v; want chatscale.ErrInvalidInput", err)
	}
	if s := c.Stats(); s.LoadErrors != 0 || s.L1Entries != 0 {
		t.Fatalf("Stats() = %+v; want no load error and nothing cached", s)
	}
}

func TestMongoSourceNotFound(t *testing.T) {
	t.Parallel()
	f := newFixture(t, mongosource.Config{})
	_, err := f.src.Load(testCtx(t), bson.NewObjectID().Hex(), "nope")
	if !errors.Is(err, contextcache.ErrNotFound) {
		t.Fatalf("Load of an absent transcript: %v; want ErrNotFound", err)
	}
}

func TestMongoSourceStringIDsAndCustomFields(t *testing.T) {
	t.Parallel()
	f := newFixture(t, mongosource.Config{})
	src, err := mongosource.New(f.coll, mongosource.Config{
		CourseIDField: "course", CourseID: mongosource.CourseIDString,
		VideoURLField: "url", TextField: "body", SegmentsField: "parts", TitleField: "meta.name",
		UpdatedAtField:    "changed",
		SegmentStartField: "s", SegmentEndField: "e", SegmentTextField: "t",
		SegmentUnit: time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx := testCtx(t)
	_, err = f.coll.InsertOne(ctx, bson.D{
		{Key: "course", Value: "course-7"},
		{Key: "url", Value: "v"},
		{Key: "meta", Value: bson.D{{Key: "name", Value: "Nested title"}}},
		{Key: "parts", Value: bson.A{
			bson.D{{Key: "s", Value: int64(0)}, {Key: "e", Value: int64(1200)}, {Key: "t", Value: "one"}},
			bson.D{{Key: "s", Value: int64(1200)}, {Key: "e", Value: int64(2500)}, {Key: "t", Value: "two"}},
		}},
	})
	if err != nil {
		t.Fatal(err)
	}
	d, err := src.Load(ctx, "course-7", "v")
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if d.Title != "Nested title" || d.Text != "one two" || len(d.Segments) != 2 ||
		d.Segments[1].End != 2500*time.Millisecond || !d.UpdatedAt.IsZero() {
		t.Fatalf("Load = %+v; want the nested title, text joined from the segments", d)
	}
	// A string ID that merely looks like an ObjectID is queried as a string.
	if _, err := src.Load(ctx, bson.NewObjectID().Hex(), "v"); !errors.Is(err, contextcache.ErrNotFound) {
		t.Fatalf("Load: %v; want ErrNotFound", err)
	}
}

func TestMongoSourceRejectsMistypedFields(t *testing.T) {
	t.Parallel()
	f := newFixture(t, mongosource.Config{})
	ctx := testCtx(t)
	oid := bson.NewObjectID()
	if _, err := f.coll.InsertOne(ctx, bson.D{
		{Key: "courseId", Value: oid}, {Key: "videoUrl", Value: "v"}, {Key: "transcript", Value: 42},
	}); err != nil {
		t.Fatal(err)
	}
	_, err := f.src.Load(ctx, oid.Hex(), "v")
	if err == nil || errors.Is(err, contextcache.ErrNotFound) || errors.Is(err, chatscale.ErrInvalidInput) {
		t.Fatalf("Load of a numeric transcript: %v; want a decoding error", err)
	}
}

func TestMongoSourceEnsureIndexes(t *testing.T) {
	t.Parallel()
	f := newFixture(t, mongosource.Config{})
	ctx := testCtx(t)
	for range 2 { // idempotent
		if err := f.src.EnsureIndexes(ctx); err != nil {
			t.Fatalf("EnsureIndexes: %v", err)
		}
	}
	cur, err := f.coll.Indexes().List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var specs []struct {
		Key bson.D `bson:"key"`
	}
	if err := cur.All(ctx, &specs); err != nil {
		t.Fatal(err)
	}
	found := map[string]bool{}
	for _, s := range specs {
		var parts []string
		for _, e := range s.Key {
			parts = append(parts, e.Key)
		}
		found[strings.Join(parts, ",")] = true
	}
	for _, want := range []string{"courseId,videoUrl", "courseId"} {
		if !found[want] {
			t.Errorf("no index on %s; have %v", want, found)
		}
	}
}

func TestClientOptionsWorkWithTheServer(t *testing.T) {
	t.Parallel()
	f := newFixture(t, mongosource.Config{})
	course := f.insert(t, bson.NewObjectID(), "v", "T", "text")
	client, err := mongo.Connect(mongosource.ClientOptions(f.env.URI))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = client.Disconnect(context.Background()) }()
	src, err := mongosource.New(client.Database(f.env.Database.Name()).Collection("transcripts"), mongosource.Config{})
	if err != nil {
		t.Fatal(err)
	}
	if d, err := src.Load(testCtx(t), course, "v"); err != nil || d.Title != "T" {
		t.Fatalf("Load through ClientOptions' client: %+v, %v", d, err)
	}
}

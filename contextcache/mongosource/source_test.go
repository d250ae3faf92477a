package mongosource_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/event"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/chatscale/chatscale"
	"github.com/chatscale/chatscale/contextcache"
	"github.com/chatscale/chatscale/contextcache/mongosource"
)

// The tests that need a server are in the module
// github.com/chatscale/chatscale/internal/mongotest, with the embedded
// FerretDB; these need none.

func TestClientOptionsDefaultsAndURIOverride(t *testing.T) {
	t.Parallel()
	o := mongosource.ClientOptions("mongodb://127.0.0.1:27017/")
	if o.MaxPoolSize == nil || *o.MaxPoolSize != 50 {
		t.Errorf("MaxPoolSize = %v; want 50", o.MaxPoolSize)
	}
	if o.ServerSelectionTimeout == nil || *o.ServerSelectionTimeout != 5*time.Second {
		t.Errorf("ServerSelectionTimeout = %v; want 5s", o.ServerSelectionTimeout)
	}
	if o.Timeout == nil || *o.Timeout != mongosource.DefaultClientTimeout {
		t.Errorf("Timeout = %v; want %v", o.Timeout, mongosource.DefaultClientTimeout)
	}
	o = mongosource.ClientOptions("mongodb://127.0.0.1:27017/?maxPoolSize=7")
	if o.MaxPoolSize == nil || *o.MaxPoolSize != 7 {
		t.Errorf("MaxPoolSize with ?maxPoolSize=7 = %v; want 7", o.MaxPoolSize)
	}
}

// unreachable returns a collection whose client points at a closed port.
// Connect does no I/O: the tests that use it never reach the server.
func unreachable(t *testing.T, mon *event.CommandMonitor) *mongo.Collection {
	t.Helper()
	o := options.Client().ApplyURI("mongodb://127.0.0.1:1").SetServerSelectionTimeout(100 * time.Millisecond)
	if mon != nil {
		o.SetMonitor(mon)
	}
	client, err := mongo.Connect(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = client.Disconnect(context.Background()) })
	return client.Database("db").Collection("transcripts")
}

func TestNewRejectsImpossibleConfig(t *testing.T) {
	t.Parallel()
	var ce *chatscale.ConfigError
	if _, err := mongosource.New(nil, mongosource.Config{}); !errors.Is(err, chatscale.ErrInvalidConfig) ||
		!errors.As(err, &ce) || ce.Package != "mongosource" || ce.Field != "coll" {
		t.Errorf("New(nil collection) = %v; want a *chatscale.ConfigError on coll", err)
	}
	coll := unreachable(t, nil)
	for _, tc := range []struct {
		cfg   mongosource.Config
		field string
	}{
		{mongosource.Config{SegmentUnit: -time.Second}, "Config.SegmentUnit"},
		{mongosource.Config{CourseID: mongosource.CourseIDString + 1}, "Config.CourseID"},
	} {
		if _, err := mongosource.New(coll, tc.cfg); !errors.Is(err, chatscale.ErrInvalidConfig) ||
			!errors.As(err, &ce) || ce.Package != "mongosource" || ce.Field != tc.field {
			t.Errorf("New(%+v) = %v; want a *chatscale.ConfigError on %s", tc.cfg, err, tc.field)
		}
	}
}

// TestLoadRejectsBadIDsWithoutQuery checks the Source contract without a
// server: IDs that cannot name a transcript are a *chatscale.InputError,
// and no command is sent for them.
func TestLoadRejectsBadIDsWithoutQuery(t *testing.T) {
	t.Parallel()
	var sent atomic.Int64
	mon := &event.CommandMonitor{Started: func(context.Context, *event.CommandStartedEvent) { sent.Add(1) }}
	src, err := mongosource.New(unreachable(t, mon), mongosource.Config{})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ course, video, field string }{
		{"not-an-id", "v", "CourseID"},
		{"0123456789abcdef0123456", "v", "CourseID"},
		{"", "v", "CourseID"},
		{"65f1c0ffee0000000000abcd", "", "VideoURL"},
		{"65f1c0ffee0000000000abcd", "v\n", "VideoURL"},
	} {
		_, err := src.Load(context.Background(), tc.course, tc.video)
		var ie *chatscale.InputError
		if !errors.Is(err, chatscale.ErrInvalidInput) || !errors.As(err, &ie) || ie.Field != tc.field ||
			errors.Is(err, contextcache.ErrNotFound) {
			t.Errorf("Load(%q, %q) = %v; want a *chatscale.InputError on %s", tc.course, tc.video, err, tc.field)
		}
	}
	if n := sent.Load(); n != 0 {
		t.Fatalf("%d commands sent for bad IDs; want 0", n)
	}
}

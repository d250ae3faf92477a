package contextcache_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chatscale/chatscale/contextcache"
	"github.com/chatscale/chatscale/internal/testutil"
)

// newClock returns an injected clock that moves only when told to, from a
// fixed start.
func newClock() *testutil.Clock {
	return testutil.NewClock(time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC))
}

// The tests of a Cache in front of MongoDB (mongosource on an embedded
// FerretDB) are in the module github.com/chatscale/chatscale/internal/mongotest.

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

package ratelimit_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/chatscale/chatscale"
	"github.com/chatscale/chatscale/internal/testutil"
)

// checkConfigError checks that err is a *chatscale.ConfigError of package
// ratelimit about field, matching chatscale.ErrInvalidConfig.
func checkConfigError(t *testing.T, what string, err error, field string) {
	t.Helper()
	var ce *chatscale.ConfigError
	if !errors.As(err, &ce) || !errors.Is(err, chatscale.ErrInvalidConfig) || ce.Package != "ratelimit" || ce.Field != field || ce.Reason == "" {
		t.Errorf("%s = %v, want a *chatscale.ConfigError for %s", what, err, field)
	}
}

// checkInputError checks that err is a *chatscale.InputError of package
// ratelimit about field, matching chatscale.ErrInvalidInput, and returns
// its Reason.
func checkInputError(t *testing.T, what string, err error, field string) string {
	t.Helper()
	var ie *chatscale.InputError
	if !errors.As(err, &ie) || !errors.Is(err, chatscale.ErrInvalidInput) || ie.Package != "ratelimit" || ie.Field != field || ie.Reason == "" {
		t.Errorf("%s = %v, want a *chatscale.InputError for %s", what, err, field)
		return ""
	}
	return ie.Reason
}

// newClock returns a clock tests move by hand. It starts at the wall time
// of its creation so that ctx deadlines derived from it are in the future.
func newClock() *testutil.Clock { return testutil.NewClock(time.Now()) }

// sleeps records the waits asked of a sleep hook and advances the clock
// by them instead of sleeping.
type sleeps struct {
	mu    sync.Mutex
	clock *testutil.Clock
	got   []time.Duration
	err   error // returned instead of sleeping when set
}

func (s *sleeps) sleep(ctx context.Context, d time.Duration) error {
	s.mu.Lock()
	s.got = append(s.got, d)
	err := s.err
	s.mu.Unlock()
	if err != nil {
		return err
	}
	if s.clock != nil {
		s.clock.Advance(d)
	}
	return ctx.Err()
}

func (s *sleeps) calls() []time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]time.Duration(nil), s.got...)
}

// noSleep fails the test if a sleep is asked for.
func noSleep(t *testing.T) func(context.Context, time.Duration) error {
	return func(_ context.Context, d time.Duration) error {
		t.Errorf("unexpected sleep of %s", d)
		return nil
	}
}

// cmdCounter is a go-redis hook counting the commands sent (a pipeline
// counts as one round trip).
type cmdCounter struct{ n atomic.Int64 }

func (c *cmdCounter) DialHook(next redis.DialHook) redis.DialHook { return next }
func (c *cmdCounter) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		c.n.Add(1)
		return next(ctx, cmd)
	}
}
func (c *cmdCounter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		c.n.Add(1)
		return next(ctx, cmds)
	}
}

// logBuffer is a concurrency-safe log sink.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) count(substr string) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return strings.Count(b.buf.String(), substr)
}

func (b *logBuffer) logger() *slog.Logger { return slog.New(slog.NewTextHandler(b, nil)) }

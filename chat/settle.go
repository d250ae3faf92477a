package chat

import (
	"context"
	"log/slog"
	"reflect"
	"sync"
	"sync/atomic"
	"time"

	"github.com/chatscale/chatscale/ratelimit"
)

// DefaultSettleDelay is how long a settlement may wait to be coalesced
// with others when Config.SettleDelay is zero. See Config.SettleDelay.
const DefaultSettleDelay = 50 * time.Millisecond

// maxFlushers bounds the Adjust calls one flush makes at once.
const maxFlushers = 16

// settleKey names one budget: a key of one Limiter.
type settleKey struct {
	lim ratelimit.Limiter
	key string
}

// settler makes the settlements (Adjust deltas) of a Client. A
// settlement on a Limiter that does I/O is added to pending, summed with
// the others on the same budget, and applied by a flusher goroutine at
// most delay later: one Adjust per budget and flush, zero sums skipped.
// The flusher exists only while something is pending. A *ratelimit.Local
// (no I/O), a negative delay and a closed settler settle inline.
type settler struct {
	delay   time.Duration // < 0: inline
	timeout time.Duration // bounds each Adjust, and the flush that close makes; <= 0: no bound
	logger  *slog.Logger
	name    string
	// after is the flush timer; tests replace it before the first call.
	after func(time.Duration) <-chan time.Time

	mu      sync.Mutex
	pending map[settleKey]int
	done    chan struct{} // non-nil while a flusher runs; closed when it returns
	stop    chan struct{} // closed by close: flush without waiting
	closed  bool
}

func newSettler(delay, timeout time.Duration, logger *slog.Logger, name string) *settler {
	return &settler{
		delay: delay, timeout: timeout, logger: logger, name: name,
		after: time.After,
		stop:  make(chan struct{}),
	}
}

// deferrable reports whether a settlement on lim can wait: lim does I/O
// (it is not a *ratelimit.Local) and can key a map without panicking.
func deferrable(lim ratelimit.Limiter) bool {
	switch lim.(type) {
	case *ratelimit.Local:
		return false
	case *ratelimit.Redis:
		return true
	}
	return reflect.ValueOf(lim).Comparable()
}

// later adds delta to key's pending settlement on lim and reports true,
// or reports false when the settlement must be made inline.
func (s *settler) later(lim ratelimit.Limiter, key string, delta int) bool {
	if s.delay < 0 || !deferrable(lim) {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	if s.pending == nil {
		s.pending = make(map[settleKey]int)
	}
	s.pending[settleKey{lim, key}] += delta
	if s.done == nil {
		s.done = make(chan struct{})
		go s.run(s.done)
	}
	return true
}

// run is the flusher: it waits delay (or until close), applies what is
// pending, and returns once nothing is.
func (s *settler) run(done chan struct{}) {
	for {
		select {
		case <-s.after(s.delay):
		case <-s.stop:
		}
		s.mu.Lock()
		batch, final := s.pending, s.closed
		s.pending = nil
		s.mu.Unlock()
		s.flush(batch, final)
		s.mu.Lock()
		if len(s.pending) == 0 {
			s.done = nil
			s.mu.Unlock()
			close(done)
			return
		}
		s.mu.Unlock()
	}
}

// flush makes one Adjust per budget of batch, up to maxFlushers at once,
// each bounded by timeout; when final (close), the whole flush is.
func (s *settler) flush(batch map[settleKey]int, final bool) {
	items := make([]settleKey, 0, len(batch))
	for k, d := range batch {
		if d != 0 {
			items = append(items, k)
		}
	}
	ctx := context.Background()
	if final {
		var cancel context.CancelFunc
		ctx, cancel = withTimeout(ctx, s.timeout)
		defer cancel()
	}
	apply := func(k settleKey) {
		actx, cancel := withTimeout(ctx, s.timeout)
		defer cancel()
		s.report(k.key, batch[k], k.lim.Adjust(actx, k.key, batch[k]))
	}
	if len(items) <= 1 {
		for _, k := range items {
			apply(k)
		}
		return
	}
	var (
		next atomic.Int64
		wg   sync.WaitGroup
	)
	for range min(len(items), maxFlushers) {
		wg.Go(func() {
			for i := next.Add(1) - 1; i < int64(len(items)); i = next.Add(1) - 1 {
				apply(items[i])
			}
		})
	}
	wg.Wait()
}

func (s *settler) report(key string, delta int, err error) {
	if err != nil {
		s.logger.Warn("chat: settling budget", "name", s.name, "key", key, "delta", delta, "err", err)
	}
}

// close flushes what is pending at once and waits for the flusher; later
// settlements are inline. It may be called more than once.
func (s *settler) close() {
	s.mu.Lock()
	if !s.closed {
		s.closed = true
		close(s.stop)
	}
	done := s.done
	s.mu.Unlock()
	if done != nil {
		<-done
	}
}

// flushing returns a channel closed when the running flusher returns, or
// nil when none runs.
func (s *settler) flushing() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.done == nil {
		return nil
	}
	return s.done
}

// adjust settles delta on key of lim (nil: nothing): later and coalesced
// when lim does I/O and SettleDelay is not negative (see settler), else
// now, as adjustNow does.
func (c *Client) adjust(ctx context.Context, lim ratelimit.Limiter, key string, delta int) {
	if lim == nil || delta == 0 || c.settle.later(lim, key, delta) {
		return
	}
	c.adjustNow(ctx, lim, key, delta)
}

// adjustNow settles delta on lim (nil: nothing) before it returns, even
// when ctx has ended, in at most RedisTimeout. A *ratelimit.Local does no
// I/O and ignores ctx, so it gets no timer.
func (c *Client) adjustNow(ctx context.Context, lim ratelimit.Limiter, key string, delta int) {
	if lim == nil || delta == 0 {
		return
	}
	var err error
	if _, local := lim.(*ratelimit.Local); local {
		err = lim.Adjust(ctx, key, delta)
	} else {
		sctx, cancel := c.br.storeCtx(ctx)
		err = lim.Adjust(sctx, key, delta)
		cancel()
	}
	c.settle.report(key, delta, err)
}

// settlement is what an attempt gives back to the shared budgets once it
// is known whether a retry follows: the Client makes it before the
// retry's wait for budget (inline), or later, coalesced, when the call
// ends.
type settlement struct {
	requests, tokens int // deltas, zero or negative
}

func (c *Client) settleNow(ctx context.Context, s settlement) {
	c.adjustNow(ctx, c.cfg.Requests, c.cfg.RequestKey, s.requests)
	c.adjustNow(ctx, c.cfg.Tokens, c.cfg.TokenKey, s.tokens)
}

func (c *Client) settleLater(ctx context.Context, s settlement) {
	c.adjust(ctx, c.cfg.Requests, c.cfg.RequestKey, s.requests)
	c.adjust(ctx, c.cfg.Tokens, c.cfg.TokenKey, s.tokens)
}

package threads_test

import (
	"context"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/chatscale/chatscale/internal/testutil"
)

// newFakeClock returns a clock tests move by hand, from a fixed start.
func newFakeClock() *testutil.Clock {
	return testutil.NewClock(time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC))
}

// roundTrips counts what a go-redis client sends: one per command outside
// pipelines, one per pipeline. With dataOnly it ignores the commands that
// set up connections and read the cluster's topology.
type roundTrips struct {
	n        atomic.Int64
	dataOnly bool
}

var _ redis.Hook = (*roundTrips)(nil)

func (h *roundTrips) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h *roundTrips) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		switch cmd.Name() {
		case "hello", "auth", "select", "client", "readonly", "cluster", "ping":
			if h.dataOnly {
				return next(ctx, cmd)
			}
		}
		h.n.Add(1)
		return next(ctx, cmd)
	}
}

func (h *roundTrips) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		h.n.Add(1)
		return next(ctx, cmds)
	}
}

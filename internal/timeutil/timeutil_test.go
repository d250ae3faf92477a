package timeutil_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/chatscale/chatscale/internal/timeutil"
)

func TestSleepReturnsWhenCtxEnds(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- timeutil.Sleep(ctx, time.Hour) }()
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("Sleep after cancel = %v; want context.Canceled", err)
	}
}

func TestSleepElapses(t *testing.T) {
	if err := timeutil.Sleep(context.Background(), time.Millisecond); err != nil {
		t.Fatalf("Sleep(1ms) = %v; want nil", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := timeutil.Sleep(ctx, 0); !errors.Is(err, context.Canceled) {
		t.Fatalf("Sleep(0) with an ended ctx = %v; want context.Canceled", err)
	}
	if err := timeutil.Sleep(context.Background(), -time.Second); err != nil {
		t.Fatalf("Sleep(-1s) = %v; want nil", err)
	}
}

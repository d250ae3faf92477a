// Package rediscall bounds one Redis call in time the same way in every
// chatscale package, whatever the go-redis client's options.
//
// go-redis bounds a call on the socket by its ReadTimeout and WriteTimeout
// (5 s by default in v9.23) and ignores the deadline of the call's ctx
// unless the client has ContextTimeoutEnabled. A Redis that hangs instead
// of dying (a stopped process, a network stall) then holds each call for
// the client's timeouts, however short the caller's deadline. [Do] returns
// by the earlier of the caller's deadline and the package's own bound
// (Config.RedisTimeout in every package): with ContextTimeoutEnabled the
// call itself gives up then and go-redis drops the connection; without it
// the call goes on in its own goroutine until go-redis' timeouts end it,
// and Do returns without waiting for it.
package rediscall

import (
	"context"
	"fmt"
	"time"
)

// DefaultTimeout is the bound a package applies to one Redis call when its
// Config.RedisTimeout is zero: far above a healthy call (well under a
// millisecond on a LAN) and well below a turn's deadline, so that a hung
// Redis counts as failed while the turn still has time to answer without it.
const DefaultTimeout = time.Second

// TimeoutError is returned by [Bound.Do] when the bound passed before the
// call returned while the caller's ctx was still live. It reports itself
// as a timeout (a net.Error's Timeout method) and matches
// context.DeadlineExceeded, so code that tells a slow store from a failed
// one by either test keeps working.
type TimeoutError struct {
	// After is the bound that passed.
	After time.Duration
}

func (e *TimeoutError) Error() string {
	return fmt.Sprintf("redis call took longer than %v", e.After)
}

// Timeout reports true.
func (e *TimeoutError) Timeout() bool { return true }

// Is reports whether target is context.DeadlineExceeded.
func (e *TimeoutError) Is(target error) bool { return target == context.DeadlineExceeded }

// Bound is the time limit of a package's Redis calls on one client. The
// zero Bound has no limit of its own: calls end with their ctx.
type Bound struct {
	d time.Duration
}

// New returns the Bound of Redis calls: timeout when it is positive,
// DefaultTimeout when it is zero, no bound of its own when it is negative.
func New(timeout time.Duration) Bound {
	if timeout == 0 {
		timeout = DefaultTimeout
	}
	if timeout < 0 {
		timeout = 0
	}
	return Bound{d: timeout}
}

// Timeout returns the bound, 0 when there is none.
func (b Bound) Timeout() time.Duration { return b.d }

// Do runs call with a ctx that ends at the earlier of the bound and ctx's
// deadline, and returns what call returned, or, when call has not returned
// by then, ctx's error if ctx's deadline passed and a *TimeoutError if the
// bound did. A call that ends with that deadline is reported the same way.
//
// A ctx cancelled (rather than past its deadline) while the call runs
// does not abandon it at once: the command may already be in Redis, and a
// caller told "cancelled" could not know whether it took effect (a budget
// spent, a message stored) to undo or retry it. Do waits up to
// CancelGrace more (within the same deadline) for the call's answer and
// returns it; the caller sees its ctx ended on its next step. Only a Redis
// that does not answer within the grace gets ctx's error. A ctx that has
// ended before Do is called sends nothing and returns ctx's error.
//
// call must not keep its ctx or write to anything the caller reads after
// Do returns: when the client ignores ctx deadlines (go-redis without
// ContextTimeoutEnabled), call may still be running then.
func Do[T any](ctx context.Context, b Bound, call func(ctx context.Context) (T, error)) (T, error) {
	if err := ctx.Err(); err != nil {
		var zero T
		return zero, err
	}
	base := context.WithoutCancel(ctx)
	dl, ok := ctx.Deadline()
	if b.d > 0 {
		if bd := time.Now().Add(b.d); !ok || bd.Before(dl) {
			dl, ok = bd, true
		}
	}
	if !ok && ctx.Done() == nil {
		return call(base)
	}
	cctx, cancel := context.WithCancel(base)
	if ok {
		cctx, cancel = context.WithDeadline(base, dl)
	}
	defer cancel()
	// go-redis with ContextTimeoutEnabled turns the deadline into socket
	// deadlines; without it the call ignores the deadline, so it runs in a
	// goroutine of its own that Do stops waiting for.
	type result struct {
		v   T
		err error
	}
	done := make(chan result, 1)
	go func() {
		v, err := call(cctx)
		done <- result{v, err}
	}()
	var grace <-chan time.Time
	cancelled := ctx.Done()
	for {
		select {
		case r := <-done:
			if r.err != nil {
				r.err = b.translate(ctx, cctx, r.err)
			}
			return r.v, r.err
		case <-cctx.Done():
			var zero T
			return zero, b.translate(ctx, cctx, cctx.Err())
		case <-cancelled:
			cancelled = nil
			t := time.NewTimer(CancelGrace)
			defer t.Stop()
			grace = t.C
		case <-grace:
			var zero T
			return zero, ctx.Err()
		}
	}
}

// CancelGrace is how long Do still waits for the answer of a call whose
// ctx was cancelled while it ran: a healthy Redis answers well within it.
const CancelGrace = 100 * time.Millisecond

// translate turns an error that the end of the bounded ctx caused into the
// caller's ctx error or a *TimeoutError. A client that honours ctx reports
// a deadline on the socket as a net timeout, so any error of a call whose
// bounded ctx has ended is taken as caused by it.
// The socket's deadline can pass a moment before the ctx's timer fires,
// so a deadline in the past counts as ended too.
func (b Bound) translate(ctx, cctx context.Context, err error) error {
	if !ended(cctx) {
		return err
	}
	if dl, ok := ctx.Deadline(); ok && !time.Now().Before(dl) {
		// The caller's deadline has passed; its ctx's own timer fires a
		// moment after the copy's at most.
		<-ctx.Done()
		return ctx.Err()
	}
	return &TimeoutError{After: b.d}
}

func ended(ctx context.Context) bool {
	if ctx.Err() != nil {
		return true
	}
	dl, ok := ctx.Deadline()
	return ok && !time.Now().Before(dl)
}

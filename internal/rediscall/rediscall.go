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

// Do runs call with a ctx that ends at the bound or with ctx, whichever is
// first, and returns what call returned, or, when call has not returned
// by then, ctx's error if ctx ended and a *TimeoutError if the bound
// passed. A call that ends with the bounded ctx's deadline is reported the
// same way. call must not keep its ctx or write to anything the caller
// reads after Do returns: when the client ignores ctx deadlines, call may
// still be running then.
func Do[T any](ctx context.Context, b Bound, call func(ctx context.Context) (T, error)) (T, error) {
	if err := ctx.Err(); err != nil {
		var zero T
		return zero, err
	}
	cctx, cancel := ctx, context.CancelFunc(func() {})
	if b.d > 0 {
		if dl, ok := ctx.Deadline(); !ok || time.Until(dl) > b.d {
			cctx, cancel = context.WithTimeout(ctx, b.d)
		}
	}
	defer cancel()
	if cctx.Done() == nil {
		return call(cctx)
	}
	// Even a client that honours ctx only turns its deadline into socket
	// deadlines and does not watch for cancellation, so the call runs in a
	// goroutine of its own whatever the client.
	type result struct {
		v   T
		err error
	}
	done := make(chan result, 1)
	go func() {
		v, err := call(cctx)
		done <- result{v, err}
	}()
	select {
	case r := <-done:
		if r.err != nil {
			r.err = b.translate(ctx, cctx, r.err)
		}
		return r.v, r.err
	case <-cctx.Done():
		var zero T
		return zero, b.translate(ctx, cctx, cctx.Err())
	}
}

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
	if ended(ctx) {
		if cerr := ctx.Err(); cerr != nil {
			return cerr
		}
		return context.DeadlineExceeded
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

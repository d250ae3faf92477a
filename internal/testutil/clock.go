package testutil

import (
	"sync"
	"time"
)

// Clock is a manual clock for the injected Now of the packages under test:
// it stands still until a test moves it with Advance or Set. It is safe for
// concurrent use. The zero value reads as the zero time; use NewClock.
type Clock struct {
	mu  sync.Mutex
	now time.Time
}

// NewClock returns a Clock that reads start until it is moved. Tests whose
// code compares the clock with a context deadline (which is on the wall
// clock) should start it at time.Now().
func NewClock(start time.Time) *Clock {
	return &Clock{now: start}
}

// Now returns the clock's current time. Its method value fits a
// Config.Now func() time.Time field.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// Advance moves the clock forward by d (backward when d is negative).
func (c *Clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// Set moves the clock to t.
func (c *Clock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = t
}

package testutil

import "time"

// Eventually polls cond every 10 ms until it holds or timeout passes, and
// reports whether it held. It is for conditions that another process (a
// real Redis, a subscriber) makes true, which no channel or fake clock can
// signal.
func Eventually(timeout time.Duration, cond func() bool) bool {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		if cond() {
			return true
		}
		select {
		case <-deadline.C:
			return cond()
		case <-tick.C:
		}
	}
}

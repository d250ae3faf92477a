package testutil

import (
	"testing"
	"time"
)

func TestEventually(t *testing.T) {
	n := 0
	if !Eventually(5*time.Second, func() bool { n++; return n >= 3 }) {
		t.Fatal("Eventually gave up on a condition that held on the third poll")
	}
	if Eventually(20*time.Millisecond, func() bool { return false }) {
		t.Fatal("Eventually reported a condition that never held")
	}
}

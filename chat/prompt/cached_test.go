package prompt_test

import (
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/chatscale/chatscale/chat/prompt"
)

func TestCachedCountsAsTheInnerTokenizer(t *testing.T) {
	inner := &counting{tok: o200k(t)}
	c := prompt.Cached(inner, 1000)
	texts := []string{"", "a", "hello world"}
	for _, s := range samples(t) {
		texts = append(texts, s)
	}
	for _, s := range texts {
		want := o200k(t).Count(s)
		for range 3 {
			if got := c.Count(s); got != want {
				t.Fatalf("Count(%.20q) = %d, want %d", s, got, want)
			}
		}
	}
	// Each non-empty text tokenized once, however often counted, and
	// whichever copy of it is counted.
	if got, want := inner.calls.Load(), int64(len(texts)-1); got != want {
		t.Errorf("%d inner counts, want %d", got, want)
	}
	if n := c.Count(strings.Clone("hello world")); n != 2 || inner.calls.Load() != int64(len(texts)-1) {
		t.Error("a new copy of a counted text was counted again")
	}
}

func TestCachedIsBounded(t *testing.T) {
	for _, size := range []int{1, 10, 100, 1000, 5000} {
		c := prompt.Cached(&counting{tok: prompt.Estimate{}}, size).(*prompt.CachedTokenizer)
		for i := range 4 * size {
			c.Count(fmt.Sprintf("message %d", i))
		}
		if n := c.Len(); n > size || n < size*9/10 {
			t.Errorf("size %d: %d entries", size, n)
		}
	}
	c := prompt.Cached(o200k(t), 0).(*prompt.CachedTokenizer)
	if c.Len() != 0 || c.Tokenizer() != o200k(t) {
		t.Error("new cache")
	}
}

func TestCachedHitDoesNotAllocate(t *testing.T) {
	c := prompt.Cached(o200k(t), 100)
	msg := strings.Repeat("Why does the Calvin cycle stop in the dark? ", 5)[:200]
	c.Count(msg)
	if allocs := testing.AllocsPerRun(1000, func() { c.Count(msg) }); allocs != 0 {
		t.Errorf("a hit allocates %v times", allocs)
	}
}

func TestCachedOfEstimateIsEstimate(t *testing.T) {
	for _, tok := range []prompt.Tokenizer{nil, prompt.Estimate{}, &prompt.Estimate{}} {
		if c := prompt.Cached(tok, 10); c != (prompt.Estimate{}) {
			t.Errorf("Cached(%#v) = %#v", tok, c)
		}
	}
}

func TestCachedConcurrentUse(t *testing.T) {
	inner := &counting{tok: prompt.Estimate{}}
	c := prompt.Cached(inner, 64)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 2000 {
				s := fmt.Sprintf("text %d", (i*7+g)%200)
				if c.Count(s) != (prompt.Estimate{}).Count(s) {
					t.Error("wrong count")
					return
				}
			}
		})
	}
	wg.Wait()
	if n := c.(*prompt.CachedTokenizer).Len(); n > 64 {
		t.Errorf("%d entries, bound 64", n)
	}
}

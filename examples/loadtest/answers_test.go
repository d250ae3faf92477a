package main

import (
	"context"
	"io"
	"math/rand/v2"
	"path/filepath"
	"strings"
	"testing"
	"unicode"
)

// TestCommonQuestionVariants: the variants differ in casing, spacing and
// trailing punctuation only, so that each is one of the five questions
// once normalised as the answer cache does.
func TestCommonQuestionVariants(t *testing.T) {
	norm := func(s string) string {
		s = strings.Join(strings.Fields(strings.ToLower(s)), " ")
		return strings.TrimRightFunc(s, func(r rune) bool { return unicode.IsSpace(r) || strings.ContainsRune(".?!,;:…", r) })
	}
	base := map[string]bool{}
	for _, q := range commonQuestions {
		base[norm(q)] = true
	}
	r := rand.New(rand.NewPCG(1, 2))
	raw := map[string]bool{}
	for range 500 {
		q := commonQuestion(r)
		if !base[norm(q)] {
			t.Fatalf("%q normalises to %q, not one of the common questions", q, norm(q))
		}
		raw[q] = true
	}
	if len(raw) < 50 {
		t.Errorf("%d distinct wordings in 500 draws, want many more than the 5 questions", len(raw))
	}
}

// TestAnswerCacheRunAddsUp: every first turn asks a common question on a
// course of 2 videos, so at most 10 answers are made and the other first
// turns are hits; the saved tokens are those the misses spent.
func TestAnswerCacheRunAddsUp(t *testing.T) {
	dir := t.TempDir()
	short := func() options {
		o := shortOptions(t, io.Discard)
		o.Learners, o.Courses, o.Videos, o.Common = 40, 1, 2, 1
		return o
	}

	// The same setup without the cache: every turn is one request.
	o := short()
	o.JSONPath = filepath.Join(dir, "base.json")
	base, _, err := runInProcess(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	if err := writeJSONFile(o.JSONPath, base); err != nil {
		t.Fatal(err)
	}
	ba := base.Answers
	if ba == nil || ba.CacheOn || ba.Hits != 0 || ba.Eligible != 0 {
		t.Fatalf("without -answers: %+v, want the cache off and no hits", ba)
	}
	if ba.FirstTurns < 30 || ba.FirstTurnsCommon != ba.FirstTurns {
		t.Fatalf("%d first turns, %d common; want at least 30, all common", ba.FirstTurns, ba.FirstTurnsCommon)
	}
	if base.Turns.OK != base.Turns.Asked || ba.UpstreamRequests != base.Turns.Asked || ba.RequestsPerTurn != 1 {
		t.Fatalf("baseline: %d turns asked, %d ok, %d upstream requests (%.3f a turn); want one each", base.Turns.Asked, base.Turns.OK, ba.UpstreamRequests, ba.RequestsPerTurn)
	}

	o = short()
	o.Answers, o.BaselinePath = true, filepath.Join(dir, "base.json")
	rep, _, err := runInProcess(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	a := rep.Answers
	tr := rep.Turns
	if tr.OK != tr.Asked {
		t.Fatalf("not every turn answered by the model or the cache: %+v, degraded %v, errors %v", tr, rep.DegradedByReason, rep.ErrorsByKind)
	}
	keys := o.Courses * o.Videos * len(commonQuestions)
	if a.FirstTurns < 30 || a.FirstTurnsCommon != a.FirstTurns {
		t.Fatalf("%d first turns, %d common; want at least 30, all common", a.FirstTurns, a.FirstTurnsCommon)
	}
	// Every first turn looks the cache up; one miss per key at most.
	if a.Eligible != a.FirstTurns || a.Hits+a.Misses != a.Eligible || a.Misses > keys || a.Misses == 0 {
		t.Errorf("%d eligible turns (%d hits, %d misses) for %d first turns; want all eligible, at most %d misses", a.Eligible, a.Hits, a.Misses, a.FirstTurns, keys)
	}
	if a.Hits < a.FirstTurns-keys || a.HitsCommon != a.Hits || a.HitsL1+a.HitsL2 != a.Hits {
		t.Errorf("hits %d (common %d, l1 %d + l2 %d) of %d first turns, want at least %d", a.Hits, a.HitsCommon, a.HitsL1, a.HitsL2, a.FirstTurns, a.FirstTurns-keys)
	}
	// A hit makes no upstream call; every other turn makes one.
	if a.UpstreamRequests != tr.Asked-a.Hits || a.UpstreamCalls != a.UpstreamRequests {
		t.Errorf("%d upstream requests (%d calls) for %d turns and %d hits", a.UpstreamRequests, a.UpstreamCalls, tr.Asked, a.Hits)
	}
	// Saved tokens: each hit saves the reply the fake sends and a prompt
	// of its own; the learners' sum is the metrics'.
	if a.SavedCompletionTokens != a.Hits*o.ReplyTokens || a.SavedPromptTokens < a.Hits*100 {
		t.Errorf("saved completion %d, prompt %d for %d hits; want %d and at least %d", a.SavedCompletionTokens, a.SavedPromptTokens, a.Hits, a.Hits*o.ReplyTokens, a.Hits*100)
	}
	if a.SavedTokens != a.SavedPromptTokens+a.SavedCompletionTokens || a.SavedTokens != a.MetricSavedTokens {
		t.Errorf("saved %d (prompt %d + completion %d), metrics %d", a.SavedTokens, a.SavedPromptTokens, a.SavedCompletionTokens, a.MetricSavedTokens)
	}
	if a.RequestsPerTurnIfNoHit != 1 || a.RequestsPerTurn >= 1 {
		t.Errorf("requests per turn %.3f, %.3f with a request per hit; want under 1, and 1", a.RequestsPerTurn, a.RequestsPerTurnIfNoHit)
	}
	if b := a.Baseline; b == nil || b.RequestsPerTurn != 1 || b.Ratio != a.RequestsPerTurn {
		t.Errorf("baseline %+v, want 1 request per turn and the ratio %.3f", b, a.RequestsPerTurn)
	}
}

package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
)

// AnswersReport is the question mix and what the answer cache did. The
// turn figures come from the learners' side (Response.Cached and
// SavedUsage); the tiers, misses and eligible turns from the instances'
// ai_chat_answer_cache_* metrics (with -answers only).
type AnswersReport struct {
	CacheOn     bool    `json:"cache_on"`
	CommonShare float64 `json:"common_share"` // -common

	FirstTurns       int     `json:"first_turns"` // a learner's first turn on its course
	FirstTurnsCommon int     `json:"first_turns_common"`
	FirstTurnsShare  float64 `json:"first_turns_share_of_turns"`

	Hits        int `json:"hits"` // turns answered with Response.Cached
	HitsCommon  int `json:"hits_common"`
	HitsL1      int `json:"hits_l1"` // metrics, tier l1
	HitsL2      int `json:"hits_l2"` // metrics, tier l2
	Misses      int `json:"misses"`  // metrics: looked up, asked the upstream
	Eligible    int `json:"eligible"`
	RedisErrors int `json:"redis_errors"`

	HitRatioEligible float64 `json:"hit_ratio_eligible"` // hits / (hits + misses)
	HitRatioTurns    float64 `json:"hit_ratio_turns"`    // hits / turns asked

	// Saved* sum the hits' SavedUsage; MetricSavedTokens is
	// ai_chat_answer_cache_saved_tokens_total over its kinds.
	SavedPromptTokens     int `json:"saved_prompt_tokens"`
	SavedCompletionTokens int `json:"saved_completion_tokens"`
	SavedTokens           int `json:"saved_tokens"`
	MetricSavedTokens     int `json:"metric_saved_tokens"`

	// UpstreamCalls are the calls the instances made (HTTP attempts,
	// retries included); UpstreamRequests those the fake received
	// (admitted or refused). PerTurn is UpstreamRequests over turns
	// asked; PerTurnIfNoHits adds a request per hit, what the same turns
	// would have cost without the cache.
	UpstreamCalls          int     `json:"upstream_calls"`
	UpstreamRequests       int     `json:"upstream_requests"`
	UpstreamTokens         int     `json:"upstream_tokens_admitted"`
	RequestsPerTurn        float64 `json:"upstream_requests_per_turn"`
	RequestsPerTurnIfNoHit float64 `json:"upstream_requests_per_turn_if_no_hits"`

	Baseline *AnswersBaseline `json:"baseline,omitempty"`
}

// AnswersBaseline is the run -baseline names: the same setup without
// the cache.
type AnswersBaseline struct {
	File             string  `json:"file"`
	Turns            int     `json:"turns_asked"`
	UpstreamRequests int     `json:"upstream_requests"`
	RequestsPerTurn  float64 `json:"upstream_requests_per_turn"`
	UpstreamTokens   int     `json:"upstream_tokens_admitted"`
	// Ratio is this run's requests per turn over the baseline's.
	Ratio float64 `json:"requests_per_turn_ratio"`
}

// fillMix counts the first turns, the common questions and the hits the
// learners saw.
func fillMix(rep *Report, recs []turnRecord) {
	a := &AnswersReport{}
	for _, r := range recs {
		if r.first {
			a.FirstTurns++
			if r.common {
				a.FirstTurnsCommon++
			}
		}
		a.UpstreamCalls += r.attempts
		if !r.cached {
			continue
		}
		a.Hits++
		if r.common {
			a.HitsCommon++
		}
		a.SavedPromptTokens += r.saved.PromptTokens
		a.SavedCompletionTokens += r.saved.CompletionTokens
	}
	a.SavedTokens = a.SavedPromptTokens + a.SavedCompletionTokens
	if n := len(recs); n > 0 {
		a.FirstTurnsShare = round3(float64(a.FirstTurns) / float64(n))
		a.HitRatioTurns = round3(float64(a.Hits) / float64(n))
	}
	rep.Answers = a
}

// answerCounts are the instances' answer cache metrics, summed.
type answerCounts struct {
	l1, l2, misses, saved, redisErrors int
}

// answerMetrics sums the ai_chat_answer_cache_* counters of the instances.
func (c *cluster) answerMetrics() (answerCounts, error) {
	var n answerCounts
	for _, reg := range c.regs {
		mfs, err := reg.Gather()
		if err != nil {
			return n, err
		}
		for _, mf := range mfs {
			for _, m := range mf.GetMetric() {
				v := int(m.GetCounter().GetValue())
				tier := ""
				for _, l := range m.GetLabel() {
					if l.GetName() == "tier" {
						tier = l.GetValue()
					}
				}
				switch name := mf.GetName(); {
				case strings.HasSuffix(name, "answer_cache_hits_total"):
					if tier == "l2" {
						n.l2 += v
					} else {
						n.l1 += v
					}
				case strings.HasSuffix(name, "answer_cache_misses_total"):
					n.misses += v
				case strings.HasSuffix(name, "answer_cache_saved_tokens_total"):
					n.saved += v
				case strings.HasSuffix(name, "answer_cache_redis_errors_total"):
					n.redisErrors += v
				}
			}
		}
	}
	return n, nil
}

// fillAnswers completes rep.Answers with the cache's metrics, the
// upstream's figures and the baseline's.
func fillAnswers(rep *Report, o options, mc answerCounts) error {
	a := rep.Answers
	if a == nil {
		a = &AnswersReport{}
		rep.Answers = a
	}
	a.CacheOn, a.CommonShare = o.Answers, o.Common
	a.HitsL1, a.HitsL2, a.Misses, a.MetricSavedTokens, a.RedisErrors = mc.l1, mc.l2, mc.misses, mc.saved, mc.redisErrors
	a.Eligible = mc.l1 + mc.l2 + mc.misses
	if a.Eligible > 0 {
		a.HitRatioEligible = round3(float64(mc.l1+mc.l2) / float64(a.Eligible))
	}
	a.UpstreamRequests = rep.Upstream.Requests + rep.Upstream.Rejected429
	a.UpstreamTokens = rep.Upstream.Tokens
	if turns := rep.Turns.Asked; turns > 0 {
		a.RequestsPerTurn = round3(float64(a.UpstreamRequests) / float64(turns))
		a.RequestsPerTurnIfNoHit = round3(float64(a.UpstreamRequests+a.Hits) / float64(turns))
	}
	if o.BaselinePath == "" {
		return nil
	}
	b, err := os.ReadFile(o.BaselinePath)
	if err != nil {
		return fmt.Errorf("-baseline: %w", err)
	}
	var base Report
	if err := json.Unmarshal(b, &base); err != nil {
		return fmt.Errorf("-baseline %s: %w", o.BaselinePath, err)
	}
	if base.Answers == nil || base.Turns.Asked == 0 {
		return fmt.Errorf("-baseline %s: not an in-process report with turns", o.BaselinePath)
	}
	bl := &AnswersBaseline{File: o.BaselinePath, Turns: base.Turns.Asked, UpstreamRequests: base.Answers.UpstreamRequests,
		RequestsPerTurn: base.Answers.RequestsPerTurn, UpstreamTokens: base.Answers.UpstreamTokens}
	if bl.RequestsPerTurn > 0 {
		bl.Ratio = round3(a.RequestsPerTurn / bl.RequestsPerTurn)
	}
	a.Baseline = bl
	return nil
}

// print writes the mix and cache lines of the report.
func (a *AnswersReport) print(w io.Writer, asked int) {
	p := func(format string, args ...any) { fmt.Fprintf(w, format+"\n", args...) }
	p("question mix: %d first turns (%.1f %% of %d turns), %d of them a common question (-common %g)",
		a.FirstTurns, 100*a.FirstTurnsShare, asked, a.FirstTurnsCommon, a.CommonShare)
	if a.CacheOn {
		p("answer cache: %d hits (%d on common questions; l1 %d, l2 %d), %d misses; hit ratio %.3f of %d eligible turns, %.4f of all turns; redis errors %d",
			a.Hits, a.HitsCommon, a.HitsL1, a.HitsL2, a.Misses, a.HitRatioEligible, a.Eligible, a.HitRatioTurns, a.RedisErrors)
		p("              tokens saved %d (prompt %d, completion %d; metrics %d)",
			a.SavedTokens, a.SavedPromptTokens, a.SavedCompletionTokens, a.MetricSavedTokens)
	} else {
		p("answer cache: off")
	}
	p("upstream requests per turn: %.4f (%d requests, %d calls by the instances, %d tokens admitted); with a request per hit %.4f",
		a.RequestsPerTurn, a.UpstreamRequests, a.UpstreamCalls, a.UpstreamTokens, a.RequestsPerTurnIfNoHit)
	if b := a.Baseline; b != nil {
		p("baseline %s: %.4f requests per turn (%d requests, %d turns, %d tokens); ratio %.3f",
			b.File, b.RequestsPerTurn, b.UpstreamRequests, b.Turns, b.UpstreamTokens, b.Ratio)
	}
}

package queue

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/chatscale/chatscale"
	"github.com/chatscale/chatscale/chat"
	"github.com/chatscale/chatscale/contextcache"
)

// zeroFields returns the fields of the struct v that hold their zero value.
func zeroFields(v any) []string {
	var out []string
	rv := reflect.ValueOf(v)
	for i := range rv.NumField() {
		if rv.Field(i).IsZero() {
			out = append(out, rv.Type().Field(i).Name)
		}
	}
	return out
}

// Every field of a chat.Response survives the trip through a stored
// result; a field added to chat.Response without its wire field fails
// here.
func TestResponseRoundTrip(t *testing.T) {
	in := chat.Response{
		ThreadID: "t1", Reply: "r", Created: true, VideoChanged: true, PreviousVideo: "v0",
		Degraded: true, Reasons: []chat.Reason{chat.ReasonStaleTranscript, chat.ReasonBreakerOpen}, Stored: true,
		Usage:        chat.Usage{PromptTokens: 10, CachedPromptTokens: 4, CompletionTokens: 5},
		PromptTokens: 11, HistoryMessages: 2, TranscriptTier: contextcache.TierL2,
		TranscriptStale: true, TranscriptMissing: true, TranscriptCut: true, Member: "secondary",
		Cached: true, Replayed: true, SavedUsage: chat.Usage{PromptTokens: 20, CachedPromptTokens: 8, CompletionTokens: 9},
	}
	if z := zeroFields(in); len(z) > 0 {
		t.Fatalf("the test's Response leaves %v unset", z)
	}
	res := &result{V: Version, Attempt: 2, AtMS: 1, Response: toWireResponse(in)}
	j, err := json.Marshal(res)
	if err != nil {
		t.Fatal(err)
	}
	back, err := decodeResult(j)
	if err != nil {
		t.Fatal(err)
	}
	if got := back.Response.response(); !reflect.DeepEqual(got, in) {
		t.Errorf("round trip:\n got %+v\nwant %+v", got, in)
	}
	for _, tier := range []contextcache.Tier{0, contextcache.TierL1, contextcache.TierL2, contextcache.TierSource} {
		r := chat.Response{TranscriptTier: tier}
		if got := toWireResponse(r).response().TranscriptTier; got != tier {
			t.Errorf("tier %v came back as %v", tier, got)
		}
	}
}

func TestRequestRoundTrip(t *testing.T) {
	in := chat.Request{UserID: "u", CourseID: "c", VideoURL: "v", Message: "m", Position: 90 * time.Second, HasPosition: true, TurnID: "t"}
	if z := zeroFields(in); len(z) > 0 {
		t.Fatalf("the test's Request leaves %v unset", z)
	}
	b, err := encodePayload(&payload{V: Version, Request: toWireRequest(in), EnqueuedAtMS: 1, TimeoutMS: 1000, MaxAttempts: 3})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(string(b), `{"v":1,`) {
		t.Errorf("payload %s does not start with its version", b)
	}
	p, err := decodePayload(b)
	if err != nil {
		t.Fatal(err)
	}
	if got := p.Request.request(); got != in {
		t.Errorf("round trip: got %+v, want %+v", got, in)
	}
}

func TestDecodePayloadRefusesMalformed(t *testing.T) {
	for _, tc := range []struct{ body, want string }{
		{``, "not a JSON object"},
		{`[]`, "not a JSON object"},
		{`{}`, "no version"},
		{`{"v":"1"}`, "not a JSON object"},
		{`{"v":0}`, "version 0 unknown"},
		{`{"v":2}`, "version 2 unknown"},
		{`{"v":1,"req":[]}`, "payload version 1"},
		{`{"v":1,"enqueued_at_ms":1,"max_attempts":3}`, "timeout_ms 0"},
		{`{"v":1,"enqueued_at_ms":1,"timeout_ms":5}`, "max_attempts 0"},
		{`{"v":1,"timeout_ms":5,"max_attempts":1}`, "enqueued_at_ms 0"},
	} {
		_, err := decodePayload([]byte(tc.body))
		if !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("decodePayload(%s) = %v, want ErrMalformed saying %q", tc.body, err, tc.want)
		}
	}
	// Fields a later build adds for information are read past.
	if _, err := decodePayload([]byte(`{"v":1,"enqueued_at_ms":1,"timeout_ms":5,"max_attempts":1,"trace":"x"}`)); err != nil {
		t.Errorf("an unknown field: %v", err)
	}
}

// A JobError rebuilt from what a Worker stored matches the sentinels and
// types of package chat that the original error did.
func TestJobErrorRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		kind  Kind
		err   error
		is    []error
		check func(t *testing.T, je *JobError)
	}{
		{KindInvalid, &chat.ValidationError{Field: "Message", Reason: "empty"}, []error{chat.ErrInvalidRequest, chatscale.ErrInvalidInput},
			func(t *testing.T, je *JobError) {
				var ve *chat.ValidationError
				if !errors.As(je, &ve) || ve.Field != "Message" || ve.Reason != "empty" {
					t.Errorf("ValidationError = %+v", ve)
				}
			}},
		{KindInvalid, &chat.TooLargeError{Tokens: 9000, Burst: 8000}, []error{chat.ErrTooLarge, chatscale.ErrInvalidInput},
			func(t *testing.T, je *JobError) {
				var te *chat.TooLargeError
				if !errors.As(je, &te) || te.Tokens != 9000 || te.Burst != 8000 {
					t.Errorf("TooLargeError = %+v", te)
				}
			}},
		{KindRateLimited, &chat.RateLimitError{Key: "u", RetryAfter: 1500 * time.Millisecond}, []error{chat.ErrRateLimited},
			func(t *testing.T, je *JobError) {
				var re *chat.RateLimitError
				if !errors.As(je, &re) || re.RetryAfter != 1500*time.Millisecond || je.RetryAfter != re.RetryAfter {
					t.Errorf("RateLimitError = %+v", re)
				}
			}},
		{KindUnavailable, &chat.UnavailableError{Reason: chat.ReasonRetriesSpent, StatusCode: 503, Attempts: 2, RetryAfter: time.Second, Err: errors.New("boom")},
			[]error{chat.ErrUnavailable},
			func(t *testing.T, je *JobError) {
				var ue *chat.UnavailableError
				if !errors.As(je, &ue) || ue.Reason != chat.ReasonRetriesSpent || ue.StatusCode != 503 || ue.Attempts != 2 || ue.RetryAfter != time.Second {
					t.Errorf("UnavailableError = %+v", ue)
				}
			}},
		{KindMalformed, fmt.Errorf("%w: payload has no version", ErrMalformed), []error{ErrMalformed}, nil},
		{KindTimeout, context.DeadlineExceeded, []error{context.DeadlineExceeded}, nil},
		{KindError, errors.New("something else"), nil, nil},
	} {
		w := describe(tc.kind, tc.err, 3)
		b, err := json.Marshal(&result{V: Version, Attempt: 3, Error: w})
		if err != nil {
			t.Fatal(err)
		}
		res, err := decodeResult(b)
		if err != nil {
			t.Fatal(err)
		}
		je := res.Error.jobError()
		if je.Kind != tc.kind || je.Attempt != 3 || je.Message != tc.err.Error() || !strings.Contains(je.Error(), string(tc.kind)) {
			t.Errorf("%s: JobError = %+v (%q)", tc.kind, je, je.Error())
		}
		for _, target := range tc.is {
			if !errors.Is(je, target) {
				t.Errorf("%s: errors.Is(%v, %v) = false", tc.kind, je, target)
			}
		}
		if tc.check != nil {
			tc.check(t, je)
		}
	}
}

func TestBackoff(t *testing.T) {
	base, maxDelay := 100*time.Millisecond, 2*time.Second
	for n, want := range []time.Duration{100, 200, 400, 800, 1600, 2000, 2000} {
		want *= time.Millisecond
		if n == 6 {
			n = 60 // no overflow far past the cap
		}
		for range 200 {
			if d := backoff(n, base, maxDelay); d < want/2 || d >= want {
				t.Fatalf("backoff(%d) = %v, want in [%v, %v)", n, d, want/2, want)
			}
		}
	}
}

func TestRoundUpToWholeSecond(t *testing.T) {
	now := time.Unix(100, 300_000_000)
	for _, tc := range []struct{ d, want time.Duration }{
		{0, 700 * time.Millisecond},
		{200 * time.Millisecond, 700 * time.Millisecond},
		{700 * time.Millisecond, 700 * time.Millisecond},
		{701 * time.Millisecond, 1700 * time.Millisecond},
		{5 * time.Second, 5700 * time.Millisecond},
	} {
		if got := roundUp(now, tc.d); got != tc.want {
			t.Errorf("roundUp(%v) = %v, want %v", tc.d, got, tc.want)
		}
		if at := now.Add(roundUp(now, tc.d)); at.Unix() < now.Add(tc.d).Unix() || at.Before(now.Add(tc.d)) {
			t.Errorf("roundUp(%v) lands at %v, before now+d", tc.d, at)
		}
	}
}

// The delays asynq asks for: a quota's RetryAfter as is, a shared
// budget's spread by up to half again, the backoff at least the error's
// RetryAfter; all land on a whole second; only re-queues are not
// failures.
func TestRetryDelayAndIsFailure(t *testing.T) {
	w := &Worker{cfg: Config{RetryBase: 100 * time.Millisecond, RetryMax: time.Minute}}
	within := func(d, lo, hi time.Duration) bool { return d >= lo && d < hi+time.Second }
	for range 50 {
		quota := &attemptError{kind: KindRateLimited, err: &chat.RateLimitError{}, heldOff: true, retryAfter: 3 * time.Second}
		if d := w.retryDelay(0, quota, nil); !within(d, 3*time.Second, 3*time.Second) {
			t.Fatalf("quota delay %v, want 3s rounded up", d)
		}
		budget := &attemptError{kind: KindUnavailable, err: &chat.UnavailableError{Reason: chat.ReasonRateLimited}, heldOff: true, retryAfter: 2 * time.Second}
		if d := w.retryDelay(5, budget, nil); !within(d, 2*time.Second, 3*time.Second) {
			t.Fatalf("budget delay %v, want in [2s, 3s] rounded up", d)
		}
		down := &attemptError{kind: KindUnavailable, err: &chat.UnavailableError{}, retryAfter: 4 * time.Second}
		if d := w.retryDelay(0, down, nil); !within(d, 4*time.Second, 4*time.Second) {
			t.Fatalf("backoff under a 4s RetryAfter: %v", d)
		}
		if d := w.retryDelay(2, asynq.ErrLeaseExpired, nil); !within(d, 200*time.Millisecond, 400*time.Millisecond) {
			t.Fatalf("third backoff %v", d)
		}
	}
	if isFailure(&attemptError{kind: KindRateLimited, heldOff: true, err: errors.New("x")}) {
		t.Error("a re-queue counted as a failure")
	}
	if !isFailure(&attemptError{kind: KindUnavailable, err: errors.New("x")}) || !isFailure(asynq.ErrLeaseExpired) || !isFailure(context.DeadlineExceeded) {
		t.Error("a failure not counted")
	}
	final := &attemptError{kind: KindInvalid, err: errors.New("x"), final: true}
	if !errors.Is(final, asynq.SkipRetry) || errors.Is(&attemptError{kind: KindError, err: errors.New("x")}, asynq.SkipRetry) {
		t.Error("only a final error skips asynq's retry")
	}
}

func TestClassify(t *testing.T) {
	for _, tc := range []struct {
		err      error
		timedOut bool
		kind     Kind
		heldOff  bool
	}{
		{&chat.ValidationError{Field: "Message"}, false, KindInvalid, false},
		{&chat.TooLargeError{Tokens: 1}, false, KindInvalid, false},
		{&chat.RateLimitError{}, false, KindRateLimited, true},
		{&chat.UnavailableError{Reason: chat.ReasonRateLimited}, false, KindUnavailable, true},
		{&chat.UnavailableError{Reason: chat.ReasonBulkheadFull}, false, KindUnavailable, true},
		{&chat.UnavailableError{Reason: chat.ReasonBreakerOpen}, false, KindUnavailable, false},
		{&chat.UnavailableError{Reason: chat.ReasonRetriesSpent}, true, KindUnavailable, false},
		{chat.ErrClosed, false, KindUnavailable, true},
		{context.DeadlineExceeded, true, KindTimeout, false},
		{fmt.Errorf("turn: %w", context.DeadlineExceeded), false, KindTimeout, false},
		{errors.New("other"), false, KindError, false},
	} {
		k := classify(tc.err, tc.timedOut)
		if k != tc.kind || heldOff(k, tc.err) != tc.heldOff {
			t.Errorf("%v: kind %s held off %v, want %s %v", tc.err, k, heldOff(k, tc.err), tc.kind, tc.heldOff)
		}
	}
}

func TestParseID(t *testing.T) {
	p, id, err := parseID("high.k0123")
	if err != nil || p != "high" || id != "k0123" {
		t.Errorf("parseID = %q %q %v", p, id, err)
	}
	a1, a2 := keyID("a"), keyID(strings.Clone("a"))
	if a1 == keyID("b") || a1 != a2 || !validName(keyID(strings.Repeat("x", MaxKeyBytes))) {
		t.Error("keyID is not a stable, valid ID per key")
	}
	if a, b := randomID(), randomID(); a == b || !validName(a) {
		t.Errorf("randomID gave %q and %q", a, b)
	}
}

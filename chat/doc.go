// Package chat calls an OpenAI-compatible Chat Completions API for
// chatscale without amplifying an outage.
//
// Client wraps a Completer (a go-openai *openai.Client, see NewOpenAI and
// HTTPClient) and is itself a Completer, so wrappers compose. It assumes
// nothing beyond the Chat Completions wire format, so any
// OpenAI-compatible base URL works (Azure OpenAI, vLLM, Ollama).
//
// # Composition order
//
// Each call runs, from the outside in:
//
//	retry (full-jitter backoff, Retry-After floor, retry budget, ctx deadline)
//	  → breaker (per-instance gobreaker + trips shared through Redis)
//	    → adaptive pause, then limiter wait (ratelimit.WaitAll: 1 request + reserved tokens)
//	      → bulkhead (MaxInFlight, BulkheadWait)
//	        → per-attempt timeout (AttemptTimeout; for streams, until the first byte)
//	          → upstream
//
// and falls back (FallbackText, marked degraded) or returns an
// *UnavailableError when the upstream cannot be used. This order keeps
// four properties:
//   - an open breaker spends no rate budget: the breaker refuses before
//     the limiter is asked;
//   - every upstream attempt spends budget: each retry goes through the
//     limiter again;
//   - limiter waits and ctx cancellations never count as breaker
//     failures: they are reported to gobreaker as excluded (IsExcluded),
//     as is a full bulkhead, whose budget is refunded;
//   - an open breaker ends the retries: retries go round the breaker,
//     and a refused attempt is not retried.
//
// # Retries
//
// Only what can succeed on retry is retried: HTTP 429 (except
// insufficient_quota), 408, 409 and 5xx, the per-attempt timeout, and
// connection errors. 400, 401, 403, 404, 422 and the caller's cancelled
// or expired ctx are not. Retry n waits a uniform random time in
// [0, min(MaxDelay, BaseDelay·2^(n-1))] on top of the upstream's
// retry-after-ms or Retry-After (seconds or HTTP date), so that clients
// told the same delay do not wake together. A retry is not made when the
// wait plus the duration of the failed attempt would pass ctx's deadline,
// when Retry-After exceeds MaxDelay, or when the retry budget (RetryRatio
// of the first attempts that reached the upstream over RetryWindow, plus
// RetryFloor per second, as in
// Finagle's RetryBudget and gRPC's retry throttling) is spent: a full
// outage then costs at most (1+RetryRatio) upstream calls per call, plus
// the floor.
//
// go-openai does not expose the headers of an error reply, so Transport,
// which HTTPClient installs, records the status and headers of each
// attempt's response in a value carried by the request's context; for a
// unary call the Client also reads resp.Header(), which go-openai v1.43
// fills on errors too.
//
// # Breaker
//
// Each instance keeps its own gobreaker (sony/gobreaker/v2), which counts
// outcomes over BreakerWindow and trips at BreakerRatio failures after
// BreakerMinRequests counted attempts. A trip is published: with Redis,
// "open until T" and the reason go into one hash (a Lua script keeps the
// later deadline when two instances trip), and the local gobreaker starts
// over. Every instance reads that hash at most every RefreshEvery and
// treats the upstream as open until T, answering with the fallback
// without spending budget. After T, one instance in the cluster takes a
// short lease (SET NX PX) and sends the half-open probe while the others
// keep falling back; the probe's success closes the breaker for everyone
// (only if no newer trip happened), its failure re-opens it until
// now+OpenFor. No lock is held across an upstream call, so calls through
// a closed breaker are never serialised. Deadlines come from Config.Now,
// so every instance's clock must be roughly in sync. Without Redis the
// same state lives in the process. If Redis fails, the process keeps its
// last known state, its own trips, and probes alone.
//
// # Adaptive budget
//
// When a reply's x-ratelimit-remaining-requests or -tokens header is at
// or below LowRemainingRequests or LowRemainingTokens, every instance
// (through the same Redis hash) pauses before spending budget until the
// matching x-ratelimit-reset-* time, capped by MaxPause.
//
// # Degraded replies
//
// A fallback reply has SystemFingerprint DegradedFingerprint and its
// Header() carries DegradedHeader set to the Reason; IsDegraded and
// IsDegradedStream test for it.
//
// # Metrics
//
// With Config.Registerer, a Client registers these collectors, each with
// the constant label client=<Config.Name>:
//
//	ai_chat_client_calls_total{outcome}        ok, fallback, unavailable, error, canceled
//	ai_chat_client_attempts_total{result}      upstream attempts: ok, retryable, fatal, excluded
//	ai_chat_client_retries_total               retries sent
//	ai_chat_client_retries_denied_total        retries refused by the retry budget
//	ai_chat_client_fallbacks_total{reason}     fallback replies by Reason
//	ai_chat_client_breaker_trips_total         trips published by this instance
//	ai_chat_client_breaker_probes_total        half-open probes sent by this instance
//	ai_chat_client_limiter_wait_seconds        histogram of the wait for budget per attempt
//	ai_chat_client_breaker_state               0 closed, 1 half-open, 2 open
//	ai_chat_client_in_flight                   bulkhead slots in use
//
// They describe the upstream client only; the per-turn metrics
// ai_chat_requests_total and ai_chat_request_duration_seconds belong to
// the turn pipeline, not to Client.
package chat

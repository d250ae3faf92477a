// Package chat runs chatscale's tutor turns and calls an
// OpenAI-compatible Chat Completions API without amplifying an outage.
//
// Service is the turn: for a learner's question about the video they
// watch, it opens the learner's thread for the course, takes the video's
// transcript, builds a prompt within the token budgets (with the model's
// tokenizer, see package chat/prompt), asks a Completer and stores the
// exchange, in three sequential Redis round trips besides the upstream
// call. Its Ask and Stream methods document the steps and what happens
// when a part fails; a host maps the typed errors to HTTP statuses with
// errors.Is: ErrInvalidRequest (400), ErrRateLimited (429, with
// RateLimitError.RetryAfter), ErrUnavailable (503).
//
// Client wraps a Completer (a go-openai *openai.Client, see NewOpenAI and
// HTTPClient) and is itself a Completer, so wrappers compose. It assumes
// nothing beyond the Chat Completions wire format, so any
// OpenAI-compatible base URL works (Azure OpenAI, vLLM, Ollama).
//
// # Composition order
//
// A call whose token reservation can never fit the token budget (over the
// burst of Config.Tokens) fails first, with a *TooLargeError, before
// anything below runs. Otherwise each call runs, from the outside in:
//
//	retry (full-jitter backoff, Retry-After floor, retry budget, ctx deadline)
//	  → breaker (per-instance gobreaker + trips shared through Redis)
//	    → budget step: shared pause, then limiter wait (ratelimit.WaitAll:
//	      1 request + reserved tokens), and, on the call's first attempt
//	      that gets here, the learner's quota at the same time
//	      (ratelimit.AllowAll, never waiting; see Per-learner quota)
//	      → bulkhead (MaxInFlight, BulkheadWait)
//	        → per-attempt timeout (AttemptTimeout; for streams, until the first byte)
//	          → go-openai → Transport → upstream
//
// and falls back (FallbackText, marked degraded) or returns an
// *UnavailableError when the upstream cannot be used, or a
// *RateLimitError, at once and without fallback, when the learner's quota
// cannot take the call. Afterwards the call's settlements (see
// Accounting) are made off its path. This order keeps these properties:
//   - an open breaker spends no rate budget: the breaker refuses before
//     the limiter is asked;
//   - every upstream attempt spends budget: each retry goes through the
//     limiter again;
//   - what the upstream never saw spends nothing: a request too large for
//     the budget, one go-openai refuses before sending, and one the
//     bulkhead refuses give back what they took (see Accounting);
//   - limiter waits, ctx cancellations, a full bulkhead, a request refused
//     before sending and a rate-limited 429 never count as breaker
//     failures: they are reported to gobreaker as excluded (IsExcluded);
//   - an open breaker ends the retries: retries go round the breaker,
//     and a refused attempt is not retried;
//   - an open breaker answers before the learner's quota is asked: its
//     fallback spends no quota either;
//   - on Redis, a call answered at its first attempt makes one
//     sequential round trip of its own: the budget step (the shared
//     budgets and the quota in parallel). Its settlements are coalesced
//     with other calls' and made later (see Accounting); the breaker's
//     shared state is re-read in the background (see Breaker), except
//     for its first read, which the calls made before it ended wait for
//     (LoadScripts makes it at startup). A retry adds its own budget step
//     and, before it, the failed attempt's refunds; a trip, a probe or an
//     adaptive pause adds its own round trip when it happens.
//
// # Retries
//
// Only what can succeed on retry is retried: HTTP 429 (except
// insufficient_quota), 408, 409 and 5xx, the per-attempt timeout, and
// connection errors. 400, 401, 403, 404, 422, a request go-openai refuses
// before sending, and the caller's cancelled or expired ctx are not.
// Retry n waits a uniform random time in [0, min(MaxDelay,
// BaseDelay·2^(n-1))] on top of the upstream's retry-after-ms or
// Retry-After (seconds or HTTP date) — for a 429 without them, the
// x-ratelimit-reset-* time of each budget with nothing remaining — so
// that clients told the same delay do not wake together. A retry is not
// made when the wait plus the duration of the failed attempt would pass
// ctx's deadline, when that delay exceeds MaxDelay, or when the retry
// budget (RetryRatio of the first attempts that reached the upstream over
// RetryWindow, plus RetryFloor per second, as in Finagle's RetryBudget and
// gRPC's retry throttling) is spent: a full outage then costs at most
// (1+RetryRatio) upstream calls per call, plus the floor.
//
// A 429 that says when to come back is a pause for everyone: every
// instance (through the Redis hash below) waits until then, capped by
// MaxPause, before spending budget, and a call that cannot wait that long
// within its ctx deadline (or Config.MaxBudgetWait, which bounds the wait
// for the shared budgets too) falls back with ReasonRateLimited without
// calling. The pause is the one of the adaptive budget below.
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
// BreakerMinRequests counted attempts. Failures are what says the
// upstream is down: 5xx, timeouts (408 and attempt timeouts) and
// connection failures. Answers, client errors (400, 401, 403, 404, 422)
// included, are successes. A 429 (the upstream is up and said when to
// come back: the shared pause handles it, not OpenFor), a 409 and
// insufficient_quota are not counted; when one of them answers a
// half-open probe, the upstream answered and the probe closes the
// breaker.
//
// A trip is published: with Redis, "open until T" and the reason go into
// one hash (a Lua script keeps the later deadline when two instances
// trip), and the local gobreaker starts over. Every instance keeps a copy
// of that hash and treats the upstream as open until T, answering with
// the fallback without spending budget. After T, one instance in the
// cluster takes a short lease and sends the half-open probe while the
// others keep falling back. The lease is taken by a script only while
// the hash still holds T, so an instance whose copy is stale (another
// instance's probe has since closed or re-opened the breaker) adopts the
// newer state instead of probing the same period again. The probe's
// success closes the breaker for everyone (only if no newer trip
// happened), its failure re-opens it until now+OpenFor; a probe that
// ends without an outcome (its caller's ctx ended, the budget or the
// bulkhead refused it, go-openai refused it) releases the lease for
// another. No lock is held across an upstream call, so calls through a
// closed breaker are never serialised. Deadlines come from Config.Now, so
// every instance's clock must be roughly in sync. Without Redis the same
// state lives in the process. If Redis fails, the process keeps its last
// known state, its own trips, and probes alone. A Redis that hangs fails
// each call at Config.RedisTimeout (1 s by default), whatever the go-redis
// client's timeouts, so no wait on the shared state lasts longer than
// that: the reads run in the background, and only the first read, a
// trip, a pause and a probe's lease and outcome are waited for.
//
// Across a Sentinel failover (Sentinel's down-after-milliseconds, then
// go-redis' redial to the promoted replica) the breaker works per process
// as above, and the Client's budgets are those of its Limiters (a
// ratelimit.Redis fails open by default; see that package). What can be
// lost: a trip, pause or probe outcome written to the old master in its
// last moment, which Redis replicates asynchronously. Then another
// instance sends calls upstream until its own breaker trips, a pause is
// not seen elsewhere, or a breaker a probe closed shows as half-open
// again until the next probe; each instance keeps what it wrote itself.
// Settlements made meanwhile do not reach Redis (a ratelimit.Redis
// applies them to its fallback; one that fails is logged and dropped):
// the shared budget then stays more spent than it is, settlements being
// mostly refunds. The first read that succeeds after the switch brings
// every instance back to the shared state, within RefreshEvery.
//
// The copy is re-read stale-while-revalidate: the first call that finds
// it older than RefreshEvery starts one read of the hash in the
// background and, like every call until that read lands, goes on with
// the copy; no call waits on Redis for it. So a trip published by another
// instance is seen here at most RefreshEvery plus one read (bounded by
// RedisTimeout) after it was published, given calls to start the read;
// meanwhile this instance may still send calls upstream (the lease above
// corrects a stale copy before a probe). Only until the first read has
// ended do calls wait for it (one read for all of them, within
// RedisTimeout and each caller's ctx), so that a new instance does not
// call an upstream the others know to be down; LoadScripts makes that
// read at startup. The read runs in a goroutine that exists only while
// it runs; Close waits for it, and after Close a stale copy is re-read by
// the call that finds it, before that call goes on.
//
// The keys are <Prefix>chat:{<Name>}:breaker (the hash) and
// <Prefix>chat:{<Name>}:probe (the lease); Client.LoadScripts warms the
// scripts on every server at startup.
//
// # Adaptive budget
//
// When a reply's x-ratelimit-remaining-requests or -tokens header is at
// or below LowRemainingRequests or LowRemainingTokens, every instance
// (through the same Redis hash) pauses before spending budget until the
// matching x-ratelimit-reset-* time, capped by MaxPause.
//
// # Accounting
//
// Each attempt spends 1 from the request budget and reserves tokens (the
// prompt estimate plus the reply's maximum) from the token budget before
// it is sent. What happens to them afterwards, by outcome:
//
//	outcome                                          request   tokens    attempt  breaker
//	reservation over the token burst (TooLarge)      -         -         no       -
//	breaker open, pause or budget not in time         -         -         no       -
//	learner's quota short or its limiter down        back      back      no       -
//	bulkhead full                                    back      back      no       -
//	refused by go-openai before sending              back      back      no       -
//	connection not made (refused, DNS, dial timeout)  back      back      yes      failure
//	no reply: timeout or connection lost before the
//	  first byte                                     kept      back      yes      failure
//	the caller's ctx ends before the first byte      kept      back      yes      -
//	4xx: 400, 401, 403, 404, 422                     kept      back      yes      success
//	4xx: 408                                         kept      back      yes      failure
//	4xx: 409                                         kept      back      yes      -
//	429 rate limited                                 kept      back      yes      -
//	429 insufficient_quota                           kept      back      yes      -
//	5xx                                              kept      kept      yes      failure
//	2xx, unary                                       kept      usage     yes      success
//	2xx, stream                                      kept      usage     yes      success
//
// ("-": nothing was spent; "back": given back with Adjust; "usage":
// settled to the total_tokens the upstream reported, charging more when
// the reply used more than reserved, and kept as reserved when it
// reported none; for streams, see below. When these Adjusts are made:
// see Settlements below. A learner's quota that refuses ends the wait
// for the shared budgets before it spends them, or gives back what they
// spent: see Per-learner quota.) The first byte is, for a unary call, the
// response's status line, and for a stream the first byte of its body.
// "attempt" is what Stats.Attempts and the attempts metric count, and
// what funds the retry budget.
//
// Why: OpenAI counts every request it receives against the request limit
// ("unsuccessful requests contribute to your per-minute limit", OpenAI's
// help article on 429 errors), so a request that reached the upstream
// stays spent whatever the answer, and one that never left the process,
// or whose connection could not be made, is given back. The token limit
// is charged when the upstream admits a request, with the same estimate
// the Client reserves, and settled by the reply's usage; a request the
// upstream refuses (any 4xx, a 429 included: rate limits are checked
// before admission) is not charged. When no reply came at all, nothing
// says the request was admitted, and keeping the reservation would charge
// the local budget once more for every retry of a silent upstream: it is
// given back, at the risk of under-counting a request that was admitted
// and then lost. A 5xx comes from an upstream that may have admitted the
// request and worked on it: the reservation is kept, erring on the side
// of not overrunning the upstream's budget.
//
// Streams: with a token budget, a request without StreamOptions is sent
// with stream_options {"include_usage": true} (unless DisableStreamUsage),
// so the stream ends with one chunk that has no choices and carries the
// usage. The Transport reads the stream's events as they pass to the
// caller and, when the stream ends (data: [DONE], an error event, or the
// end of the body), settles the reservation to the last usage reported;
// if no chunk with a choice passed and no usage came, the reservation is
// given back; if choices passed but no usage (the upstream ignores
// stream_options), it is kept. A stream closed before its end keeps its
// reservation unless its usage had already passed: the upstream may have
// produced a reply nobody read. The settlement is made as the caller
// reads the last events, as a pending settlement (see below): the
// caller's last Recv does not wait on Redis.
//
// Requests refused before sending are recognised this way. With
// Transport, an attempt counts as sent when its request reached the
// Transport; once a Client has seen its Transport carry one request, an
// attempt that does not reach it is taken as refused before sending,
// whatever its error (so a Client's upstream must either always or never
// go through Transport). Without Transport (an http.Client of your own,
// or a Completer that is not go-openai), the Client recognises, with
// errors.Is and errors.As, go-openai's exported validation errors
// (ErrChatCompletionStreamNotSupported, ErrChatCompletionInvalidModel,
// ErrContentFieldsMisused, ErrReasoningModelMaxTokensDeprecated and the
// other ErrReasoning* and ErrO1BetaLimitations* errors) and JSON encoding
// errors; any other error then counts as an upstream attempt, and a
// stream's tokens cannot be settled (its reservation is kept).
//
// A Limiter that exposes its Limit (*ratelimit.Local, *ratelimit.Redis)
// lets the Client find a request too large before the breaker is asked;
// for another Limiter, the *chatscale.InputError its WaitAll returns
// before spending anything becomes the same *TooLargeError (with Burst
// zero), but only once the breaker let the attempt through: while the
// breaker is open such a call gets the fallback like any other.
//
// Settlements: an Adjust on a Limiter that does I/O (any Limiter but
// *ratelimit.Local) is not made in the call. It is added to a pending
// delta per (Limiter, key), summed with the other calls', and a
// goroutine of the Client makes it at most Config.SettleDelay later
// (default 50 ms): one Adjust per budget and key per flush, none when
// the sum is zero, up to 16 at once, each bounded by RedisTimeout and
// made whatever became of the caller's ctx. So a call on Redis budgets
// spends them in one round trip and settles them in none of its own,
// and the calls of a busy instance settle a key with one Adjust per
// flush instead of one each. The goroutine exists only while something
// is pending; NewClient starts none. Close makes what is pending at once
// (the whole flush within RedisTimeout) and waits for it; later
// settlements are made in the calls.
//
// The price is that a budget is off by its pending deltas until they
// land: at most SettleDelay plus two flushes (one that was running when
// the delta was added, then its own), a flush taking about one round
// trip per 16 keys. The deltas are mostly refunds (a reservation counts
// the reply's maximum), so meanwhile a budget looks more spent than it
// is: it errs toward waiting, not toward overspending. A refund that
// lands when the bucket has refilled to its burst is capped there, as
// any refund is. Why 50 ms: it is under 0.1 % of a per-minute budget's
// window and far below a learner's pace between turns, so a budget that
// late decides as it would have; yet from 20 calls a second on an
// instance, the settlements of a shared budget's key are coalesced (one
// Adjust per flush instead of one per call). A longer SettleDelay saves
// more round trips and leaves the budgets off for longer.
//
// Some settlements stay synchronous: those on a *ratelimit.Local (no
// I/O), all of them when SettleDelay is negative or after Close, and the
// refunds of an attempt that a retry follows. Those are made before the
// retry waits for budget, because the retry spends the same budgets
// again: deferred, they would make it wait for budget the call already
// holds (on a budget that holds one reservation, a whole refill). They
// cost a round trip on the retry's path only, which sleeps for its
// backoff anyway. The refunds of the last attempt, and its usage, are
// deferred.
//
// # Per-learner quota
//
// A Service gives the Client the learner's costs through the call's
// context (a request and a token Cost, on limiters keyed by the
// learner). They are spent once per call, on the first attempt that
// reaches the budget step, with ratelimit.AllowAll, which never waits:
// a learner over quota gets a *RateLimitError (ErrRateLimited, wrapping
// a *ratelimit.LimitedError, with the quota's RetryAfter) at once. When
// a quota limiter does I/O it is asked in a goroutine at the same time
// as the shared budgets (the pause and WaitAll), so both round trips
// make one sequential step; a quota on *ratelimit.Local limiters is
// asked first, inline. ratelimit offers no script spending the quota's
// and the shared budgets' keys together, so even when they share a
// client and a slot they are two round trips in parallel.
//
//	outcome                                          quota request   quota tokens
//	quota short (*RateLimitError), its limiter down  -               -
//	breaker open (the quota is not asked)            -               -
//	shared budget refused or its limiter down        back            back
//	bulkhead full, refused before sending            back            back
//	ctx ended before any upstream attempt            back            back
//	upstream attempted (whatever the retries)        kept            as the last attempt's tokens
//
// ("as the last attempt's tokens": settled to the usage after an answer,
// given back when the last upstream attempt's tokens were, kept when
// they were kept, like the shared token budget in the table above.) A
// quota that refuses ends the shared wait (WaitAll spends nothing when
// its ctx ends) or gives back what the shared budgets spent, and the
// call makes no attempt: no fallback, no breaker count, and the calls
// metric counts it as rate_limited. A quota limiter whose store fails
// closed (ratelimit.ErrUnavailable) gives an *UnavailableError with
// ReasonLimiterDown, like a shared budget's. A learner's cost over the
// quota's burst gives a *RateLimitError wrapping the limiter's
// *chatscale.InputError. A Cost with a nil Limiter is skipped. With a
// token quota, streams ask for their usage (stream_options) as with a
// token budget, and their body settles the quota's tokens with the
// shared ones. The quota is hidden from the Completer the Client calls,
// so a Client wrapping a Client spends it once.
//
// # Answer cache
//
// Many learners open the same video and ask the same first question
// ("what is this video about?"). With ServiceConfig.Answers, a course
// opts in (AnswersConfig.Courses) to answering such a question once and
// serving the reply to the next askers from a cache: L1 in process memory
// (AnswersConfig.L1Size answers), L2 in Redis (AnswersConfig.Redis), both
// for AnswersConfig.TTL.
//
// Only a turn whose reply depends on no learner data takes part: the
// learner's thread is open and holds no message (decided after the
// thread is opened; with HistoryTokens negative the history is not read,
// so no turn takes part), the learner did not just switch videos, and
// nothing is degraded so far (a stale or missing transcript, a thread
// store that failed). A turn that takes part is looked up after its
// prompt is built, and its key is a SHA-256 digest of:
//
//   - the course and the video;
//   - the model and MaxReplyTokens;
//   - the transcript's version: its UpdatedAt, and the excerpt of its text
//     that the prompt carries, so a changed transcript (once the
//     contextcache serves the new copy, at once after Invalidate) gives
//     new keys even when the source sets no UpdatedAt;
//   - the executed system prompt, not the template's text: it changes
//     with the template, and also with what the template is given (the
//     title, and the position when the template uses it), which is what
//     the model sees;
//   - the other notes of the prompt (the playback position, to the
//     second, when the Request has one: learners at different positions
//     do not share an answer);
//   - the question, normalised: Unicode NFC, case folded, white space
//     collapsed to single spaces and trimmed, the trailing run of
//     sentence punctuation (. ? ! , ; : …) dropped. "What is this video
//     about?" and "  what is THIS video about ?? " are one question.
//
// A hit makes no upstream call: the reply is appended to the learner's
// thread with the learner's own wording of the question, like any reply;
// Response.Cached is set, Usage is zero and Response.SavedUsage is what
// the call that produced the answer reported. Stream delivers a hit as
// one delta per 256 bytes or so. A hit spends the learner's UserRequests
// quota (one turn), no tokens.
//
// A miss asks the upstream and keeps the reply, unless it is degraded (a
// fallback), the call failed or the Stream's caller left. One call per
// key runs at a time across the cluster: in a process, the turns asking
// one question wait for the first; across processes, the first takes a
// Redis lock (AnswersConfig.LockTTL) in the same script that finds the
// answer missing, and the others poll L2 with backoff (2 ms doubling to
// 100 ms). A wait is bounded by AnswersConfig.LockWait, after which the
// turn asks the upstream itself; when the turn the others wait for gets
// no answer to keep, they each ask at once rather than one after the
// other. A waiting turn gets nothing before the answer is complete: a
// Stream that waits sends its first delta then. A miss costs two Redis
// round trips more than a turn without the
// cache (the lookup and the write); a hit from L1 costs none besides the
// thread's, one from L2 one.
//
// The cache degrades, never the turn: when its Redis fails, the turn
// goes to the upstream (and L2 is left alone for a second), and the
// failure is counted (ai_chat_answer_cache_redis_errors_total).
//
// Privacy: an answer is shared with the other learners of the same course
// and video only, and only when their question is the same after
// normalisation and they ask it as their thread's first message. Such an
// answer was produced from a prompt that holds no learner data (no
// history, no user ID; the position only as the same second of the
// video), so sharing it tells a learner nothing about another one
// beyond the fact that someone asked the same question. The cache keeps
// the reply and its token counts, never the question's text nor who
// asked it. A course whose answers must not be shared stays out of
// AnswersConfig.Courses.
//
// # Degraded replies
//
// A fallback reply has SystemFingerprint DegradedFingerprint and its
// Header() carries DegradedHeader set to the Reason; IsDegraded and
// IsDegradedStream test for it.
//
// # Failover
//
// A Failover (NewFailover) is a Completer over an ordered chain of
// Members, each usually a *Client with DisableFallback and its own
// budgets, breaker, base URL, key and Model. A call goes to the first
// member (or, when Weights are set, to one drawn by weight, then the rest
// in the chain's order) that is usable: a *Client member whose breaker is
// open, or whose adaptive pause is longer than FailoverConfig.MaxWait, is
// skipped without a call. A member that returns an *UnavailableError (or
// a degraded reply) passes the call to the next; any other answer, error
// or not, is final, so no request is sent twice except by failover.
// Streams fail over only before they are returned, that is before their
// first byte. The answering member is named by the MemberHeader of the
// response's (or stream's) Header(), read with AnsweredBy. When every
// member is out, the Failover answers with its own fallback reply
// (IsDegraded, DegradedReason) or, with DisableFallback, the last
// member's *UnavailableError. A per-learner quota is spent once: by the
// first member that reached its upstream. Its metrics are
// ai_chat_failover_calls_total{member,outcome},
// ai_chat_failover_failovers_total{from,to} and
// ai_chat_failover_fallbacks_total.
//
// # Tracing
//
// When ctx carries a span that is recording (trace.SpanFromContext(ctx)
// reports IsRecording), the Client starts child spans of it from that
// span's TracerProvider, through the OpenTelemetry API only:
//
//	chat.budget    around the budget step of each attempt that has one:
//	               chat.budget.wait_ms, chat.budget.outcome ("ok",
//	               "rate_limited", "limiter_unavailable",
//	               "user_rate_limited", "too_large", "canceled", "error");
//	               error status unless ok
//	chat.attempt   around each attempt past the bulkhead, the upstream
//	               call running in it: chat.attempt.number (from 1),
//	               http.response.status_code (when one came),
//	               chat.attempt.class ("ok", "retryable", "fatal",
//	               "excluded"), chat.attempt.sent (the request left the
//	               process); error status when the attempt failed
//
// Without a recording span the Client does no span work (one context
// lookup per step).
//
// # Metrics
//
// With Config.Registerer, a Client registers these collectors, all or
// nothing, each with the constant label client=<Config.Name> and
// Config.ConstLabels, under Config.Namespace (default "ai_chat"):
//
//	ai_chat_client_calls_total{outcome}        ok, fallback, unavailable, error, canceled, rate_limited
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
// Two Clients share a registry when their Names or ConstLabels differ;
// Client.Close unregisters the collectors. The "error" outcome counts
// calls that returned an error of their own: a client error of the
// upstream, a *TooLargeError, a request go-openai refused. The
// "rate_limited" outcome counts calls the learner's quota refused (a
// *RateLimitError); a call the shared budget could not take in time is a
// "fallback" (or "unavailable") with the reason rate_limited. The metrics
// describe the upstream client only; the per-turn metrics
// ai_chat_requests_total and ai_chat_request_duration_seconds belong to
// the Service (see its documentation).
package chat

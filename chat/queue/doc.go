// Package queue runs tutor turns as jobs on Redis, for hosts that cannot
// hold a request open for a slow turn or that absorb bursts in a queue:
// any instance enqueues, any instance works. It is built on
// github.com/hibiken/asynq.
//
// A Client enqueues a chat.Request and returns a job ID at once:
//
//	id, err := jobs.Enqueue(ctx, req, queue.Priority("high"), queue.IdempotencyKey(submitID))
//
// and reads the job's Status later (pending, active, retrying, done with
// the chat.Response, failed with a *JobError), or Waits for its end. A
// Worker runs the jobs with a *chat.Service (any Asker):
//
//	w, err := queue.NewWorker(rdb, svc, queue.Config{})
//	err = w.Start(ctx)
//	defer w.Close(shutdownCtx) // lets running turns finish until shutdownCtx ends, then hands them back
//
// # Throughput
//
// A turn waits seconds on the upstream and uses microseconds of CPU, so a
// Worker runs many at once (Config.Concurrency, 256 by default, the
// default bulkhead of a chat.Client). The upstream traffic is bounded by
// the shared request and token budgets of the chat.Client, which every
// instance spends together, not by the number of workers: with 1000
// learners asking 10 questions a minute (167 turns/s) and an upstream
// taking 800 ms, a cap of 10 jobs per instance would let 3.6 turns/s
// through. A job the budget cannot serve within its Timeout is re-queued
// without counting as an attempt, so the queue holds the backlog and the
// budget sets the pace. What the queue adds to a turn is a few Redis round
// trips (enqueue, dequeue, the result, the completion) and, when a Worker
// is idle, up to 1.5 PollInterval before it notices a new job.
//
// # Attempts
//
// Each job has MaxAttempts (default 3) and a Timeout per attempt (default
// 60 s). See Worker for what each outcome of an attempt does: a reply
// ends the job, an invalid request or a malformed payload fails it at
// once, the learner's quota, the shared budget and the bulkhead re-queue
// it for their RetryAfter without spending an attempt, anything else is
// retried with exponential backoff and jitter. asynq counts retries only
// for errors its IsFailure calls failures; this package gives asynq one
// retry more than the job's attempts and archives a job whose attempts
// are spent itself, so that a re-queue after the last counted attempt is
// not taken for a failure. Delivery is at least once: a worker that dies
// mid-job leaves the job to be run again once its lease expires (about a
// minute). Every attempt of a job is one turn (the Worker sets
// chat.Request.TurnID to "job:" and the job ID unless the request names a
// turn of its own), so an attempt that finds the exchange already in the
// learner's thread returns the stored reply without asking the upstream
// (Response.Replayed), and the thread holds the exchange once. A worker
// that dies after the upstream answered but before the exchange was
// stored costs one more upstream call.
//
// # Job IDs and idempotency
//
// A job ID is <priority>.<id>: the priority names the queue, so Status
// reads one queue. The id is random, or, with IdempotencyKey, derived from
// the key (a SHA-256 prefix): the job is then asynq's task with that ID
// (asynq.TaskID), and a second Enqueue of the key finds it and returns its
// ID, whatever its state, for as long as asynq keeps it (done: Retention;
// failed: asynq's archive, which keeps at most 10,000 jobs per queue for
// at most 90 days). The key is scoped to a priority. asynq.Unique is not
// used: its lock is keyed on the payload (which holds the enqueue time)
// and lasts a TTL, not the job's life.
//
// # Payloads
//
// A payload is JSON with a version: {"v":1,"req":{...},"enqueued_at_ms":…,
// "timeout_ms":…,"max_attempts":…}. Enqueue checks the request as a
// Service would (a *chat.ValidationError), the Worker checks the envelope
// and the request again, and archives, without retry and with an error
// matching ErrMalformed, a payload it cannot read: not JSON, no or another
// version, another task type, an impossible envelope. A Worker never
// fails on a payload; asynq also recovers a handler's panic (a failed
// attempt). The result a Worker stores with each job (the Response, or the
// last attempt's error) is versioned the same way.
//
// # Redis and the conventions
//
// Redis is a redis.UniversalClient, as everywhere in chatscale: asynq's
// NewClientFromRedisClient, NewServerFromRedisClient and
// NewInspectorFromRedisClient take it, and neither this package nor asynq
// closes it. asynq supports a single server, Sentinel (a failover client)
// and Redis Cluster; a Ring is not among them. The package deviates from
// the conventions in what asynq fixes:
//
//   - Keys. asynq names its keys itself, under "asynq:", which no option
//     changes. Config.Prefix goes into the queue names instead: priority p
//     is the queue <Prefix>queue:<p> ("chatscale:queue:default"), whose
//     keys are asynq:{chatscale:queue:default}:pending, …:active,
//     …:scheduled, …:retry, …:archived, …:completed, …:lease, …:t:<id>
//     (one hash per job) and per-day counters. Those of a queue share a
//     hash tag, so each queue lives in one Cluster slot (one master serves
//     it). asynq also keeps keys shared by every asynq user of the
//     database: the set asynq:queues, the sorted sets asynq:servers and
//     asynq:workers with a key per running worker (asynq:servers:{…},
//     asynq:workers:{…}, which expire), and the channel asynq:cancel.
//     Tenants sharing a Redis keep their jobs apart with different
//     Prefixes.
//   - What is stored. Every 5 s a running Worker writes the payloads of
//     its active jobs, learners' questions included, to
//     asynq:workers:{…} (asynq's heartbeat); the payloads and stored
//     replies live as long as the jobs.
//   - Context. asynq's Inspector takes no context: Status checks ctx
//     before its two round trips, which are bounded by rdb's timeouts.
//   - Time. asynq reads time.Now and keeps retry times in whole seconds
//     (delays are rounded up to the next second); Config.Now only stamps
//     enqueue times and job latencies.
//   - Scripts. asynq runs its Lua scripts through go-redis (EVALSHA, EVAL
//     when the server lacks the script); there is no LoadScripts.
//   - Lifecycle. Like chat.Service, Worker has Start(ctx) and Close(ctx):
//     Close waits for the running jobs until ctx ends, then hands the rest
//     back. A Client only holds metrics: its Close unregisters them and it
//     keeps working.
//
// Metrics follow the conventions: names ai_chat_queue_* under
// Config.Namespace, Config.ConstLabels on every series (see Client and
// Worker for the lists).
package queue

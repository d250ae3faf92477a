package app_test

import (
	"bytes"
	"context"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chatscale/chatscale/examples/server/app"
	"github.com/chatscale/chatscale/internal/testutil"
)

// TestNoConfiguration runs a turn, a stream, a job, the history and a
// forget over HTTP against the App built from the zero Config: embedded
// Redis, sample transcripts, offline model, anonymous learner, the job
// queue's worker in process.
func TestNoConfiguration(t *testing.T) {
	t.Parallel()
	s := start(t, app.Config{}, app.Options{})
	ada := s.learner(t)

	r := ada.post("/v1/chat", ask("What are goroutines?"))
	if r.status != http.StatusOK {
		t.Fatalf("POST /v1/chat: %d %s", r.status, r.body)
	}
	turn := r.json(t)
	reply, _ := turn["reply"].(string)
	if !strings.Contains(reply, "Goroutines are functions") || turn["thread_id"] == "" ||
		turn["degraded"] != false || turn["stored"] != true || turn["created"] != true {
		t.Fatalf("POST /v1/chat = %s", r.body)
	}

	text, done := streamed(t, ada.post("/v1/chat/stream", ask("What are goroutines?")))
	if text != reply {
		t.Errorf("streamed reply %q, want the unary one %q (the offline model is deterministic)", text, reply)
	}
	if done["thread_id"] != turn["thread_id"] || done["degraded"] != false || done["stored"] != true {
		t.Errorf("done event = %v, want thread %v, not degraded, stored", done, turn["thread_id"])
	}
	if u, _ := done["usage"].(map[string]any); u["completion_tokens"].(float64) < 10 || u["prompt_tokens"].(float64) < 100 {
		t.Errorf("done event usage = %v", done["usage"])
	}

	id := ada.submit(ask("What are goroutines?"))
	r = ada.job(id, "10s")
	job := r.json(t)
	if r.status != http.StatusOK || job["job_id"] != id || job["state"] != "done" || job["reply"] != reply ||
		job["thread_id"] != turn["thread_id"] || job["degraded"] != false || job["stored"] != true || job["created"] != false ||
		job["attempts"] != 1.0 || job["error"] != nil {
		t.Fatalf("GET /v1/jobs/%s?wait=10s: %d %s", id, r.status, r.body)
	}
	if u, _ := job["usage"].(map[string]any); u["completion_tokens"].(float64) < 10 {
		t.Errorf("job usage = %v", job["usage"])
	}

	var want []string
	for range 3 {
		want = append(want, "user: What are goroutines?", "assistant: "+reply)
	}
	if got := ada.history("demo-course"); !slices.Equal(got, want) {
		t.Errorf("history = %q, want %q", got, want)
	}

	r = ada.do(http.MethodDelete, "/v1/me", "", nil)
	if r.status != http.StatusOK || r.json(t)["deleted_threads"] != 1.0 {
		t.Fatalf("DELETE /v1/me: %d %s", r.status, r.body)
	}
	if got := ada.history("demo-course"); len(got) != 0 {
		t.Errorf("history after forget = %q", got)
	}

	for _, path := range []string{"/healthz", "/readyz", "/", "/static/app.js", "/v1/config"} {
		if r := ada.get(path); r.status != http.StatusOK {
			t.Errorf("GET %s: %d %s", path, r.status, r.body)
		}
	}
	metrics := ada.get("/metrics").body
	for _, want := range []string{
		`ai_chat_requests_total{status="ok"} 3`,
		`ai_chat_queue_enqueued_total{queue="default",result="new"} 1`,
		`ai_chat_queue_jobs_total{queue="default",status="done"} 1`,
	} {
		if !bytes.Contains(metrics, []byte(want)) {
			t.Errorf("GET /metrics lacks %s:\n%s", want, metrics)
		}
	}
}

// TestJobRoutesHook: a program's JobRoutes replace the queue, see the
// learner in the context, and a route without a handler answers 501 with
// a JSON error.
func TestJobRoutesHook(t *testing.T) {
	t.Parallel()
	var (
		mu   sync.Mutex
		seen []string
	)
	record := func(s string) {
		mu.Lock()
		defer mu.Unlock()
		seen = append(seen, s)
	}
	jobs := &app.JobRoutes{
		Submit: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			id, _ := app.LearnerFrom(r.Context())
			record("submit " + id)
			w.WriteHeader(http.StatusAccepted)
		}),
	}
	s := start(t, app.Config{}, app.Options{Jobs: jobs, Authenticator: app.AuthenticatorFunc(
		func(http.ResponseWriter, *http.Request) (string, error) { return "ada", nil })})
	l := s.learner(t)
	if r := l.post("/v1/jobs", ask("later?")); r.status != http.StatusAccepted {
		t.Errorf("POST /v1/jobs with the program's handler: %d", r.status)
	}
	r := l.get("/v1/jobs/j1")
	if r.status != http.StatusNotImplemented || r.json(t)["code"] != "not_implemented" ||
		!strings.Contains(r.json(t)["error"].(string), "queue is not configured") {
		t.Errorf("GET /v1/jobs/j1 without a handler: %d %s", r.status, r.body)
	}
	mu.Lock()
	defer mu.Unlock()
	if want := []string{"submit ada"}; !slices.Equal(seen, want) {
		t.Errorf("job handlers saw %q, want %q", seen, want)
	}
	if strings.Contains(s.log.String(), "asynq") {
		t.Errorf("the App started a queue worker next to the program's JobRoutes:\n%s", s.log.String())
	}
}

// TestJobs: the job routes on the embedded Redis. A job is its learner's
// only: another learner's job answers as an unknown one; an idempotency
// key gives one job per learner; the turn lands in the learner's thread.
func TestJobs(t *testing.T) {
	t.Parallel()
	s := start(t, app.Config{}, app.Options{})
	ada, bob := s.learner(t), s.learner(t)
	keyed := func(msg, key string) map[string]any {
		b := ask(msg)
		b["idempotency_key"] = key
		return b
	}

	first := ada.submit(keyed("What are channels?", "submit-1"))
	if again := ada.submit(keyed("What are channels?", "submit-1")); again != first {
		t.Errorf("a second submit with the key gave job %s, want %s", again, first)
	}
	if r := ada.post("/v1/jobs", keyed("Something else?", "submit-1")); r.status != http.StatusUnprocessableEntity ||
		r.json(t)["code"] != "idempotency_key_reused" || r.json(t)["field"] != "idempotency_key" {
		t.Errorf("the key reused for another question: %d %s, want 422", r.status, r.body)
	}
	bobs := bob.submit(keyed("What are channels?", "submit-1"))
	if bobs == first {
		t.Errorf("bob's submit with ada's key gave ada's job %s", first)
	}
	other := ada.submit(map[string]any{"course_id": "physics-101", "video_url": "newton", "message": "What is inertia?", "priority": "high"})
	if !strings.HasPrefix(other, "high.") {
		t.Errorf("a job of priority high has ID %s", other)
	}

	// ada's jobs end with a reply; bob cannot see them, not even by
	// waiting, and the 404 is the one of a job that does not exist.
	for _, id := range []string{first, other} {
		r := ada.job(id, "10s")
		m := r.json(t)
		if r.status != http.StatusOK || m["state"] != "done" || m["reply"] == "" || m["thread_id"] == "" || m["ended_at"] == nil {
			t.Fatalf("GET /v1/jobs/%s?wait=10s: %d %s", id, r.status, r.body)
		}
	}
	unknown := bob.job("default.k0123456789abcdef0123456789abcdef", "")
	if unknown.status != http.StatusNotFound || unknown.json(t)["code"] != "not_found" {
		t.Fatalf("an unknown job: %d %s", unknown.status, unknown.body)
	}
	for _, c := range []struct {
		l       *learner
		id      string
		wait    string
		comment string
	}{
		{bob, first, "", "ada's job, read by bob"},
		{bob, other, "5s", "ada's job, waited for by bob"},
		{ada, bobs, "", "bob's job, read by ada"},
		{bob, "not-a-job-id", "", "an ID that cannot be one"},
	} {
		if r := c.l.job(c.id, c.wait); r.status != unknown.status || !bytes.Equal(r.body, unknown.body) {
			t.Errorf("%s: %d %s, want the unknown job's %d %s", c.comment, r.status, r.body, unknown.status, unknown.body)
		}
	}
	if r := bob.job(bobs, "10s"); r.status != http.StatusOK || r.json(t)["state"] != "done" {
		t.Errorf("bob's own job: %d %s", r.status, r.body)
	}

	// The double submit ran one turn.
	if got := ada.history("demo-course"); len(got) != 2 || got[0] != "user: What are channels?" {
		t.Errorf("ada's history after one keyed job = %q", got)
	}
}

// TestJobFailure: a job the Service refuses fails at once, and its
// status says why without the error's own text.
func TestJobFailure(t *testing.T) {
	t.Parallel()
	// A token budget smaller than any prompt: every turn is too large.
	s := start(t, app.Config{UpstreamTokensPerMinute: 50}, app.Options{})
	l := s.learner(t)
	id := l.submit(ask("What are goroutines?"))
	r := l.job(id, "10s")
	m := r.json(t)
	e, _ := m["error"].(map[string]any)
	if r.status != http.StatusOK || m["state"] != "failed" || m["reply"] != nil || m["attempts"] != 1.0 ||
		e["kind"] != "invalid" || e["field"] != "message" || e["message"] == "" {
		t.Errorf("a job too large for the budget: %d %s", r.status, r.body)
	}
}

// TestJobWaitEndsAtDrain: a GET waiting for a job answers with the job's
// state as soon as the server drains, so that the drain does not wait
// for it.
func TestJobWaitEndsAtDrain(t *testing.T) {
	t.Parallel()
	waiting := make(chan struct{}, 1)
	auth := app.AuthenticatorFunc(func(_ http.ResponseWriter, r *http.Request) (string, error) {
		if r.URL.Query().Get("wait") != "" {
			select {
			case waiting <- struct{}{}:
			default:
			}
		}
		return "ada", nil
	})
	// A quota of one turn a minute: after a turn, the job is put back for
	// the quota's Retry-After, about a minute.
	s := start(t, app.Config{LearnerTurnsPerMinute: 1}, app.Options{Authenticator: auth})
	l := s.learner(t)
	if r := l.post("/v1/chat", ask("What are goroutines?")); r.status != http.StatusOK {
		t.Fatalf("turn: %d %s", r.status, r.body)
	}
	id := l.submit(ask("And channels?"))
	var m map[string]any
	if !testutil.Eventually(10*time.Second, func() bool {
		m = l.job(id, "").json(t)
		return m["state"] == "retrying"
	}) {
		t.Fatalf("the job over the quota is not retrying: %v", m)
	}
	if e, _ := m["error"].(map[string]any); e["kind"] != "rate_limited" || e["retry_after_seconds"].(float64) < 1 || m["next_attempt_at"] == nil {
		t.Errorf("a job held off by the quota: %v", m)
	}

	type answer struct {
		r   reply
		err error
	}
	got := make(chan answer, 1)
	go func() {
		r, err := l.send(http.MethodGet, "/v1/jobs/"+id+"?wait=30s", "", nil)
		got <- answer{r, err}
	}()
	select {
	case <-waiting:
	case a := <-got:
		t.Fatalf("the GET ended before the drain: %d %s %v", a.r.status, a.r.body, a.err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if err := s.app.Drain(ctx); err != nil {
		t.Fatalf("Drain with a GET waiting for a job: %v", err)
	}
	a := <-got
	if a.err != nil {
		t.Fatal(a.err)
	}
	if r := a.r; r.status != http.StatusOK || r.json(t)["state"] != "retrying" {
		t.Errorf("the waiting GET at the drain: %d %s", r.status, r.body)
	}
	if r := l.post("/v1/jobs", ask("Another one?")); r.status != http.StatusServiceUnavailable || r.json(t)["code"] != "shutting_down" {
		t.Errorf("POST /v1/jobs while draining: %d %s", r.status, r.body)
	}
}

// TestLearnersAreIsolated: a learner is who authentication says, so no
// request reads, writes or forgets another learner's thread.
func TestLearnersAreIsolated(t *testing.T) {
	t.Parallel()
	check := func(t *testing.T, ada, bob *learner) {
		if r := ada.post("/v1/chat", ask("What are channels?")); r.status != http.StatusOK {
			t.Fatalf("ada's turn: %d %s", r.status, r.body)
		}
		adas := ada.history("demo-course")
		if len(adas) != 2 {
			t.Fatalf("ada's history = %q", adas)
		}
		if got := bob.history("demo-course"); len(got) != 0 {
			t.Errorf("bob reads %q in his history", got)
		}
		// The body cannot name a learner.
		body := ask("Whose thread is this?")
		body["user_id"] = "ada"
		if r := bob.post("/v1/chat", body); r.status != http.StatusBadRequest {
			t.Errorf("a body naming user_id: %d %s, want 400", r.status, r.body)
		}
		if r := bob.post("/v1/chat", ask("Bob's own question")); r.status != http.StatusOK {
			t.Fatalf("bob's turn: %d %s", r.status, r.body)
		}
		if r := bob.do(http.MethodDelete, "/v1/me", "", nil); r.status != http.StatusOK {
			t.Fatalf("bob's forget: %d %s", r.status, r.body)
		}
		if got := ada.history("demo-course"); !slices.Equal(got, adas) {
			t.Errorf("ada's history after bob's turn and forget = %q, want %q", got, adas)
		}
		if got := bob.history("demo-course"); len(got) != 0 {
			t.Errorf("bob's history after his forget = %q", got)
		}
	}

	t.Run("anonymous", func(t *testing.T) {
		t.Parallel()
		s := start(t, app.Config{}, app.Options{})
		ada, bob := s.learner(t), s.learner(t)
		check(t, ada, bob)
		// A cookie that is not one the server hands out is replaced, not
		// trusted.
		u := s.learner(t)
		u.c.Jar.SetCookies(mustURL(t, s.URL), []*http.Cookie{{Name: app.LearnerCookie, Value: "ada"}})
		if got := u.history("demo-course"); len(got) != 0 {
			t.Errorf("a forged cookie reads %q", got)
		}
	})

	t.Run("bearer", func(t *testing.T) {
		t.Parallel()
		secret := []byte(strings.Repeat("k", 32))
		s := start(t, app.Config{AuthSecret: secret}, app.Options{})
		now := time.Now()
		ada, bob := s.learner(t), s.learner(t)
		ada.token = app.SignToken(secret, "ada", time.Hour, now)
		bob.token = app.SignToken(secret, "bob", time.Hour, now)
		check(t, ada, bob)

		other := []byte(strings.Repeat("x", 32))
		for name, token := range map[string]string{
			"none":           "",
			"other secret":   app.SignToken(other, "ada", time.Hour, now),
			"expired":        app.SignToken(secret, "ada", -time.Minute, now),
			"tampered":       ada.token[:len(ada.token)-2] + "AA",
			"not a token":    "ada",
			"payload of bob": strings.Split(bob.token, ".")[0] + "." + strings.Split(ada.token, ".")[1],
		} {
			m := s.learner(t)
			m.token = token
			r := m.get("/v1/history?course_id=demo-course")
			if r.status != http.StatusUnauthorized || r.header.Get("WWW-Authenticate") == "" || r.json(t)["code"] != "unauthenticated" {
				t.Errorf("%s: %d %s, want 401", name, r.status, r.body)
			}
		}
	})
}

// TestErrorMapping: the statuses and JSON bodies of refused requests.
func TestErrorMapping(t *testing.T) {
	t.Parallel()

	t.Run("bad requests", func(t *testing.T) {
		t.Parallel()
		s := start(t, app.Config{}, app.Options{})
		l := s.learner(t)
		for _, c := range []struct {
			name        string
			contentType string
			body        string
			status      int
			field       string
		}{
			{"not JSON", "application/json", `{"course_id":`, 400, ""},
			{"trailing data", "application/json", `{"course_id":"demo-course","video_url":"intro","message":"hi"} {}`, 400, ""},
			{"unknown field", "application/json", `{"course_id":"demo-course","video_url":"intro","message":"hi","user_id":"x"}`, 400, ""},
			{"empty message", "application/json", `{"course_id":"demo-course","video_url":"intro","message":"  "}`, 400, "message"},
			{"no course", "application/json", `{"video_url":"intro","message":"hi"}`, 400, "course_id"},
			{"no video", "application/json", `{"course_id":"demo-course","message":"hi"}`, 400, "video_url"},
			{"negative position", "application/json", `{"course_id":"demo-course","video_url":"intro","message":"hi","position_seconds":-1}`, 400, "position_seconds"},
			{"message over the Service's bound", "application/json",
				`{"course_id":"demo-course","video_url":"intro","message":"` + strings.Repeat("a", 9<<10) + `"}`, 400, "message"},
			{"body over the server's bound", "application/json",
				`{"course_id":"demo-course","video_url":"intro","message":"` + strings.Repeat("a", app.MaxBodyBytes) + `"}`, 413, ""},
			{"form body", "application/x-www-form-urlencoded", `course_id=demo-course`, 415, ""},
			{"no content type", "", `{}`, 415, ""},
		} {
			for _, path := range []string{"/v1/chat", "/v1/chat/stream", "/v1/jobs"} {
				r := l.do(http.MethodPost, path, c.contentType, strings.NewReader(c.body))
				if r.status != c.status || !strings.HasPrefix(r.header.Get("Content-Type"), "application/json") {
					t.Errorf("%s %s: %d %s %s, want %d JSON", c.name, path, r.status, r.header.Get("Content-Type"), r.body, c.status)
					continue
				}
				if m := r.json(t); m["error"] == "" || (c.field != "" && m["field"] != c.field) {
					t.Errorf("%s %s: body %s, want an error about %q", c.name, path, r.body, c.field)
				}
			}
		}
		for _, c := range []struct {
			name, body, field string
		}{
			{"unknown priority", `{"course_id":"demo-course","video_url":"intro","message":"hi","priority":"urgent"}`, "priority"},
			{"empty idempotency key", `{"course_id":"demo-course","video_url":"intro","message":"hi","idempotency_key":""}`, "idempotency_key"},
			{"idempotency key too long", `{"course_id":"demo-course","video_url":"intro","message":"hi","idempotency_key":"` +
				strings.Repeat("k", app.MaxIdempotencyKeyBytes+1) + `"}`, "idempotency_key"},
			{"user_id", `{"course_id":"demo-course","video_url":"intro","message":"hi","user_id":"ada"}`, ""},
		} {
			r := l.do(http.MethodPost, "/v1/jobs", "application/json", strings.NewReader(c.body))
			if r.status != http.StatusBadRequest || r.json(t)["code"] != "invalid_request" || r.json(t)["field"] != c.field && c.field != "" {
				t.Errorf("POST /v1/jobs, %s: %d %s, want 400 about %q", c.name, r.status, r.body, c.field)
			}
		}
		for _, wait := range []string{"soon", "-1s", "1e3"} {
			if r := l.job("default.k0123456789abcdef0123456789abcdef", wait); r.status != http.StatusBadRequest || r.json(t)["field"] != "wait" {
				t.Errorf("GET /v1/jobs/…?wait=%s: %d %s, want 400", wait, r.status, r.body)
			}
		}
		if r := l.get("/v1/history"); r.status != 400 || r.json(t)["field"] != "course_id" {
			t.Errorf("history without course_id: %d %s", r.status, r.body)
		}
		if r := l.get("/v1/history?course_id=demo-course&limit=-1"); r.status != 400 || r.json(t)["field"] != "limit" {
			t.Errorf("history with limit=-1: %d %s", r.status, r.body)
		}
		if got := l.history("demo-course"); len(got) != 0 {
			t.Errorf("refused requests stored %q", got)
		}
	})

	t.Run("learner quota", func(t *testing.T) {
		t.Parallel()
		s := start(t, app.Config{LearnerTurnsPerMinute: 2}, app.Options{})
		ada, bob := s.learner(t), s.learner(t)
		for i := range 2 {
			if r := ada.post("/v1/chat", ask("question "+strconv.Itoa(i))); r.status != http.StatusOK {
				t.Fatalf("turn %d: %d %s", i, r.status, r.body)
			}
		}
		for _, path := range []string{"/v1/chat", "/v1/chat/stream"} {
			r := ada.post(path, ask("one too many"))
			ra, _ := strconv.Atoi(r.header.Get("Retry-After"))
			m := r.json(t)
			if r.status != http.StatusTooManyRequests || ra < 1 || ra > 60 || m["code"] != "rate_limited" || m["retry_after_seconds"] != float64(ra) {
				t.Errorf("%s over the quota: %d Retry-After %q %s", path, r.status, r.header.Get("Retry-After"), r.body)
			}
		}
		if r := bob.post("/v1/chat", ask("my first")); r.status != http.StatusOK {
			t.Errorf("another learner's turn: %d %s, want 200 (the quota is per learner)", r.status, r.body)
		}
	})

	t.Run("upstream down without fallback", func(t *testing.T) {
		t.Parallel()
		s := start(t, app.Config{OfflineDown: true, DisableFallback: true}, app.Options{})
		l := s.learner(t)
		for _, path := range []string{"/v1/chat", "/v1/chat/stream"} {
			r := l.post(path, ask("anyone there?"))
			m := r.json(t)
			if r.status != http.StatusServiceUnavailable || m["code"] != "unavailable" || m["reason"] == "" || r.header.Get("Retry-After") == "" {
				t.Errorf("%s with the upstream down: %d %v %s", path, r.status, r.header, r.body)
			}
		}
	})

	t.Run("real upstream failing without fallback", func(t *testing.T) {
		t.Parallel()
		fake := testutil.OpenAI(t, testutil.OpenAIConfig{})
		fake.Always(&testutil.FakeStep{Status: http.StatusInternalServerError})
		s := start(t, app.Config{OpenAIBaseURL: fake.URL, OpenAIAPIKey: "sk-test", DisableFallback: true}, app.Options{})
		r := s.learner(t).post("/v1/chat", ask("anyone there?"))
		if r.status != http.StatusServiceUnavailable || r.json(t)["code"] != "unavailable" {
			t.Errorf("upstream answering 500: %d %s", r.status, r.body)
		}
		if fake.Requests() == 0 {
			t.Error("the fake upstream got no request")
		}
	})

	t.Run("upstream down with fallback", func(t *testing.T) {
		t.Parallel()
		s := start(t, app.Config{OfflineDown: true}, app.Options{})
		l := s.learner(t)
		r := l.post("/v1/chat", ask("anyone there?"))
		m := r.json(t)
		if r.status != http.StatusOK || m["degraded"] != true || m["stored"] != false || len(m["reasons"].([]any)) == 0 {
			t.Errorf("fallback turn: %d %s", r.status, r.body)
		}
		_, done := streamed(t, l.post("/v1/chat/stream", ask("anyone there?")))
		if done["degraded"] != true {
			t.Errorf("fallback stream done = %v", done)
		}
	})

	t.Run("redis down", func(t *testing.T) {
		t.Parallel()
		// Nothing listens on port 1 of the loopback interface.
		s := start(t, app.Config{RedisURL: "redis://127.0.0.1:1/0"}, app.Options{})
		l := s.learner(t)
		for _, r := range []reply{l.post("/v1/jobs", ask("later?")), l.job("default.k0123456789abcdef0123456789abcdef", "")} {
			if r.status != http.StatusServiceUnavailable || r.json(t)["code"] != "unavailable" || r.header.Get("Retry-After") == "" {
				t.Errorf("a job route with Redis down: %d %v %s", r.status, r.header, r.body)
			}
		}
		if !strings.Contains(s.log.String(), "the worker cannot start, Redis does not answer") {
			t.Errorf("the log does not say why the worker does not run:\n%s", s.log.String())
		}
	})

	t.Run("no transcript", func(t *testing.T) {
		t.Parallel()
		s := start(t, app.Config{}, app.Options{})
		r := s.learner(t).post("/v1/chat", map[string]any{"course_id": "demo-course", "video_url": "no-such-video", "message": "hi"})
		m := r.json(t)
		if r.status != http.StatusOK || m["degraded"] != true || !slices.Contains(m["reasons"].([]any), any("transcript_missing")) {
			t.Errorf("turn on a video without transcript: %d %s", r.status, r.body)
		}
	})

	t.Run("draining", func(t *testing.T) {
		t.Parallel()
		s := start(t, app.Config{}, app.Options{})
		l := s.learner(t)
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		defer cancel()
		if err := s.app.Drain(ctx); err != nil {
			t.Fatal(err)
		}
		for _, path := range []string{"/v1/chat", "/readyz"} {
			var r reply
			if path == "/readyz" {
				r = l.get(path)
			} else {
				r = l.post(path, ask("still there?"))
			}
			if r.status != http.StatusServiceUnavailable || r.json(t)["code"] != "shutting_down" {
				t.Errorf("%s while draining: %d %s", path, r.status, r.body)
			}
		}
		if r := l.get("/healthz"); r.status != http.StatusOK {
			t.Errorf("/healthz while draining: %d", r.status)
		}
	})
}

// TestNoSecretsInLogsOrMetrics: the log and /metrics carry neither the
// learner's message, nor the reply, nor the token, nor the learner, nor
// an idempotency key, through the chat routes and the job routes.
func TestNoSecretsInLogsOrMetrics(t *testing.T) {
	t.Parallel()
	secret := []byte(strings.Repeat("s", 32))
	s := start(t, app.Config{AuthSecret: secret, OfflineDelay: time.Millisecond}, app.Options{})
	l := s.learner(t)
	l.token = app.SignToken(secret, "learner-7f3a", time.Hour, time.Now())
	const question = "Are goroutines zanzibar-quux cheap?"
	r := l.post("/v1/chat", ask(question))
	if r.status != http.StatusOK {
		t.Fatalf("turn: %d %s", r.status, r.body)
	}
	reply := r.json(t)["reply"].(string)
	streamed(t, l.post("/v1/chat/stream", ask(question)))
	job := ask(question)
	job["idempotency_key"] = "learner-7f3a/zanzibar"
	if r := l.job(l.submit(job), "10s"); r.json(t)["state"] != "done" {
		t.Fatalf("job: %d %s", r.status, r.body)
	}
	l.history("demo-course")
	metrics := l.get("/metrics").body
	logs := s.log.String()
	if !strings.Contains(logs, `route="POST /v1/chat"`) {
		t.Errorf("the log has no request line:\n%s", logs)
	}
	for _, leak := range []string{"zanzibar", reply[:40], l.token, strings.Split(l.token, ".")[1], "learner-7f3a"} {
		if strings.Contains(logs, leak) {
			t.Errorf("the log holds %q:\n%s", leak, logs)
		}
		if bytes.Contains(metrics, []byte(leak)) {
			t.Errorf("/metrics holds %q", leak)
		}
	}
}

// TestReadyz: /readyz names the dependency that does not answer.
func TestReadyz(t *testing.T) {
	t.Parallel()
	s := start(t, app.Config{}, app.Options{})
	if r := s.learner(t).get("/readyz"); r.status != 200 || r.json(t)["checks"].(map[string]any)["redis"] != "ok" {
		t.Errorf("embedded: %d %s", r.status, r.body)
	}

	// Nothing listens on port 1 of the loopback interface.
	s = start(t, app.Config{RedisURL: "redis://127.0.0.1:1/0", MongoURI: "mongodb://127.0.0.1:1/?serverSelectionTimeoutMS=500",
		MongoDatabase: "lms"}, app.Options{})
	r := s.learner(t).get("/readyz")
	checks, _ := r.json(t)["checks"].(map[string]any)
	if r.status != http.StatusServiceUnavailable || checks["redis"] != "unreachable" || checks["mongodb"] != "unreachable" {
		t.Errorf("unreachable Redis and MongoDB: %d %s", r.status, r.body)
	}
}

// TestHTTPServerTimeouts: the server bounds every phase of a request.
func TestHTTPServerTimeouts(t *testing.T) {
	t.Parallel()
	s := start(t, app.Config{}, app.Options{})
	srv := s.app.HTTPServer()
	if srv.ReadHeaderTimeout <= 0 || srv.ReadTimeout <= 0 || srv.WriteTimeout <= 0 || srv.IdleTimeout <= 0 || srv.MaxHeaderBytes <= 0 {
		t.Errorf("timeouts: header %v read %v write %v idle %v, max header %d",
			srv.ReadHeaderTimeout, srv.ReadTimeout, srv.WriteTimeout, srv.IdleTimeout, srv.MaxHeaderBytes)
	}
}

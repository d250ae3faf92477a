package app_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chatscale/chatscale/examples/server/app"
)

// server is an App behind an httptest server on 127.0.0.1.
type server struct {
	*httptest.Server
	app *app.App
	log *syncBuffer
}

// start wires an App from cfg and serves it until the test ends.
func start(t *testing.T, cfg app.Config, opts app.Options) *server {
	t.Helper()
	logs := &syncBuffer{}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	a, err := app.New(t.Context(), cfg, opts)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(a.Handler())
	t.Cleanup(func() {
		srv.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := a.Close(ctx); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return &server{Server: srv, app: a, log: logs}
}

// learner is an HTTP client with its own identity: a cookie jar (the
// anonymous mode) and, when set, a bearer token.
type learner struct {
	t     *testing.T
	base  string
	c     *http.Client
	token string
}

func (s *server) learner(t *testing.T) *learner { return newLearner(t, s.URL) }

// newLearner returns a learner of the server at base.
func newLearner(t *testing.T, base string) *learner {
	jar, err := cookiejar.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	return &learner{t: t, base: base, c: &http.Client{Jar: jar, Timeout: 30 * time.Second}}
}

// reply is an HTTP answer, its body read.
type reply struct {
	status int
	header http.Header
	body   []byte
}

// json decodes the body into a map.
func (r reply) json(t *testing.T) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(r.body, &m); err != nil {
		t.Fatalf("body %q is not a JSON object: %v", r.body, err)
	}
	return m
}

func (l *learner) do(method, path, contentType string, body io.Reader) reply {
	l.t.Helper()
	r, err := l.send(method, path, contentType, body)
	if err != nil {
		l.t.Fatal(err)
	}
	return r
}

// send is do without failing the test, for other goroutines than the
// test's.
func (l *learner) send(method, path, contentType string, body io.Reader) (reply, error) {
	req, err := http.NewRequestWithContext(l.t.Context(), method, l.base+path, body)
	if err != nil {
		return reply{}, err
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	if l.token != "" {
		req.Header.Set("Authorization", "Bearer "+l.token)
	}
	resp, err := l.c.Do(req)
	if err != nil {
		return reply{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return reply{}, err
	}
	return reply{status: resp.StatusCode, header: resp.Header, body: b}, nil
}

// post sends v as JSON.
func (l *learner) post(path string, v any) reply {
	l.t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		l.t.Fatal(err)
	}
	return l.do(http.MethodPost, path, "application/json", bytes.NewReader(b))
}

func (l *learner) get(path string) reply {
	l.t.Helper()
	return l.do(http.MethodGet, path, "", nil)
}

// submit posts a job and returns its ID, failing the test unless the
// answer is 202 with the job's ID and status URL.
func (l *learner) submit(body map[string]any) string {
	l.t.Helper()
	r := l.post("/v1/jobs", body)
	if r.status != http.StatusAccepted {
		l.t.Fatalf("POST /v1/jobs: %d %s", r.status, r.body)
	}
	m := r.json(l.t)
	id, _ := m["job_id"].(string)
	if id == "" || m["status_url"] != "/v1/jobs/"+id || r.header.Get("Location") != "/v1/jobs/"+id {
		l.t.Fatalf("POST /v1/jobs: %v %s", r.header, r.body)
	}
	return id
}

// job reads a job with GET /v1/jobs/{id}?wait=… (no wait when wait is
// empty).
func (l *learner) job(id, wait string) reply {
	l.t.Helper()
	path := "/v1/jobs/" + id
	if wait != "" {
		path += "?wait=" + wait
	}
	return l.get(path)
}

// ask is a question about the demo course's intro video.
func ask(msg string) map[string]any {
	return map[string]any{"course_id": "demo-course", "video_url": "intro", "message": msg}
}

// event is one server-sent event.
type event struct {
	name string
	data map[string]any
}

// parseEvents reads a text/event-stream body.
func parseEvents(t *testing.T, body []byte) []event {
	t.Helper()
	var (
		out []event
		cur event
	)
	sc := bufio.NewScanner(bytes.NewReader(body))
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "":
			if cur.name != "" {
				out = append(out, cur)
			}
			cur = event{}
		case strings.HasPrefix(line, "event: "):
			cur.name = strings.TrimPrefix(line, "event: ")
		case strings.HasPrefix(line, "data: "):
			if err := json.Unmarshal([]byte(strings.TrimPrefix(line, "data: ")), &cur.data); err != nil {
				t.Fatalf("event data %q: %v", line, err)
			}
		}
	}
	return out
}

// streamed returns the text of the delta events and the done event.
func streamed(t *testing.T, r reply) (string, map[string]any) {
	t.Helper()
	if r.status != http.StatusOK || !strings.HasPrefix(r.header.Get("Content-Type"), "text/event-stream") {
		t.Fatalf("stream answered %d %s: %s", r.status, r.header.Get("Content-Type"), r.body)
	}
	var (
		b    strings.Builder
		done map[string]any
	)
	for _, e := range parseEvents(t, r.body) {
		switch e.name {
		case "delta":
			b.WriteString(e.data["text"].(string))
		case "done":
			done = e.data
		default:
			t.Fatalf("unexpected event %q: %v", e.name, e.data)
		}
	}
	if done == nil {
		t.Fatalf("no done event in %s", r.body)
	}
	return b.String(), done
}

// history returns the learner's messages for a course as role: content.
func (l *learner) history(course string) []string {
	l.t.Helper()
	r := l.get("/v1/history?course_id=" + course)
	if r.status != http.StatusOK {
		l.t.Fatalf("history answered %d: %s", r.status, r.body)
	}
	var body struct {
		Messages []struct{ Role, Content string }
	}
	if err := json.Unmarshal(r.body, &body); err != nil {
		l.t.Fatal(err)
	}
	out := make([]string, len(body.Messages))
	for i, m := range body.Messages {
		out[i] = m.Role + ": " + m.Content
	}
	return out
}

// syncBuffer is a bytes.Buffer safe for concurrent writers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func mustURL(t *testing.T, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

package app_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/chatscale/chatscale/examples/server/app"
)

// FuzzRequestBodies posts arbitrary bodies to the routes that read JSON
// (POST /v1/chat, /v1/chat/stream and /v1/jobs) of an App with its
// embedded Redis and offline model. A body is answered with a 2xx or a
// 4xx with the JSON error body, never a 5xx or a panic; a stream answered
// 200 is well-formed Server-Sent Events: "event:" and "data:" lines in
// blocks ended by a blank line, each data line one JSON object, delta
// events then one done (or error) event.
func FuzzRequestBodies(f *testing.F) {
	for _, s := range []string{
		`{"course_id":"demo-course","video_url":"intro","message":"What are goroutines?"}`,
		`{"course_id":"demo-course","video_url":"intro","message":"Line one\nline two\r\n\u2028end","position_seconds":65}`,
		`{"course_id":"demo-course","video_url":"intro","message":"q","position_seconds":-1}`,
		`{"course_id":"demo-course","video_url":"intro","message":"q","position_seconds":1e308}`,
		`{"course_id":"demo-course","video_url":"intro","message":"q","priority":"high","idempotency_key":"k"}`,
		`{"course_id":"demo-course","video_url":"intro","message":"q","priority":"urgent"}`,
		`{"course_id":"demo-course","video_url":"intro","message":"q","idempotency_key":""}`,
		`{"course_id":"nope","video_url":"nope","message":"q"}`,
		`{"user_id":"eve","course_id":"demo-course","video_url":"intro","message":"q"}`,
		`{"course_id":"demo-course","video_url":"intro","message":""}`,
		`{"course_id":"demo-course","video_url":"intro","message":"\ud800"}`,
		"{\"course_id\":\"demo-course\",\"video_url\":\"intro\",\"message\":\"\xff\"}",
		`{"course_id":1}`, `{}`, `[]`, `null`, ``, `{"a":`, `{} {}`, `{"message":"q"} x`,
	} {
		for route := range uint8(3) {
			f.Add([]byte(s), route, uint8(0))
		}
	}
	f.Add([]byte(`{"message":"q"}`), uint8(0), uint8(1))
	f.Add([]byte(`{"message":"q"}`), uint8(1), uint8(2))
	f.Add([]byte(`{"message":"q"}`), uint8(2), uint8(3))

	a, err := app.New(context.Background(), app.Config{
		LearnerTurnsPerMinute:     -1,
		UpstreamRequestsPerMinute: 1_000_000, UpstreamTokensPerMinute: 100_000_000,
	}, app.Options{})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := a.Close(ctx); err != nil {
			f.Errorf("Close: %v", err)
		}
	})
	h := a.Handler()
	routes := []string{"/v1/chat", "/v1/chat/stream", "/v1/jobs"}
	types := []string{"application/json", "", "text/plain", "application/json; charset=utf-8"}

	f.Fuzz(func(t *testing.T, body []byte, route, ctype uint8) {
		path := routes[int(route)%len(routes)]
		req := httptest.NewRequestWithContext(t.Context(), http.MethodPost, path, bytes.NewReader(body))
		req.RemoteAddr = "127.0.0.1:1234"
		if ct := types[int(ctype)%len(types)]; ct != "" {
			req.Header.Set("Content-Type", ct)
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		status, got := rec.Code, rec.Body.Bytes()
		switch {
		case status >= 500:
			t.Fatalf("POST %s %q: %d %s", path, body, status, got)
		case status >= 400:
			var e struct{ Code, Error string }
			if err := json.Unmarshal(got, &e); err != nil || e.Code == "" || e.Error == "" {
				t.Fatalf("POST %s %q: %d with body %q, not a JSON error", path, body, status, got)
			}
		case status < 200 || status >= 300:
			t.Fatalf("POST %s %q: %d %s", path, body, status, got)
		case path == "/v1/chat/stream":
			checkEvents(t, got)
		}
	})
}

// checkEvents checks that body is a well-formed stream of a turn.
func checkEvents(t *testing.T, body []byte) {
	t.Helper()
	var names []string
	sc := bufio.NewScanner(bytes.NewReader(body))
	sc.Buffer(nil, 1<<20)
	name, data := "", false
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "":
			if name == "" || !data {
				t.Fatalf("an event without a name or data in %q", body)
			}
			names = append(names, name)
			name, data = "", false
		case strings.HasPrefix(line, "event: ") && name == "":
			name = strings.TrimPrefix(line, "event: ")
		case strings.HasPrefix(line, "data: ") && name != "" && !data:
			var v map[string]any
			if err := json.Unmarshal([]byte(strings.TrimPrefix(line, "data: ")), &v); err != nil {
				t.Fatalf("event %s: data line %q is not one JSON object: %v", name, line, err)
			}
			data = true
		default:
			t.Fatalf("line %q breaks the framing of %q", line, body)
		}
	}
	if name != "" || !bytes.HasSuffix(body, []byte("\n\n")) {
		t.Fatalf("the stream ends inside an event: %q", body)
	}
	if last := len(names) - 1; last < 0 || names[last] != "done" && names[last] != "error" {
		t.Fatalf("events %v: want deltas then done or error", names)
	}
	for _, n := range names[:len(names)-1] {
		if n != "delta" {
			t.Fatalf("events %v: want deltas then done or error", names)
		}
	}
}

package queue

import (
	"bytes"
	"encoding/json"
	"errors"
	"reflect"
	"testing"

	"github.com/chatscale/chatscale/chat"
)

// FuzzDecodePayload gives the Worker's payload decoder arbitrary bytes.
// Each is refused with an error wrapping ErrMalformed, or is a payload of
// this Version with a positive timeout, attempts and enqueue time, which
// re-encodes to bytes that decode to the same payload and encode to the
// same bytes again. checkRequest then refuses its request with a
// *chat.ValidationError or accepts it.
func FuzzDecodePayload(f *testing.F) {
	good, err := encodePayload(&payload{V: Version, EnqueuedAtMS: 1_700_000_000_000, TimeoutMS: 60_000, MaxAttempts: 3,
		Request: toWireRequest(chat.Request{UserID: "ada", CourseID: "go-101", VideoURL: "intro", Message: "What is a channel?"})})
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	for _, s := range []string{
		``, `null`, `[]`, `"v"`, `{}`, `{"v":null}`, `{"v":2}`, `{"v":1}`, `{"v":1.0}`, `{"v":"1"}`,
		`{"v":1,"req":{},"enqueued_at_ms":1,"timeout_ms":1,"max_attempts":1}`,
		`{"v":1,"req":{"user_id":"a","course_id":"c","video_url":"v","message":"q","position_ns":-5,"has_position":true},"enqueued_at_ms":1,"timeout_ms":1,"max_attempts":1}`,
		`{"v":1,"req":{"user_id":"\ud800","course_id":"c","video_url":"v","message":"q"},"enqueued_at_ms":1,"timeout_ms":1,"max_attempts":1}`,
		`{"v":1,"req":{"message":"q"},"enqueued_at_ms":9223372036854775807,"timeout_ms":9223372036854775807,"max_attempts":2147483647}`,
		`{"v":1,"enqueued_at_ms":1e3,"timeout_ms":1,"max_attempts":1}`,
		`{"v":1,"v":2}`, `{"V":1,"req":[],"timeout_ms":1}`, `{"v":1}{"v":1}`, "{\"v\":1,\"req\":{\"message\":\"\xff\"},\"enqueued_at_ms\":1,\"timeout_ms\":1,\"max_attempts\":1}",
	} {
		f.Add([]byte(s))
	}

	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := decodePayload(b)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("decodePayload(%q) = %v: not ErrMalformed", b, err)
			}
			return
		}
		if p.V != Version || p.TimeoutMS <= 0 || p.MaxAttempts <= 0 || p.EnqueuedAtMS <= 0 || p.timeout() < 0 {
			t.Fatalf("decodePayload(%q) accepted %+v", b, p)
		}
		enc, err := encodePayload(p)
		if err != nil {
			t.Fatalf("encodePayload(%+v): %v", p, err)
		}
		q, err := decodePayload(enc)
		if err != nil {
			t.Fatalf("a decoded payload re-encodes to %q, which does not decode: %v", enc, err)
		}
		if !reflect.DeepEqual(p, q) {
			t.Fatalf("payload changed through encoding:\n%+v\n%+v", p, q)
		}
		if again, err := encodePayload(q); err != nil || !bytes.Equal(again, enc) {
			t.Fatalf("encoding is not stable: %q then %q (%v)", enc, again, err)
		}
		req := p.Request.request()
		if toWireRequest(req) != p.Request {
			t.Fatalf("request changed through chat.Request: %+v, %+v", p.Request, toWireRequest(req))
		}
		if err := checkRequest(req, chat.DefaultMaxMessageBytes); err != nil {
			var ve *chat.ValidationError
			if !errors.As(err, &ve) || !errors.Is(err, chat.ErrInvalidRequest) {
				t.Fatalf("checkRequest(%+v) = %v: not a *chat.ValidationError", req, err)
			}
		}
	})
}

// FuzzDecodeResult does the same for the results a Worker stores: an
// error wrapping ErrMalformed, or a result of this Version that survives
// re-encoding, and whose Response converts to a chat.Response and back.
func FuzzDecodeResult(f *testing.F) {
	for _, s := range []string{
		``, `{}`, `{"v":0}`, `{"v":2}`, `{"v":1}`, `[]`, `{"v":1,"attempt":-1}`,
		`{"v":1,"attempt":2,"at_ms":1700000000000,"response":{"thread_id":"t","reply":"hi","reasons":["breaker_open"],"transcript_tier":"l2"}}`,
		`{"v":1,"attempt":3,"at_ms":1,"error":{"kind":"unavailable","message":"down"}}`,
		`{"v":1,"response":{"reply":"\u2028\n\u0000","transcript_tier":"bogus"}}`,
		`{"v":1,"response":null,"error":null}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := decodeResult(b)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("decodeResult(%q) = %v: not ErrMalformed", b, err)
			}
			return
		}
		if r.V != Version {
			t.Fatalf("decodeResult(%q) accepted version %d", b, r.V)
		}
		enc, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		r2, err := decodeResult(enc)
		if err != nil || !reflect.DeepEqual(r, r2) {
			t.Fatalf("result changed through encoding: %+v, %+v, %v", r, r2, err)
		}
		if r.Response != nil {
			resp := r.Response.response()
			w := toWireResponse(resp)
			if w.Reply != r.Response.Reply || w.ThreadID != r.Response.ThreadID {
				t.Fatalf("response changed through chat.Response: %+v, %+v", r.Response, w)
			}
			if back := w.response(); !reflect.DeepEqual(back, resp) {
				t.Fatalf("chat.Response changed through the wire form: %+v, %+v", resp, back)
			}
		}
	})
}

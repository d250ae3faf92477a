package chat

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/sashabaranov/go-openai"
)

// HTTPClient returns an http.Client for go-openai whose Transport keeps up
// to maxConns idle connections to the upstream host (zero or negative
// means 256), so concurrent calls reuse connections instead of opening a
// new one per call, and which is wrapped by Transport. The client has no
// overall timeout: Client's per-attempt timeout and the caller's ctx bound
// each call (a client timeout would also cut long streams).
func HTTPClient(maxConns int) *http.Client {
	if maxConns <= 0 {
		maxConns = 256
	}
	base := &http.Transport{
		Proxy: http.ProxyFromEnvironment,
		DialContext: (&net.Dialer{
			Timeout:   10 * time.Second,
			KeepAlive: 30 * time.Second,
		}).DialContext,
		ForceAttemptHTTP2:     true,
		MaxIdleConns:          maxConns,
		MaxIdleConnsPerHost:   maxConns,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   10 * time.Second,
		ExpectContinueTimeout: time.Second,
	}
	return &http.Client{Transport: Transport(base)}
}

// NewOpenAI returns a go-openai client for an OpenAI-compatible API at
// baseURL (e.g. "https://api.openai.com/v1", a vLLM or Ollama "/v1" URL)
// that uses HTTPClient(maxConns). For Azure or other settings, build an
// openai.ClientConfig and set its HTTPClient to HTTPClient(maxConns).
func NewOpenAI(baseURL, apiKey string, maxConns int) *openai.Client {
	cfg := openai.DefaultConfig(apiKey)
	cfg.BaseURL = baseURL
	cfg.HTTPClient = HTTPClient(maxConns)
	return openai.NewClientWithConfig(cfg)
}

// Transport wraps base (nil means http.DefaultTransport) so that a Client
// learns what go-openai does not expose. For a request sent by a Client
// attempt (marked through the request's context), it records that the
// request reached the transport (so that a request go-openai refused
// before sending is not counted as an upstream attempt), the response
// status and headers (Retry-After, retry-after-ms, x-ratelimit-*), and,
// for a streamed reply, it returns only once the first byte of the body
// has arrived, so that the Client can still retry a stream that stalls
// before its first byte. Requests not sent by a Client pass through
// untouched.
//
// The body of a streamed reply is wrapped: closing it (or reading it to
// its end) frees the Client's bulkhead slot and the attempt's context, and
// with a token budget its server-sent events are read as they pass to
// settle the token reservation against the usage the stream reports (see
// the package doc's Accounting section).
func Transport(base http.RoundTripper) http.RoundTripper {
	if base == nil {
		base = http.DefaultTransport
	}
	return &transport{base: base}
}

type transport struct{ base http.RoundTripper }

func (t *transport) RoundTrip(r *http.Request) (*http.Response, error) {
	a, _ := r.Context().Value(attemptKey{}).(*attemptInfo)
	if a != nil {
		a.mu.Lock()
		first := !a.reached
		a.reached = true
		a.mu.Unlock()
		if first && a.onReach != nil {
			a.onReach()
		}
	}
	resp, err := t.base.RoundTrip(r)
	if a == nil || err != nil {
		return resp, err
	}
	a.record(resp.StatusCode, resp.Header)
	if !a.stream || resp.StatusCode < 200 || resp.StatusCode > 299 {
		return resp, nil
	}
	br := bufio.NewReader(resp.Body)
	if _, err := br.Peek(1); err != nil {
		_ = resp.Body.Close()
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	a.mu.Lock()
	a.wrapped = true
	a.mu.Unlock()
	body := &streamBody{r: br, c: resp.Body, end: a.end}
	if a.settle != nil {
		body.acct = &streamAccount{settle: a.settle, refund: a.refund}
	}
	resp.Body = body
	return resp, nil
}

// streamBody calls end once, when the body is closed or fully read, and
// feeds what passes to acct.
type streamBody struct {
	r    io.Reader
	c    io.Closer
	end  func()
	once sync.Once
	acct *streamAccount // nil: no token budget to settle
}

func (b *streamBody) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	if b.acct != nil {
		b.acct.read(p[:n], err != nil)
	}
	if err != nil {
		b.once.Do(b.end)
	}
	return n, err
}

func (b *streamBody) Close() error {
	err := b.c.Close()
	if b.acct != nil {
		b.acct.close()
	}
	b.once.Do(b.end)
	return err
}

// maxEventLine bounds the bytes of one server-sent event line kept for
// parsing; a longer line (a huge tool-call chunk) is skipped, which can
// only miss a reply marker, never a usage report (those are short).
const maxEventLine = 64 << 10

// streamAccount settles a stream's token reservation from the events that
// pass: against the last usage reported ("usage": {...}, which OpenAI
// sends in a last chunk when stream_options.include_usage is set) when
// the stream ends, or, when the stream ended (data: [DONE], an error
// event, end of body or a read error) before any chunk with a choice, by
// giving the reservation back. A stream closed before its end with no usage seen
// keeps its reservation: the upstream may have produced a reply nobody
// read.
type streamAccount struct {
	settle func(total int) // settle the reservation against total tokens
	refund func()          // give the reservation back

	mu      sync.Mutex
	line    []byte
	long    bool // the current line outgrew maxEventLine
	replied bool // a chunk with a choice passed
	total   int  // the last usage reported
	done    bool
}

func (s *streamAccount) read(p []byte, ended bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for len(p) > 0 && !s.done {
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			s.add(p)
			break
		}
		s.add(p[:i])
		s.event()
		p = p[i+1:]
	}
	if ended && !s.done {
		s.event() // a last line without its newline
		s.finish(true)
	}
}

func (s *streamAccount) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.done {
		s.finish(false)
	}
}

func (s *streamAccount) add(p []byte) {
	if s.long {
		return
	}
	if len(s.line)+len(p) > maxEventLine {
		s.long, s.line = true, s.line[:0]
		return
	}
	s.line = append(s.line, p...)
}

// event handles one complete line.
func (s *streamAccount) event() {
	line := bytes.TrimSpace(s.line)
	long := s.long
	s.line, s.long = s.line[:0], false
	if long || !bytes.HasPrefix(line, []byte("data:")) {
		return
	}
	data := bytes.TrimSpace(line[len("data:"):])
	if string(data) == "[DONE]" || bytes.HasPrefix(data, []byte(`{"error":`)) {
		// The end, or an error event, after which go-openai reads no more
		// (it matches the same prefix).
		s.finish(true)
		return
	}
	if !s.replied {
		if v := valueAfter(data, `"choices"`); len(v) > 0 && v[0] == '[' {
			if rest := bytes.TrimLeft(v[1:], " \t\r\n"); len(rest) > 0 && rest[0] != ']' {
				s.replied = true
			}
		}
	}
	if v := valueAfter(data, `"usage"`); len(v) > 0 && v[0] == '{' {
		var chunk struct {
			Usage *openai.Usage `json:"usage"`
		}
		if json.Unmarshal(data, &chunk) == nil && chunk.Usage != nil && chunk.Usage.TotalTokens > 0 {
			s.total = chunk.Usage.TotalTokens
		}
	}
}

// finish settles once: complete says the stream reached its end.
func (s *streamAccount) finish(complete bool) {
	s.done, s.line = true, nil
	switch {
	case s.total > 0:
		s.settle(s.total)
	case complete && !s.replied:
		s.refund()
	}
}

// valueAfter returns what follows the JSON object key key (quoted) and its
// colon in data, or nil. A quoted key cannot occur inside a JSON string
// (its quotes would be escaped), and a string value equal to it is not
// followed by a colon.
func valueAfter(data []byte, key string) []byte {
	for {
		i := bytes.Index(data, []byte(key))
		if i < 0 {
			return nil
		}
		data = data[i+len(key):]
		rest := bytes.TrimLeft(data, " \t\r\n")
		if len(rest) > 0 && rest[0] == ':' {
			return bytes.TrimLeft(rest[1:], " \t\r\n")
		}
	}
}

// attemptKey marks a request's context as one Client attempt.
type attemptKey struct{}

// attemptInfo is what the Transport learns about one attempt. The Client
// sets stream, end, settle, refund and onReach before the call; the Transport
// writes the rest before go-openai returns; the Client reads it after.
type attemptInfo struct {
	stream  bool
	end     func()          // frees the attempt's resources
	settle  func(total int) // nil without a token budget; see streamAccount
	refund  func()
	onReach func() // nil, or called once when the request reaches the Transport

	mu      sync.Mutex
	reached bool // the request reached the Transport
	status  int
	header  http.Header
	wrapped bool // a streamed body is wrapped (its first byte arrived)
}

func (a *attemptInfo) record(status int, h http.Header) {
	a.mu.Lock()
	a.status, a.header = status, h
	a.mu.Unlock()
}

func (a *attemptInfo) seen() (reached bool, status int, h http.Header, wrapped bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.reached, a.status, a.header, a.wrapped
}

func withAttempt(ctx context.Context, a *attemptInfo) context.Context {
	return context.WithValue(ctx, attemptKey{}, a)
}

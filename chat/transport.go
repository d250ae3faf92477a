package chat

import (
	"bufio"
	"context"
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
// learns what go-openai does not expose on errors. For a request sent by
// a Client attempt (marked through the request's context), it records the
// response status and headers (Retry-After, retry-after-ms,
// x-ratelimit-*) for the Client to read, and, for a streamed reply, it
// returns only once the first byte of the body has arrived, so that the
// Client can still retry a stream that stalls before its first byte.
// Requests not sent by a Client pass through untouched.
//
// The body of a streamed reply is wrapped: closing it (or reading it to
// its end) frees the Client's bulkhead slot and the attempt's context.
func Transport(base http.RoundTripper) http.RoundTripper {
	if base == nil {
		base = http.DefaultTransport
	}
	return &transport{base: base}
}

type transport struct{ base http.RoundTripper }

func (t *transport) RoundTrip(r *http.Request) (*http.Response, error) {
	a, _ := r.Context().Value(attemptKey{}).(*attemptInfo)
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
	resp.Body = &streamBody{r: br, c: resp.Body, end: a.end}
	return resp, nil
}

// streamBody calls end once, when the body is closed or fully read.
type streamBody struct {
	r    io.Reader
	c    io.Closer
	end  func()
	once sync.Once
}

func (b *streamBody) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	if err != nil {
		b.once.Do(b.end)
	}
	return n, err
}

func (b *streamBody) Close() error {
	err := b.c.Close()
	b.once.Do(b.end)
	return err
}

// attemptKey marks a request's context as one Client attempt.
type attemptKey struct{}

// attemptInfo is what the Transport learns about one attempt. The
// Transport writes it before go-openai returns; the Client reads it after.
type attemptInfo struct {
	stream  bool
	end     func() // frees the attempt's resources; set before the call
	mu      sync.Mutex
	status  int
	header  http.Header
	wrapped bool
}

func (a *attemptInfo) record(status int, h http.Header) {
	a.mu.Lock()
	a.status, a.header = status, h
	a.mu.Unlock()
}

func (a *attemptInfo) seen() (status int, h http.Header, wrapped bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.status, a.header, a.wrapped
}

func withAttempt(ctx context.Context, a *attemptInfo) context.Context {
	return context.WithValue(ctx, attemptKey{}, a)
}

package chat

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"
)

// The upstream's usage reaches the caller as it came, cached prompt
// tokens (usage.prompt_tokens_details.cached_tokens) included, for a
// unary call and for a stream's usage chunk.
func TestCachedPromptTokensPassThrough(t *testing.T) {
	const usage = `"usage":{"prompt_tokens":1200,"completion_tokens":30,"total_tokens":1230,"prompt_tokens_details":{"cached_tokens":1024}}`
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var stream struct {
			Stream bool `json:"stream"`
		}
		_ = json.NewDecoder(r.Body).Decode(&stream)
		if !stream.Stream {
			w.Header().Set("Content-Type", "application/json")
			fmt.Fprint(w, `{"id":"x","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],`+usage+`}`)
			return
		}
		w.Header().Set("Content-Type", "text/event-stream")
		fmt.Fprint(w, `data: {"id":"x","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"role":"assistant","content":"hi"}}]}`+"\n\n")
		fmt.Fprint(w, `data: {"id":"x","object":"chat.completion.chunk","choices":[],`+usage+`}`+"\n\n")
		fmt.Fprint(w, "data: [DONE]\n\n")
	}))
	defer srv.Close()
	clk := newClock()
	_, toks := budgets(t, clk, 100000)
	c, err := NewClient(NewOpenAI(srv.URL+"/v1", "sk-test", 4), Config{Tokens: toks, Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()
	resp, err := c.CreateChatCompletion(ctx, request("cached"))
	if err != nil {
		t.Fatal(err)
	}
	if d := resp.Usage.PromptTokensDetails; d == nil || d.CachedTokens != 1024 || resp.Usage.TotalTokens != 1230 {
		t.Fatalf("unary usage %+v (details %+v)", resp.Usage, d)
	}
	s, err := c.CreateChatCompletionStream(ctx, request("cached"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	cached := -1
	for {
		chunk, err := s.Recv()
		if err != nil {
			break
		}
		if chunk.Usage != nil && chunk.Usage.PromptTokensDetails != nil {
			cached = chunk.Usage.PromptTokensDetails.CachedTokens
		}
	}
	if cached != 1024 {
		t.Fatalf("stream: cached prompt tokens %d, want 1024", cached)
	}
	_ = s.Close()
	if got := left(t, toks, "openai:tokens"); got != 100000-2*1230 {
		t.Fatalf("token budget %d, want %d (both settled to total_tokens)", got, 100000-2*1230)
	}
}

package chat

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"

	"github.com/sashabaranov/go-openai"
)

// Degraded replies are marked in two ways callers can read.
const (
	// DegradedFingerprint is the SystemFingerprint of a fallback reply
	// (and of the chunk of a fallback stream).
	DegradedFingerprint = "chatscale-degraded"
	// DegradedHeader is set, on the response's Header() (and the
	// stream's), to the Reason of a fallback reply.
	DegradedHeader = "Chatscale-Degraded"
)

// IsDegraded reports whether resp is a fallback reply rather than the
// upstream's answer.
func IsDegraded(resp openai.ChatCompletionResponse) bool {
	return resp.SystemFingerprint == DegradedFingerprint
}

// IsDegradedStream reports whether s is a fallback stream rather than the
// upstream's.
func IsDegradedStream(s *openai.ChatCompletionStream) bool {
	return s != nil && s.Header().Get(DegradedHeader) != ""
}

// DegradedReason returns the Reason recorded on a degraded reply's
// header, or "" for an upstream answer.
func DegradedReason(h http.Header) Reason { return Reason(h.Get(DegradedHeader)) }

func (c *Client) fallbackResponse(req openai.ChatCompletionRequest, u *UnavailableError) openai.ChatCompletionResponse {
	resp := openai.ChatCompletionResponse{
		ID:                "chatscale-fallback",
		Object:            "chat.completion",
		Created:           c.now().Unix(),
		Model:             req.Model,
		SystemFingerprint: DegradedFingerprint,
		Choices: []openai.ChatCompletionChoice{{
			Message:      openai.ChatCompletionMessage{Role: openai.ChatMessageRoleAssistant, Content: c.cfg.FallbackText},
			FinishReason: openai.FinishReasonStop,
		}},
	}
	resp.SetHeader(http.Header{DegradedHeader: []string{string(u.Reason)}})
	return resp
}

// fallbackStream builds a real *openai.ChatCompletionStream holding one
// chunk with the fallback text, through a go-openai client whose
// HTTPDoer answers in process.
func (c *Client) fallbackStream(ctx context.Context, req openai.ChatCompletionRequest, u *UnavailableError) (*openai.ChatCompletionStream, error) {
	chunk, err := json.Marshal(openai.ChatCompletionStreamResponse{
		ID:                "chatscale-fallback",
		Object:            "chat.completion.chunk",
		Created:           c.now().Unix(),
		Model:             req.Model,
		SystemFingerprint: DegradedFingerprint,
		Choices: []openai.ChatCompletionStreamChoice{{
			Delta:        openai.ChatCompletionStreamChoiceDelta{Role: openai.ChatMessageRoleAssistant, Content: c.cfg.FallbackText},
			FinishReason: openai.FinishReasonStop,
		}},
	})
	if err != nil {
		return nil, err
	}
	body := make([]byte, 0, len(chunk)+32)
	body = append(body, "data: "...)
	body = append(body, chunk...)
	body = append(body, "\n\ndata: [DONE]\n\n"...)
	ctx = context.WithValue(context.WithoutCancel(ctx), fallbackKey{}, fallbackBody{body: body, reason: u.Reason})
	return c.fb.CreateChatCompletionStream(ctx, req)
}

type fallbackKey struct{}

type fallbackBody struct {
	body   []byte
	reason Reason
}

// fallbackDoer answers the fallback client's requests in process.
type fallbackDoer struct{}

func (fallbackDoer) Do(r *http.Request) (*http.Response, error) {
	fb, _ := r.Context().Value(fallbackKey{}).(fallbackBody)
	if r.Body != nil {
		_ = r.Body.Close()
	}
	return &http.Response{
		Status:     "200 OK",
		StatusCode: http.StatusOK,
		Header: http.Header{
			"Content-Type": []string{"text/event-stream"},
			DegradedHeader: []string{string(fb.reason)},
		},
		Body:    io.NopCloser(bytes.NewReader(fb.body)),
		Request: r,
	}, nil
}

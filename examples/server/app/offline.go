package app

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/sashabaranov/go-openai"

	"github.com/chatscale/chatscale/chat"
)

// The offline model: a chat.Completer that answers from the transcript in
// the prompt, deterministically, without any network. It is a go-openai
// client whose HTTP transport answers the Chat Completions wire format in
// process, so that the real chat.Client (budgets, breaker, retries,
// fallback) and the real stream decoding sit in front of it exactly as
// they sit in front of the OpenAI API.

// OfflineModelName is the model name the offline model reports.
const OfflineModelName = "chatscale-offline"

// offlineModel is an http.RoundTripper that serves POST …/chat/completions.
type offlineModel struct {
	// delay is the pause between two words of a reply.
	delay time.Duration
	// down answers 503 to every request.
	down bool
}

// newOfflineCompleter returns a go-openai client backed by m. Its
// transport is wrapped by chat.Transport, as chat.NewOpenAI's is.
func newOfflineCompleter(m *offlineModel) *openai.Client {
	cfg := openai.DefaultConfig("offline")
	cfg.BaseURL = "http://offline-model.invalid/v1"
	cfg.HTTPClient = &http.Client{Transport: chat.Transport(m)}
	return openai.NewClientWithConfig(cfg)
}

// RoundTrip answers one Chat Completions request.
func (m *offlineModel) RoundTrip(r *http.Request) (*http.Response, error) {
	var req openai.ChatCompletionRequest
	err := json.NewDecoder(io.LimitReader(r.Body, 8<<20)).Decode(&req)
	_ = r.Body.Close()
	switch {
	case r.Method != http.MethodPost || !strings.HasSuffix(r.URL.Path, "/chat/completions"):
		return upstreamError(r, http.StatusNotFound, "not_found", "the offline model serves POST /chat/completions only"), nil
	case err != nil:
		return upstreamError(r, http.StatusBadRequest, "invalid_request_error", "the body is not a Chat Completions request"), nil
	case m.down:
		return upstreamError(r, http.StatusServiceUnavailable, "server_error", "the offline model is down (OFFLINE_MODEL_DOWN)"), nil
	}
	words := offlineReply(req.Messages)
	usage := openai.Usage{PromptTokens: promptTokens(req.Messages), CompletionTokens: len(words)}
	usage.TotalTokens = usage.PromptTokens + usage.CompletionTokens
	if !req.Stream {
		if err := wait(r.Context(), m.delay*time.Duration(len(words))); err != nil {
			return nil, err
		}
		body, _ := json.Marshal(openai.ChatCompletionResponse{
			ID: "offline", Object: "chat.completion", Created: time.Now().Unix(), Model: OfflineModelName,
			Choices: []openai.ChatCompletionChoice{{
				Message:      openai.ChatCompletionMessage{Role: openai.ChatMessageRoleAssistant, Content: strings.Join(words, "")},
				FinishReason: openai.FinishReasonStop,
			}},
			Usage: usage,
		})
		return response(r, "application/json", io.NopCloser(bytes.NewReader(body))), nil
	}
	pr, pw := io.Pipe()
	withUsage := req.StreamOptions != nil && req.StreamOptions.IncludeUsage
	go m.stream(r.Context(), pw, words, usage, withUsage)
	return response(r, "text/event-stream", pr), nil
}

// stream writes the reply as server-sent events, one word per chunk.
func (m *offlineModel) stream(ctx context.Context, w *io.PipeWriter, words []string, usage openai.Usage, withUsage bool) {
	send := func(v any) error {
		b, _ := json.Marshal(v)
		_, err := fmt.Fprintf(w, "data: %s\n\n", b)
		return err
	}
	chunk := func(delta string, finish openai.FinishReason) openai.ChatCompletionStreamResponse {
		return openai.ChatCompletionStreamResponse{
			ID: "offline", Object: "chat.completion.chunk", Created: time.Now().Unix(), Model: OfflineModelName,
			Choices: []openai.ChatCompletionStreamChoice{{
				Delta:        openai.ChatCompletionStreamChoiceDelta{Role: openai.ChatMessageRoleAssistant, Content: delta},
				FinishReason: finish,
			}},
		}
	}
	err := send(chunk("", ""))
	for i := 0; err == nil && i < len(words); i++ {
		if i > 0 {
			if err = wait(ctx, m.delay); err != nil {
				break
			}
		}
		err = send(chunk(words[i], ""))
	}
	if err == nil {
		err = send(chunk("", openai.FinishReasonStop))
	}
	if err == nil && withUsage {
		err = send(openai.ChatCompletionStreamResponse{
			ID: "offline", Object: "chat.completion.chunk", Model: OfflineModelName,
			Choices: []openai.ChatCompletionStreamChoice{}, Usage: &usage,
		})
	}
	if err == nil {
		_, err = io.WriteString(w, "data: [DONE]\n\n")
	}
	w.CloseWithError(err)
}

// wait pauses for d, or until ctx ends.
func wait(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func response(r *http.Request, contentType string, body io.ReadCloser) *http.Response {
	return &http.Response{
		Status: "200 OK", StatusCode: http.StatusOK, Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header:  http.Header{"Content-Type": []string{contentType}},
		Body:    body,
		Request: r,
		// The length is unknown for a stream; -1 says so.
		ContentLength: -1,
	}
}

func upstreamError(r *http.Request, status int, code, msg string) *http.Response {
	body, _ := json.Marshal(map[string]any{"error": map[string]any{"message": msg, "type": code, "code": code}})
	resp := response(r, "application/json", io.NopCloser(bytes.NewReader(body)))
	resp.StatusCode, resp.Status = status, strconv.Itoa(status)+" "+http.StatusText(status)
	return resp
}

// promptTokens estimates the prompt's tokens: a token per 4 bytes and 4
// per message.
func promptTokens(msgs []openai.ChatCompletionMessage) int {
	n := 0
	for _, m := range msgs {
		n += (len(m.Content)+3)/4 + 4
	}
	return n
}

var (
	titleRE = regexp.MustCompile(`watching the video "([^"]*)"`)
	// stampRE matches the time stamps and notes of a transcript excerpt.
	stampRE = regexp.MustCompile(`\[[^\]]*\]`)
)

// offlineReply answers the last user message from the transcript in the
// prompt: the (at most two) sentences that share the most words with the
// question, in transcript order. It returns the reply cut into words, each
// with its trailing space, so that joining them gives the reply.
func offlineReply(msgs []openai.ChatCompletionMessage) []string {
	var question, system, transcript string
	for i, m := range msgs {
		switch {
		case m.Role == openai.ChatMessageRoleUser:
			question = m.Content
		case m.Role == openai.ChatMessageRoleSystem && i == 0:
			system = m.Content
		case m.Role == openai.ChatMessageRoleSystem && i == 1 && !strings.HasPrefix(m.Content, "The learner "):
			transcript = m.Content
		}
	}
	var reply string
	title := "this video"
	if t := titleRE.FindStringSubmatch(system); t != nil {
		title = strconv.Quote(t[1])
	}
	sentences := splitSentences(stampRE.ReplaceAllString(transcript, " "))
	switch {
	case len(sentences) == 0:
		reply = "I have no transcript for this video, so I cannot answer from it. " +
			"(This is the built-in offline model: set OPENAI_API_KEY for a real one.)"
	default:
		best := bestSentences(sentences, keywords(question), 2)
		if len(best) == 0 {
			reply = "The transcript of " + title + " does not cover that directly. It begins: " + sentences[0]
		} else {
			reply = "From " + title + ": " + strings.Join(best, " ")
		}
	}
	var words []string
	for w := range strings.FieldsSeq(reply) {
		words = append(words, w+" ")
	}
	if n := len(words); n > 0 {
		words[n-1] = strings.TrimSuffix(words[n-1], " ")
	}
	return words
}

// splitSentences cuts text after each '.', '!' or '?' followed by a space.
func splitSentences(text string) []string {
	var out []string
	text = strings.Join(strings.Fields(text), " ")
	for text != "" {
		i := strings.IndexAny(text, ".!?")
		for i >= 0 && i+1 < len(text) && text[i+1] != ' ' {
			j := strings.IndexAny(text[i+1:], ".!?")
			if j < 0 {
				i = -1
				break
			}
			i += 1 + j
		}
		if i < 0 {
			i = len(text) - 1
		}
		if s := strings.TrimSpace(text[:i+1]); s != "" {
			out = append(out, s)
		}
		text = strings.TrimSpace(text[i+1:])
	}
	return out
}

// stopWords are not matched between a question and the transcript.
var stopWords = map[string]bool{
	"the": true, "and": true, "what": true, "which": true, "does": true, "this": true, "that": true,
	"with": true, "about": true, "how": true, "why": true, "are": true, "was": true, "for": true,
	"can": true, "you": true, "video": true, "say": true, "says": true, "tell": true, "explain": true,
	"mean": true, "means": true, "when": true, "where": true, "who": true, "into": true, "its": true,
}

// keywords returns the question's words worth matching, lower-cased.
func keywords(q string) map[string]bool {
	out := map[string]bool{}
	for _, w := range strings.FieldsFunc(strings.ToLower(q), func(r rune) bool {
		return !unicode.IsLetter(r) && !unicode.IsDigit(r)
	}) {
		if len(w) >= 3 && !stopWords[w] {
			out[strings.TrimSuffix(w, "s")] = true
		}
	}
	return out
}

// bestSentences returns up to n sentences with the most keywords, in
// their original order; none when no sentence holds a keyword.
func bestSentences(sentences []string, kw map[string]bool, n int) []string {
	type scored struct{ i, score int }
	var ss []scored
	for i, s := range sentences {
		score := 0
		for w := range keywords(s) {
			if kw[w] {
				score++
			}
		}
		if score > 0 {
			ss = append(ss, scored{i, score})
		}
	}
	slices.SortStableFunc(ss, func(a, b scored) int { return b.score - a.score })
	if len(ss) > n {
		ss = ss[:n]
	}
	slices.SortFunc(ss, func(a, b scored) int { return a.i - b.i })
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = sentences[s.i]
	}
	return out
}

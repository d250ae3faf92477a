package queue

import (
	"encoding/json"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/chatscale/chatscale/chat"
	"github.com/chatscale/chatscale/contextcache"
)

// TaskType is the asynq task type of a turn.
const TaskType = "chatscale:chat.turn"

// Version is the version of the payloads Enqueue writes and of the
// results a Worker stores; a Worker archives a payload of another version
// (ErrMalformed). A change that an older Worker could misread gets a new
// version; fields added for information only do not.
const Version = 1

// payload is a job as Enqueue writes it: {"v":1,"req":{...},...}.
type payload struct {
	V            int         `json:"v"`
	Request      wireRequest `json:"req"`
	EnqueuedAtMS int64       `json:"enqueued_at_ms"`
	TimeoutMS    int64       `json:"timeout_ms"`
	MaxAttempts  int         `json:"max_attempts"`
}

type wireRequest struct {
	UserID      string `json:"user_id"`
	CourseID    string `json:"course_id"`
	VideoURL    string `json:"video_url"`
	Message     string `json:"message"`
	PositionNS  int64  `json:"position_ns,omitempty"`
	HasPosition bool   `json:"has_position,omitempty"`
	TurnID      string `json:"turn_id,omitempty"`
}

func toWireRequest(r chat.Request) wireRequest {
	return wireRequest{UserID: r.UserID, CourseID: r.CourseID, VideoURL: r.VideoURL, Message: r.Message,
		PositionNS: int64(r.Position), HasPosition: r.HasPosition, TurnID: r.TurnID}
}

func (w wireRequest) request() chat.Request {
	return chat.Request{UserID: w.UserID, CourseID: w.CourseID, VideoURL: w.VideoURL, Message: w.Message,
		Position: time.Duration(w.PositionNS), HasPosition: w.HasPosition, TurnID: w.TurnID}
}

func (p *payload) enqueuedAt() time.Time       { return time.UnixMilli(p.EnqueuedAtMS) }
func (p *payload) timeout() time.Duration      { return time.Duration(p.TimeoutMS) * time.Millisecond }
func encodePayload(p *payload) ([]byte, error) { return json.Marshal(p) }

// decodePayload reads a payload and checks its envelope: the version, the
// timeout and the attempts. The request itself is checked by
// checkRequest. Every error wraps ErrMalformed.
func decodePayload(b []byte) (*payload, error) {
	var head struct {
		V *int `json:"v"`
	}
	if err := json.Unmarshal(b, &head); err != nil {
		return nil, fmt.Errorf("%w: payload is not a JSON object: %v", ErrMalformed, err)
	}
	switch {
	case head.V == nil:
		return nil, fmt.Errorf("%w: payload has no version", ErrMalformed)
	case *head.V != Version:
		return nil, fmt.Errorf("%w: payload version %d unknown (this build reads %d)", ErrMalformed, *head.V, Version)
	}
	var p payload
	if err := json.Unmarshal(b, &p); err != nil {
		return nil, fmt.Errorf("%w: payload version %d: %v", ErrMalformed, Version, err)
	}
	switch {
	case p.TimeoutMS <= 0:
		return nil, fmt.Errorf("%w: payload timeout_ms %d not positive", ErrMalformed, p.TimeoutMS)
	case p.TimeoutMS > math.MaxInt64/int64(time.Millisecond):
		return nil, fmt.Errorf("%w: payload timeout_ms %d over what a time.Duration holds", ErrMalformed, p.TimeoutMS)
	case p.MaxAttempts <= 0:
		return nil, fmt.Errorf("%w: payload max_attempts %d not positive", ErrMalformed, p.MaxAttempts)
	case p.EnqueuedAtMS <= 0:
		return nil, fmt.Errorf("%w: payload enqueued_at_ms %d not positive", ErrMalformed, p.EnqueuedAtMS)
	}
	return &p, nil
}

// checkRequest makes the checks of chat.Service's own that need no
// tokenizer, with maxMessage bytes as the message's bound: an error here
// is the *chat.ValidationError the Service would return.
func checkRequest(r chat.Request, maxMessage int) error {
	bad := func(field, reason string) error { return &chat.ValidationError{Field: field, Reason: reason} }
	for _, f := range [...]struct {
		name, v string
		max     int
	}{
		{"UserID", r.UserID, chat.MaxIDBytes},
		{"CourseID", r.CourseID, chat.MaxIDBytes},
		{"VideoURL", r.VideoURL, chat.MaxVideoURLBytes},
	} {
		switch {
		case f.v == "":
			return bad(f.name, "empty")
		case len(f.v) > f.max:
			return bad(f.name, "longer than "+strconv.Itoa(f.max)+" bytes")
		case !utf8.ValidString(f.v):
			return bad(f.name, "not valid UTF-8")
		}
	}
	switch {
	case len(r.Message) > maxMessage:
		return bad("Message", "longer than "+strconv.Itoa(maxMessage)+" bytes")
	case !utf8.ValidString(r.Message):
		return bad("Message", "not valid UTF-8")
	case strings.TrimSpace(r.Message) == "":
		return bad("Message", "empty")
	case r.HasPosition && r.Position < 0:
		return bad("Position", "negative")
	}
	return nil
}

// result is what a Worker stores with a job (asynq's task result): the
// Response of the attempt that answered, or the error of the last
// attempt that did not.
type result struct {
	V        int           `json:"v"`
	Attempt  int           `json:"attempt"`
	AtMS     int64         `json:"at_ms"`
	Response *wireResponse `json:"response,omitempty"`
	Error    *wireError    `json:"error,omitempty"`
}

func decodeResult(b []byte) (*result, error) {
	var r result
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("%w: result is not JSON: %v", ErrMalformed, err)
	}
	if r.V != Version {
		return nil, fmt.Errorf("%w: result version %d unknown (this build reads %d)", ErrMalformed, r.V, Version)
	}
	if r.Response != nil && len(r.Response.Reasons) == 0 {
		// "reasons":[] and no reasons are the same result.
		r.Response.Reasons = nil
	}
	return &r, nil
}

type wireResponse struct {
	ThreadID          string        `json:"thread_id,omitempty"`
	Reply             string        `json:"reply"`
	Created           bool          `json:"created,omitempty"`
	VideoChanged      bool          `json:"video_changed,omitempty"`
	PreviousVideo     string        `json:"previous_video,omitempty"`
	Degraded          bool          `json:"degraded,omitempty"`
	Reasons           []chat.Reason `json:"reasons,omitempty"`
	Stored            bool          `json:"stored,omitempty"`
	PromptTokensUsed  int           `json:"usage_prompt_tokens,omitempty"`
	CachedPrompt      int           `json:"usage_cached_prompt_tokens,omitempty"`
	CompletionTokens  int           `json:"usage_completion_tokens,omitempty"`
	PromptTokens      int           `json:"prompt_tokens,omitempty"`
	HistoryMessages   int           `json:"history_messages,omitempty"`
	TranscriptTier    string        `json:"transcript_tier,omitempty"`
	TranscriptStale   bool          `json:"transcript_stale,omitempty"`
	TranscriptMissing bool          `json:"transcript_missing,omitempty"`
	TranscriptCut     bool          `json:"transcript_cut,omitempty"`
	Member            string        `json:"member,omitempty"`
	Cached            bool          `json:"cached,omitempty"`
	SavedPrompt       int           `json:"saved_prompt_tokens,omitempty"`
	SavedCachedPrompt int           `json:"saved_cached_prompt_tokens,omitempty"`
	SavedCompletion   int           `json:"saved_completion_tokens,omitempty"`
	Replayed          bool          `json:"replayed,omitempty"`
}

func toWireResponse(r chat.Response) *wireResponse {
	w := &wireResponse{
		ThreadID: r.ThreadID, Reply: r.Reply, Created: r.Created,
		VideoChanged: r.VideoChanged, PreviousVideo: r.PreviousVideo,
		Degraded: r.Degraded, Reasons: r.Reasons, Stored: r.Stored,
		PromptTokensUsed: r.Usage.PromptTokens, CachedPrompt: r.Usage.CachedPromptTokens, CompletionTokens: r.Usage.CompletionTokens,
		PromptTokens: r.PromptTokens, HistoryMessages: r.HistoryMessages,
		TranscriptStale: r.TranscriptStale, TranscriptMissing: r.TranscriptMissing, TranscriptCut: r.TranscriptCut,
		Member: r.Member, Cached: r.Cached, Replayed: r.Replayed,
		SavedPrompt: r.SavedUsage.PromptTokens, SavedCachedPrompt: r.SavedUsage.CachedPromptTokens, SavedCompletion: r.SavedUsage.CompletionTokens,
	}
	if r.TranscriptTier != 0 {
		w.TranscriptTier = r.TranscriptTier.String()
	}
	return w
}

func (w *wireResponse) response() chat.Response {
	r := chat.Response{
		ThreadID: w.ThreadID, Reply: w.Reply, Created: w.Created,
		VideoChanged: w.VideoChanged, PreviousVideo: w.PreviousVideo,
		Degraded: w.Degraded, Reasons: w.Reasons, Stored: w.Stored,
		Usage:        chat.Usage{PromptTokens: w.PromptTokensUsed, CachedPromptTokens: w.CachedPrompt, CompletionTokens: w.CompletionTokens},
		PromptTokens: w.PromptTokens, HistoryMessages: w.HistoryMessages,
		TranscriptStale: w.TranscriptStale, TranscriptMissing: w.TranscriptMissing, TranscriptCut: w.TranscriptCut,
		Member: w.Member, Cached: w.Cached, Replayed: w.Replayed,
		SavedUsage: chat.Usage{PromptTokens: w.SavedPrompt, CachedPromptTokens: w.SavedCachedPrompt, CompletionTokens: w.SavedCompletion},
	}
	for _, t := range [...]contextcache.Tier{contextcache.TierL1, contextcache.TierL2, contextcache.TierSource} {
		if w.TranscriptTier == t.String() {
			r.TranscriptTier = t
		}
	}
	return r
}

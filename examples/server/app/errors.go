package app

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"mime"
	"net/http"
	"strconv"
	"time"

	"github.com/chatscale/chatscale"
	"github.com/chatscale/chatscale/chat"
)

// apiError is the JSON body of every error answer.
type apiError struct {
	// Code is stable, for programs: invalid_request, unauthenticated,
	// rate_limited, unavailable, shutting_down, timeout, ...
	Code string `json:"code"`
	// Message is for people.
	Message string `json:"error"`
	// Field is the request field at fault, for invalid_request.
	Field string `json:"field,omitempty"`
	// Reason says why the tutor is unavailable, for unavailable.
	Reason chat.Reason `json:"reason,omitempty"`
	// RetryAfterSeconds, also sent as Retry-After, says when to retry.
	RetryAfterSeconds int `json:"retry_after_seconds,omitempty"`
}

// jsonFields maps the Request fields the Service names to the body's.
var jsonFields = map[string]string{
	"UserID": "learner", "CourseID": "course_id", "VideoURL": "video_url",
	"Message": "message", "Position": "position_seconds", "limit": "limit",
}

// errorBody maps a Service error to a status and a body. Status 0 means
// the client has gone: nothing is written.
func (a *App) errorBody(r *http.Request, err error) (int, apiError) {
	var (
		ve *chat.ValidationError
		rl *chat.RateLimitError
		ue *chat.UnavailableError
	)
	switch {
	case errors.As(err, &ve):
		field := jsonFields[ve.Field]
		if field == "" {
			field = ve.Field
		}
		return http.StatusBadRequest, apiError{Code: "invalid_request", Field: field, Message: field + ": " + ve.Reason}
	case errors.As(err, &rl):
		return http.StatusTooManyRequests, apiError{Code: "rate_limited", RetryAfterSeconds: seconds(rl.RetryAfter),
			Message: "too many questions; retry later"}
	case errors.As(err, &ue):
		return http.StatusServiceUnavailable, apiError{Code: "unavailable", Reason: ue.Reason, RetryAfterSeconds: seconds(ue.RetryAfter),
			Message: "the tutor is unavailable right now; retry later"}
	case errors.Is(err, chat.ErrClosed):
		return http.StatusServiceUnavailable, apiError{Code: "shutting_down", RetryAfterSeconds: 1,
			Message: "the server is shutting down; retry on another instance"}
	case r.Context().Err() != nil, errors.Is(err, errClientGone):
		return 0, apiError{}
	case errors.Is(err, context.DeadlineExceeded):
		return http.StatusGatewayTimeout, apiError{Code: "timeout", Message: "the turn took too long"}
	case errors.Is(err, chatscale.ErrInvalidInput):
		return http.StatusBadRequest, apiError{Code: "invalid_request", Message: "invalid request"}
	}
	a.log.LogAttrs(r.Context(), slog.LevelError, "unexpected error", slog.String("route", r.Pattern), slog.String("err", err.Error()))
	return http.StatusInternalServerError, apiError{Code: "internal", Message: "internal error"}
}

// writeTurnError answers a Service error.
func (a *App) writeTurnError(w http.ResponseWriter, r *http.Request, err error) {
	status, body := a.errorBody(r, err)
	if status == 0 {
		return
	}
	writeError(w, status, body)
}

// seconds rounds d up to whole seconds, at least 1; 0 for d <= 0.
func seconds(d time.Duration) int {
	if d <= 0 {
		return 0
	}
	return max(1, int(math.Ceil(d.Seconds())))
}

func writeError(w http.ResponseWriter, status int, e apiError) {
	if e.RetryAfterSeconds > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(e.RetryAfterSeconds))
	} else if status == http.StatusTooManyRequests || status == http.StatusServiceUnavailable {
		if w.Header().Get("Retry-After") == "" {
			w.Header().Set("Retry-After", "1")
		}
	}
	writeJSON(w, status, e)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	_ = enc.Encode(v)
}

// decodeJSON reads a bounded JSON body into v, refusing unknown fields
// (a "user_id" among them: the learner comes from authentication) and
// trailing data. On failure it has answered: 415 for another content
// type, 413 for a body over MaxBodyBytes, 400 otherwise.
func decodeJSON(w http.ResponseWriter, r *http.Request, v any) bool {
	if ct := r.Header.Get("Content-Type"); ct != "" {
		mt, _, err := mime.ParseMediaType(ct)
		if err != nil || mt != "application/json" {
			writeError(w, http.StatusUnsupportedMediaType, apiError{Code: "unsupported_media_type", Message: "send the body as application/json"})
			return false
		}
	} else {
		writeError(w, http.StatusUnsupportedMediaType, apiError{Code: "unsupported_media_type", Message: "send the body as application/json (Content-Type header)"})
		return false
	}
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, MaxBodyBytes))
	dec.DisallowUnknownFields()
	err := dec.Decode(v)
	if err == nil && dec.Decode(&struct{}{}) != io.EOF {
		err = errors.New("data after the JSON object")
	}
	if err == nil {
		return true
	}
	var tooBig *http.MaxBytesError
	if errors.As(err, &tooBig) {
		writeError(w, http.StatusRequestEntityTooLarge, apiError{Code: "body_too_large",
			Message: fmt.Sprintf("the body is over %d bytes", MaxBodyBytes)})
		return false
	}
	msg := "the body is not a JSON object of the expected fields: " + err.Error()
	if errors.Is(err, io.EOF) {
		msg = "the body is empty"
	}
	writeError(w, http.StatusBadRequest, apiError{Code: "invalid_request", Message: msg})
	return false
}

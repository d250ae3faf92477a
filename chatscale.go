// Package chatscale holds what chatscale's packages share: the errors for
// an impossible configuration and for bad input, the default Redis key
// prefix and the default metrics namespace. The packages themselves are
// threads (conversations), contextcache (transcripts), ratelimit (request
// and token budgets) and chat (the upstream client); the README's
// "Conventions" section says how they fit together.
package chatscale

import "errors"

// DefaultPrefix is the default of every Config.Prefix: the namespace that
// starts every Redis key the library writes. Each package adds its own
// part after the prefix ("threads:", "ratelimit:", "contextcache:",
// "chat:"), so every component of an application can share one Prefix.
const DefaultPrefix = "chatscale:"

// DefaultNamespace is the default of every Config.Namespace: the first part
// of every Prometheus metric name the library registers, as in
// ai_chat_requests_total and ai_chat_ratelimit_decisions_total.
const DefaultNamespace = "ai_chat"

// ErrInvalidConfig is matched by every error a constructor returns for an
// impossible Config value or a missing required argument. Such errors are
// *ConfigError.
var ErrInvalidConfig = errors.New("chatscale: invalid config")

// ErrInvalidInput is matched by every error a method returns for a bad
// argument: an empty or oversized ID, invalid UTF-8, a cost that can never
// fit. Such errors are *InputError. Retrying the same call cannot succeed.
var ErrInvalidInput = errors.New("chatscale: invalid input")

// ConfigError describes an impossible configuration. errors.Is(err,
// ErrInvalidConfig) reports true for it.
type ConfigError struct {
	// Package is the package whose constructor refused, e.g. "threads".
	Package string
	// Field names the culprit as Go code spells it: "Config.Prefix" for a
	// Config field, the parameter name ("rdb", "limit.Rate") for an
	// argument.
	Field string
	// Reason says what is wrong, e.g. "contains '{' or '}'".
	Reason string
}

// Error returns "<Package>: invalid config: <Field>: <Reason>".
func (e *ConfigError) Error() string {
	return e.Package + ": invalid config: " + e.Field + ": " + e.Reason
}

// Is reports whether target is ErrInvalidConfig.
func (e *ConfigError) Is(target error) bool { return target == ErrInvalidConfig }

// InputError describes a bad argument to a method. errors.Is(err,
// ErrInvalidInput) reports true for it.
type InputError struct {
	// Package is the package that refused the input, e.g. "threads".
	Package string
	// Field names the argument as Go code spells the exported field or
	// parameter it came from: "UserID", "CourseID", "VideoURL",
	// "Messages[1].Content", "Key", "N".
	Field string
	// Reason says what is wrong, e.g. "empty" or "not valid UTF-8".
	Reason string
}

// Error returns "<Package>: invalid <Field>: <Reason>".
func (e *InputError) Error() string {
	return e.Package + ": invalid " + e.Field + ": " + e.Reason
}

// Is reports whether target is ErrInvalidInput.
func (e *InputError) Is(target error) bool { return target == ErrInvalidInput }

// Package errs is Atrium's error vocabulary. Modules return *Error values
// with one of a fixed set of codes; the HTTP edge (platform/httpx) maps each
// code to a status and an RFC 9457 problem body in one place. Handlers never
// choose status codes themselves.
package errs

import (
	"errors"
	"fmt"
)

// Code classifies an error for callers. The set is closed: every code has a
// fixed HTTP status in platform/httpx.
type Code string

// The codes of the vocabulary.
const (
	Invalid         Code = "invalid"         // the request is malformed or fails validation
	TooLarge        Code = "too_large"       // the request body exceeds the configured limit
	Unauthenticated Code = "unauthenticated" // no or bad credentials
	Forbidden       Code = "forbidden"       // authenticated, but not allowed
	NotFound        Code = "not_found"       // no such object (or not visible to the caller)
	Conflict        Code = "conflict"        // the object's state forbids the operation
	Unprocessable   Code = "unprocessable"   // well-formed, but contradicts an earlier request (an idempotency key reused with other parameters)
	QuotaExceeded   Code = "quota_exceeded"  // a quota or rate limit refuses the request
	Unavailable     Code = "unavailable"     // a dependency is down or overloaded; retry later
	Internal        Code = "internal"        // a bug or unexpected failure; details are logged, never shown
)

// FieldError names one offending field of a request.
type FieldError struct {
	Field   string `json:"field"`
	Message string `json:"message"`
}

// Error is a coded error. Message is safe to show to the caller; Err, if set,
// is the underlying cause and is only logged.
type Error struct {
	Code    Code
	Message string
	Fields  []FieldError
	// Extra holds additional problem members (for example a quota's limit and
	// current use, or a retry delay) that are safe to show to the caller.
	Extra map[string]any
	Err   error
}

func (e *Error) Error() string {
	msg := string(e.Code)
	if e.Message != "" {
		msg += ": " + e.Message
	}
	if e.Err != nil {
		msg += ": " + e.Err.Error()
	}
	return msg
}

func (e *Error) Unwrap() error { return e.Err }

// E returns a coded error with a caller-safe message.
func E(code Code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// Wrap returns a coded error that carries err as its (logged, never shown) cause.
func Wrap(code Code, err error, message string) *Error {
	return &Error{Code: code, Message: message, Err: err}
}

// Field returns an invalid error naming one field.
func Field(field, format string, args ...any) *Error {
	msg := fmt.Sprintf(format, args...)
	return &Error{Code: Invalid, Message: field + ": " + msg, Fields: []FieldError{{Field: field, Message: msg}}}
}

// CodeOf returns the code of the first *Error in err's chain, or Internal
// for any other non-nil error, or "" for nil.
func CodeOf(err error) Code {
	if err == nil {
		return ""
	}
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return Internal
}

// As returns the first *Error in err's chain; any other error becomes an
// Internal error wrapping it.
func As(err error) *Error {
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	return &Error{Code: Internal, Err: err}
}

// Package logging builds Atrium's zerolog logger: JSON in production,
// readable console output on a terminal in development. Request-scoped
// fields (request id, trace id) travel in the context: log with
// l.Info().Ctx(ctx) and they are added to the line.
package logging

import (
	"context"
	"io"
	"os"
	"time"

	"github.com/rs/zerolog"
)

func init() {
	zerolog.TimeFieldFormat = time.RFC3339Nano
	zerolog.DurationFieldUnit = time.Millisecond
	zerolog.DurationFieldInteger = false
}

// New returns the root logger. format is json, console or auto; auto means
// console when out is a terminal and development is true, else JSON.
func New(out io.Writer, level, format string, development bool) zerolog.Logger {
	lvl, err := zerolog.ParseLevel(level)
	if err != nil {
		lvl = zerolog.InfoLevel
	}
	if format == "auto" {
		format = "json"
		if development && isTerminal(out) {
			format = "console"
		}
	}
	if format == "console" {
		out = zerolog.ConsoleWriter{Out: out, TimeFormat: "15:04:05.000"}
	}
	return zerolog.New(out).Level(lvl).Hook(ctxHook{}).With().Timestamp().Logger()
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

// Module returns a child logger for one module.
func Module(l zerolog.Logger, name string) zerolog.Logger {
	return l.With().Str("module", name).Logger()
}

type ctxKey struct{}

// requestFields are the request-scoped values every log line of a request
// carries. One context value holds both, so the HTTP edge adds them with a
// single allocation.
type requestFields struct{ id, traceID string }

// WithRequest returns ctx carrying the request id and W3C trace id.
func WithRequest(ctx context.Context, id, traceID string) context.Context {
	return context.WithValue(ctx, ctxKey{}, requestFields{id: id, traceID: traceID})
}

// WithRequestID returns ctx carrying the request id.
func WithRequestID(ctx context.Context, id string) context.Context {
	return WithRequest(ctx, id, TraceID(ctx))
}

// WithTraceID returns ctx carrying the W3C trace id.
func WithTraceID(ctx context.Context, id string) context.Context {
	return WithRequest(ctx, RequestID(ctx), id)
}

// RequestID returns the request id carried by ctx, or "".
func RequestID(ctx context.Context) string {
	f, _ := ctx.Value(ctxKey{}).(requestFields)
	return f.id
}

// TraceID returns the trace id carried by ctx, or "".
func TraceID(ctx context.Context) string {
	f, _ := ctx.Value(ctxKey{}).(requestFields)
	return f.traceID
}

// ctxHook adds request_id and trace_id to every event logged with
// .Ctx(ctx), so modules keep their own logger (with its module field) and
// still tag each line with the request it belongs to.
type ctxHook struct{}

func (ctxHook) Run(e *zerolog.Event, _ zerolog.Level, _ string) {
	ctx := e.GetCtx()
	if ctx == nil {
		return
	}
	f, _ := ctx.Value(ctxKey{}).(requestFields)
	if f.id != "" {
		e.Str("request_id", f.id)
	}
	if f.traceID != "" {
		e.Str("trace_id", f.traceID)
	}
}

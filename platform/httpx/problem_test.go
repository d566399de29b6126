package httpx_test

import (
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/go-chi/chi/v5"
	"github.com/rs/zerolog"

	"github.com/atriumhq/atrium/platform/errs"
	"github.com/atriumhq/atrium/platform/httpx"
)

const genericDetail = "An unexpected error occurred. Quote the request id when reporting it."

func TestWriteErrorHidesInternalCause(t *testing.T) {
	const secret = "secret db detail"
	tests := []struct {
		name string
		err  error
	}{
		{"plain error", errors.New(secret)},
		{"wrapped plain error", fmt.Errorf("load order 7: %w", errors.New(secret))},
		{"internal with cause", errs.Wrap(errs.Internal, errors.New(secret), "loading order")},
		{"internal with message", errs.E(errs.Internal, "%s", secret)},
		{"internal inside a wrap", fmt.Errorf("outer: %w", errs.Wrap(errs.Internal, errors.New(secret), "x"))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			log, buf := testLogger(t)
			req := withRequestID(httptest.NewRequest(http.MethodGet, "/orders/7", nil), "req-123")
			rec := httptest.NewRecorder()
			httpx.WriteError(rec, req, log, tt.err)

			p := readProblem(t, rec.Result(), http.StatusInternalServerError)
			if strings.Contains(p.Raw, "secret") {
				t.Errorf("response leaks the cause: %s", p.Raw)
			}
			if p.Code != string(errs.Internal) {
				t.Errorf("code = %q, want internal", p.Code)
			}
			if p.Detail != genericDetail {
				t.Errorf("detail = %q, want %q", p.Detail, genericDetail)
			}
			if p.RequestID != "req-123" {
				t.Errorf("request_id = %q, want req-123", p.RequestID)
			}
			if got := rec.Header().Get("Cache-Control"); got != "no-store" {
				t.Errorf("Cache-Control = %q, want no-store", got)
			}

			line := onlyLogLine(t, buf)
			if line["level"] != "error" {
				t.Errorf("log level = %v, want error", line["level"])
			}
			if e, _ := line["error"].(string); !strings.Contains(e, secret) {
				t.Errorf("log error = %q, want it to contain the cause %q", e, secret)
			}
			if line["request_id"] != "req-123" {
				t.Errorf("log request_id = %v, want req-123", line["request_id"])
			}
			if line["path"] != "/orders/7" {
				t.Errorf("log path = %v, want /orders/7", line["path"])
			}
		})
	}
}

func TestWriteErrorMapsCodes(t *testing.T) {
	tests := []struct {
		code       errs.Code
		wantStatus int
	}{
		{errs.Invalid, http.StatusBadRequest},
		{errs.TooLarge, http.StatusRequestEntityTooLarge},
		{errs.Unauthenticated, http.StatusUnauthorized},
		{errs.Forbidden, http.StatusForbidden},
		{errs.NotFound, http.StatusNotFound},
		{errs.Conflict, http.StatusConflict},
		{errs.QuotaExceeded, http.StatusForbidden}, // an allocation quota: no retry_after_seconds
		{errs.Unavailable, http.StatusServiceUnavailable},
	}
	for _, tt := range tests {
		t.Run(string(tt.code), func(t *testing.T) {
			if got := httpx.Status(tt.code); got != tt.wantStatus && tt.code != errs.QuotaExceeded {
				t.Errorf("Status(%q) = %d, want %d", tt.code, got, tt.wantStatus)
			}

			log, buf := testLogger(t)
			req := withRequestID(httptest.NewRequest(http.MethodGet, "/things/1", nil), "req-9")
			rec := httptest.NewRecorder()
			// Wrapped twice, as a module's error reaches a handler.
			err := fmt.Errorf("handler: %w", errs.E(tt.code, "the thing is %s", "busy"))
			httpx.WriteError(rec, req, log, err)

			p := readProblem(t, rec.Result(), tt.wantStatus)
			if p.Code != string(tt.code) {
				t.Errorf("code = %q, want %q", p.Code, tt.code)
			}
			if p.Detail != "the thing is busy" {
				t.Errorf("detail = %q, want the error's message", p.Detail)
			}
			if p.Instance != "/things/1" {
				t.Errorf("instance = %q, want /things/1", p.Instance)
			}
			if p.RequestID != "req-9" {
				t.Errorf("request_id = %q, want req-9", p.RequestID)
			}
			if rec.Header().Get("Retry-After") != "" {
				t.Errorf("Retry-After = %q, want none", rec.Header().Get("Retry-After"))
			}
			if buf.Len() != 0 {
				t.Errorf("a %s error was logged: %s", tt.code, buf)
			}
		})
	}
}

func TestStatusOfUnknownCodeIsInternal(t *testing.T) {
	for _, c := range []errs.Code{errs.Internal, "", "teapot"} {
		if got := httpx.Status(c); got != http.StatusInternalServerError {
			t.Errorf("Status(%q) = %d, want 500", c, got)
		}
	}
}

func TestWriteErrorHidesCauseOfSafeError(t *testing.T) {
	err := errs.Wrap(errs.Unavailable, errors.New("dial redis://:hunter2@10.1.2.3"), "cache unavailable")
	rec := httptest.NewRecorder()
	httpx.WriteError(rec, httptest.NewRequest(http.MethodGet, "/", nil), zerolog.Nop(), err)

	p := readProblem(t, rec.Result(), http.StatusServiceUnavailable)
	if p.Detail != "cache unavailable" {
		t.Errorf("detail = %q, want cache unavailable", p.Detail)
	}
	if strings.Contains(p.Raw, "hunter2") || strings.Contains(p.Raw, "10.1.2.3") {
		t.Errorf("response leaks the cause: %s", p.Raw)
	}
}

func TestWriteErrorFieldErrors(t *testing.T) {
	rec := httptest.NewRecorder()
	httpx.WriteError(rec, httptest.NewRequest(http.MethodPost, "/", nil), zerolog.Nop(),
		errs.Field("card.expiry", "must be in the future"))

	p := readProblem(t, rec.Result(), http.StatusBadRequest)
	want := []errs.FieldError{{Field: "card.expiry", Message: "must be in the future"}}
	if len(p.Errors) != 1 || p.Errors[0] != want[0] {
		t.Errorf("errors = %+v, want %+v", p.Errors, want)
	}
}

func TestWriteErrorExtra(t *testing.T) {
	tests := []struct {
		name           string
		extra          map[string]any
		wantMembers    map[string]any // JSON numbers decode as float64
		wantRetryAfter string
	}{
		{
			name:           "quota members",
			extra:          map[string]any{"limit": 100, "used": 100, "window": "1h", "retry_after_seconds": 5},
			wantMembers:    map[string]any{"limit": 100.0, "used": 100.0, "window": "1h"},
			wantRetryAfter: "5",
		},
		{
			name:           "retry after",
			extra:          map[string]any{"retry_after_seconds": 30},
			wantMembers:    map[string]any{"retry_after_seconds": 30.0},
			wantRetryAfter: "30",
		},
		{
			name:  "extension cannot overwrite standard members",
			extra: map[string]any{"code": "ok", "status": 200, "detail": "all fine", "limit": 5, "retry_after_seconds": 1},
			wantMembers: map[string]any{
				"code": string(errs.QuotaExceeded), "status": 429.0, "detail": "over quota", "limit": 5.0,
			},
			wantRetryAfter: "1",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := &errs.Error{Code: errs.QuotaExceeded, Message: "over quota", Extra: tt.extra}
			rec := httptest.NewRecorder()
			httpx.WriteError(rec, httptest.NewRequest(http.MethodPost, "/", nil), zerolog.Nop(), err)

			p := readProblem(t, rec.Result(), http.StatusTooManyRequests)
			for k, want := range tt.wantMembers {
				if got, ok := p.Members[k]; !ok || got != want {
					t.Errorf("member %q = %v (present %v), want %v", k, got, ok, want)
				}
			}
			if got := rec.Header().Get("Retry-After"); got != tt.wantRetryAfter {
				t.Errorf("Retry-After = %q, want %q", got, tt.wantRetryAfter)
			}
		})
	}
}

func TestJSON(t *testing.T) {
	t.Run("value", func(t *testing.T) {
		rec := httptest.NewRecorder()
		httpx.JSON(rec, http.StatusCreated, map[string]string{"id": "7"})
		if rec.Code != http.StatusCreated {
			t.Errorf("status = %d, want 201", rec.Code)
		}
		if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
			t.Errorf("Content-Type = %q, want application/json", ct)
		}
		if got := rec.Body.String(); got != `{"id":"7"}`+"\n" {
			t.Errorf("body = %q", got)
		}
	})
	t.Run("unencodable value", func(t *testing.T) {
		rec := httptest.NewRecorder()
		httpx.JSON(rec, http.StatusOK, map[string]any{"ch": make(chan int)})
		p := readProblem(t, rec.Result(), http.StatusInternalServerError)
		if p.Code != string(errs.Internal) {
			t.Errorf("code = %q, want internal", p.Code)
		}
	})
}

func TestAdapter(t *testing.T) {
	t.Run("handler writes its own response", func(t *testing.T) {
		log, buf := testLogger(t)
		h := httpx.Adapter{Log: log}.H(func(w http.ResponseWriter, r *http.Request) error {
			httpx.JSON(w, http.StatusAccepted, map[string]bool{"ok": true})
			return nil
		})
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/", nil))
		if rec.Code != http.StatusAccepted || rec.Body.String() != `{"ok":true}`+"\n" {
			t.Errorf("got %d %q, want 202 {\"ok\":true}", rec.Code, rec.Body)
		}
		if buf.Len() != 0 {
			t.Errorf("logged: %s", buf)
		}
	})
	t.Run("returned error becomes a problem", func(t *testing.T) {
		h := httpx.Adapter{Log: zerolog.Nop()}.H(func(w http.ResponseWriter, r *http.Request) error {
			return errs.E(errs.NotFound, "no order 7")
		})
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/orders/7", nil))
		p := readProblem(t, rec.Result(), http.StatusNotFound)
		if p.Detail != "no order 7" {
			t.Errorf("detail = %q, want no order 7", p.Detail)
		}
	})
	t.Run("aborted handler panics", func(t *testing.T) {
		log, buf := testLogger(t)
		h := httpx.Adapter{Log: log}.H(func(w http.ResponseWriter, r *http.Request) error {
			return fmt.Errorf("client went away: %w", http.ErrAbortHandler)
		})
		rec := httptest.NewRecorder()
		v := recovered(func() { h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/", nil)) })
		if err, ok := v.(error); !ok || !errors.Is(err, http.ErrAbortHandler) {
			t.Errorf("panic value = %v, want an error wrapping http.ErrAbortHandler", v)
		}
		if buf.Len() != 0 {
			t.Errorf("an aborted request was logged: %s", buf)
		}
		if rec.Body.Len() != 0 {
			t.Errorf("an aborted request got a body: %s", rec.Body)
		}
	})
}

// recovered runs f and returns what it panicked with, or nil.
func recovered(f func()) (v any) {
	defer func() { v = recover() }()
	f()
	return nil
}

func TestMethodNotAllowed(t *testing.T) {
	log, _ := testLogger(t)
	r := chi.NewRouter()
	r.Use(httpx.Identify(nil))
	r.MethodNotAllowed(httpx.MethodNotAllowed(log))
	r.Get("/orders", func(w http.ResponseWriter, r *http.Request) { httpx.JSON(w, http.StatusOK, []string{}) })

	req := httptest.NewRequest(http.MethodDelete, "/orders", nil)
	req.Header.Set(httpx.RequestIDHeader, "req-405")
	rec := httptest.NewRecorder()
	r.ServeHTTP(rec, req)

	p := readProblem(t, rec.Result(), http.StatusMethodNotAllowed)
	if p.Code != string(errs.Invalid) {
		t.Errorf("code = %q, want invalid", p.Code)
	}
	if !strings.Contains(p.Detail, "DELETE") || !strings.Contains(p.Detail, "/orders") {
		t.Errorf("detail = %q, want it to name the method and path", p.Detail)
	}
	if p.Instance != "/orders" {
		t.Errorf("instance = %q, want /orders", p.Instance)
	}
	if p.RequestID != "req-405" {
		t.Errorf("request_id = %q, want req-405", p.RequestID)
	}
}

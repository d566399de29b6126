package httpx_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/atriumhq/atrium/platform/errs"
	"github.com/atriumhq/atrium/platform/httpx"
	"github.com/atriumhq/atrium/platform/logging"
)

var lowerHex = regexp.MustCompile(`^[0-9a-f]+$`)

// serve runs one request through mw and returns the response and the
// request the inner handler saw.
func serve(t testing.TB, mw func(http.Handler) http.Handler, req *http.Request) (*httptest.ResponseRecorder, *http.Request) {
	t.Helper()
	var seen *http.Request
	rec := httptest.NewRecorder()
	mw(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { seen = r })).ServeHTTP(rec, req)
	if seen == nil {
		t.Fatal("the middleware did not call the next handler")
	}
	return rec, seen
}

func TestRequestID(t *testing.T) {
	max := strings.Repeat("a", 128)
	tests := []struct {
		name     string
		incoming []string // X-Request-ID header lines
		wantKept bool
	}{
		{name: "absent"},
		{name: "empty", incoming: []string{""}},
		{name: "valid", incoming: []string{"lb-7f3a_9.2-XYZ"}, wantKept: true},
		{name: "uuid", incoming: []string{"0190a6f2-7c3e-7d4b-9a1f-3b2c1d0e4f5a"}, wantKept: true},
		{name: "128 characters", incoming: []string{max}, wantKept: true},
		{name: "129 characters", incoming: []string{max + "a"}},
		{name: "space", incoming: []string{"abc def"}},
		{name: "newline", incoming: []string{"abc\ndef"}},
		{name: "quote", incoming: []string{`abc"def`}},
		{name: "slash", incoming: []string{"abc/def"}},
		{name: "non-ASCII letter", incoming: []string{"abcé"}},
		{name: "log injection", incoming: []string{`x","level":"fatal`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := httptest.NewRequest(http.MethodGet, "/", nil)
			for _, v := range tt.incoming {
				req.Header.Add(httpx.RequestIDHeader, v)
			}
			rec, seen := serve(t, httpx.Identify(nil), req)

			got := logging.RequestID(seen.Context())
			if echoed := rec.Header().Get(httpx.RequestIDHeader); echoed != got {
				t.Errorf("response X-Request-ID = %q, context has %q", echoed, got)
			}
			if tt.wantKept {
				if got != tt.incoming[0] {
					t.Errorf("request id = %q, want the incoming %q", got, tt.incoming[0])
				}
				return
			}
			if len(got) != 32 || !lowerHex.MatchString(got) {
				t.Errorf("request id = %q, want 32 new hex characters", got)
			}
		})
	}
}

func TestRequestIDGeneratesDistinctIDs(t *testing.T) {
	seen := map[string]bool{}
	for range 50 {
		_, r := serve(t, httpx.Identify(nil), httptest.NewRequest(http.MethodGet, "/", nil))
		id := logging.RequestID(r.Context())
		if seen[id] {
			t.Fatalf("request id %q generated twice", id)
		}
		seen[id] = true
	}
}

func TestTraceContext(t *testing.T) {
	const (
		traceID  = "4bf92f3577b34da6a3ce929d0e0e4736"
		parentID = "00f067aa0ba902b7"
	)
	tests := []struct {
		name        string
		traceparent string
		wantJoin    bool   // the request joins the incoming trace
		wantFlags   string // when joining
	}{
		{name: "valid sampled", traceparent: "00-" + traceID + "-" + parentID + "-01", wantJoin: true, wantFlags: "01"},
		{name: "valid not sampled", traceparent: "00-" + traceID + "-" + parentID + "-00", wantJoin: true, wantFlags: "00"},
		{name: "surrounding spaces", traceparent: "  00-" + traceID + "-" + parentID + "-01 ", wantJoin: true, wantFlags: "01"},
		{name: "future version with more fields", traceparent: "cc-" + traceID + "-" + parentID + "-01-what-the-future", wantJoin: true, wantFlags: "01"},
		{name: "absent"},
		{name: "garbage", traceparent: "hello"},
		{name: "version 00 with extra field", traceparent: "00-" + traceID + "-" + parentID + "-01-extra"},
		{name: "version ff", traceparent: "ff-" + traceID + "-" + parentID + "-01"},
		{name: "version one character", traceparent: "0-" + traceID + "-" + parentID + "-01"},
		{name: "version not hex", traceparent: "0g-" + traceID + "-" + parentID + "-01"},
		{name: "trace id too short", traceparent: "00-" + traceID[1:] + "-" + parentID + "-01"},
		{name: "trace id too long", traceparent: "00-" + traceID + "a-" + parentID + "-01"},
		{name: "parent id too short", traceparent: "00-" + traceID + "-" + parentID[1:] + "-01"},
		{name: "parent id too long", traceparent: "00-" + traceID + "-" + parentID + "a-01"},
		{name: "flags too long", traceparent: "00-" + traceID + "-" + parentID + "-001"},
		{name: "flags missing", traceparent: "00-" + traceID + "-" + parentID},
		{name: "uppercase trace id", traceparent: "00-" + strings.ToUpper(traceID) + "-" + parentID + "-01"},
		{name: "uppercase parent id", traceparent: "00-" + traceID + "-" + "00F067AA0BA902B7" + "-01"},
		{name: "trace id not hex", traceparent: "00-" + "4bf92f3577b34da6a3ce929d0e0e473z" + "-" + parentID + "-01"},
		{name: "all-zero trace id", traceparent: "00-" + strings.Repeat("0", 32) + "-" + parentID + "-01"},
		{name: "all-zero parent id", traceparent: "00-" + traceID + "-" + strings.Repeat("0", 16) + "-01"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := httptest.NewRequest(http.MethodGet, "/", nil)
			if tt.traceparent != "" {
				req.Header.Set("traceparent", tt.traceparent)
			}
			rec, seen := serve(t, httpx.Identify(nil), req)

			tr, ok := httpx.TraceFrom(seen.Context())
			if !ok {
				t.Fatal("TraceFrom found no trace in the request context")
			}
			if got := logging.TraceID(seen.Context()); got != tr.TraceID {
				t.Errorf("logging.TraceID = %q, want %q", got, tr.TraceID)
			}
			if got := rec.Header().Get("traceparent"); got != tr.Traceparent() {
				t.Errorf("response traceparent = %q, want %q", got, tr.Traceparent())
			}
			if len(tr.SpanID) != 16 || !lowerHex.MatchString(tr.SpanID) || tr.SpanID == parentID {
				t.Errorf("span id = %q, want a new 16-hex-character id", tr.SpanID)
			}
			if tt.wantJoin {
				if tr.TraceID != traceID {
					t.Errorf("trace id = %q, want the incoming %q", tr.TraceID, traceID)
				}
				if tr.Flags != tt.wantFlags {
					t.Errorf("flags = %q, want %q", tr.Flags, tt.wantFlags)
				}
				return
			}
			if tr.TraceID == traceID || strings.Contains(strings.ToLower(tt.traceparent), tr.TraceID) {
				t.Errorf("trace id = %q came from the invalid header %q", tr.TraceID, tt.traceparent)
			}
			if len(tr.TraceID) != 32 || !lowerHex.MatchString(tr.TraceID) || tr.TraceID == strings.Repeat("0", 32) {
				t.Errorf("trace id = %q, want a new 32-hex-character id", tr.TraceID)
			}
			if tr.Flags != "01" {
				t.Errorf("flags = %q, want 01 for a new trace", tr.Flags)
			}
		})
	}
}

func TestTraceFromWithoutTrace(t *testing.T) {
	if tr, ok := httpx.TraceFrom(context.Background()); ok {
		t.Errorf("TraceFrom(background) = %+v, true; want false", tr)
	}
}

func TestTraceparentFormat(t *testing.T) {
	tr := httpx.Trace{TraceID: "4bf92f3577b34da6a3ce929d0e0e4736", SpanID: "00f067aa0ba902b7", Flags: "01"}
	if got, want := tr.Traceparent(), "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"; got != want {
		t.Errorf("Traceparent() = %q, want %q", got, want)
	}
}

func TestRealIP(t *testing.T) {
	trusted := mustPrefixes(t, "10.0.0.0/8", "fd00::/8")
	tests := []struct {
		name    string
		trusted []netip.Prefix
		remote  string
		xff     []string // X-Forwarded-For header lines
		want    string
	}{
		{name: "untrusted peer ignores X-Forwarded-For", remote: "203.0.113.9:4711", xff: []string{"198.51.100.1"}, want: "203.0.113.9"},
		{name: "untrusted peer without header", remote: "203.0.113.9:4711", want: "203.0.113.9"},
		{name: "no trusted proxies configured", trusted: []netip.Prefix{}, remote: "10.0.0.1:4711", xff: []string{"198.51.100.1"}, want: "10.0.0.1"},
		{name: "trusted peer without header", remote: "10.0.0.1:4711", want: "10.0.0.1"},
		{name: "trusted peer, one hop", remote: "10.0.0.1:4711", xff: []string{"203.0.113.7"}, want: "203.0.113.7"},
		{name: "trusted peer, spaces around hops", remote: "10.0.0.1:4711", xff: []string{" 203.0.113.7 , 10.0.0.2 "}, want: "203.0.113.7"},
		{name: "multiple trusted hops skipped", remote: "10.0.0.1:4711", xff: []string{"203.0.113.7, 10.9.8.7, 10.0.0.2"}, want: "203.0.113.7"},
		{name: "spoofed left-most entry ignored", remote: "10.0.0.1:4711", xff: []string{"6.6.6.6, 203.0.113.7"}, want: "203.0.113.7"},
		{name: "spoofed trusted-looking left-most entry ignored", remote: "10.0.0.1:4711", xff: []string{"10.6.6.6, 203.0.113.7, 10.0.0.2"}, want: "203.0.113.7"},
		{name: "all hops trusted", remote: "10.0.0.1:4711", xff: []string{"10.0.0.3, 10.0.0.2"}, want: "10.0.0.3"},
		{name: "garbage right-most hop stops at the peer", remote: "10.0.0.1:4711", xff: []string{"203.0.113.7, not-an-ip"}, want: "10.0.0.1"},
		{name: "garbage behind a trusted hop stops there", remote: "10.0.0.1:4711", xff: []string{"203.0.113.7, ???, 10.0.0.2"}, want: "10.0.0.2"},
		{name: "garbage left of the client ignored", remote: "10.0.0.1:4711", xff: []string{"<script>, 203.0.113.7"}, want: "203.0.113.7"},
		{name: "hop with a port is not an address", remote: "10.0.0.1:4711", xff: []string{"203.0.113.7:1234"}, want: "10.0.0.1"},
		{name: "empty header line", remote: "10.0.0.1:4711", xff: []string{""}, want: "10.0.0.1"},
		{name: "multiple header lines", remote: "10.0.0.1:4711", xff: []string{"6.6.6.6", "203.0.113.7, 10.0.0.2"}, want: "203.0.113.7"},
		{name: "multiple header lines, one hop each", remote: "10.0.0.1:4711", xff: []string{"6.6.6.6", "203.0.113.7", "10.0.0.2"}, want: "203.0.113.7"},
		{name: "IPv6 untrusted peer", remote: "[2001:db8::1]:443", xff: []string{"198.51.100.1"}, want: "2001:db8::1"},
		{name: "IPv6 trusted peer and hop", remote: "[fd00::1]:443", xff: []string{"2001:db8::7, fd12::2"}, want: "2001:db8::7"},
		{name: "IPv6 hop behind IPv4 proxy", remote: "10.0.0.1:4711", xff: []string{"2001:db8::7"}, want: "2001:db8::7"},
		{name: "IPv4-mapped client hop is unmapped", remote: "10.0.0.1:4711", xff: []string{"::ffff:203.0.113.7"}, want: "203.0.113.7"},
		{name: "IPv4-mapped trusted hop is skipped", remote: "10.0.0.1:4711", xff: []string{"203.0.113.7, ::ffff:10.0.0.2"}, want: "203.0.113.7"},
		{name: "IPv4-mapped trusted peer", remote: "[::ffff:10.0.0.1]:4711", xff: []string{"203.0.113.7"}, want: "203.0.113.7"},
		{name: "peer without port", remote: "203.0.113.9", want: "203.0.113.9"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			prefixes := trusted
			if tt.trusted != nil {
				prefixes = tt.trusted
			}
			req := httptest.NewRequest(http.MethodGet, "/", nil)
			req.RemoteAddr = tt.remote
			for _, v := range tt.xff {
				req.Header.Add("X-Forwarded-For", v)
			}
			_, seen := serve(t, httpx.Identify(prefixes), req)
			if got := httpx.ClientIP(seen.Context()); got != tt.want {
				t.Errorf("ClientIP = %q, want %q", got, tt.want)
			}
		})
	}
}

func mustPrefixes(t testing.TB, cidrs ...string) []netip.Prefix {
	t.Helper()
	p, err := httpx.ParsePrefixes(cidrs)
	if err != nil {
		t.Fatalf("ParsePrefixes(%q): %v", cidrs, err)
	}
	return p
}

func TestParsePrefixes(t *testing.T) {
	tests := []struct {
		name    string
		in      []string
		want    []string
		wantErr bool
	}{
		{name: "none", in: nil, want: []string{}},
		{name: "IPv4 and IPv6", in: []string{"10.0.0.0/8", "fd00::/8"}, want: []string{"10.0.0.0/8", "fd00::/8"}},
		{name: "spaces trimmed", in: []string{" 192.168.0.0/16 "}, want: []string{"192.168.0.0/16"}},
		{name: "host bits masked", in: []string{"10.1.2.3/8"}, want: []string{"10.0.0.0/8"}},
		{name: "single host", in: []string{"127.0.0.1/32"}, want: []string{"127.0.0.1/32"}},
		{name: "address without bits", in: []string{"10.0.0.1"}, wantErr: true},
		{name: "nonsense", in: []string{"10.0.0.0/8", "proxies"}, wantErr: true},
		{name: "bits out of range", in: []string{"10.0.0.0/33"}, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := httpx.ParsePrefixes(tt.in)
			if (err != nil) != tt.wantErr {
				t.Fatalf("ParsePrefixes(%q) error = %v, want error %v", tt.in, err, tt.wantErr)
			}
			if tt.wantErr {
				return
			}
			strs := []string{}
			for _, p := range got {
				strs = append(strs, p.String())
			}
			if !slices.Equal(strs, tt.want) {
				t.Errorf("ParsePrefixes(%q) = %q, want %q", tt.in, strs, tt.want)
			}
		})
	}
}

func TestRecover(t *testing.T) {
	tests := []struct {
		name    string
		panic   func()
		wantLog string // a substring of the logged panic value
	}{
		{name: "string", panic: func() { panic("boom: secret db detail") }, wantLog: "boom: secret db detail"},
		{name: "error", panic: func() { panic(fmt.Errorf("wrapped: %w", errors.New("secret db detail"))) }, wantLog: "wrapped: secret db detail"},
		{name: "runtime error", panic: func() {
			var orders []int
			i := 3
			_ = orders[i]
		}, wantLog: "index out of range"},
		{name: "nil map write", panic: func() {
			var m map[string]int
			m["secret db detail"] = 1
		}, wantLog: "assignment to entry in nil map"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			log, buf := testLogger(t)
			h := httpx.Recover(log)(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { tt.panic() }))
			req := withRequestID(httptest.NewRequest(http.MethodGet, "/orders", nil), "req-panic")
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)

			p := readProblem(t, rec.Result(), http.StatusInternalServerError)
			if p.Code != string(errs.Internal) || p.Detail != genericDetail {
				t.Errorf("code, detail = %q, %q; want internal, the generic detail", p.Code, p.Detail)
			}
			if strings.Contains(p.Raw, "secret") || strings.Contains(p.Raw, tt.wantLog) {
				t.Errorf("response leaks the panic: %s", p.Raw)
			}
			if p.RequestID != "req-panic" {
				t.Errorf("request_id = %q, want req-panic", p.RequestID)
			}

			var panicLine map[string]any
			for _, l := range logLines(t, buf) {
				if l["message"] == "panic while serving request" {
					panicLine = l
				}
			}
			if panicLine == nil {
				t.Fatalf("the panic was not logged: %s", buf)
			}
			if got := fmt.Sprint(panicLine["panic"]); !strings.Contains(got, tt.wantLog) {
				t.Errorf("logged panic = %q, want it to contain %q", got, tt.wantLog)
			}
			if panicLine["request_id"] != "req-panic" || panicLine["level"] != "error" {
				t.Errorf("panic log line has request_id %v and level %v, want req-panic and error", panicLine["request_id"], panicLine["level"])
			}
			if stack, _ := panicLine["stack"].(string); stack == "" {
				t.Error("panic log line has no stack")
			}
		})
	}
}

func TestRecoverRepanicsAbort(t *testing.T) {
	log, buf := testLogger(t)
	h := httpx.Recover(log)(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { panic(http.ErrAbortHandler) }))
	rec := httptest.NewRecorder()

	v := recovered(func() { h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/", nil)) })
	if v != http.ErrAbortHandler {
		t.Fatalf("panic value = %v, want http.ErrAbortHandler re-panicked", v)
	}
	if rec.Body.Len() != 0 {
		t.Errorf("an aborted request got a body: %s", rec.Body)
	}
	if buf.Len() != 0 {
		t.Errorf("an aborted request was logged: %s", buf)
	}
}

func TestRecoverPassesThrough(t *testing.T) {
	log, buf := testLogger(t)
	h := httpx.Recover(log)(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		httpx.JSON(w, http.StatusCreated, "made")
	}))
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/", nil))
	if rec.Code != http.StatusCreated || buf.Len() != 0 {
		t.Errorf("status %d, log %q; want 201 and nothing logged", rec.Code, buf)
	}
}

func TestTimeout(t *testing.T) {
	t.Run("handler sees the deadline", func(t *testing.T) {
		const d = time.Minute
		before := time.Now()
		_, seen := serve(t, httpx.Timeout(d), httptest.NewRequest(http.MethodGet, "/", nil))
		deadline, ok := seen.Context().Deadline()
		if !ok {
			t.Fatal("handler context has no deadline")
		}
		if deadline.Before(before) || deadline.After(time.Now().Add(d)) {
			t.Errorf("deadline %v is not within %v of the request", deadline, d)
		}
		if seen.Context().Err() == nil {
			t.Error("the context is still live after the handler returned")
		}
	})
	t.Run("work stops when the deadline passes", func(t *testing.T) {
		var got error
		h := httpx.Timeout(time.Millisecond)(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			select {
			case <-r.Context().Done():
				got = r.Context().Err()
			case <-time.After(10 * time.Second):
			}
		}))
		h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest(http.MethodGet, "/", nil))
		if !errors.Is(got, context.DeadlineExceeded) {
			t.Errorf("handler context error = %v, want deadline exceeded", got)
		}
	})
}

func TestSecurityHeaders(t *testing.T) {
	if strings.Contains(httpx.ContentSecurityPolicy, "'unsafe-inline'") || strings.Contains(httpx.ContentSecurityPolicy, "'unsafe-eval'") {
		t.Errorf("ContentSecurityPolicy allows unsafe sources: %q", httpx.ContentSecurityPolicy)
	}
	for _, directive := range []string{"default-src 'self'", "object-src 'none'", "frame-ancestors 'none'", "base-uri 'none'"} {
		if !strings.Contains(httpx.ContentSecurityPolicy, directive) {
			t.Errorf("ContentSecurityPolicy lacks %q: %q", directive, httpx.ContentSecurityPolicy)
		}
	}

	tests := []struct {
		production bool
		wantHSTS   string
	}{
		{production: true, wantHSTS: "max-age=31536000; includeSubDomains"},
		{production: false, wantHSTS: ""},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("production=%v", tt.production), func(t *testing.T) {
			rec, _ := serve(t, httpx.SecurityHeaders(tt.production), httptest.NewRequest(http.MethodGet, "/", nil))
			h := rec.Header()
			want := map[string]string{
				"Content-Security-Policy":   httpx.APIContentSecurityPolicy,
				"X-Content-Type-Options":    "nosniff",
				"Referrer-Policy":           "same-origin",
				"Strict-Transport-Security": tt.wantHSTS,
			}
			for k, v := range want {
				if got := h.Get(k); got != v {
					t.Errorf("%s = %q, want %q", k, got, v)
				}
			}
			if len(h.Values("Strict-Transport-Security")) > 1 {
				t.Errorf("Strict-Transport-Security sent %d times", len(h.Values("Strict-Transport-Security")))
			}
		})
	}
}

func TestPageHeaders(t *testing.T) {
	h := http.Handler(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	h = httpx.SecurityHeaders(true)(httpx.PageHeaders(h))
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/ui/overview", nil))
	for k, v := range map[string]string{
		"Content-Security-Policy": httpx.ContentSecurityPolicy, // the page policy replaces the API one
		"X-Frame-Options":         "DENY",
		"X-Content-Type-Options":  "nosniff",
	} {
		if got := rec.Header().Values(k); len(got) != 1 || got[0] != v {
			t.Errorf("%s = %q, want exactly %q", k, got, v)
		}
	}
}

// observations collects what Observe reports.
type observations struct {
	mu   sync.Mutex
	list []httpx.Observation
}

func (o *observations) observe(_ *http.Request, ob httpx.Observation) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.list = append(o.list, ob)
}

func (o *observations) only(t testing.TB) httpx.Observation {
	t.Helper()
	o.mu.Lock()
	defer o.mu.Unlock()
	if len(o.list) != 1 {
		t.Fatalf("observed %d requests, want 1: %+v", len(o.list), o.list)
	}
	return o.list[0]
}

func TestObserve(t *testing.T) {
	tests := []struct {
		method     string
		path       string
		wantRoute  string
		wantStatus int
		wantBytes  int
	}{
		{http.MethodGet, "/items/42", "/items/{id}", http.StatusOK, len("item 42")},
		{http.MethodPost, "/items/42", "unmatched", http.StatusMethodNotAllowed, 0},
		{http.MethodPut, "/items/42/photo", "/items/{id}/photo", http.StatusCreated, len("stored")},
		{http.MethodGet, "/silent", "/silent", http.StatusOK, 0},
		{http.MethodGet, "/api/v1/users/u7", "/api/v1/users/{uid}", http.StatusNoContent, 0},
		{http.MethodGet, "/nothing/here", "unmatched", http.StatusNotFound, len("none")},
	}
	for _, tt := range tests {
		t.Run(tt.method+" "+tt.path, func(t *testing.T) {
			var first, second observations
			r := chi.NewRouter()
			r.Use(httpx.Observe(first.observe, second.observe))
			r.NotFound(func(w http.ResponseWriter, r *http.Request) {
				w.WriteHeader(http.StatusNotFound)
				_, _ = w.Write([]byte("none"))
			})
			r.MethodNotAllowed(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusMethodNotAllowed) })
			r.Get("/items/{id}", func(w http.ResponseWriter, r *http.Request) {
				_, _ = w.Write([]byte("item " + chi.URLParam(r, "id")))
			})
			r.Put("/items/{id}/photo", func(w http.ResponseWriter, r *http.Request) {
				w.WriteHeader(http.StatusCreated)
				_, _ = w.Write([]byte("stored"))
			})
			r.Get("/silent", func(http.ResponseWriter, *http.Request) {})
			r.Route("/api/v1", func(r chi.Router) {
				r.Get("/users/{uid}", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusNoContent) })
			})

			rec := httptest.NewRecorder()
			r.ServeHTTP(rec, httptest.NewRequest(tt.method, tt.path, nil))

			o := first.only(t)
			if o != second.only(t) {
				t.Errorf("observers saw different observations: %+v and %+v", o, second.only(t))
			}
			if o.Method != tt.method {
				t.Errorf("Method = %q, want %q", o.Method, tt.method)
			}
			if o.Route != tt.wantRoute {
				t.Errorf("Route = %q, want %q", o.Route, tt.wantRoute)
			}
			if o.Status != tt.wantStatus || rec.Code != tt.wantStatus {
				t.Errorf("Status = %d (response %d), want %d", o.Status, rec.Code, tt.wantStatus)
			}
			if o.Bytes != tt.wantBytes || rec.Body.Len() != tt.wantBytes {
				t.Errorf("Bytes = %d (response %d), want %d", o.Bytes, rec.Body.Len(), tt.wantBytes)
			}
			if o.Duration < 0 {
				t.Errorf("Duration = %v, want >= 0", o.Duration)
			}
		})
	}
}

func TestObserveWithoutRouter(t *testing.T) {
	var obs observations
	h := httpx.Observe(obs.observe)(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "gone", http.StatusGone)
	}))
	h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest(http.MethodDelete, "/x", nil))
	o := obs.only(t)
	if o.Route != "unmatched" || o.Status != http.StatusGone || o.Bytes != len("gone\n") {
		t.Errorf("observation = %+v, want route unmatched, status 410, 5 bytes", o)
	}
}

func TestAccessLog(t *testing.T) {
	tests := []struct {
		name      string
		level     string // the logger's level
		route     string
		status    int
		wantLevel string // "" means no line
	}{
		{name: "ordinary request", level: "debug", route: "/items/{id}", status: 200, wantLevel: "info"},
		{name: "client error", level: "debug", route: "/items/{id}", status: 404, wantLevel: "info"},
		{name: "server error", level: "debug", route: "/items/{id}", status: 503, wantLevel: "error"},
		{name: "probe", level: "debug", route: "/healthz", status: 200, wantLevel: "debug"},
		{name: "scrape", level: "debug", route: "/metrics", status: 200, wantLevel: "debug"},
		{name: "failing probe", level: "debug", route: "/readyz", status: 503, wantLevel: "error"},
		{name: "probe at info level", level: "info", route: "/healthz", status: 200, wantLevel: ""},
		{name: "failing probe at info level", level: "info", route: "/readyz", status: 500, wantLevel: "error"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			buf := &bytes.Buffer{}
			log := logging.New(buf, tt.level, "json", false)
			req := httptest.NewRequest(http.MethodGet, "/items/7?card=4242", nil)
			req.Header.Set("User-Agent", "atrium-test/1")
			req = withRequestID(req, "req-log")
			httpx.AccessLog(log)(req, httpx.Observation{
				Method: http.MethodGet, Route: tt.route, Status: tt.status, Bytes: 12, Duration: 1500 * time.Microsecond,
			})

			if tt.wantLevel == "" {
				if buf.Len() != 0 {
					t.Errorf("logged %q, want nothing", buf)
				}
				return
			}
			line := onlyLogLine(t, buf)
			want := map[string]any{
				"level": tt.wantLevel, "message": "request", "method": "GET", "path": "/items/7", "route": tt.route,
				"status": float64(tt.status), "bytes": 12.0, "user_agent": "atrium-test/1", "request_id": "req-log",
				"duration_ms": 1.5,
			}
			for k, v := range want {
				if line[k] != v {
					t.Errorf("%s = %v, want %v", k, line[k], v)
				}
			}
			if strings.Contains(buf.String(), "4242") {
				t.Errorf("the query string was logged: %s", buf)
			}
		})
	}
}

// TestStack runs a request through the middleware in the order the app
// uses, so a panic deep inside is still observed, logged and answered.
func TestStack(t *testing.T) {
	log, buf := testLogger(t)
	var obs observations
	r := chi.NewRouter()
	r.Use(
		httpx.Identify(mustPrefixes(t, "10.0.0.0/8")),
		httpx.Observe(httpx.AccessLog(log), obs.observe),
		httpx.Recover(log),
		httpx.SecurityHeaders(true),
		httpx.BodyLimit(1<<10),
		httpx.Timeout(time.Minute),
	)
	r.Get("/orders/{id}", func(http.ResponseWriter, *http.Request) { panic("no orders table") })

	req := httptest.NewRequest(http.MethodGet, "/orders/7", nil)
	req.RemoteAddr = "10.0.0.1:4711"
	req.Header.Set("X-Forwarded-For", "203.0.113.7")
	req.Header.Set(httpx.RequestIDHeader, "req-stack")
	rec := httptest.NewRecorder()
	r.ServeHTTP(rec, req)

	p := readProblem(t, rec.Result(), http.StatusInternalServerError)
	if p.RequestID != "req-stack" || rec.Header().Get(httpx.RequestIDHeader) != "req-stack" {
		t.Errorf("request id in body %q and header %q, want req-stack", p.RequestID, rec.Header().Get(httpx.RequestIDHeader))
	}
	if rec.Header().Get("Content-Security-Policy") == "" || rec.Header().Get("traceparent") == "" {
		t.Errorf("security or trace headers missing from the error response: %v", rec.Header())
	}
	if o := obs.only(t); o.Route != "/orders/{id}" || o.Status != http.StatusInternalServerError {
		t.Errorf("observation = %+v, want route /orders/{id} and status 500", o)
	}
	var access map[string]any
	for _, l := range logLines(t, buf) {
		if l["message"] == "request" {
			access = l
		}
		if l["request_id"] != "req-stack" || l["trace_id"] == nil {
			t.Errorf("log line without request and trace id: %v", l)
		}
	}
	if access == nil {
		t.Fatalf("no access log line: %s", buf)
	}
	if access["client_ip"] != "203.0.113.7" || access["level"] != "error" {
		t.Errorf("access log client_ip %v level %v, want 203.0.113.7 and error", access["client_ip"], access["level"])
	}
}

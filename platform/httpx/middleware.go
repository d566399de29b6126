// Package httpx is Atrium's HTTP edge: the chi middleware stack every
// request passes (request id, trace context, real client IP, panic
// recovery, body limit, timeout, access log, security headers), the error
// vocabulary's mapping to RFC 9457 problems, and strict JSON decoding.
package httpx

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"runtime/debug"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/go-chi/chi/v5/middleware"
	"github.com/rs/zerolog"

	"github.com/atriumhq/atrium/platform/errs"
	"github.com/atriumhq/atrium/platform/logging"
)

// RequestIDHeader carries the request id in and out.
const RequestIDHeader = "X-Request-ID"

// Canonical header keys, assigned directly to skip canonicalisation.
const (
	hdrRequestID   = "X-Request-Id"
	hdrTraceparent = "Traceparent"
)

// Trace holds the W3C trace context of a request: the trace it belongs to
// and the span this instance opened for it.
type Trace struct {
	TraceID string
	SpanID  string
	Flags   string
}

// Traceparent is the header value to send on outgoing calls made while
// serving this request, so the downstream joins the same trace.
func (t Trace) Traceparent() string { return "00-" + t.TraceID + "-" + t.SpanID + "-" + t.Flags }

// edge is what Identify learned about a request.
type edge struct {
	trace    Trace
	clientIP string
}

type edgeKey struct{}

// TraceFrom returns the request's trace context, if any.
func TraceFrom(ctx context.Context) (Trace, bool) {
	e, ok := ctx.Value(edgeKey{}).(*edge)
	if !ok {
		return Trace{}, false
	}
	return e.trace, true
}

// ClientIP returns the real client address found by Identify.
func ClientIP(ctx context.Context) string {
	if e, ok := ctx.Value(edgeKey{}).(*edge); ok {
		return e.clientIP
	}
	return ""
}

// Identify is the first middleware: it gives the request its identity in
// one step (one context, one request copy, one random draw — it runs on
// every request).
//
//   - Request id: a well-formed incoming X-Request-ID (from a load balancer
//     or client) is kept; otherwise the trace id serves. It is echoed in the
//     response and carried on every log line of the request.
//   - Trace context: an incoming W3C traceparent is continued, otherwise a
//     new trace starts; either way this instance opens a new span, returned
//     in the response's traceparent.
//   - Client IP: X-Forwarded-For is believed only when the connection comes
//     from a trusted proxy, and then only as far back as the hops are
//     trusted: the right-most untrusted address is the client.
func Identify(trusted []netip.Prefix) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			var rnd [24]byte
			_, _ = rand.Read(rnd[:])
			ids := hex.EncodeToString(rnd[:]) // 32 hex trace id + 16 hex span id
			e := &edge{clientIP: clientIP(r, trusted)}
			t, ok := parseTraceparent(r.Header.Get("traceparent"))
			if !ok {
				t = Trace{TraceID: ids[:32], Flags: "01"}
			}
			t.SpanID = ids[32:]
			e.trace = t
			id := r.Header.Get(RequestIDHeader)
			if !validRequestID(id) {
				id = t.TraceID
			}
			h, vals := w.Header(), []string{id, t.Traceparent()} // one allocation for both
			h[hdrRequestID], h[hdrTraceparent] = vals[0:1:1], vals[1:2:2]
			ctx := context.WithValue(logging.WithRequest(r.Context(), id, t.TraceID), edgeKey{}, e)
			next.ServeHTTP(w, r.WithContext(ctx))
		})
	}
}

func validRequestID(id string) bool {
	if id == "" || len(id) > 128 {
		return false
	}
	for _, c := range id {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return false
		}
	}
	return true
}

// parseTraceparent parses version 00 of the header:
// 00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>.
func parseTraceparent(h string) (Trace, bool) {
	if h == "" {
		return Trace{}, false
	}
	p := strings.Split(strings.TrimSpace(h), "-")
	if len(p) < 4 || len(p[0]) != 2 || p[0] == "ff" || len(p[1]) != 32 || len(p[2]) != 16 || len(p[3]) != 2 {
		return Trace{}, false
	}
	if p[0] == "00" && len(p) != 4 {
		return Trace{}, false
	}
	for _, s := range p[:4] {
		if !isLowerHex(s) {
			return Trace{}, false
		}
	}
	if p[1] == strings.Repeat("0", 32) || p[2] == strings.Repeat("0", 16) {
		return Trace{}, false
	}
	return Trace{TraceID: p[1], Flags: p[3]}, true
}

func isLowerHex(s string) bool {
	for _, c := range s {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

func clientIP(r *http.Request, trusted []netip.Prefix) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	if len(trusted) == 0 {
		return host
	}
	isTrusted := func(a netip.Addr) bool {
		for _, p := range trusted {
			if p.Contains(a.Unmap()) {
				return true
			}
		}
		return false
	}
	client := host
	if peer, err := netip.ParseAddr(host); err == nil && isTrusted(peer) {
		hops := strings.Split(strings.Join(r.Header.Values("X-Forwarded-For"), ","), ",")
		for i := len(hops) - 1; i >= 0; i-- {
			a, err := netip.ParseAddr(strings.TrimSpace(hops[i]))
			if err != nil {
				break
			}
			client = a.Unmap().String()
			if !isTrusted(a) {
				break
			}
		}
	}
	return client
}

// ParsePrefixes parses CIDRs such as those of ATRIUM_HTTP_TRUSTED_PROXIES.
func ParsePrefixes(cidrs []string) ([]netip.Prefix, error) {
	out := make([]netip.Prefix, 0, len(cidrs))
	for _, c := range cidrs {
		p, err := netip.ParsePrefix(strings.TrimSpace(c))
		if err != nil {
			return nil, err
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

// Recover turns a panic into a logged internal error and a 500 problem.
func Recover(log zerolog.Logger) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			defer func() {
				v := recover()
				if v == nil {
					return
				}
				if v == http.ErrAbortHandler {
					panic(v)
				}
				log.Error().Ctx(r.Context()).Str("panic", fmt.Sprint(v)).Bytes("stack", debug.Stack()).Msg("panic while serving request")
				WriteError(w, r, log, errs.E(errs.Internal, "panic"))
			}()
			next.ServeHTTP(w, r)
		})
	}
}

// BodyLimit caps request bodies; Decode reports the excess as too_large.
func BodyLimit(n int64) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.ContentLength > n {
				WriteError(w, r, zerolog.Nop(), errs.E(errs.TooLarge, "body exceeds %d bytes", n))
				return
			}
			if r.Body != http.NoBody {
				r.Body = http.MaxBytesReader(w, r.Body, n)
			}
			next.ServeHTTP(w, r)
		})
	}
}

// Timeout gives each request a deadline. Handlers and everything they call
// take ctx, so the work stops when the deadline passes.
func Timeout(d time.Duration) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			ctx, cancel := context.WithTimeout(r.Context(), d)
			defer cancel()
			next.ServeHTTP(w, r.WithContext(ctx))
		})
	}
}

// ContentSecurityPolicy is the policy of the admin UI's pages: strict, no
// inline script or style, no third parties, no framing. The UI is built to
// live within it.
const ContentSecurityPolicy = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; " +
	"connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"

// APIContentSecurityPolicy is the policy of every other response (JSON,
// probes): nothing may load from it and nothing may frame it.
const APIContentSecurityPolicy = "default-src 'none'; frame-ancestors 'none'"

// Headers under canonical keys, assigned without allocating.
var (
	baseHeaders = map[string][]string{
		"Content-Security-Policy": {APIContentSecurityPolicy},
		"X-Content-Type-Options":  {"nosniff"},
		"Referrer-Policy":         {"same-origin"},
	}
	pageHeaders = map[string][]string{
		"Content-Security-Policy":    {ContentSecurityPolicy},
		"X-Frame-Options":            {"DENY"},
		"Cross-Origin-Opener-Policy": {"same-origin"},
		"Permissions-Policy":         {"camera=(), microphone=(), geolocation=()"},
	}
	hsts = []string{"max-age=31536000; includeSubDomains"}
)

// SecurityHeaders sets the headers every response carries: no MIME
// sniffing, same-origin referrers, a deny-all CSP, and HSTS in production
// (ignored over plain HTTP; TLS ends at the load balancer). PageHeaders
// adds the UI's policy on HTML pages; the headers stay short on API
// responses, which are most of the traffic.
func SecurityHeaders(production bool) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			h := w.Header()
			for k, v := range baseHeaders {
				h[k] = v
			}
			if production {
				h["Strict-Transport-Security"] = hsts
			}
			next.ServeHTTP(w, r)
		})
	}
}

// PageHeaders sets the admin UI's headers: its Content-Security-Policy,
// no framing, an isolated browsing context, no device permissions.
func PageHeaders(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		for k, v := range pageHeaders {
			h[k] = v
		}
		next.ServeHTTP(w, r)
	})
}

// Observation is what Observe reports about one finished request.
type Observation struct {
	Method   string
	Route    string // the chi route pattern, or "unmatched"
	Status   int
	Bytes    int
	Duration time.Duration
}

// Observe wraps the response writer once and reports every finished request
// to each observer (the access log and the metrics).
func Observe(observers ...func(*http.Request, Observation)) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			start := time.Now()
			ww := middleware.NewWrapResponseWriter(w, r.ProtoMajor)
			defer func() {
				o := Observation{Method: r.Method, Route: routePattern(r), Status: ww.Status(), Bytes: ww.BytesWritten(), Duration: time.Since(start)}
				if o.Status == 0 {
					o.Status = http.StatusOK
				}
				for _, f := range observers {
					f(r, o)
				}
			}()
			next.ServeHTTP(ww, r)
		})
	}
}

func routePattern(r *http.Request) string {
	if rc := chi.RouteContext(r.Context()); rc != nil {
		if p := rc.RoutePattern(); p != "" {
			return p
		}
	}
	return "unmatched"
}

// quietRoutes are probes and scrapes: logged at debug level only.
var quietRoutes = map[string]bool{"/healthz": true, "/readyz": true, "/metrics": true}

// AccessLog returns an observer that logs one line per request.
func AccessLog(log zerolog.Logger) func(*http.Request, Observation) {
	return func(r *http.Request, o Observation) {
		lvl := zerolog.InfoLevel
		switch {
		case o.Status >= 500:
			lvl = zerolog.ErrorLevel
		case quietRoutes[o.Route]:
			lvl = zerolog.DebugLevel
		}
		e := log.WithLevel(lvl)
		if e == nil {
			return
		}
		e.Ctx(r.Context()).Str("method", o.Method).Str("path", r.URL.Path).Str("route", o.Route).
			Int("status", o.Status).Int("bytes", o.Bytes).Dur("duration_ms", o.Duration).
			Str("client_ip", ClientIP(r.Context())).Str("user_agent", r.UserAgent()).Msg("request")
	}
}

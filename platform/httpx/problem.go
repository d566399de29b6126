package httpx

import (
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"strings"

	"github.com/go-chi/chi/v5"
	"github.com/rs/zerolog"

	"github.com/atriumhq/atrium/platform/errs"
	"github.com/atriumhq/atrium/platform/logging"
)

// statuses maps each error code to its HTTP status: the one place where
// Atrium chooses status codes for errors.
var statuses = map[errs.Code]int{
	errs.Invalid:         http.StatusBadRequest,
	errs.TooLarge:        http.StatusRequestEntityTooLarge,
	errs.Unauthenticated: http.StatusUnauthorized,
	errs.Forbidden:       http.StatusForbidden,
	errs.NotFound:        http.StatusNotFound,
	errs.Conflict:        http.StatusConflict,
	errs.Unprocessable:   http.StatusUnprocessableEntity,
	errs.QuotaExceeded:   http.StatusTooManyRequests,
	errs.Unavailable:     http.StatusServiceUnavailable,
	errs.Internal:        http.StatusInternalServerError,
}

var titles = map[errs.Code]string{
	errs.Invalid:         "Invalid request",
	errs.TooLarge:        "Request body too large",
	errs.Unauthenticated: "Authentication required",
	errs.Forbidden:       "Forbidden",
	errs.NotFound:        "Not found",
	errs.Conflict:        "Conflict",
	errs.Unprocessable:   "Unprocessable request",
	errs.QuotaExceeded:   "Quota exceeded",
	errs.Unavailable:     "Service unavailable",
	errs.Internal:        "Internal error",
}

// Status returns the HTTP status for an error code.
func Status(c errs.Code) int {
	if s, ok := statuses[c]; ok {
		return s
	}
	return http.StatusInternalServerError
}

// StatusOf returns the HTTP status for err: its code's, except that a
// quota_exceeded error without retry_after_seconds is an allocation or
// budget quota, where waiting will not help until use falls or the limit
// rises, so not a 429 (RFC 6585 means "slow down") but a 403 whose problem
// type says quota_exceeded.
func StatusOf(err error) int {
	e := errs.As(err)
	if _, retry := e.Extra["retry_after_seconds"]; e.Code == errs.QuotaExceeded && !retry {
		return http.StatusForbidden
	}
	return Status(e.Code)
}

// ProblemTypeBase prefixes each problem type URI; the fragment is the code.
const ProblemTypeBase = "urn:atrium:problem:"

// Problem is an RFC 9457 problem details body.
type Problem struct {
	Type      string            `json:"type"`
	Title     string            `json:"title"`
	Status    int               `json:"status"`
	Detail    string            `json:"detail,omitempty"`
	Instance  string            `json:"instance,omitempty"`
	Code      errs.Code         `json:"code"`
	RequestID string            `json:"request_id,omitempty"`
	Errors    []errs.FieldError `json:"errors,omitempty"`
	Extra     map[string]any    `json:"-"`
}

// MarshalJSON flattens Extra into the problem object, as RFC 9457 extension
// members.
func (p Problem) MarshalJSON() ([]byte, error) {
	type plain Problem
	b, err := json.Marshal(plain(p))
	if err != nil || len(p.Extra) == 0 {
		return b, err
	}
	m := map[string]any{}
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, err
	}
	for k, v := range p.Extra {
		if _, taken := m[k]; !taken {
			m[k] = v
		}
	}
	return json.Marshal(m)
}

// WriteError writes err as a problem+json response. Internal errors are
// logged with the request id, and their text never reaches the client.
func WriteError(w http.ResponseWriter, r *http.Request, log zerolog.Logger, err error) {
	e := errs.As(err)
	status := StatusOf(e)
	p := Problem{
		Type:      ProblemTypeBase + string(e.Code),
		Title:     titles[e.Code],
		Status:    status,
		Detail:    e.Message,
		Instance:  r.URL.Path,
		Code:      e.Code,
		RequestID: logging.RequestID(r.Context()),
		Errors:    e.Fields,
		Extra:     e.Extra,
	}
	if e.Code == errs.Internal {
		log.Error().Ctx(r.Context()).Err(err).Str("path", r.URL.Path).Msg("internal error")
		p.Detail = "An unexpected error occurred. Quote the request id when reporting it."
	}
	if ra, ok := e.Extra["retry_after_seconds"]; ok {
		if n, ok := ra.(int); ok {
			w.Header().Set("Retry-After", strconv.Itoa(n))
		}
	}
	writeJSON(w, status, "application/problem+json", p)
}

// JSON writes v as a JSON response with the given status.
func JSON(w http.ResponseWriter, status int, v any) {
	writeJSON(w, status, "application/json", v)
}

func writeJSON(w http.ResponseWriter, status int, ctype string, v any) {
	var b []byte
	var err error
	if raw, ok := v.(json.RawMessage); ok {
		b = raw // already encoded (constant bodies such as /healthz)
	} else {
		b, err = json.Marshal(v)
	}
	if err != nil {
		status = http.StatusInternalServerError
		b = []byte(`{"type":"` + ProblemTypeBase + `internal","title":"Internal error","status":500,"code":"internal"}`)
		ctype = "application/problem+json"
	}
	h := w.Header()
	h["Content-Type"] = contentTypes[ctype]
	h["Cache-Control"] = noStore
	w.WriteHeader(status)
	_, _ = w.Write(b)
	_, _ = w.Write(newline)
}

var (
	newline      = []byte{'\n'}
	noStore      = []string{"no-store"}
	contentTypes = map[string][]string{
		"application/json":         {"application/json"},
		"application/problem+json": {"application/problem+json"},
	}
)

// HandlerFunc is an HTTP handler that returns an error instead of writing it.
type HandlerFunc func(w http.ResponseWriter, r *http.Request) error

// Adapter turns HandlerFuncs into http.Handlers that write returned errors
// as problems.
type Adapter struct{ Log zerolog.Logger }

// H adapts f.
func (a Adapter) H(f HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if err := f(w, r); err != nil {
			a.Error(w, r, err)
		}
	}
}

// Error writes err as a problem; a client that went away is not logged as
// an internal error.
func (a Adapter) Error(w http.ResponseWriter, r *http.Request, err error) {
	if errors.Is(err, http.ErrAbortHandler) {
		panic(err)
	}
	WriteError(w, r, a.Log, err)
}

// MethodNotAllowed answers a request whose path exists but not with this
// method: 405 with an invalid problem and the Allow header RFC 9110
// requires, found by asking the router which methods match the path.
func MethodNotAllowed(log zerolog.Logger) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if rc := chi.RouteContext(r.Context()); rc != nil && rc.Routes != nil {
			// rc.Routes is the root router; match the whole path against it.
			path := r.URL.Path
			var allow []string
			for _, m := range []string{http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete} {
				if rc.Routes.Match(chi.NewRouteContext(), m, path) {
					allow = append(allow, m)
				}
			}
			if len(allow) > 0 {
				w.Header().Set("Allow", strings.Join(allow, ", "))
			}
		}
		e := errs.E(errs.Invalid, "method %s is not allowed on %s", r.Method, r.URL.Path)
		p := Problem{Type: ProblemTypeBase + string(e.Code), Title: "Method not allowed", Status: http.StatusMethodNotAllowed,
			Detail: e.Message, Instance: r.URL.Path, Code: e.Code, RequestID: logging.RequestID(r.Context())}
		writeJSON(w, http.StatusMethodNotAllowed, "application/problem+json", p)
	}
}

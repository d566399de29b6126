package httpx_test

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/rs/zerolog"

	"github.com/atriumhq/atrium/platform/errs"
	"github.com/atriumhq/atrium/platform/httpx"
	"github.com/atriumhq/atrium/platform/logging"
)

// problem is a problem+json body as a client reads it.
type problem struct {
	Type      string            `json:"type"`
	Title     string            `json:"title"`
	Status    int               `json:"status"`
	Detail    string            `json:"detail"`
	Instance  string            `json:"instance"`
	Code      string            `json:"code"`
	RequestID string            `json:"request_id"`
	Errors    []errs.FieldError `json:"errors"`

	// Members holds every member of the object, extensions included.
	Members map[string]any `json:"-"`
	// Raw is the body as sent.
	Raw string `json:"-"`
}

// readProblem checks that res is a problem+json response with status
// wantStatus whose body agrees with the status line, and returns the body.
func readProblem(t testing.TB, res *http.Response, wantStatus int) problem {
	t.Helper()
	body, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatalf("read body: %v", err)
	}
	if res.StatusCode != wantStatus {
		t.Fatalf("status = %d, want %d; body: %s", res.StatusCode, wantStatus, body)
	}
	if ct := res.Header.Get("Content-Type"); ct != "application/problem+json" {
		t.Fatalf("Content-Type = %q, want application/problem+json; body: %s", ct, body)
	}
	var p problem
	if err := json.Unmarshal(body, &p); err != nil {
		t.Fatalf("body is not JSON: %v; body: %s", err, body)
	}
	if err := json.Unmarshal(body, &p.Members); err != nil {
		t.Fatalf("body is not a JSON object: %v; body: %s", err, body)
	}
	p.Raw = string(body)
	if p.Status != wantStatus {
		t.Errorf("body status = %d, want %d", p.Status, wantStatus)
	}
	if p.Code == "" {
		t.Errorf("body has no code: %s", body)
	}
	if want := httpx.ProblemTypeBase + p.Code; p.Type != want {
		t.Errorf("type = %q, want %q", p.Type, want)
	}
	if p.Title == "" {
		t.Errorf("body has no title: %s", body)
	}
	return p
}

// testLogger returns a JSON logger at debug level, built the way main builds
// it (so request and trace ids are added from ctx), and the buffer it
// writes to.
func testLogger(t testing.TB) (zerolog.Logger, *bytes.Buffer) {
	t.Helper()
	buf := &bytes.Buffer{}
	return logging.New(buf, "debug", "json", false), buf
}

// logLines parses each line the logger wrote.
func logLines(t testing.TB, buf *bytes.Buffer) []map[string]any {
	t.Helper()
	var lines []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		if l == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("log line is not JSON: %v: %s", err, l)
		}
		lines = append(lines, m)
	}
	return lines
}

// onlyLogLine returns the single line the logger wrote.
func onlyLogLine(t testing.TB, buf *bytes.Buffer) map[string]any {
	t.Helper()
	lines := logLines(t, buf)
	if len(lines) != 1 {
		t.Fatalf("logged %d lines, want 1: %s", len(lines), buf)
	}
	return lines[0]
}

// withRequestID returns r carrying the request id, as RequestID leaves it.
func withRequestID(r *http.Request, id string) *http.Request {
	return r.WithContext(logging.WithRequestID(r.Context(), id))
}

package httpx_test

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/rs/zerolog"

	"github.com/atriumhq/atrium/platform/errs"
	"github.com/atriumhq/atrium/platform/httpx"
)

type card struct {
	Number string `json:"number" required:"true"`
	Expiry string `json:"expiry"`
}

type order struct {
	Name   string   `json:"name" required:"true"`
	Qty    int      `json:"qty"`
	Card   card     `json:"card"`
	Coupon *card    `json:"coupon"`
	Tags   []string `json:"tags"`
	Secret string   `json:"-" required:"true"` // never decoded, so never required
}

// orderHandler decodes an order and echoes it back with 200.
func orderHandler(t testing.TB) http.Handler {
	t.Helper()
	return httpx.Adapter{Log: zerolog.Nop()}.H(func(w http.ResponseWriter, r *http.Request) error {
		var in order
		if err := httpx.Decode(r, &in); err != nil {
			return err
		}
		httpx.JSON(w, http.StatusOK, in)
		return nil
	})
}

// unsizedReader hides the length of a body, so the request goes out
// chunked, without a Content-Length.
type unsizedReader struct{ io.Reader }

const validOrder = `{"name":"tea","qty":2,"card":{"number":"4242","expiry":"12/29"}}`

func TestDecodeAcceptsValidBody(t *testing.T) {
	tests := []struct {
		name        string
		contentType string
		body        string
	}{
		{"application/json", "application/json", validOrder},
		{"with charset", "application/json; charset=utf-8", validOrder},
		{"structured +json suffix", "application/merge-patch+json", validOrder},
		{"no Content-Type", "", validOrder},
		{"surrounding whitespace", "application/json", "\n  " + validOrder + "  \n"},
		{"optional fields absent", "application/json", `{"name":"tea","card":{"number":"4242"}}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := httptest.NewRequest(http.MethodPost, "/orders", strings.NewReader(tt.body))
			if tt.contentType != "" {
				req.Header.Set("Content-Type", tt.contentType)
			}
			rec := httptest.NewRecorder()
			orderHandler(t).ServeHTTP(rec, req)

			if rec.Code != http.StatusOK {
				t.Fatalf("status = %d, want 200; body: %s", rec.Code, rec.Body)
			}
			var got order
			if err := json.Unmarshal(rec.Body.Bytes(), &got); err != nil {
				t.Fatalf("response is not an order: %v", err)
			}
			if got.Name != "tea" || got.Card.Number != "4242" {
				t.Errorf("decoded %+v, want name tea and card number 4242", got)
			}
		})
	}
}

func TestDecodeRejectsBadBody(t *testing.T) {
	tests := []struct {
		name        string
		contentType string
		body        string
		wantField   string // errors[0].field; "" means no errors member
		wantDetail  string // a substring of detail
	}{
		{
			name: "unknown field", body: `{"name":"tea","colour":"green"}`,
			wantField: "colour", wantDetail: "unknown field",
		},
		{
			name: "wrong type", body: `{"name":"tea","qty":"two"}`,
			wantField: "qty", wantDetail: "must be an integer, not string",
		},
		{
			name: "wrong type in nested object", body: `{"name":"tea","card":{"number":"4242","expiry":1229}}`,
			wantField: "card.expiry", wantDetail: "must be a string, not number",
		},
		{
			name: "object where an array belongs", body: `{"name":"tea","card":{"number":"4242"},"tags":{"a":1}}`,
			wantField: "tags", wantDetail: "must be an array",
		},
		{
			name: "missing required field", body: `{"qty":2,"card":{"number":"4242"}}`,
			wantField: "name", wantDetail: "is required",
		},
		{
			name: "required field empty", body: `{"name":"","card":{"number":"4242"}}`,
			wantField: "name", wantDetail: "is required",
		},
		{
			name: "missing required nested field", body: `{"name":"tea","card":{"expiry":"12/29"}}`,
			wantField: "card.number", wantDetail: "is required",
		},
		{
			name: "missing required field in present optional object", body: `{"name":"tea","card":{"number":"4242"},"coupon":{}}`,
			wantField: "coupon.number", wantDetail: "is required",
		},
		{name: "empty body", body: ``, wantDetail: "body is empty"},
		{name: "whitespace only", body: " \n\t ", wantDetail: "body is empty"},
		{name: "truncated JSON", body: `{"name":"tea","qty":`, wantDetail: "truncated"},
		{name: "malformed JSON", body: `{"name":tea}`, wantDetail: "malformed JSON at byte"},
		{name: "single quotes", body: `{'name':'tea'}`, wantDetail: "malformed JSON"},
		{name: "array instead of object", body: `[` + validOrder + `]`, wantDetail: "must be a JSON object"},
		{name: "string instead of object", body: `"tea"`, wantDetail: "must be a JSON object"},
		{name: "trailing second object", body: validOrder + validOrder, wantDetail: "single JSON object"},
		{name: "trailing empty object", body: validOrder + `{}`, wantDetail: "single JSON object"},
		{name: "trailing garbage", body: validOrder + ` and more`, wantDetail: "single JSON object"},
		{name: "trailing number", body: validOrder + ` 1`, wantDetail: "single JSON object"},
		{name: "text/plain", contentType: "text/plain", body: validOrder, wantDetail: "Content-Type must be application/json"},
		{name: "form", contentType: "application/x-www-form-urlencoded", body: `name=tea`, wantDetail: "Content-Type must be application/json"},
		{name: "malformed Content-Type", contentType: "application/json; charset", body: validOrder, wantDetail: "Content-Type must be application/json"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := httptest.NewRequest(http.MethodPost, "/orders", strings.NewReader(tt.body))
			ct := tt.contentType
			if ct == "" {
				ct = "application/json"
			}
			req.Header.Set("Content-Type", ct)
			rec := httptest.NewRecorder()
			orderHandler(t).ServeHTTP(rec, req)

			p := readProblem(t, rec.Result(), http.StatusBadRequest)
			if p.Code != string(errs.Invalid) {
				t.Errorf("code = %q, want %q", p.Code, errs.Invalid)
			}
			if !strings.Contains(p.Detail, tt.wantDetail) {
				t.Errorf("detail = %q, want it to contain %q", p.Detail, tt.wantDetail)
			}
			if p.Instance != "/orders" {
				t.Errorf("instance = %q, want /orders", p.Instance)
			}
			if tt.wantField == "" {
				if len(p.Errors) != 0 {
					t.Errorf("errors = %+v, want none", p.Errors)
				}
				return
			}
			if len(p.Errors) != 1 {
				t.Fatalf("errors = %+v, want one naming %q", p.Errors, tt.wantField)
			}
			if p.Errors[0].Field != tt.wantField {
				t.Errorf("errors[0].field = %q, want %q", p.Errors[0].Field, tt.wantField)
			}
			if !strings.Contains(p.Errors[0].Message, strings.TrimPrefix(tt.wantDetail, tt.wantField+": ")) {
				t.Errorf("errors[0].message = %q, want it to contain %q", p.Errors[0].Message, tt.wantDetail)
			}
		})
	}
}

func TestDecodeBodyOverLimit(t *testing.T) {
	const limit = 64
	big := `{"name":"` + strings.Repeat("t", 2*limit) + `","card":{"number":"4242"}}`
	padded := `{"name":"tea","card":{"number":"4242"}}` + strings.Repeat(" ", 2*limit)
	exact := `{"name":"tea","card":{"number":"4242"}}`
	exact += strings.Repeat(" ", limit-len(exact))

	tests := []struct {
		name        string
		body        string
		chunked     bool // no Content-Length: the limit is found while reading
		wantStatus  int
		wantHandled bool // the handler ran
	}{
		{name: "Content-Length over the limit", body: big, wantStatus: http.StatusRequestEntityTooLarge},
		{name: "chunked object over the limit", body: big, chunked: true, wantStatus: http.StatusRequestEntityTooLarge, wantHandled: true},
		{name: "chunked small object padded over the limit", body: padded, chunked: true, wantStatus: http.StatusRequestEntityTooLarge, wantHandled: true},
		{name: "Content-Length exactly the limit", body: exact, wantStatus: http.StatusOK, wantHandled: true},
		{name: "chunked exactly the limit", body: exact, chunked: true, wantStatus: http.StatusOK, wantHandled: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			handled := false
			inner := orderHandler(t)
			h := httpx.BodyLimit(limit)(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				handled = true
				inner.ServeHTTP(w, r)
			}))
			var body io.Reader = strings.NewReader(tt.body)
			if tt.chunked {
				body = unsizedReader{body}
			}
			req := httptest.NewRequest(http.MethodPost, "/orders", body)
			req.Header.Set("Content-Type", "application/json")
			if tt.chunked && req.ContentLength != -1 {
				t.Fatalf("request ContentLength = %d, want -1 (unknown)", req.ContentLength)
			}
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)

			if handled != tt.wantHandled {
				t.Errorf("handler ran = %v, want %v", handled, tt.wantHandled)
			}
			if tt.wantStatus == http.StatusOK {
				if rec.Code != http.StatusOK {
					t.Fatalf("status = %d, want 200; body: %s", rec.Code, rec.Body)
				}
				return
			}
			p := readProblem(t, rec.Result(), tt.wantStatus)
			if p.Code != string(errs.TooLarge) {
				t.Errorf("code = %q, want %q", p.Code, errs.TooLarge)
			}
			if want := "body exceeds 64 bytes"; !strings.Contains(p.Detail, want) {
				t.Errorf("detail = %q, want it to contain %q", p.Detail, want)
			}
		})
	}
}

// TestDecodeBodyOverLimitOverTheWire sends a chunked body through a real
// server, as a client without Content-Length does.
func TestDecodeBodyOverLimitOverTheWire(t *testing.T) {
	lengths := make(chan int64, 1)
	inner := orderHandler(t)
	srv := httptest.NewServer(httpx.BodyLimit(64)(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		lengths <- r.ContentLength
		inner.ServeHTTP(w, r)
	})))
	t.Cleanup(srv.Close)

	body := `{"name":"` + strings.Repeat("t", 512) + `","card":{"number":"4242"}}`
	req, err := http.NewRequest(http.MethodPost, srv.URL+"/orders", unsizedReader{strings.NewReader(body)})
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	res, err := srv.Client().Do(req)
	if err != nil {
		t.Fatalf("POST: %v", err)
	}
	t.Cleanup(func() { _ = res.Body.Close() })

	p := readProblem(t, res, http.StatusRequestEntityTooLarge)
	if p.Code != string(errs.TooLarge) {
		t.Errorf("code = %q, want %q", p.Code, errs.TooLarge)
	}
	select {
	case n := <-lengths:
		if n != -1 {
			t.Errorf("server saw Content-Length %d, want a chunked request (-1)", n)
		}
	default:
		t.Error("the handler never ran: the limit was not found while reading")
	}
}

func TestDecodeReturnsCodedErrors(t *testing.T) {
	tests := []struct {
		name     string
		body     string
		limit    int64
		wantCode errs.Code
	}{
		{"valid", validOrder, 1 << 10, ""},
		{"unknown field", `{"name":"tea","x":1}`, 1 << 10, errs.Invalid},
		{"over limit", validOrder, 8, errs.TooLarge},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := httptest.NewRequest(http.MethodPost, "/", unsizedReader{strings.NewReader(tt.body)})
			req.Body = http.MaxBytesReader(httptest.NewRecorder(), req.Body, tt.limit)
			var dst order
			err := httpx.Decode(req, &dst)
			if got := errs.CodeOf(err); got != tt.wantCode {
				t.Fatalf("Decode error = %v (code %q), want code %q", err, got, tt.wantCode)
			}
			var e *errs.Error
			if err != nil && !errors.As(err, &e) {
				t.Errorf("Decode error %T is not an *errs.Error", err)
			}
		})
	}
}

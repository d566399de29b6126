package main

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"sort"
	"strings"
	"sync"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/legacy"
	"github.com/go-chi/chi/v5"
)

const specPath = "docs/api/openapi.yaml"

var (
	specOnce   sync.Once
	specDoc    *openapi3.T
	specRouter routers.Router
	specErr    error
)

func loadSpec(t testing.TB) (*openapi3.T, routers.Router) {
	t.Helper()
	specOnce.Do(func() {
		specDoc, specErr = openapi3.NewLoader().LoadFromFile(specPath)
		if specErr == nil {
			specErr = specDoc.Validate(context.Background())
		}
		if specErr == nil {
			specDoc.Servers = nil // match any host
			specRouter, specErr = legacy.NewRouter(specDoc)
		}
	})
	if specErr != nil {
		t.Fatalf("%s: %v", specPath, specErr)
	}
	return specDoc, specRouter
}

// uiRoute reports whether a route is part of the HTML admin UI, which the
// API spec does not describe.
func uiRoute(p string) bool {
	return p == "/" || p == "/*" || strings.HasPrefix(p, "/ui/") || strings.HasPrefix(p, "/static/")
}

// routesOf walks a chi router and returns "METHOD /path" for every API
// route, with chi's trailing "/*" of mounted routers removed.
func routesOf(t testing.TB, r chi.Routes) []string {
	t.Helper()
	var out []string
	err := chi.Walk(r, func(method, route string, _ http.Handler, _ ...func(http.Handler) http.Handler) error {
		route = strings.ReplaceAll(route, "/*/", "/")
		if uiRoute(route) {
			return nil
		}
		out = append(out, method+" "+route)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(out)
	return out
}

// TestOpenAPICoversEveryRoute fails when a route is missing from the spec or
// the spec names a route the router does not have. Later modules' routes
// join automatically because the router itself is walked.
func TestOpenAPICoversEveryRoute(t *testing.T) {
	inst := startCluster(t, 1)[0]
	doc, _ := loadSpec(t)

	inRouter := map[string]bool{}
	for _, r := range routesOf(t, inst.app.router) {
		inRouter[r] = true
	}
	inSpec := map[string]bool{}
	for path, item := range doc.Paths.Map() {
		for method := range item.Operations() {
			inSpec[strings.ToUpper(method)+" "+path] = true
		}
	}
	for r := range inRouter {
		if !inSpec[r] {
			t.Errorf("route %s is not in %s", r, specPath)
		}
	}
	for r := range inSpec {
		if !inRouter[r] {
			t.Errorf("%s names %s, which the router does not serve", specPath, r)
		}
	}
}

// checkAgainstSpec validates a response (status, content type, body
// schema) against the operation the spec gives for the request.
func checkAgainstSpec(t testing.TB, req *http.Request, resp *http.Response, body []byte) {
	t.Helper()
	_, router := loadSpec(t)
	route, params, err := router.FindRoute(req)
	if err != nil {
		t.Errorf("%s %s: not in spec: %v", req.Method, req.URL.Path, err)
		return
	}
	in := &openapi3filter.RequestValidationInput{Request: req, PathParams: params, Route: route,
		Options: &openapi3filter.Options{AuthenticationFunc: openapi3filter.NoopAuthenticationFunc}}
	out := &openapi3filter.ResponseValidationInput{
		RequestValidationInput: in, Status: resp.StatusCode, Header: resp.Header,
		Body: io.NopCloser(bytes.NewReader(body)), Options: &openapi3filter.Options{IncludeResponseStatus: true},
	}
	if err := openapi3filter.ValidateResponse(context.Background(), out); err != nil {
		t.Errorf("%s %s -> %d does not match the spec: %v\nbody: %s", req.Method, req.URL.Path, resp.StatusCode, err, body)
	}
}

// call makes a request and, for API routes, validates the response against
// the spec.
func call(t testing.TB, method, url string, body io.Reader, header http.Header) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, url, body)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := http.DefaultClient.Do(req)
	resp, text := readBody(t, resp, err)
	b := []byte(text)
	for _, pan := range cardNumbers {
		if strings.Contains(text, pan) {
			t.Errorf("%s %s: the answer carries a card number", method, req.URL.Path)
		}
	}
	if _, router := loadSpec(t); !uiRoute(req.URL.Path) {
		if _, _, err := router.FindRoute(req); err == nil {
			checkAgainstSpec(t, req, resp, b)
		}
	}
	return resp, b
}

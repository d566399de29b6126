package main

import (
	"net/http"
	"strings"
	"testing"
)

// publicRoutes are the only API routes that answer without authentication.
// A new route is protected unless it is added here, on purpose.
var publicRoutes = map[string]bool{
	"GET /healthz":                          true,
	"GET /readyz":                           true,
	"GET /metrics":                          true,
	"POST /oauth2/token":                    true,
	"POST /oauth2/revoke":                   true,
	"GET /.well-known/jwks.json":            true,
	"GET /.well-known/openid-configuration": true,
	"POST /api/v1/auth/login":               true,
}

// TestEveryNonPublicRouteRequiresAuthentication walks the router and calls
// every route that is not declared public without credentials, and with a
// garbage token: each must answer 401, so a route that forgets its
// principal.Require is caught. Routes of later modules join automatically.
func TestEveryNonPublicRouteRequiresAuthentication(t *testing.T) {
	in := startCluster(t, 1)[0]
	routes := routesOf(t, in.app.router)
	checked := 0
	for _, rt := range routes {
		if publicRoutes[rt] {
			continue
		}
		method, path, _ := strings.Cut(rt, " ")
		path = strings.NewReplacer("{id}", "0193a000-0000-7000-8000-00000000beef").Replace(path)
		for name, h := range map[string]http.Header{
			"anonymous": nil,
			"garbage":   {"Authorization": {"Bearer not.a.token"}},
		} {
			resp, body := call(t, method, in.URL+path, strings.NewReader("{}"), h)
			if resp.StatusCode != http.StatusUnauthorized {
				t.Errorf("%s (%s): status %d, want 401: %s", rt, name, resp.StatusCode, body)
			}
		}
		checked++
	}
	if checked < 10 {
		t.Fatalf("only %d protected routes found: is the router walked?", checked)
	}
}

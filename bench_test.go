package main

import (
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/atriumhq/atrium/platform/testenv"
	atriumsql "github.com/atriumhq/atrium/sql"
)

// BenchmarkHealthz measures GET /healthz in process (no network) through
// the full edge stack (request id, trace context, real IP, access log at
// info level, metrics, recovery, security headers, body limit, timeout,
// chi routing) against a bare handler writing the same body. `make bench`
// adds the same comparison over real HTTP with wrk.
func BenchmarkHealthz(b *testing.B) {
	cfg := testConfig(testenv.Database(b, atriumsql.Migrations()), testenv.RedisPrefix(b), "bench")
	cfg.Log.Level = "info"
	in := startInstance(b, cfg)
	body := []byte("{\"status\":\"ok\"}\n")
	bare := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		_, _ = w.Write(body)
	})
	for _, bc := range []struct {
		name string
		h    http.Handler
	}{{"bare", bare}, {"stack", in.app.router}} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				req := httptest.NewRequest(http.MethodGet, "/healthz", nil)
				w := httptest.NewRecorder()
				bc.h.ServeHTTP(w, req)
				if w.Code != http.StatusOK {
					b.Fatalf("status %d", w.Code)
				}
			}
		})
	}
}

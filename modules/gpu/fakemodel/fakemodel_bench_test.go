package fakemodel_test

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/atriumhq/atrium/modules/gpu/fakemodel"
)

// benchRequest serves one request per iteration straight through the
// handler (no network), so the figures are the server's own cost. Compare
// the inference benchmarks with BenchmarkFakeModelHealth from the same run.
func benchRequest(b *testing.B, method, path, body string) {
	h := fakemodel.New(fakemodel.Config{Model: "m", Version: "1", GPUs: []string{"GPU-0"}})
	b.ReportAllocs()
	for b.Loop() {
		w := httptest.NewRecorder()
		h.ServeHTTP(w, httptest.NewRequest(method, path, strings.NewReader(body)))
		if w.Code != http.StatusOK {
			b.Fatalf("%d %s", w.Code, w.Body)
		}
	}
}

func BenchmarkFakeModelHealth(b *testing.B) {
	benchRequest(b, "GET", "/health", "")
}

var benchPrompt = strings.Repeat("the quick brown fox ", 32)

func BenchmarkFakeModelCompletion(b *testing.B) {
	benchRequest(b, "POST", "/v1/completions", `{"model":"m","prompt":"`+benchPrompt+`","max_tokens":64}`)
}

func BenchmarkFakeModelChatStream(b *testing.B) {
	benchRequest(b, "POST", "/v1/chat/completions",
		`{"model":"m","messages":[{"role":"user","content":"`+benchPrompt+`"}],"max_tokens":64,"stream":true}`)
}

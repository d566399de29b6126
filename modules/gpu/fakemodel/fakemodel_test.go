package fakemodel_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/atriumhq/atrium/modules/gpu/fakemodel"
)

// start serves a fake model for the test and returns its base URL.
func start(t testing.TB, cfg fakemodel.Config) string {
	t.Helper()
	if cfg.Getenv == nil {
		cfg.Getenv = func(string) string { return "" }
	}
	srv := httptest.NewServer(fakemodel.New(cfg))
	t.Cleanup(srv.Close)
	return srv.URL
}

// call sends a request with a JSON body (none when body is "") and decodes a
// JSON answer into a map.
func call(t testing.TB, method, url, body string) (*http.Response, map[string]any) {
	t.Helper()
	var r io.Reader
	if body != "" {
		r = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, url, r)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatalf("%s %s: %d %q is not a JSON object: %v", method, url, resp.StatusCode, raw, err)
	}
	return resp, m
}

// get walks a decoded JSON value along keys (strings) and indexes (ints).
func get(t testing.TB, v any, path ...any) any {
	t.Helper()
	for _, p := range path {
		switch k := p.(type) {
		case string:
			m, ok := v.(map[string]any)
			if !ok {
				t.Fatalf("at %q: %v is not an object", k, v)
			}
			v = m[k]
		case int:
			a, ok := v.([]any)
			if !ok || k >= len(a) {
				t.Fatalf("at [%d]: %v is not an array that long", k, v)
			}
			v = a[k]
		}
	}
	return v
}

func checkHeaders(t testing.TB, resp *http.Response, version, gpus string) {
	t.Helper()
	if got := resp.Header.Get("X-Model-Version"); got != version {
		t.Errorf("X-Model-Version %q, want %q", got, version)
	}
	if got, ok := resp.Header["X-Replica-Gpus"]; !ok || got[0] != gpus {
		t.Errorf("X-Replica-GPUs %q (present %v), want %q", got, ok, gpus)
	}
}

func TestHealthAndModels(t *testing.T) {
	url := start(t, fakemodel.Config{Model: "llama", Version: "3", GPUs: []string{"GPU-a", "GPU-b"}})

	resp, body := call(t, "GET", url+"/health", "")
	want := map[string]any{"status": "ok", "model": "llama", "version": "3", "gpus": []any{"GPU-a", "GPU-b"}}
	if resp.StatusCode != 200 || !reflect.DeepEqual(body, want) {
		t.Fatalf("health: %d %v, want 200 %v", resp.StatusCode, body, want)
	}
	checkHeaders(t, resp, "3", "GPU-a,GPU-b")

	resp, body = call(t, "GET", url+"/v1/models", "")
	if resp.StatusCode != 200 || body["object"] != "list" || len(body["data"].([]any)) != 1 {
		t.Fatalf("models: %d %v", resp.StatusCode, body)
	}
	m := get(t, body, "data", 0).(map[string]any)
	if m["id"] != "llama" || m["object"] != "model" || m["version"] != "3" ||
		!reflect.DeepEqual(m["gpus"], []any{"GPU-a", "GPU-b"}) || m["owned_by"] == nil || m["created"] == nil {
		t.Errorf("model entry %v", m)
	}
	checkHeaders(t, resp, "3", "GPU-a,GPU-b")
}

func TestCompletion(t *testing.T) {
	url := start(t, fakemodel.Config{Model: "llama", Version: "3", GPUs: []string{"0"}})
	resp, body := call(t, "POST", url+"/v1/completions", `{"model":"llama","prompt":"  hello   there\nworld "}`)
	if resp.StatusCode != 200 {
		t.Fatalf("%d %v", resp.StatusCode, body)
	}
	checkHeaders(t, resp, "3", "0")
	if body["object"] != "text_completion" || body["model"] != "llama" || !strings.HasPrefix(body["id"].(string), "cmpl-") || body["created"].(float64) <= 0 {
		t.Errorf("envelope %v", body)
	}
	if got := get(t, body, "choices", 0, "text"); got != "fake llama v3: hello there world" {
		t.Errorf("text %q", got)
	}
	if got := get(t, body, "choices", 0, "finish_reason"); got != "stop" {
		t.Errorf("finish_reason %v", got)
	}
	wantUsage := map[string]any{"prompt_tokens": 3.0, "completion_tokens": 6.0, "total_tokens": 9.0}
	if !reflect.DeepEqual(body["usage"], wantUsage) {
		t.Errorf("usage %v, want %v", body["usage"], wantUsage)
	}

	// The same prompt gets the same text; an array of prompts one choice each.
	_, again := call(t, "POST", url+"/v1/completions", `{"model":"llama","prompt":"hello there world"}`)
	if get(t, again, "choices", 0, "text") != "fake llama v3: hello there world" {
		t.Errorf("not deterministic: %v", again)
	}
	_, two := call(t, "POST", url+"/v1/completions", `{"model":"llama","prompt":["a b","c"]}`)
	if get(t, two, "choices", 0, "text") != "fake llama v3: a b" || get(t, two, "choices", 1, "text") != "fake llama v3: c" ||
		get(t, two, "choices", 1, "index") != 1.0 || get(t, two, "usage", "total_tokens") != 3.0+5+4 {
		t.Errorf("two prompts: %v", two)
	}
}

func TestChatCompletion(t *testing.T) {
	url := start(t, fakemodel.Config{Model: "llama", Version: "3"})
	resp, body := call(t, "POST", url+"/v1/chat/completions", `{"model":"llama","messages":[
		{"role":"system","content":"be brief"},
		{"role":"user","content":"what is two"},
		{"role":"assistant","content":null},
		{"role":"user","content":[{"type":"text","text":"and three"},{"type":"image_url","image_url":{"url":"x"}}]}]}`)
	if resp.StatusCode != 200 {
		t.Fatalf("%d %v", resp.StatusCode, body)
	}
	checkHeaders(t, resp, "3", "")
	if body["object"] != "chat.completion" || !strings.HasPrefix(body["id"].(string), "chatcmpl-") {
		t.Errorf("envelope %v", body)
	}
	msg := get(t, body, "choices", 0, "message")
	if want := map[string]any{"role": "assistant", "content": "fake llama v3: and three"}; !reflect.DeepEqual(msg, want) {
		t.Errorf("message %v, want %v", msg, want)
	}
	// Every message counts toward the prompt: 2 + 3 + 0 + 2 words.
	wantUsage := map[string]any{"prompt_tokens": 7.0, "completion_tokens": 5.0, "total_tokens": 12.0}
	if !reflect.DeepEqual(body["usage"], wantUsage) {
		t.Errorf("usage %v, want %v", body["usage"], wantUsage)
	}
}

func TestMaxTokens(t *testing.T) {
	url := start(t, fakemodel.Config{Model: "m", Version: "1"})
	long := strings.Repeat("word ", 40)
	for _, tc := range []struct {
		name, path, body, text, finish string
		tokens                         float64
	}{
		{"default 16", "/v1/completions", `{"model":"m","prompt":"` + long + `"}`,
			"fake m v1:" + strings.Repeat(" word", 13), "length", 16},
		{"max_tokens 2", "/v1/completions", `{"model":"m","prompt":"a b c","max_tokens":2}`, "fake m", "length", 2},
		{"exactly enough", "/v1/completions", `{"model":"m","prompt":"a b","max_tokens":5}`, "fake m v1: a b", "stop", 5},
		{"chat max_tokens", "/v1/chat/completions", `{"model":"m","messages":[{"role":"user","content":"a b c"}],"max_tokens":4}`,
			"fake m v1: a", "length", 4},
		{"max_completion_tokens wins", "/v1/chat/completions", `{"model":"m","messages":[{"role":"user","content":"a b c"}],"max_tokens":4,"max_completion_tokens":1}`,
			"fake", "length", 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := call(t, "POST", url+tc.path, tc.body)
			if resp.StatusCode != 200 {
				t.Fatalf("%d %v", resp.StatusCode, body)
			}
			text := get(t, body, "choices", 0, "text")
			if strings.Contains(tc.path, "chat") {
				text = get(t, body, "choices", 0, "message", "content")
			}
			if text != tc.text || get(t, body, "choices", 0, "finish_reason") != tc.finish ||
				get(t, body, "usage", "completion_tokens") != tc.tokens {
				t.Errorf("got %q %v %v, want %q %s %v", text, get(t, body, "choices", 0, "finish_reason"),
					get(t, body, "usage", "completion_tokens"), tc.text, tc.finish, tc.tokens)
			}
		})
	}
}

// sse posts body and returns the data of every Server-Sent Event, in order.
func sse(t *testing.T, url, body string) (*http.Response, []string) {
	t.Helper()
	resp, err := http.Post(url, "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var events []string
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if line == "" {
			continue
		}
		data, ok := strings.CutPrefix(line, "data: ")
		if !ok {
			t.Fatalf("line %q is not a data line", line)
		}
		events = append(events, data)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return resp, events
}

func TestStreaming(t *testing.T) {
	url := start(t, fakemodel.Config{Model: "m", Version: "7", GPUs: []string{"GPU-x"}})
	for _, tc := range []struct {
		name, path, request, object string
		textPath                    []any
	}{
		{"completions", "/v1/completions", `{"model":"m","prompt":"one two three","max_tokens":5`, "text_completion", []any{"text"}},
		{"chat", "/v1/chat/completions", `{"model":"m","messages":[{"role":"user","content":"one two three"}],"max_tokens":5`, "chat.completion.chunk", []any{"delta", "content"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, whole := call(t, "POST", url+tc.path, tc.request+"}")
			resp, events := sse(t, url+tc.path, tc.request+`,"stream":true,"stream_options":{"include_usage":true}}`)
			if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
				t.Fatalf("%d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
			}
			checkHeaders(t, resp, "7", "GPU-x")
			if len(events) < 3 || events[len(events)-1] != "[DONE]" {
				t.Fatalf("events %q do not end with [DONE]", events)
			}
			var text, finish strings.Builder
			var tokens int
			var usage any
			for i, e := range events[:len(events)-1] {
				var c map[string]any
				if err := json.Unmarshal([]byte(e), &c); err != nil {
					t.Fatalf("event %d %q: %v", i, e, err)
				}
				if c["object"] != tc.object || c["model"] != "m" || c["id"] != events0ID(t, events) {
					t.Errorf("chunk %d envelope %v", i, c)
				}
				if u, ok := c["usage"]; ok {
					usage = u
					if len(c["choices"].([]any)) != 0 {
						t.Errorf("usage chunk has choices: %v", c)
					}
					continue
				}
				choice := get(t, c, "choices", 0)
				if s, _ := get(t, choice, tc.textPath...).(string); s != "" {
					text.WriteString(s)
					tokens++
				}
				if f, ok := get(t, choice, "finish_reason").(string); ok {
					finish.WriteString(f)
				}
			}
			wantText := get(t, whole, "choices", 0, "text")
			if tc.name == "chat" {
				wantText = get(t, whole, "choices", 0, "message", "content")
			}
			if text.String() != wantText || wantText != "fake m v7: one two" {
				t.Errorf("streamed %q, unstreamed %q", text.String(), wantText)
			}
			if tokens != 5 {
				t.Errorf("%d token chunks, want one per token (5)", tokens)
			}
			if finish.String() != "length" {
				t.Errorf("finish reasons %q, want one \"length\"", finish.String())
			}
			if !reflect.DeepEqual(usage, whole["usage"]) {
				t.Errorf("streamed usage %v, unstreamed %v", usage, whole["usage"])
			}
		})
	}
	// Without include_usage no chunk carries usage.
	_, events := sse(t, url+"/v1/completions", `{"model":"m","prompt":"x","stream":true}`)
	for _, e := range events {
		if strings.Contains(e, `"usage"`) {
			t.Errorf("chunk %s has usage", e)
		}
	}
}

func events0ID(t *testing.T, events []string) any {
	t.Helper()
	var c map[string]any
	if err := json.Unmarshal([]byte(events[0]), &c); err != nil {
		t.Fatal(err)
	}
	return c["id"]
}

// A streamed token reaches the client before the next one is generated: with
// an hour between tokens the first token still arrives.
func TestStreamFlushesEachToken(t *testing.T) {
	url := start(t, fakemodel.Config{Model: "m", Version: "1", TokenLatency: time.Hour})
	// The deadline only keeps a broken flush from hanging the test run.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "POST", url+"/v1/chat/completions",
		strings.NewReader(`{"model":"m","messages":[{"role":"user","content":"a b c"}],"stream":true}`))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	r := bufio.NewReader(resp.Body)
	var got []string
	for len(got) < 2 { // the role chunk, then the first token
		line, err := r.ReadString('\n')
		if err != nil {
			t.Fatalf("after %q: %v", got, err)
		}
		if d, ok := strings.CutPrefix(strings.TrimSpace(line), "data: "); ok {
			got = append(got, d)
		}
	}
	if !strings.Contains(got[0], `"role":"assistant"`) || !strings.Contains(got[1], `"content":"fake"`) {
		t.Errorf("first chunks %q", got)
	}
	// Cancelling frees the handler; the server's Close in Cleanup would
	// otherwise wait an hour.
}

func TestBadRequests(t *testing.T) {
	url := start(t, fakemodel.Config{Model: "m", Version: "2", ErrorRate: 1, GPUs: []string{"g"}})
	for _, tc := range []struct {
		name, path, body string
		status           int
		param            any // nil for JSON null
	}{
		{"bad JSON", "/v1/completions", `{"model":`, 400, nil},
		{"empty body", "/v1/chat/completions", ``, 400, nil},
		{"missing model", "/v1/completions", `{"prompt":"hi"}`, 400, "model"},
		{"missing prompt", "/v1/completions", `{"model":"m"}`, 400, "prompt"},
		{"empty prompt", "/v1/completions", `{"model":"m","prompt":" "}`, 400, "prompt"},
		{"token prompt", "/v1/completions", `{"model":"m","prompt":[1,2]}`, 400, "prompt"},
		{"empty prompt in array", "/v1/completions", `{"model":"m","prompt":["a",""]}`, 400, "prompt[1]"},
		{"missing messages", "/v1/chat/completions", `{"model":"m"}`, 400, "messages"},
		{"message without role", "/v1/chat/completions", `{"model":"m","messages":[{"role":"user","content":"a"},{"content":"b"}]}`, 400, "messages[1].role"},
		{"content of the wrong type", "/v1/chat/completions", `{"model":"m","messages":[{"role":"user","content":5}]}`, 400, "messages[0].content"},
		{"max_tokens zero", "/v1/completions", `{"model":"m","prompt":"a","max_tokens":0}`, 400, "max_tokens"},
		{"max_tokens a string", "/v1/completions", `{"model":"m","prompt":"a","max_tokens":"ten"}`, 400, "max_tokens"},
		{"max_completion_tokens negative", "/v1/chat/completions", `{"model":"m","messages":[{"role":"user","content":"a"}],"max_completion_tokens":-1}`, 400, "max_completion_tokens"},
		{"stream not a boolean", "/v1/chat/completions", `{"model":"m","messages":[],"stream":"yes"}`, 400, "stream"},
		{"another model", "/v1/chat/completions", `{"model":"gpt-4","messages":[{"role":"user","content":"a"}]}`, 404, "model"},
		// Valid requests meet the error rate of 1.
		{"injected error", "/v1/completions", `{"model":"m","prompt":"a"}`, 500, nil},
		{"injected error, streamed", "/v1/chat/completions", `{"model":"m","messages":[{"role":"user","content":"a"}],"stream":true}`, 500, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := call(t, "POST", url+tc.path, tc.body)
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d, want %d: %v", resp.StatusCode, tc.status, body)
			}
			checkHeaders(t, resp, "2", "g")
			e, ok := body["error"].(map[string]any)
			if !ok {
				t.Fatalf("no error object: %v", body)
			}
			for _, k := range []string{"message", "type", "param", "code"} {
				if _, ok := e[k]; !ok {
					t.Errorf("error lacks %q: %v", k, e)
				}
			}
			if msg, _ := e["message"].(string); msg == "" || strings.Contains(msg, "fakemodel.") {
				t.Errorf("message %q", msg)
			}
			if e["param"] != tc.param {
				t.Errorf("param %v, want %v", e["param"], tc.param)
			}
			wantType := map[int]string{400: "invalid_request_error", 404: "not_found_error", 500: "server_error"}[tc.status]
			if e["type"] != wantType {
				t.Errorf("type %v, want %s", e["type"], wantType)
			}
		})
	}
}

func TestAnyModelWhenNoneConfigured(t *testing.T) {
	url := start(t, fakemodel.Config{Version: "1"})
	_, body := call(t, "POST", url+"/v1/completions", `{"model":"whatever","prompt":"x"}`)
	if body["model"] != "whatever" || get(t, body, "choices", 0, "text") != "fake whatever v1: x" {
		t.Errorf("%v", body)
	}
}

// faultCounters reads GET /admin/faults.
func faultsOf(t *testing.T, url string) fakemodel.Faults {
	t.Helper()
	resp, err := http.Get(url + "/admin/faults")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var f fakemodel.Faults
	if err := json.NewDecoder(resp.Body).Decode(&f); err != nil {
		t.Fatal(err)
	}
	return f
}

func TestErrorRateIsSeeded(t *testing.T) {
	outcomes := func(seed uint64) string {
		url := start(t, fakemodel.Config{Model: "m", Version: "1", ErrorRate: 0.5, Seed: seed})
		var b strings.Builder
		for range 64 {
			resp, _ := call(t, "POST", url+"/v1/completions", `{"model":"m","prompt":"x"}`)
			b.WriteByte("ok"[min(resp.StatusCode/500, 1)]) // 'o' for 200, 'k' for 500
		}
		f := faultsOf(t, url)
		if f.Requests != 64 || int(f.InjectedErrors) != strings.Count(b.String(), "k") {
			t.Errorf("counters %+v for %s", f, b.String())
		}
		// Health never fails by the error rate.
		if resp, _ := call(t, "GET", url+"/health", ""); resp.StatusCode != 200 {
			t.Errorf("health %d", resp.StatusCode)
		}
		return b.String()
	}
	a, b := outcomes(42), outcomes(42)
	if a != b {
		t.Errorf("same seed, different faults:\n%s\n%s", a, b)
	}
	if n := strings.Count(a, "k"); n < 16 || n > 48 {
		t.Errorf("%d of 64 failed at an error rate of 0.5: %s", n, a)
	}
}

func TestFaultSwitch(t *testing.T) {
	url := start(t, fakemodel.Config{Model: "m", Version: "1"})
	ok := `{"model":"m","prompt":"x"}`
	if resp, _ := call(t, "POST", url+"/v1/completions", ok); resp.StatusCode != 200 {
		t.Fatalf("before faults: %d", resp.StatusCode)
	}
	want := fakemodel.Faults{ErrorRate: 0, Latency: "0s", TokenLatency: "0s", Healthy: true, Requests: 1}
	if f := faultsOf(t, url); f != want {
		t.Errorf("faults %+v, want %+v", f, want)
	}

	resp, body := call(t, "POST", url+"/admin/faults", `{"error_rate":1,"healthy":false}`)
	if resp.StatusCode != 200 || body["error_rate"] != 1.0 || body["healthy"] != false || body["latency"] != "0s" {
		t.Fatalf("patch: %d %v", resp.StatusCode, body)
	}
	if resp, _ := call(t, "POST", url+"/v1/completions", ok); resp.StatusCode != 500 {
		t.Errorf("with error rate 1: %d", resp.StatusCode)
	}
	if resp, body := call(t, "GET", url+"/health", ""); resp.StatusCode != 503 || body["status"] != "unhealthy" || body["version"] != "1" {
		t.Errorf("unhealthy health: %d %v", resp.StatusCode, body)
	}

	call(t, "POST", url+"/admin/faults", `{"error_rate":0,"healthy":true}`)
	if resp, _ := call(t, "POST", url+"/v1/completions", ok); resp.StatusCode != 200 {
		t.Errorf("after clearing: %d", resp.StatusCode)
	}
	if resp, _ := call(t, "GET", url+"/health", ""); resp.StatusCode != 200 {
		t.Errorf("healthy again: %d", resp.StatusCode)
	}

	for _, tc := range []struct{ body, param string }{
		{`{"error_rate":1.5}`, "error_rate"},
		{`{"latency":"soon"}`, "latency"},
		{`{"token_latency":"-1ms"}`, "token_latency"},
		{`{"healthy":"no"}`, "healthy"},
	} {
		resp, body := call(t, "POST", url+"/admin/faults", tc.body)
		if resp.StatusCode != 400 || get(t, body, "error", "param") != tc.param {
			t.Errorf("%s: %d %v", tc.body, resp.StatusCode, body)
		}
	}
	if f := faultsOf(t, url); f.ErrorRate != 0 || f.Latency != "0s" || f.TokenLatency != "0s" || !f.Healthy {
		t.Errorf("a rejected patch changed the faults: %+v", f)
	}

	// Latency holds the answer: with an hour of it, a request with a short
	// deadline gets no answer.
	patch, _ := json.Marshal(fakemodel.FaultsPatch{Latency: ptr("1h"), TokenLatency: ptr("5ms")})
	if _, body := call(t, "POST", url+"/admin/faults", string(patch)); body["latency"] != "1h0m0s" || body["token_latency"] != "5ms" {
		t.Fatalf("latency patch: %v", body)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "POST", url+"/v1/completions", strings.NewReader(ok))
	if resp, err := http.DefaultClient.Do(req); !errors.Is(err, context.DeadlineExceeded) {
		if err == nil {
			resp.Body.Close()
		}
		t.Errorf("with an hour of latency: %v, want the deadline to pass", err)
	}
}

func ptr[T any](v T) *T { return &v }

func TestGPUsFromEnvironment(t *testing.T) {
	env := func(m map[string]string) func(string) string { return func(k string) string { return m[k] } }
	for _, tc := range []struct {
		name string
		cfg  fakemodel.Config
		want []any
	}{
		{"CUDA_VISIBLE_DEVICES", fakemodel.Config{Getenv: env(map[string]string{"CUDA_VISIBLE_DEVICES": "GPU-1, GPU-2", "NVIDIA_VISIBLE_DEVICES": "GPU-9"})}, []any{"GPU-1", "GPU-2"}},
		{"NVIDIA_VISIBLE_DEVICES", fakemodel.Config{Getenv: env(map[string]string{"NVIDIA_VISIBLE_DEVICES": "GPU-9"})}, []any{"GPU-9"}},
		{"NVIDIA all", fakemodel.Config{Getenv: env(map[string]string{"NVIDIA_VISIBLE_DEVICES": "all"})}, []any{}},
		{"none", fakemodel.Config{Getenv: env(nil)}, []any{}},
		{"configured wins", fakemodel.Config{GPUs: []string{"MIG-1"}, Getenv: env(map[string]string{"CUDA_VISIBLE_DEVICES": "GPU-1"})}, []any{"MIG-1"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.cfg.Version = "1"
			url := start(t, tc.cfg)
			resp, body := call(t, "GET", url+"/health", "")
			if !reflect.DeepEqual(body["gpus"], tc.want) {
				t.Errorf("gpus %v, want %v", body["gpus"], tc.want)
			}
			var want []string
			for _, g := range tc.want {
				want = append(want, g.(string))
			}
			checkHeaders(t, resp, "1", strings.Join(want, ","))
		})
	}
	t.Run("process environment", func(t *testing.T) {
		t.Setenv("CUDA_VISIBLE_DEVICES", "GPU-env")
		srv := httptest.NewServer(fakemodel.New(fakemodel.Config{Version: "1"}))
		defer srv.Close()
		resp, body := call(t, "GET", srv.URL+"/v1/models", "")
		if got := get(t, body, "data", 0, "gpus"); !reflect.DeepEqual(got, []any{"GPU-env"}) {
			t.Errorf("gpus %v", got)
		}
		checkHeaders(t, resp, "1", "GPU-env")
	})
}

func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		cfg fakemodel.Config
		err string
	}{
		{fakemodel.Config{ErrorRate: 1}, ""},
		{fakemodel.Config{ErrorRate: 1.5}, "error rate"},
		{fakemodel.Config{ErrorRate: -0.1}, "error rate"},
		{fakemodel.Config{Latency: -time.Second}, "latency"},
		{fakemodel.Config{TokenLatency: -time.Second}, "token latency"},
	} {
		err := tc.cfg.Validate()
		if (err == nil) != (tc.err == "") || (err != nil && !strings.Contains(err.Error(), tc.err)) {
			t.Errorf("%+v: %v, want %q", tc.cfg, err, tc.err)
		}
	}
}

package fakemodel

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/atriumhq/atrium/platform/httpx"
)

// DefaultMaxTokens is how many tokens an answer may have when a request
// gives no max_tokens.
const DefaultMaxTokens = 16

// maxBodyBytes bounds a request body.
const maxBodyBytes = 1 << 20

// anyModelID is the model id /v1/models and /health report when Config.Model
// is empty and any model name is served.
const anyModelID = "fake-model"

// Config is what a fake model server serves and how it misbehaves at start.
// Latency, TokenLatency and ErrorRate are the initial faults; POST
// /admin/faults changes them while the server runs.
type Config struct {
	// Model is the model name served. Requests naming another model are
	// 404 model_not_found; empty serves any name.
	Model string
	// Version is the model version, named in every answer and in the
	// X-Model-Version header.
	Version string
	// Latency is how long each inference request waits before its first
	// token (or its error). Negative counts as zero.
	Latency time.Duration
	// TokenLatency is the wait between consecutive tokens of an answer,
	// streamed or not. Negative counts as zero.
	TokenLatency time.Duration
	// ErrorRate is the share of inference requests, 0 to 1, answered 500.
	// Values outside [0,1] are clamped.
	ErrorRate float64
	// Seed seeds the generator that draws injected errors, so a run is
	// reproducible.
	Seed uint64
	// GPUs are the replica's GPUs (UUIDs or indexes) as reported in /health,
	// /v1/models and X-Replica-GPUs. When empty they are read from
	// CUDA_VISIBLE_DEVICES, or else from NVIDIA_VISIBLE_DEVICES (unless that
	// is "all", "none" or "void").
	GPUs []string
	// Getenv reads the environment for GPUs; nil means os.Getenv.
	Getenv func(string) string
}

// Validate reports the first setting out of range: an error rate outside
// [0,1] or a negative latency. New does not require a valid Config (it
// clamps), but a command line should reject one.
func (c Config) Validate() error {
	switch {
	case c.ErrorRate < 0 || c.ErrorRate > 1:
		return fmt.Errorf("error rate %g must be between 0 and 1", c.ErrorRate)
	case c.Latency < 0:
		return fmt.Errorf("latency %s must not be negative", c.Latency)
	case c.TokenLatency < 0:
		return fmt.Errorf("token latency %s must not be negative", c.TokenLatency)
	}
	return nil
}

// Faults is the body of GET /admin/faults and of the answer to POST
// /admin/faults: the fault settings in force and the request counters.
type Faults struct {
	// ErrorRate is the share of inference requests answered 500.
	ErrorRate float64 `json:"error_rate"`
	// Latency is the wait before the first token, as a Go duration ("50ms").
	Latency string `json:"latency"`
	// TokenLatency is the wait between tokens, as a Go duration.
	TokenLatency string `json:"token_latency"`
	// Healthy is false while GET /health answers 503.
	Healthy bool `json:"healthy"`
	// Requests counts inference requests that passed validation.
	Requests uint64 `json:"requests"`
	// InjectedErrors counts the requests among them answered 500 by the
	// error rate.
	InjectedErrors uint64 `json:"injected_errors"`
}

// FaultsPatch is the body of POST /admin/faults. Every member is optional;
// an absent one leaves its setting alone. Durations are Go duration strings
// ("50ms", "0s").
type FaultsPatch struct {
	// ErrorRate sets the share of inference requests answered 500, 0 to 1.
	ErrorRate *float64 `json:"error_rate,omitempty"`
	// Latency sets the wait before the first token; not negative.
	Latency *string `json:"latency,omitempty"`
	// TokenLatency sets the wait between tokens; not negative.
	TokenLatency *string `json:"token_latency,omitempty"`
	// Healthy false makes GET /health answer 503; true restores it.
	Healthy *bool `json:"healthy,omitempty"`
}

// faults are the settings the admin endpoint changes.
type faults struct {
	errorRate    float64
	latency      time.Duration
	tokenLatency time.Duration
	healthy      bool
}

// server is the state behind the handler New returns.
type server struct {
	model     string // "" serves any model
	version   string
	gpus      []string // never nil, so it encodes as []
	gpuHeader string
	created   int64 // Unix seconds, reported by /v1/models
	seq       atomic.Uint64

	mu       sync.Mutex
	rng      *rand.Rand
	f        faults
	requests uint64
	injected uint64
}

// New returns the fake model server's handler for cfg (see the package
// documentation for its endpoints). It reads the environment once, for GPUs
// when cfg.GPUs is empty.
func New(cfg Config) http.Handler {
	s := &server{
		model:   cfg.Model,
		version: cfg.Version,
		gpus:    replicaGPUs(cfg),
		created: time.Now().Unix(),
		rng:     rand.New(rand.NewPCG(cfg.Seed, cfg.Seed^0x9e3779b97f4a7c15)),
		f: faults{
			errorRate:    min(max(cfg.ErrorRate, 0), 1),
			latency:      max(cfg.Latency, 0),
			tokenLatency: max(cfg.TokenLatency, 0),
			healthy:      true,
		},
	}
	s.gpuHeader = strings.Join(s.gpus, ",")
	mux := http.NewServeMux()
	mux.HandleFunc("GET /health", s.handleHealth)
	mux.HandleFunc("GET /v1/models", s.handleModels)
	mux.HandleFunc("POST /v1/completions", s.handleCompletions)
	mux.HandleFunc("POST /v1/chat/completions", s.handleChat)
	mux.HandleFunc("GET /admin/faults", s.handleGetFaults)
	mux.HandleFunc("POST /admin/faults", s.handlePatchFaults)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("X-Model-Version", s.version)
		h.Set("X-Replica-GPUs", s.gpuHeader)
		mux.ServeHTTP(w, r)
	})
}

// replicaGPUs returns cfg.GPUs, or the GPUs the environment makes visible.
func replicaGPUs(cfg Config) []string {
	gpus := splitGPUs(strings.Join(cfg.GPUs, ","))
	if len(gpus) > 0 {
		return gpus
	}
	getenv := cfg.Getenv
	if getenv == nil {
		getenv = os.Getenv
	}
	return VisibleGPUs(getenv)
}

// VisibleGPUs returns the GPUs a process may use as its environment (read
// through getenv) names them: CUDA_VISIBLE_DEVICES, or else
// NVIDIA_VISIBLE_DEVICES unless that is "all", "none" or "void". Entries
// are UUIDs or indexes, comma separated; the result is never nil.
func VisibleGPUs(getenv func(string) string) []string {
	if gpus := splitGPUs(getenv("CUDA_VISIBLE_DEVICES")); len(gpus) > 0 {
		return gpus
	}
	list := getenv("NVIDIA_VISIBLE_DEVICES")
	switch strings.TrimSpace(list) {
	case "all", "none", "void":
		list = ""
	}
	return splitGPUs(list)
}

// splitGPUs splits a comma-separated GPU list, dropping blanks.
func splitGPUs(list string) []string {
	gpus := []string{}
	for _, g := range strings.Split(list, ",") {
		if g = strings.TrimSpace(g); g != "" {
			gpus = append(gpus, g)
		}
	}
	return gpus
}

// --- health, models, faults ---

type healthBody struct {
	Status  string   `json:"status"`
	Model   string   `json:"model"`
	Version string   `json:"version"`
	GPUs    []string `json:"gpus"`
}

func (s *server) handleHealth(w http.ResponseWriter, _ *http.Request) {
	s.mu.Lock()
	healthy := s.f.healthy
	s.mu.Unlock()
	body := healthBody{Status: "ok", Model: s.modelID(), Version: s.version, GPUs: s.gpus}
	status := http.StatusOK
	if !healthy {
		body.Status, status = "unhealthy", http.StatusServiceUnavailable
	}
	writeJSON(w, status, body)
}

// modelID is the model id the server reports when no request names one.
func (s *server) modelID() string {
	if s.model == "" {
		return anyModelID
	}
	return s.model
}

type modelEntry struct {
	ID      string   `json:"id"`
	Object  string   `json:"object"`
	Created int64    `json:"created"`
	OwnedBy string   `json:"owned_by"`
	Version string   `json:"version"`
	GPUs    []string `json:"gpus"`
}

type modelList struct {
	Object string       `json:"object"`
	Data   []modelEntry `json:"data"`
}

func (s *server) handleModels(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, modelList{Object: "list", Data: []modelEntry{{
		ID: s.modelID(), Object: "model", Created: s.created, OwnedBy: "atrium",
		Version: s.version, GPUs: s.gpus,
	}}})
}

func (s *server) faultsView() Faults {
	s.mu.Lock()
	defer s.mu.Unlock()
	return Faults{
		ErrorRate: s.f.errorRate, Latency: s.f.latency.String(), TokenLatency: s.f.tokenLatency.String(),
		Healthy: s.f.healthy, Requests: s.requests, InjectedErrors: s.injected,
	}
}

func (s *server) handleGetFaults(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, s.faultsView())
}

func (s *server) handlePatchFaults(w http.ResponseWriter, r *http.Request) {
	var p FaultsPatch
	if !decode(w, r, &p) {
		return
	}
	s.mu.Lock()
	f := s.f
	s.mu.Unlock()
	if p.ErrorRate != nil {
		if *p.ErrorRate < 0 || *p.ErrorRate > 1 {
			writeError(w, http.StatusBadRequest, "error_rate must be between 0 and 1", "error_rate", "invalid_value")
			return
		}
		f.errorRate = *p.ErrorRate
	}
	for _, d := range []struct {
		name string
		in   *string
		out  *time.Duration
	}{{"latency", p.Latency, &f.latency}, {"token_latency", p.TokenLatency, &f.tokenLatency}} {
		if d.in == nil {
			continue
		}
		v, err := time.ParseDuration(*d.in)
		if err != nil || v < 0 {
			writeError(w, http.StatusBadRequest, d.name+` must be a non-negative Go duration such as "50ms"`, d.name, "invalid_value")
			return
		}
		*d.out = v
	}
	if p.Healthy != nil {
		f.healthy = *p.Healthy
	}
	s.mu.Lock()
	s.f = f
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, s.faultsView())
}

// --- inference ---

type streamOptions struct {
	IncludeUsage bool `json:"include_usage"`
}

type completionRequest struct {
	Model         string          `json:"model"`
	Prompt        json.RawMessage `json:"prompt"`
	MaxTokens     *int            `json:"max_tokens"`
	Stream        bool            `json:"stream"`
	StreamOptions *streamOptions  `json:"stream_options"`
}

type chatMessage struct {
	Role    string          `json:"role"`
	Content json.RawMessage `json:"content"`
}

type chatRequest struct {
	Model               string         `json:"model"`
	Messages            []chatMessage  `json:"messages"`
	MaxTokens           *int           `json:"max_tokens"`
	MaxCompletionTokens *int           `json:"max_completion_tokens"`
	Stream              bool           `json:"stream"`
	StreamOptions       *streamOptions `json:"stream_options"`
}

// apiKind is which of the two OpenAI inference APIs a request came to.
type apiKind int

const (
	kindCompletion apiKind = iota
	kindChat
)

// job is a validated inference request: what to answer and how.
type job struct {
	kind         apiKind
	model        string     // as named in responses
	answers      [][]string // tokens of each choice, already cut to max tokens
	finish       []string   // finish reason of each choice
	promptTokens int
	stream       bool
	includeUsage bool
}

// usage is OpenAI's token accounting.
type usage struct {
	PromptTokens     int `json:"prompt_tokens"`
	CompletionTokens int `json:"completion_tokens"`
	TotalTokens      int `json:"total_tokens"`
}

func (j *job) usage() usage {
	u := usage{PromptTokens: j.promptTokens}
	for _, a := range j.answers {
		u.CompletionTokens += len(a)
	}
	u.TotalTokens = u.PromptTokens + u.CompletionTokens
	return u
}

func (s *server) handleCompletions(w http.ResponseWriter, r *http.Request) {
	var req completionRequest
	if !decode(w, r, &req) {
		return
	}
	model, ok := s.checkModel(w, req.Model)
	if !ok {
		return
	}
	prompts, ok := parsePrompt(w, req.Prompt)
	if !ok {
		return
	}
	maxTokens, ok := maxTokensOf(w, "max_tokens", req.MaxTokens)
	if !ok {
		return
	}
	j := &job{kind: kindCompletion, model: model, stream: req.Stream,
		includeUsage: req.StreamOptions != nil && req.StreamOptions.IncludeUsage}
	for _, p := range prompts {
		words := strings.Fields(p)
		j.promptTokens += len(words)
		s.addAnswer(j, model, words, maxTokens)
	}
	s.serve(w, r, j)
}

func (s *server) handleChat(w http.ResponseWriter, r *http.Request) {
	var req chatRequest
	if !decode(w, r, &req) {
		return
	}
	model, ok := s.checkModel(w, req.Model)
	if !ok {
		return
	}
	if len(req.Messages) == 0 {
		writeError(w, http.StatusBadRequest, "messages is required and must not be empty", "messages", "missing_required_parameter")
		return
	}
	var words, last []string
	for i, m := range req.Messages {
		if m.Role == "" {
			writeError(w, http.StatusBadRequest, "every message needs a role", fmt.Sprintf("messages[%d].role", i), "missing_required_parameter")
			return
		}
		text, ok := messageText(m.Content)
		if !ok {
			writeError(w, http.StatusBadRequest, "content must be a string, null or an array of content parts",
				fmt.Sprintf("messages[%d].content", i), "invalid_type")
			return
		}
		f := strings.Fields(text)
		words = append(words, f...)
		if m.Role == "user" {
			last = f
		}
	}
	limit := req.MaxTokens
	param := "max_tokens"
	if req.MaxCompletionTokens != nil {
		limit, param = req.MaxCompletionTokens, "max_completion_tokens"
	}
	maxTokens, ok := maxTokensOf(w, param, limit)
	if !ok {
		return
	}
	// The answer echoes the last user message (the whole conversation when
	// there is none); the prompt counts every message.
	if last == nil {
		last = words
	}
	j := &job{kind: kindChat, model: model, promptTokens: len(words), stream: req.Stream,
		includeUsage: req.StreamOptions != nil && req.StreamOptions.IncludeUsage}
	s.addAnswer(j, model, last, maxTokens)
	s.serve(w, r, j)
}

// checkModel returns the model name to answer with, or writes 400 (none
// named) or 404 (another model) and returns false.
func (s *server) checkModel(w http.ResponseWriter, model string) (string, bool) {
	switch {
	case model == "":
		writeError(w, http.StatusBadRequest, "model is required", "model", "missing_required_parameter")
		return "", false
	case s.model != "" && model != s.model:
		writeError(w, http.StatusNotFound, fmt.Sprintf("the model %q does not exist; this server serves %q", model, s.model), "model", "model_not_found")
		return "", false
	}
	return model, true
}

// parsePrompt accepts a non-empty string or a non-empty array of non-empty
// strings (one choice each).
func parsePrompt(w http.ResponseWriter, raw json.RawMessage) ([]string, bool) {
	if len(raw) == 0 || string(raw) == "null" {
		writeError(w, http.StatusBadRequest, "prompt is required", "prompt", "missing_required_parameter")
		return nil, false
	}
	var one string
	if err := json.Unmarshal(raw, &one); err == nil {
		if strings.TrimSpace(one) == "" {
			writeError(w, http.StatusBadRequest, "prompt must not be empty", "prompt", "missing_required_parameter")
			return nil, false
		}
		return []string{one}, true
	}
	var many []string
	if err := json.Unmarshal(raw, &many); err != nil || len(many) == 0 {
		writeError(w, http.StatusBadRequest, "prompt must be a string or a non-empty array of strings", "prompt", "invalid_type")
		return nil, false
	}
	for i, p := range many {
		if strings.TrimSpace(p) == "" {
			writeError(w, http.StatusBadRequest, "prompt must not be empty", fmt.Sprintf("prompt[%d]", i), "missing_required_parameter")
			return nil, false
		}
	}
	return many, true
}

// messageText returns a chat message's text: a string, null, or the text
// parts of an array of content parts (other parts, such as images, add no
// text).
func messageText(raw json.RawMessage) (string, bool) {
	if len(raw) == 0 || string(raw) == "null" {
		return "", true
	}
	var s string
	if err := json.Unmarshal(raw, &s); err == nil {
		return s, true
	}
	var parts []struct {
		Type string `json:"type"`
		Text string `json:"text"`
	}
	if err := json.Unmarshal(raw, &parts); err != nil {
		return "", false
	}
	var b strings.Builder
	for _, p := range parts {
		if p.Type == "text" {
			b.WriteString(p.Text)
			b.WriteByte(' ')
		}
	}
	return b.String(), true
}

// maxTokensOf returns the token limit (DefaultMaxTokens when absent), or
// writes 400 for a limit below 1.
func maxTokensOf(w http.ResponseWriter, param string, n *int) (int, bool) {
	if n == nil {
		return DefaultMaxTokens, true
	}
	if *n < 1 {
		writeError(w, http.StatusBadRequest, param+" must be at least 1", param, "invalid_value")
		return 0, false
	}
	return *n, true
}

// addAnswer appends to j the answer to words: "fake <model> v<version>:" and the
// words, cut to maxTokens.
func (s *server) addAnswer(j *job, model string, words []string, maxTokens int) {
	full := make([]string, 0, 3+len(words))
	full = append(full, "fake", model, "v"+s.version+":")
	full = append(full, words...)
	finish := "stop"
	if len(full) > maxTokens {
		full, finish = full[:maxTokens], "length"
	}
	j.answers = append(j.answers, full)
	j.finish = append(j.finish, finish)
}

// serve applies the faults to a validated job and writes its answer.
func (s *server) serve(w http.ResponseWriter, r *http.Request, j *job) {
	s.mu.Lock()
	f := s.f
	s.requests++
	fail := f.errorRate > 0 && s.rng.Float64() < f.errorRate
	if fail {
		s.injected++
	}
	s.mu.Unlock()

	ctx := r.Context()
	if !sleep(ctx, f.latency) {
		return
	}
	if fail {
		writeError(w, http.StatusInternalServerError, "the fake model failed this request (injected fault)", "", "injected_fault")
		return
	}
	id, created := s.newID(j.kind), time.Now().Unix()
	if j.stream {
		s.stream(w, r, j, f.tokenLatency, id, created)
		return
	}
	var tokens int
	for _, a := range j.answers {
		tokens += len(a)
	}
	if tokens > 1 && !sleep(ctx, time.Duration(tokens-1)*f.tokenLatency) {
		return
	}
	switch j.kind {
	case kindCompletion:
		resp := completionResponse{ID: id, Object: "text_completion", Created: created, Model: j.model, Usage: ptr(j.usage())}
		for i, a := range j.answers {
			resp.Choices = append(resp.Choices, completionChoice{Index: i, Text: strings.Join(a, " "), FinishReason: &j.finish[i]})
		}
		writeJSON(w, http.StatusOK, resp)
	case kindChat:
		resp := chatResponse{ID: id, Object: "chat.completion", Created: created, Model: j.model, Usage: ptr(j.usage())}
		for i, a := range j.answers {
			resp.Choices = append(resp.Choices, chatChoice{Index: i, Message: &chatDelta{Role: "assistant", Content: ptr(strings.Join(a, " "))}, FinishReason: &j.finish[i]})
		}
		writeJSON(w, http.StatusOK, resp)
	}
}

// stream writes the job's answer as Server-Sent Events, one flushed chunk
// per token with tokenLatency between tokens, then a chunk with the finish
// reason, the usage chunk if asked for, and [DONE].
func (s *server) stream(w http.ResponseWriter, r *http.Request, j *job, tokenLatency time.Duration, id string, created int64) {
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	send := func(v any) bool {
		b, err := json.Marshal(v)
		if err != nil {
			return false
		}
		if _, err := fmt.Fprintf(w, "data: %s\n\n", b); err != nil {
			return false
		}
		return rc.Flush() == nil
	}
	chunk := func(index int, text *string, role string, finish *string) any {
		if j.kind == kindCompletion {
			t := ""
			if text != nil {
				t = *text
			}
			return completionResponse{ID: id, Object: "text_completion", Created: created, Model: j.model,
				Choices: []completionChoice{{Index: index, Text: t, FinishReason: finish}}}
		}
		return chatResponse{ID: id, Object: "chat.completion.chunk", Created: created, Model: j.model,
			Choices: []chatChoice{{Index: index, Delta: &chatDelta{Role: role, Content: text}, FinishReason: finish}}}
	}
	ctx := r.Context()
	first := true
	for i, answer := range j.answers {
		if j.kind == kindChat && !send(chunk(i, ptr(""), "assistant", nil)) {
			return
		}
		for k, tok := range answer {
			if !first && !sleep(ctx, tokenLatency) {
				return
			}
			first = false
			if k > 0 {
				tok = " " + tok
			}
			if !send(chunk(i, &tok, "", nil)) {
				return
			}
		}
		if !send(chunk(i, nil, "", &j.finish[i])) {
			return
		}
	}
	if j.includeUsage {
		u := ptr(j.usage())
		var last any
		if j.kind == kindCompletion {
			last = completionResponse{ID: id, Object: "text_completion", Created: created, Model: j.model, Choices: []completionChoice{}, Usage: u}
		} else {
			last = chatResponse{ID: id, Object: "chat.completion.chunk", Created: created, Model: j.model, Choices: []chatChoice{}, Usage: u}
		}
		if !send(last) {
			return
		}
	}
	if _, err := io.WriteString(w, "data: [DONE]\n\n"); err == nil {
		_ = rc.Flush()
	}
}

func (s *server) newID(k apiKind) string {
	n := s.seq.Add(1)
	if k == kindChat {
		return fmt.Sprintf("chatcmpl-fake-%d", n)
	}
	return fmt.Sprintf("cmpl-fake-%d", n)
}

// completionResponse is a /v1/completions answer or stream chunk (chunks
// leave Usage out).
type completionResponse struct {
	ID      string             `json:"id"`
	Object  string             `json:"object"`
	Created int64              `json:"created"`
	Model   string             `json:"model"`
	Choices []completionChoice `json:"choices"`
	Usage   *usage             `json:"usage,omitempty"`
}

type completionChoice struct {
	Index        int     `json:"index"`
	Text         string  `json:"text"`
	Logprobs     any     `json:"logprobs"`
	FinishReason *string `json:"finish_reason"`
}

// chatResponse is a /v1/chat/completions answer or stream chunk.
type chatResponse struct {
	ID      string       `json:"id"`
	Object  string       `json:"object"`
	Created int64        `json:"created"`
	Model   string       `json:"model"`
	Choices []chatChoice `json:"choices"`
	Usage   *usage       `json:"usage,omitempty"`
}

type chatChoice struct {
	Index        int        `json:"index"`
	Message      *chatDelta `json:"message,omitempty"`
	Delta        *chatDelta `json:"delta,omitempty"`
	Logprobs     any        `json:"logprobs"`
	FinishReason *string    `json:"finish_reason"`
}

type chatDelta struct {
	Role    string  `json:"role,omitempty"`
	Content *string `json:"content,omitempty"`
}

func ptr[T any](v T) *T { return &v }

// sleep waits d, or until ctx ends; it reports whether the full wait passed.
func sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// --- wire helpers ---

// apiError is OpenAI's error body.
type apiError struct {
	Error apiErrorDetail `json:"error"`
}

type apiErrorDetail struct {
	Message string  `json:"message"`
	Type    string  `json:"type"`
	Param   *string `json:"param"`
	Code    *string `json:"code"`
}

// writeError writes an error in OpenAI's format. param and code may be
// empty (null). The type follows the status: server_error for 5xx,
// not_found_error for 404, invalid_request_error otherwise.
func writeError(w http.ResponseWriter, status int, msg, param, code string) {
	d := apiErrorDetail{Message: msg, Type: "invalid_request_error"}
	switch {
	case status >= 500:
		d.Type = "server_error"
	case status == http.StatusNotFound:
		d.Type = "not_found_error"
	}
	if param != "" {
		d.Param = &param
	}
	if code != "" {
		d.Code = &code
	}
	writeJSON(w, status, apiError{Error: d})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// decode reads a JSON body into v, or writes 400 (naming the member of the
// wrong type as param where there is one) and returns false.
func decode(w http.ResponseWriter, r *http.Request, v any) bool {
	err := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxBodyBytes)).Decode(v)
	if err == nil {
		return true
	}
	var typeErr *json.UnmarshalTypeError
	var tooBig *http.MaxBytesError
	switch {
	case errors.As(err, &typeErr) && typeErr.Field != "":
		writeError(w, http.StatusBadRequest, fmt.Sprintf("%s must be %s", typeErr.Field, httpx.JSONKind(typeErr.Type)), typeErr.Field, "invalid_type")
	case errors.As(err, &tooBig):
		writeError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("the request body exceeds %d bytes", maxBodyBytes), "", "request_too_large")
	case errors.Is(err, io.EOF):
		writeError(w, http.StatusBadRequest, "the request body is empty; a JSON object is required", "", "invalid_json")
	default:
		writeError(w, http.StatusBadRequest, "the request body is not valid JSON: "+err.Error(), "", "invalid_json")
	}
	return false
}

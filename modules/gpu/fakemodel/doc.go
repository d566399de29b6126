// Package fakemodel is a small OpenAI-compatible model server that needs no
// GPU: `atrium fake-model` serves it so that `make run`, the end-to-end tests
// and load runs send real inference requests to real replica processes. The
// GPU scheduler starts it as a model version's command, for example
// `atrium fake-model --port {port} --model {model} --version {version}`.
//
// Endpoints (JSON bodies; errors are OpenAI's
// {"error":{"message","type","param","code"}}):
//
//	GET  /health               200 {"status":"ok","model","version","gpus"}; 503 while unhealthy
//	GET  /v1/models            OpenAI model list with one model, plus version and gpus
//	POST /v1/completions       OpenAI completions, streamed as Server-Sent Events with "stream": true
//	POST /v1/chat/completions  OpenAI chat completions, streamed likewise
//	GET  /admin/faults         the current fault settings and request counters
//	POST /admin/faults         change error rate, latency, token latency or health at run time
//
// Invariants:
//
//   - Every response, errors included, carries X-Model-Version (the version)
//     and X-Replica-GPUs (the replica's GPUs, comma separated), so a caller
//     can tell which replica of which version answered.
//   - The answer is a pure function of the model, the version and the
//     prompt: "fake <model> v<version>:" followed by the prompt's words (for
//     a chat, the last user message's words), cut to max_tokens (default
//     16; max_completion_tokens wins for a chat). A token is a
//     whitespace-separated word; prompt_tokens counts the words of the
//     prompt (every message of a chat), completion_tokens those of the
//     answer, and total_tokens is their sum. finish_reason is "length" when
//     the limit cut the answer and "stop" otherwise. A completions prompt
//     that is an array of strings gets one choice per string.
//   - A streamed answer is the same answer: its chunks' texts concatenate to
//     the unstreamed text, one chunk per token, each flushed as it is
//     written, then a chunk with the finish reason, an optional usage chunk
//     (stream_options.include_usage) and "data: [DONE]".
//   - An inference request waits the latency, then one token latency between
//     consecutive tokens, streamed or not; it stops waiting when the client
//     goes away.
//   - With an error rate, that share of inference requests (drawn from a
//     generator seeded by Config.Seed) is answered 500 after the latency,
//     in OpenAI's error format. Health, model list and admin endpoints
//     never fail this way.
//   - A request is checked before any fault is drawn: bad JSON or a missing
//     model, prompt or messages is always 400 with the offending param.
//   - When Config.Model is set, a request for another model is 404
//     model_not_found; when it is empty, any model name is served and
//     echoed back.
//
// State (faults and counters) is in memory only.
package fakemodel

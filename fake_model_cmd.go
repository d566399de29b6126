package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/atriumhq/atrium/modules/gpu/fakemodel"
)

// cmdFakeModel serves the fake OpenAI-compatible model until ctx ends. The
// GPU scheduler's replica runtime starts it as a model version's command; it
// reads only its flags and, for its GPUs, CUDA_VISIBLE_DEVICES or
// NVIDIA_VISIBLE_DEVICES.
func cmdFakeModel(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	const desc = `Serves a fake OpenAI-compatible model (GET /health, GET /v1/models, POST /v1/completions,
POST /v1/chat/completions, GET and POST /admin/faults) until SIGTERM or SIGINT, so that replicas
answer real inference requests without a GPU. Answers are deterministic: "fake <model> v<version>:"
and the prompt's words, cut to max_tokens. Its GPUs come from CUDA_VISIBLE_DEVICES (or
NVIDIA_VISIBLE_DEVICES). Listens on --addr, or on --host:--port when either is given.`
	fs := newFlags("fake-model", "fake-model [flags]", desc, stderr)
	addr := fs.String("addr", "127.0.0.1:0", "listen address (port 0 picks a free port)")
	host := fs.String("host", "127.0.0.1", "listen host, used with --port")
	port := fs.Int("port", 0, "listen port on --host (the replica runtime passes {port})")
	model := fs.String("model", "", "model name served (the runtime passes {model}); empty serves any name")
	ver := fs.String("version", "", "model version, named in answers and in X-Model-Version (the runtime passes {version})")
	latency := fs.Duration("latency", 0, "wait before each answer's first token")
	tokenLatency := fs.Duration("token-latency", 0, "wait between tokens, streamed or not")
	errorRate := fs.Float64("error-rate", 0, "share of inference requests answered 500, 0 to 1")
	grace := fs.Duration("shutdown-grace", 10*time.Second, "how long requests in flight may finish after SIGTERM before they are cut short")
	seed := fs.Uint64("seed", uint64(time.Now().UnixNano()), "random seed for injected errors")
	if err := parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usageError{fmt.Sprintf("fake-model takes no arguments, got %q", fs.Arg(0))}
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if set["addr"] && (set["host"] || set["port"]) {
		return usageError{"fake-model: give --addr or --host/--port, not both"}
	}
	if *grace < 0 {
		return usageError{"fake-model: --shutdown-grace must not be negative"}
	}
	if *port < 0 || *port > 65535 {
		return usageError{fmt.Sprintf("fake-model: --port %d is not a TCP port", *port)}
	}
	if set["host"] || set["port"] {
		*addr = net.JoinHostPort(*host, strconv.Itoa(*port))
	}
	cfg := fakemodel.Config{
		Model: *model, Version: *ver, Latency: *latency, TokenLatency: *tokenLatency,
		ErrorRate: *errorRate, Seed: *seed, GPUs: fakemodel.VisibleGPUs(os.Getenv),
	}
	if err := cfg.Validate(); err != nil {
		return usageError{"fake-model: " + err.Error()}
	}

	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return fmt.Errorf("fake-model: %w", err)
	}
	// Cancelling base ends the waits of requests still in flight when the
	// shutdown grace is over.
	base, cutShort := context.WithCancel(context.Background())
	defer cutShort()
	srv := &http.Server{
		Handler:           fakemodel.New(cfg),
		ReadHeaderTimeout: 5 * time.Second,
		BaseContext:       func(net.Listener) context.Context { return base },
	}
	fmt.Fprintf(stdout, "fake-model listening on http://%s (model %q, version %q, gpus [%s], latency %s, token latency %s, error rate %g, seed %d)\n",
		ln.Addr(), *model, *ver, strings.Join(cfg.GPUs, " "), *latency, *tokenLatency, *errorRate, *seed)

	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	select {
	case err := <-served:
		return fmt.Errorf("fake-model: %w", err)
	case <-ctx.Done():
	}
	// Requests in flight, streams included, may finish within the grace;
	// after it they are cut short, which is still a clean stop.
	sctx, cancel := context.WithTimeout(context.Background(), *grace)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		cutShort()
		_ = srv.Close() // the listener is closed already; this drops the last connections
		fmt.Fprintf(stdout, "fake-model stopped; requests still in flight after %s were cut short\n", *grace)
		return nil
	}
	fmt.Fprintln(stdout, "fake-model stopped")
	return nil
}

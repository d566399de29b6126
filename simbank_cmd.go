package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/atriumhq/atrium/modules/payment/simbank"
)

// cmdSimbank serves the simulated bank until ctx ends. It needs no
// configuration from the environment: only its flags.
func cmdSimbank(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	const desc = `Serves the simulated bank (POST /v1/charges, POST /v1/refunds, GET /v1/charges/{id},
GET /v1/ledger, GET and POST /admin/faults) until SIGTERM or SIGINT. State is in memory.
Latency is log-normal, fitted to --p50 and --p99. See docs/operations.md.`
	fs := newFlags("simbank", "simbank [flags]", desc, stderr)
	addr := fs.String("addr", "127.0.0.1:8090", "listen address")
	p50 := fs.Duration("p50", 20*time.Millisecond, "median latency")
	p99 := fs.Duration("p99", 200*time.Millisecond, "99th percentile latency (not below --p50)")
	errorRate := fs.Float64("error-rate", 0, "share of requests answered 503 unprocessed, 0 to 1")
	timeoutRate := fs.Float64("timeout-rate", 0, "share of charges and refunds processed and then held for --hang, 0 to 1")
	hang := fs.Duration("hang", 30*time.Second, "how long an injected timeout holds its answer")
	seed := fs.Uint64("seed", uint64(time.Now().UnixNano()), "random seed (latency and faults)")
	var outages []simbank.Window
	fs.Func("outage", "an outage window START+DURATION after start, e.g. 30s+10s (repeatable)", func(s string) error {
		start, dur, ok := strings.Cut(s, "+")
		st, err1 := time.ParseDuration(start)
		d, err2 := time.ParseDuration(dur)
		if !ok || err1 != nil || err2 != nil || st < 0 || d <= 0 {
			return errors.New("want START+DURATION, e.g. 30s+10s")
		}
		outages = append(outages, simbank.Window{Start: st, Duration: d})
		return nil
	})
	if err := parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usageError{fmt.Sprintf("simbank takes no arguments, got %q", fs.Arg(0))}
	}
	bank, err := simbank.New(simbank.Config{
		Faults:  simbank.Faults{P50: *p50, P99: *p99, ErrorRate: *errorRate, TimeoutRate: *timeoutRate, Hang: *hang},
		Outages: outages,
		Seed:    *seed,
	})
	if err != nil {
		return usageError{"simbank: " + err.Error()}
	}
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return fmt.Errorf("simbank: %w", err)
	}
	srv := &http.Server{Handler: bank.Handler(), ReadHeaderTimeout: 5 * time.Second}
	fmt.Fprintf(stdout, "simbank listening on http://%s (p50 %s, p99 %s, error rate %g, timeout rate %g, seed %d)\n",
		ln.Addr(), *p50, *p99, *errorRate, *timeoutRate, *seed)

	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	select {
	case err := <-served:
		return fmt.Errorf("simbank: %w", err)
	case <-ctx.Done():
	}
	bank.Close() // release held answers so shutdown does not wait for them
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		return fmt.Errorf("simbank: shutdown: %w", err)
	}
	fmt.Fprintln(stdout, "simbank stopped")
	return nil
}

package channel_test

import (
	"context"
	"fmt"
	"net"
	"net/http/httptest"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/atriumhq/atrium/modules/payment/channel"
	"github.com/atriumhq/atrium/modules/payment/simbank"
	"github.com/atriumhq/atrium/platform/errs"
)

// startBank serves a simulated bank on a real listener for the test.
func startBank(t testing.TB, f simbank.Faults) (*simbank.Bank, string) {
	t.Helper()
	b, err := simbank.New(simbank.Config{Faults: f, Seed: 42})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(b.Handler())
	t.Cleanup(func() { b.Close(); srv.Close() })
	return b, srv.URL
}

// newChannel returns a channel with short windows, adjusted by mod.
func newChannel(t testing.TB, url string, mod func(*channel.Config)) *channel.HTTP {
	t.Helper()
	cfg := channel.Config{
		Name: "sim", BaseURL: url,
		TimeoutFloor: 20 * time.Millisecond, TimeoutCeiling: 3 * time.Second, InitialTimeout: 3 * time.Second,
		BackoffMin: 5 * time.Millisecond, BackoffMax: 20 * time.Millisecond,
		BreakerMinCalls: 4, BreakerPeriod: 2 * time.Second, BreakerDelay: 200 * time.Millisecond, BreakerSuccesses: 2,
	}
	if mod != nil {
		mod(&cfg)
	}
	c, err := channel.NewHTTP(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func pay(id string, amount int64) channel.PayRequest {
	return channel.PayRequest{ID: id, Amount: amount, Currency: "EUR", Source: "tok_visa", Merchant: "m1"}
}

// charges counts the bank's ledger entries per charge id.
func charges(b *simbank.Bank) map[string]int {
	n := map[string]int{}
	for _, e := range b.Ledger().Entries {
		if e.Kind == "charge" {
			n[e.ID]++
		}
	}
	return n
}

func wantCode(t testing.TB, err error, code errs.Code) *errs.Error {
	t.Helper()
	if errs.CodeOf(err) != code {
		t.Fatalf("error %v, want code %s", err, code)
	}
	return errs.As(err)
}

func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestPayIdempotentReplay(t *testing.T) {
	b, url := startBank(t, simbank.Faults{})
	c := newChannel(t, url, nil)
	ctx := context.Background()
	first, err := c.Pay(ctx, pay("p1", 1500))
	if err != nil || first.Status != channel.StatusSucceeded || first.Amount != 1500 {
		t.Fatalf("pay: %+v %v", first, err)
	}
	again, err := c.Pay(ctx, pay("p1", 1500))
	if err != nil || again.Status != channel.StatusSucceeded {
		t.Fatalf("replay: %+v %v", again, err)
	}
	_, err = c.Pay(ctx, pay("p1", 1600))
	wantCode(t, err, errs.Conflict)

	declined, err := c.Pay(ctx, channel.PayRequest{ID: "p2", Amount: 10, Currency: "EUR", Source: "tok_decline"})
	if err != nil || declined.Status != channel.StatusFailed || declined.DeclineReason == "" {
		t.Fatalf("decline: %+v %v", declined, err)
	}
	if got := charges(b); len(got) != 1 || got["p1"] != 1 {
		t.Fatalf("bank ledger charges %v, want p1 once", got)
	}
	q, err := c.Query(ctx, "nope")
	if err != nil || q.Status != channel.StatusNotFound {
		t.Fatalf("query unknown: %+v %v", q, err)
	}
}

func TestRefundNeverAboveChargeUnderConcurrency(t *testing.T) {
	b, url := startBank(t, simbank.Faults{P50: time.Millisecond, P99: 5 * time.Millisecond})
	c := newChannel(t, url, nil)
	ctx := context.Background()
	if r, err := c.Pay(ctx, pay("c1", 1000)); err != nil || r.Status != channel.StatusSucceeded {
		t.Fatalf("pay: %+v %v", r, err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	ok, refused := 0, 0
	for i := range 25 {
		wg.Go(func() {
			r, err := c.Refund(ctx, channel.RefundRequest{ID: fmt.Sprintf("r%d", i), ChargeID: "c1", Amount: 100})
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil && r.Status == channel.StatusSucceeded:
				ok++
			case errs.CodeOf(err) == errs.Conflict:
				refused++
			default:
				t.Errorf("refund %d: %+v %v", i, r, err)
			}
		})
	}
	wg.Wait()
	if ok != 10 || refused != 15 {
		t.Errorf("%d refunds succeeded and %d were refused, want 10 and 15", ok, refused)
	}
	var total int64
	for _, e := range b.Ledger().Entries {
		if e.Kind == "refund" {
			total -= e.Amount
		}
	}
	if total != 1000 {
		t.Errorf("bank refunded %d of a 1000 charge", total)
	}
	q, err := c.Query(ctx, "c1")
	if err != nil || q.Refunded != 1000 {
		t.Errorf("query: %+v %v", q, err)
	}
	_, err = c.Refund(ctx, channel.RefundRequest{ID: "rx", ChargeID: "missing", Amount: 1})
	wantCode(t, err, errs.NotFound)
}

func TestBreakerOpensWhenBankDownAndClosesAfterRecovery(t *testing.T) {
	b, url := startBank(t, simbank.Faults{})
	c := newChannel(t, url, nil)
	ctx := context.Background()
	if err := b.SetFaults(simbank.Faults{DownUntil: time.Now().Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 20 && c.Stats().Breaker != "open"; i++ {
		_, err := c.Query(ctx, "x")
		wantCode(t, err, errs.Unavailable)
	}
	if s := c.Stats(); s.Breaker != "open" {
		t.Fatalf("breaker %s after 20 failing queries, want open", s.Breaker)
	}
	before := b.Ledger().Received["charges"]
	_, err := c.Pay(ctx, pay("while-open", 10))
	e := wantCode(t, err, errs.Unavailable)
	if ra, _ := e.Extra["retry_after_seconds"].(int); ra < 1 {
		t.Errorf("retry_after_seconds = %v, want >= 1", e.Extra["retry_after_seconds"])
	}
	if b.Ledger().Received["charges"] != before {
		t.Error("an open breaker let a charge through to the bank")
	}

	if err := b.SetFaults(simbank.Faults{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the breaker to close after recovery", func() bool {
		_, _ = c.Query(ctx, "x")
		return c.Stats().Breaker == "closed"
	})
	if r, err := c.Pay(ctx, pay("after", 10)); err != nil || r.Status != channel.StatusSucceeded {
		t.Fatalf("pay after recovery: %+v %v", r, err)
	}
}

func TestSlowCallsOpenTheBreaker(t *testing.T) {
	_, url := startBank(t, simbank.Faults{P50: 30 * time.Millisecond, P99: 30 * time.Millisecond})
	c := newChannel(t, url, func(cfg *channel.Config) { cfg.SlowCall = 10 * time.Millisecond })
	for i := 0; i < 20 && c.Stats().Breaker != "open"; i++ {
		_, _ = c.Query(context.Background(), "x")
	}
	if s := c.Stats(); s.Breaker != "open" {
		t.Fatalf("breaker %s after 20 slow answers, want open", s.Breaker)
	}
}

func TestForcedOpenRefusesAtOnce(t *testing.T) {
	b, url := startBank(t, simbank.Faults{})
	c := newChannel(t, url, nil)
	ctx := context.Background()
	if err := c.SetBreakerMode(channel.BreakerForcedOpen); err != nil {
		t.Fatal(err)
	}
	_, err := c.Pay(ctx, pay("f1", 10))
	wantCode(t, err, errs.Unavailable)
	_, err = c.Query(ctx, "f1")
	wantCode(t, err, errs.Unavailable)
	if n := b.Ledger().Received["charges"]; n != 0 {
		t.Fatalf("bank received %d charges while the channel was forced open", n)
	}
	if s := c.Stats(); s.BreakerMode != channel.BreakerForcedOpen || s.Breaker != "open" {
		t.Fatalf("stats %+v", s)
	}
	// It stays open past the breaker's own delay: only the operator releases it.
	time.Sleep(300 * time.Millisecond)
	_, err = c.Pay(ctx, pay("f1", 10))
	wantCode(t, err, errs.Unavailable)
	if s := c.Stats(); s.Breaker != "open" || s.Refused != 3 {
		t.Fatalf("stats after the breaker's delay: %+v", s)
	}

	if err := c.SetBreakerMode(channel.BreakerAuto); err != nil {
		t.Fatal(err)
	}
	if r, err := c.Pay(ctx, pay("f1", 10)); err != nil || r.Status != channel.StatusSucceeded {
		t.Fatalf("pay after release: %+v %v", r, err)
	}
	if err := c.SetBreakerMode("sideways"); errs.CodeOf(err) != errs.Invalid {
		t.Fatalf("unknown mode: %v", err)
	}
}

func TestForcedClosedIgnoresFailures(t *testing.T) {
	b, url := startBank(t, simbank.Faults{DownUntil: time.Now().Add(time.Hour)})
	c := newChannel(t, url, nil)
	if err := c.SetBreakerMode(channel.BreakerForcedClosed); err != nil {
		t.Fatal(err)
	}
	for range 10 {
		_, _ = c.Query(context.Background(), "x")
	}
	if got := b.Ledger().Received["queries"]; got != 30 {
		t.Fatalf("bank received %d queries, want 30 (10 calls x 3 attempts, none refused)", got)
	}
}

func TestBulkheadRefusesExcessAtOnce(t *testing.T) {
	b, url := startBank(t, simbank.Faults{})
	c := newChannel(t, url, func(cfg *channel.Config) { cfg.MaxConcurrent = 2 })
	ctx := context.Background()
	// Hold the two permits with answers the bank keeps back.
	if err := b.SetFaults(simbank.Faults{TimeoutRate: 1, Hang: 2 * time.Second}); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for i := range 2 {
		wg.Go(func() { _, _ = c.Pay(ctx, pay(fmt.Sprintf("h%d", i), 10)) })
	}
	waitFor(t, "two calls in flight", func() bool { return c.Stats().InFlight == 2 })
	_, err := c.Pay(ctx, pay("third", 10))
	e := wantCode(t, err, errs.Unavailable)
	if e.Extra["retry_after_seconds"] != 1 {
		t.Errorf("retry_after_seconds = %v, want 1", e.Extra["retry_after_seconds"])
	}
	if charges(b)["third"] != 0 {
		t.Error("the refused call reached the bank")
	}
	if s := c.Stats(); s.MaxConcurrent != 2 || s.Refused < 1 {
		t.Errorf("stats %+v", s)
	}
	b.Close() // release the held answers
	wg.Wait()
}

func TestTimeoutAdaptsWithinFloorAndCeiling(t *testing.T) {
	t.Run("toward p99 x 1.5", func(t *testing.T) {
		_, url := startBank(t, simbank.Faults{P50: 20 * time.Millisecond, P99: 20 * time.Millisecond})
		c := newChannel(t, url, func(cfg *channel.Config) { cfg.MinSamples = 10; cfg.Window = 16; cfg.SlowCall = time.Minute })
		if c.Timeout() != 3*time.Second {
			t.Fatalf("initial timeout %s, want 3s", c.Timeout())
		}
		for range 16 {
			if _, err := c.Query(context.Background(), "x"); err != nil {
				t.Fatal(err)
			}
		}
		s := c.Stats()
		// The bank takes 20 ms, so the measured p99 is at least that: the
		// timeout is at least 30 ms and well below the 3 s it started at.
		if s.Timeout < 30*time.Millisecond || s.Timeout >= 3*time.Second {
			t.Fatalf("timeout %s (p99 %s), want in [30ms, 3s)", s.Timeout, s.P99)
		}
		if s.P99 < 20*time.Millisecond || s.SuccessRate != 1 {
			t.Fatalf("stats %+v", s)
		}
	})
	t.Run("floor", func(t *testing.T) {
		_, url := startBank(t, simbank.Faults{})
		c := newChannel(t, url, func(cfg *channel.Config) {
			cfg.MinSamples = 8
			cfg.Window = 8
			cfg.TimeoutFloor = 500 * time.Millisecond
		})
		for range 8 {
			_, _ = c.Query(context.Background(), "x")
		}
		if c.Timeout() != 500*time.Millisecond {
			t.Fatalf("timeout %s, want the 500ms floor", c.Timeout())
		}
	})
	t.Run("ceiling", func(t *testing.T) {
		_, url := startBank(t, simbank.Faults{P50: 60 * time.Millisecond, P99: 60 * time.Millisecond})
		c := newChannel(t, url, func(cfg *channel.Config) {
			cfg.MinSamples, cfg.Window, cfg.TimeoutCeiling, cfg.InitialTimeout, cfg.SlowCall = 8, 8, 70*time.Millisecond, time.Second, time.Minute
		})
		for range 8 {
			_, _ = c.Query(context.Background(), "x")
		}
		if c.Timeout() != 70*time.Millisecond {
			t.Fatalf("timeout %s, want the 70ms ceiling", c.Timeout())
		}
	})
}

func TestPayTimeoutIsInDoubtAndQueryResolvesIt(t *testing.T) {
	b, url := startBank(t, simbank.Faults{TimeoutRate: 1, Hang: 5 * time.Second})
	c := newChannel(t, url, func(cfg *channel.Config) { cfg.InitialTimeout, cfg.BreakerMinCalls = 200*time.Millisecond, 20 })
	ctx := context.Background()
	r, err := c.Pay(ctx, pay("d1", 700))
	if err != nil || r.Status != channel.StatusInDoubt || r.Attempts != 1 {
		t.Fatalf("pay against a hanging bank: %+v %v, want in_doubt after 1 attempt", r, err)
	}
	q, err := c.Query(ctx, "d1")
	if err != nil || q.Status != channel.StatusSucceeded || q.Amount != 700 {
		t.Fatalf("query: %+v %v, want succeeded", q, err)
	}
	// A refund that times out is in doubt too; sending it again settles it
	// without refunding twice.
	rr, err := c.Refund(ctx, channel.RefundRequest{ID: "dr1", ChargeID: "d1", Amount: 200})
	if err != nil || rr.Status != channel.StatusInDoubt {
		t.Fatalf("refund against a hanging bank: %+v %v", rr, err)
	}
	if err := b.SetFaults(simbank.Faults{}); err != nil {
		t.Fatal(err)
	}
	rr, err = c.Refund(ctx, channel.RefundRequest{ID: "dr1", ChargeID: "d1", Amount: 200})
	if err != nil || rr.Status != channel.StatusSucceeded {
		t.Fatalf("refund again: %+v %v", rr, err)
	}
	var refunds int
	for _, e := range b.Ledger().Entries {
		if e.Kind == "refund" {
			refunds++
		}
	}
	if got := charges(b); got["d1"] != 1 || refunds != 1 {
		t.Fatalf("bank ledger: charges %v, %d refunds; want one of each", got, refunds)
	}
}

func TestPayToAnUnreachableBankIsUnavailableNotInDoubt(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	c := newChannel(t, "http://"+addr, nil)
	r, err := c.Pay(context.Background(), pay("u1", 10))
	wantCode(t, err, errs.Unavailable)
	if r.Attempts != 3 {
		t.Errorf("%d attempts, want 3 (a refused connection is provably not a charge)", r.Attempts)
	}
}

func TestRetriesNeverDoubleCharge(t *testing.T) {
	b, url := startBank(t, simbank.Faults{P50: time.Millisecond, P99: 10 * time.Millisecond, ErrorRate: 0.4, TimeoutRate: 0.1, Hang: time.Second})
	c := newChannel(t, url, func(cfg *channel.Config) {
		cfg.InitialTimeout, cfg.BreakerFailureRate, cfg.MaxConcurrent = 300*time.Millisecond, 1, 16
	})
	ctx := context.Background()
	const n = 60
	results := make([]channel.Result, n)
	perr := make([]error, n)
	var wg sync.WaitGroup
	sem := make(chan struct{}, 8)
	for i := range n {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			results[i], perr[i] = c.Pay(ctx, pay(fmt.Sprintf("x%d", i), 100))
		})
	}
	wg.Wait()
	if err := b.SetFaults(simbank.Faults{}); err != nil {
		t.Fatal(err)
	}
	resolver := newChannel(t, url, nil)
	led := charges(b)
	var retried, inDoubt int
	for i := range n {
		id := fmt.Sprintf("x%d", i)
		if led[id] > 1 {
			t.Errorf("%s charged %d times", id, led[id])
		}
		r, err := results[i], perr[i]
		if r.Attempts > 1 {
			retried++
		}
		switch {
		case err != nil:
			wantCode(t, err, errs.Unavailable)
			if led[id] != 0 {
				t.Errorf("%s reported unavailable but the bank charged it", id)
			}
		case r.Status == channel.StatusSucceeded:
			if led[id] != 1 {
				t.Errorf("%s reported succeeded, bank charged it %d times", id, led[id])
			}
		case r.Status == channel.StatusInDoubt:
			inDoubt++
			var q channel.Result
			waitFor(t, "the bank to finish "+id, func() bool {
				q, err = resolver.Query(ctx, id)
				if err != nil {
					t.Fatalf("query %s: %v", id, err)
				}
				return q.Status != channel.StatusProcessing
			})
			want := channel.StatusNotFound
			if charges(b)[id] == 1 {
				want = channel.StatusSucceeded
			}
			if q.Status != want {
				t.Errorf("%s in doubt; query says %s, the bank's ledger says %s", id, q.Status, want)
			}
		default:
			t.Errorf("%s: unexpected %+v", id, r)
		}
	}
	if retried == 0 || inDoubt == 0 {
		t.Errorf("%d calls retried and %d in doubt: the faults did not exercise retries and timeouts", retried, inDoubt)
	}
	if got := b.Ledger().Received["charges"]; got <= n {
		t.Errorf("bank received %d charge requests for %d payments: no retries", got, n)
	}
}

// TestFailingChannelLeavesAHealthyOneAlone: while one bank holds every
// answer, its channel's bulkhead refuses the excess at once (nothing waits
// in a queue), its breaker opens, and a second channel to a healthy bank
// keeps its usual latency: channels share no pool, queue or breaker.
func TestFailingChannelLeavesAHealthyOneAlone(t *testing.T) {
	badBank, badURL := startBank(t, simbank.Faults{TimeoutRate: 1, Hang: 3 * time.Second})
	_, goodURL := startBank(t, simbank.Faults{P50: 2 * time.Millisecond, P99: 5 * time.Millisecond})
	const timeout = 400 * time.Millisecond
	bad := newChannel(t, badURL, func(cfg *channel.Config) {
		cfg.Name, cfg.MaxConcurrent, cfg.InitialTimeout, cfg.BreakerDelay = "bad", 4, timeout, time.Minute
	})
	good := newChannel(t, goodURL, func(cfg *channel.Config) { cfg.Name = "good" })
	ctx := context.Background()

	// The healthy channel under the storm below.
	goodDone := make(chan []time.Duration)
	go func() {
		var lat []time.Duration
		for i := range 30 {
			start := time.Now()
			r, err := good.Pay(ctx, pay(fmt.Sprintf("g%d", i), 100))
			lat = append(lat, time.Since(start))
			if err != nil || r.Status != channel.StatusSucceeded {
				t.Errorf("healthy channel: %+v %v", r, err)
			}
			time.Sleep(10 * time.Millisecond)
		}
		goodDone <- lat
	}()

	// 40 calls at once on the failing channel: 4 take the permits and time
	// out (in doubt), 36 are refused without waiting for a permit.
	var wg sync.WaitGroup
	var mu sync.Mutex
	var inDoubt, refused int
	var slowestRefusal time.Duration
	for i := range 40 {
		wg.Go(func() {
			start := time.Now()
			r, err := bad.Pay(ctx, pay(fmt.Sprintf("b%d", i), 100))
			took := time.Since(start)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil && r.Status == channel.StatusInDoubt:
				inDoubt++
			case errs.CodeOf(err) == errs.Unavailable:
				refused++
				slowestRefusal = max(slowestRefusal, took)
				if ra := errs.As(err).Extra["retry_after_seconds"]; ra != 1 {
					t.Errorf("bulkhead refusal with retry_after_seconds %v, want 1", ra)
				}
			default:
				t.Errorf("failing channel: %+v %v", r, err)
			}
		})
	}
	wg.Wait()
	if inDoubt != 4 || refused != 36 {
		t.Errorf("%d calls in doubt and %d refused, want 4 (the bulkhead's permits) and 36", inDoubt, refused)
	}
	// A queued call would have waited for a permit, i.e. for a timeout.
	if slowestRefusal >= timeout/2 {
		t.Errorf("the slowest refusal took %s: the bulkhead queued instead of refusing at once", slowestRefusal)
	}
	if n := badBank.Ledger().Received["charges"]; n != 4 {
		t.Errorf("the failing bank received %d charges, want only the 4 admitted", n)
	}

	// Timeouts are the bank's failures: a few more and the breaker opens,
	// after which calls are refused at once.
	for i := 0; i < 10 && bad.Stats().Breaker != "open"; i++ {
		_, _ = bad.Pay(ctx, pay(fmt.Sprintf("more%d", i), 100))
	}
	if s := bad.Stats(); s.Breaker != "open" || s.InFlight != 0 {
		t.Fatalf("failing channel after repeated timeouts: %+v", s)
	}
	start := time.Now()
	_, err := bad.Pay(ctx, pay("after-open", 100))
	if e := wantCode(t, err, errs.Unavailable); time.Since(start) >= timeout/2 || e.Extra["retry_after_seconds"].(int) < 1 {
		t.Errorf("with the breaker open: %v after %s", e, time.Since(start))
	}

	lat := <-goodDone
	slowest := slices.Max(lat)
	// The healthy bank answers in a few milliseconds; sharing anything with
	// the failing channel would cost its 400 ms timeout.
	if slowest >= timeout/2 {
		t.Errorf("the healthy channel's slowest call took %s while the other failed (latencies %v)", slowest, lat)
	}
	if s := good.Stats(); s.Breaker != "closed" || s.SuccessRate != 1 || s.Refused != 0 {
		t.Errorf("healthy channel stats %+v", s)
	}
}

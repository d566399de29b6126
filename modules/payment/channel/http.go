package channel

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/failsafe-go/failsafe-go"
	"github.com/failsafe-go/failsafe-go/bulkhead"
	"github.com/failsafe-go/failsafe-go/circuitbreaker"
	"github.com/failsafe-go/failsafe-go/retrypolicy"
	"github.com/failsafe-go/failsafe-go/timeout"

	"github.com/atriumhq/atrium/platform/errs"
)

// HTTP is a Channel to a bank that speaks simbank's HTTP API.
type HTTP struct {
	cfg  Config
	base string

	bulkhead  bulkhead.Bulkhead[attempt]
	breaker   circuitbreaker.CircuitBreaker[attempt]
	payRetry  retrypolicy.RetryPolicy[attempt]
	idemRetry retrypolicy.RetryPolicy[attempt]

	window   *window
	timeout  atomic.Int64 // the current per-attempt timeout, ns
	recorded atomic.Int64
	inFlight atomic.Int64
	refused  atomic.Int64

	modeMu sync.RWMutex
	mode   BreakerMode
}

var _ Channel = (*HTTP)(nil)

// attempt is one HTTP exchange with the bank.
type attempt struct {
	status  int
	body    []byte
	elapsed time.Duration
}

// bankError is a non-2xx answer the policies act on: 5xx, and 409 in_progress.
type bankError struct {
	status int
	code   string
	msg    string
}

func (e *bankError) Error() string {
	return fmt.Sprintf("bank answered %d %s: %s", e.status, e.code, e.msg)
}

// notProcessed reports whether the bank said it did not process the attempt.
func (e *bankError) notProcessed() bool {
	return (e.status == http.StatusServiceUnavailable && e.code == "unavailable") ||
		(e.status == http.StatusConflict && e.code == "in_progress")
}

// errNotSent marks a transport failure before the request left (dial failed).
type errNotSent struct{ err error }

func (e errNotSent) Error() string { return "bank not reached: " + e.err.Error() }
func (e errNotSent) Unwrap() error { return e.err }

// NewHTTP returns a channel to the bank at cfg.BaseURL.
func NewHTTP(cfg Config) (*HTTP, error) {
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	if _, err := url.Parse(cfg.BaseURL); err != nil {
		return nil, fmt.Errorf("channel: BaseURL: %w", err)
	}
	c := &HTTP{cfg: cfg, base: strings.TrimRight(cfg.BaseURL, "/"), window: newWindow(cfg.Window), mode: BreakerAuto}
	c.timeout.Store(int64(cfg.InitialTimeout))

	c.bulkhead = bulkhead.NewBuilder[attempt](cfg.MaxConcurrent).
		OnAcquired(func(failsafe.ExecutionEvent[attempt]) { c.inFlight.Add(1) }).
		OnReleased(func(failsafe.ExecutionEvent[attempt]) { c.inFlight.Add(-1) }).
		Build() // no max wait: excess is refused at once

	c.breaker = circuitbreaker.NewBuilder[attempt]().
		HandleIf(c.breakerFailure).
		WithFailureRateThreshold(cfg.BreakerFailureRate, cfg.BreakerMinCalls, cfg.BreakerPeriod).
		WithDelay(cfg.BreakerDelay).
		WithSuccessThreshold(cfg.BreakerSuccesses).
		Build()

	retry := func(retryable func(error) bool) retrypolicy.RetryPolicy[attempt] {
		return retrypolicy.NewBuilder[attempt]().
			HandleIf(func(_ attempt, err error) bool { return err != nil && retryable(err) }).
			AbortOnErrors(circuitbreaker.ErrOpen, context.Canceled, context.DeadlineExceeded).
			WithMaxAttempts(cfg.MaxAttempts).
			WithBackoff(cfg.BackoffMin, cfg.BackoffMax).
			WithJitterFactor(0.5).
			ReturnLastFailure().
			Build()
	}
	c.payRetry = retry(provablyNotProcessed)
	c.idemRetry = retry(transient)
	return c, nil
}

// provablyNotProcessed: the attempt did not reach the bank, or the bank said
// it did not process it.
func provablyNotProcessed(err error) bool {
	var ns errNotSent
	var be *bankError
	return errors.As(err, &ns) || (errors.As(err, &be) && be.notProcessed())
}

// transient: worth another attempt for an idempotent call.
func transient(err error) bool {
	if errors.Is(err, circuitbreaker.ErrOpen) || errors.Is(err, context.Canceled) {
		return false
	}
	var be *bankError
	if errors.As(err, &be) {
		return be.status >= 500 || be.notProcessed()
	}
	return true // timeout, transport error
}

// breakerFailure decides what the breaker counts against the bank: no
// answer, a 5xx, or an answer slower than SlowCall. A caller's own
// cancellation and in_progress are not the bank's failure.
func (c *HTTP) breakerFailure(a attempt, err error) bool {
	if err != nil {
		var be *bankError
		if errors.As(err, &be) {
			return be.status >= 500
		}
		return !errors.Is(err, context.Canceled)
	}
	return a.elapsed > c.cfg.SlowCall
}

// Timeout returns the current per-attempt timeout.
func (c *HTTP) Timeout() time.Duration { return time.Duration(c.timeout.Load()) }

func (c *HTTP) record(a attempt, err error, answered bool) {
	c.window.add(sample{ok: !c.breakerFailure(a, err), answered: answered, latency: a.elapsed})
	if !answered || c.recorded.Add(1)%8 != 0 {
		return
	}
	s := c.window.summary()
	if s.answered < c.cfg.MinSamples {
		return
	}
	t := time.Duration(math.Round(float64(s.p99) * 1.5))
	c.timeout.Store(int64(max(c.cfg.TimeoutFloor, min(t, c.cfg.TimeoutCeiling))))
}

// SetBreakerMode sets the operator's override: BreakerForcedOpen refuses
// every call at once until the mode changes; BreakerForcedClosed bypasses
// the breaker; BreakerAuto (and leaving a forced mode) starts closed.
func (c *HTTP) SetBreakerMode(m BreakerMode) error {
	switch m {
	case BreakerAuto, BreakerForcedOpen, BreakerForcedClosed:
	default:
		return errs.E(errs.Invalid, "unknown breaker mode %q", m)
	}
	c.modeMu.Lock()
	defer c.modeMu.Unlock()
	c.mode = m
	if m == BreakerForcedOpen {
		c.breaker.Open()
	} else {
		c.breaker.Close()
	}
	return nil
}

// BreakerMode returns the operator's current setting.
func (c *HTTP) BreakerMode() BreakerMode {
	c.modeMu.RLock()
	defer c.modeMu.RUnlock()
	return c.mode
}

// Refusing reports whether a call now would be refused at once: the
// operator forced the breaker open, or it is open and not yet probing.
func (c *HTTP) Refusing() bool {
	c.modeMu.RLock()
	mode := c.mode
	c.modeMu.RUnlock()
	// Once the delay has passed, an open breaker half-opens on the next
	// call: that call is the probe, so it is not refused here.
	return mode == BreakerForcedOpen || (mode == BreakerAuto && c.breaker.IsOpen() && c.breaker.RemainingDelay() > 0)
}

// Stats is a snapshot of a channel for the dashboard.
type Stats struct {
	Name           string        `json:"name"`
	Attempts       int           `json:"attempts"` // in the window
	SuccessRate    float64       `json:"success_rate"`
	P50            time.Duration `json:"p50"`
	P99            time.Duration `json:"p99"`
	Timeout        time.Duration `json:"timeout"`
	TimeoutFloor   time.Duration `json:"timeout_floor"`
	TimeoutCeiling time.Duration `json:"timeout_ceiling"`
	Breaker        string        `json:"breaker"` // closed, open, half-open
	BreakerMode    BreakerMode   `json:"breaker_mode"`
	InFlight       int           `json:"in_flight"`
	MaxConcurrent  int           `json:"max_concurrent"`
	Refused        int64         `json:"refused"` // by the bulkhead, the breaker or the mode, since start
}

// Stats returns the channel's current figures.
func (c *HTTP) Stats() Stats {
	s := c.window.summary()
	c.modeMu.RLock()
	mode := c.mode
	c.modeMu.RUnlock()
	state := c.breaker.State().String()
	if mode == BreakerForcedOpen {
		state = "open" // the breaker's own delay may have half-opened it; the mode refuses all
	}
	return Stats{
		Name: c.cfg.Name, Attempts: s.attempts, SuccessRate: s.successRate, P50: s.p50, P99: s.p99,
		Timeout: c.Timeout(), TimeoutFloor: c.cfg.TimeoutFloor, TimeoutCeiling: c.cfg.TimeoutCeiling,
		Breaker: state, BreakerMode: mode,
		InFlight: int(c.inFlight.Load()), MaxConcurrent: int(c.cfg.MaxConcurrent), Refused: c.refused.Load(),
	}
}

// call runs one operation through the policies. doubt reports whether any
// attempt may have reached the bank without an answer.
func (c *HTTP) call(ctx context.Context, retry retrypolicy.RetryPolicy[attempt], method, path string, body any) (a attempt, attempts int, doubt bool, err error) {
	c.modeMu.RLock()
	mode := c.mode
	c.modeMu.RUnlock()
	if mode == BreakerForcedOpen {
		c.refused.Add(1)
		return a, 0, false, c.unavailable("the channel was switched off by an operator", 30)
	}
	if err := ctx.Err(); err != nil {
		return a, 0, false, errs.Wrap(errs.Unavailable, err, "the call was cancelled before it was sent")
	}
	var payload []byte
	if body != nil {
		if payload, err = json.Marshal(body); err != nil {
			return a, 0, false, errs.Wrap(errs.Internal, err, "encoding the bank request")
		}
	}
	policies := []failsafe.Policy[attempt]{c.bulkhead, retry}
	if mode != BreakerForcedClosed {
		policies = append(policies, c.breaker)
	}
	policies = append(policies, timeout.New[attempt](c.Timeout()))

	var n atomic.Int32
	var maybeSent atomic.Bool
	a, err = failsafe.With(policies...).WithContext(ctx).GetWithExecution(func(exec failsafe.Execution[attempt]) (attempt, error) {
		n.Add(1)
		a, err, answered := c.exchange(exec.Context(), method, path, payload)
		if err != nil && !provablyNotProcessed(err) && (!answered || errors.As(err, new(*bankError))) {
			maybeSent.Store(true)
		}
		c.record(a, err, answered)
		return a, err
	})
	switch {
	case errors.Is(err, bulkhead.ErrFull):
		c.refused.Add(1)
		return a, 0, false, c.unavailable("the channel is at its concurrency limit", 1)
	case errors.Is(err, circuitbreaker.ErrOpen) && !maybeSent.Load():
		c.refused.Add(1)
		secs := int(math.Ceil(c.breaker.RemainingDelay().Seconds()))
		return a, int(n.Load()), false, c.unavailable("the channel's circuit breaker is open", max(1, secs))
	case errors.Is(err, timeout.ErrExceeded):
		maybeSent.Store(true)
	}
	return a, int(n.Load()), maybeSent.Load(), err
}

func (c *HTTP) unavailable(msg string, retryAfter int) *errs.Error {
	e := errs.E(errs.Unavailable, "bank channel %s: %s", c.cfg.Name, msg)
	e.Extra = map[string]any{"retry_after_seconds": retryAfter}
	return e
}

// exchange makes one HTTP request. answered is true when the bank's answer
// was read in full.
func (c *HTTP) exchange(ctx context.Context, method, path string, payload []byte) (attempt, error, bool) {
	var a attempt
	var rd io.Reader
	if payload != nil {
		rd = bytes.NewReader(payload)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, rd)
	if err != nil {
		return a, err, false
	}
	if payload != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	start := time.Now()
	resp, err := c.cfg.Client.Do(req)
	if err != nil {
		var op *net.OpError
		if errors.As(err, &op) && op.Op == "dial" {
			return a, errNotSent{err}, false
		}
		return a, err, false
	}
	defer resp.Body.Close()
	a.body, err = io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	a.elapsed = time.Since(start)
	a.status = resp.StatusCode
	if err != nil {
		return a, err, false
	}
	if a.status >= 500 || a.status == http.StatusConflict {
		var e struct{ Code, Message string }
		_ = json.Unmarshal(a.body, &e)
		if a.status >= 500 || e.Code == "in_progress" {
			return a, &bankError{status: a.status, code: e.Code, msg: e.Message}, true
		}
	}
	return a, nil, true
}

type chargeBody struct {
	ID            string `json:"id"`
	Status        string `json:"status"`
	Amount        int64  `json:"amount"`
	Currency      string `json:"currency"`
	DeclineReason string `json:"decline_reason"`
	Refunded      int64  `json:"refunded"`
	Code          string `json:"code"`
	Message       string `json:"message"`
}

func (b chargeBody) result(attempts int) Result {
	return Result{ID: b.ID, Status: Status(b.Status), Amount: b.Amount, Currency: b.Currency,
		DeclineReason: b.DeclineReason, Refunded: b.Refunded, Attempts: attempts}
}

// refusal maps a 4xx answer to a coded error.
func refusal(status int, b chargeBody) error {
	msg := b.Message
	if msg == "" {
		msg = fmt.Sprintf("the bank answered %d", status)
	}
	switch {
	case status == http.StatusNotFound:
		return errs.E(errs.NotFound, "bank: %s", msg)
	case status == http.StatusConflict || status == http.StatusUnprocessableEntity:
		return errs.E(errs.Conflict, "bank: %s (%s)", msg, b.Code)
	default:
		return errs.E(errs.Invalid, "bank: %s (%s)", msg, b.Code)
	}
}

// Pay implements Channel.
func (c *HTTP) Pay(ctx context.Context, req PayRequest) (Result, error) {
	body := map[string]any{"id": req.ID, "amount": req.Amount, "currency": req.Currency, "source": req.Source, "merchant": req.Merchant}
	return c.mutate(ctx, c.payRetry, "/v1/charges", req.ID, body)
}

// Refund implements Channel.
func (c *HTTP) Refund(ctx context.Context, req RefundRequest) (Result, error) {
	body := map[string]any{"id": req.ID, "charge_id": req.ChargeID, "amount": req.Amount}
	return c.mutate(ctx, c.idemRetry, "/v1/refunds", req.ID, body)
}

func (c *HTTP) mutate(ctx context.Context, retry retrypolicy.RetryPolicy[attempt], path, id string, body any) (Result, error) {
	a, n, doubt, err := c.call(ctx, retry, http.MethodPost, path, body)
	if err != nil {
		if doubt {
			return Result{ID: id, Status: StatusInDoubt, Attempts: n}, nil
		}
		var coded *errs.Error
		if errors.As(err, &coded) {
			return Result{Attempts: n}, err
		}
		e := c.unavailable("the bank did not process the request", 1)
		e.Err = err
		return Result{Attempts: n}, e
	}
	var b chargeBody
	if jerr := json.Unmarshal(a.body, &b); jerr != nil {
		// An answer we cannot read: the bank may have moved money.
		return Result{ID: id, Status: StatusInDoubt, Attempts: n}, nil
	}
	if a.status != http.StatusOK {
		return Result{Attempts: n}, refusal(a.status, b)
	}
	switch Status(b.Status) {
	case StatusSucceeded, StatusFailed:
		return b.result(n), nil
	}
	return Result{ID: id, Status: StatusInDoubt, Attempts: n}, nil
}

// Query implements Channel.
func (c *HTTP) Query(ctx context.Context, chargeID string) (Result, error) {
	a, n, _, err := c.call(ctx, c.idemRetry, http.MethodGet, "/v1/charges/"+url.PathEscape(chargeID), nil)
	if err != nil {
		var coded *errs.Error
		if errors.As(err, &coded) {
			return Result{Attempts: n}, err
		}
		e := c.unavailable("the bank did not answer the query", 1)
		e.Err = err
		return Result{Attempts: n}, e
	}
	var b chargeBody
	if jerr := json.Unmarshal(a.body, &b); jerr != nil {
		return Result{Attempts: n}, errs.Wrap(errs.Unavailable, jerr, "unreadable bank answer")
	}
	switch {
	case a.status == http.StatusNotFound:
		return Result{ID: chargeID, Status: StatusNotFound, Attempts: n}, nil
	case a.status != http.StatusOK:
		return Result{Attempts: n}, refusal(a.status, b)
	}
	switch Status(b.Status) {
	case StatusSucceeded, StatusFailed, StatusProcessing:
		return b.result(n), nil
	}
	return Result{Attempts: n}, errs.E(errs.Unavailable, "bank: unknown charge status %q", b.Status)
}

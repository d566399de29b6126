package simbank

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"time"
)

// Charge and refund statuses as the bank reports them.
const (
	StatusSucceeded  = "succeeded"
	StatusFailed     = "failed"
	StatusProcessing = "processing"
)

// Window is an outage: the bank answers 503 from Start (after the bank was
// created) for Duration.
type Window struct {
	Start    time.Duration
	Duration time.Duration
}

// Faults is what can be changed while the bank runs.
type Faults struct {
	// P50 and P99 shape the log-normal latency of every /v1 request; zero P50
	// means no latency. P99 must not be below P50.
	P50 time.Duration
	P99 time.Duration
	// ErrorRate is the probability in [0,1] that a request is answered 503
	// without being processed.
	ErrorRate float64
	// TimeoutRate is the probability in [0,1] that a charge or refund is
	// processed and then its answer held for Hang.
	TimeoutRate float64
	// Hang is how long an injected timeout holds the answer (default 30s).
	Hang time.Duration
	// DownUntil, when in the future, makes every /v1 request answer 503.
	DownUntil time.Time
}

// Validate reports the first invalid setting.
func (f Faults) Validate() error {
	switch {
	case f.P50 < 0 || f.P99 < 0:
		return errors.New("latency must not be negative")
	case f.P99 < f.P50:
		return fmt.Errorf("p99 (%s) must not be below p50 (%s)", f.P99, f.P50)
	case f.ErrorRate < 0 || f.ErrorRate > 1 || math.IsNaN(f.ErrorRate):
		return errors.New("error rate must be between 0 and 1")
	case f.TimeoutRate < 0 || f.TimeoutRate > 1 || math.IsNaN(f.TimeoutRate):
		return errors.New("timeout rate must be between 0 and 1")
	case f.Hang < 0:
		return errors.New("hang must not be negative")
	}
	return nil
}

// Config configures a Bank.
type Config struct {
	Faults
	// Outages are windows, relative to the bank's creation, during which it is down.
	Outages []Window
	// Seed seeds the random generator (latency, errors, timeouts).
	Seed uint64
}

// Bank is the simulated bank. Its zero value is not usable; call New.
type Bank struct {
	start time.Time
	done  chan struct{}
	once  sync.Once

	mu       sync.Mutex
	faults   Faults
	outages  []Window
	rng      *rand.Rand
	charges  map[string]*charge
	refunds  map[string]*refund
	ledger   []LedgerEntry
	received map[string]int
}

type charge struct {
	req      ChargeRequest
	pending  bool
	result   ChargeResult
	refunded int64
	refundID []string
}

type refund struct {
	req     RefundRequest
	pending bool
	status  int
	body    any
}

// ChargeRequest is the body of POST /v1/charges.
type ChargeRequest struct {
	ID       string `json:"id"`
	Amount   int64  `json:"amount"`
	Currency string `json:"currency"`
	Source   string `json:"source"`
	Merchant string `json:"merchant"`
}

// ChargeResult is the answer to a charge and to GET /v1/charges/{id}.
type ChargeResult struct {
	ID            string    `json:"id"`
	Status        string    `json:"status"`
	Amount        int64     `json:"amount"`
	Currency      string    `json:"currency"`
	DeclineReason string    `json:"decline_reason,omitempty"`
	Refunded      int64     `json:"refunded"`
	Refunds       []string  `json:"refunds,omitempty"`
	CreatedAt     time.Time `json:"created_at"`
}

// RefundRequest is the body of POST /v1/refunds.
type RefundRequest struct {
	ID       string `json:"id"`
	ChargeID string `json:"charge_id"`
	Amount   int64  `json:"amount"`
}

// RefundResult is the answer to a successful refund.
type RefundResult struct {
	ID        string    `json:"id"`
	ChargeID  string    `json:"charge_id"`
	Status    string    `json:"status"`
	Amount    int64     `json:"amount"`
	Currency  string    `json:"currency"`
	CreatedAt time.Time `json:"created_at"`
}

// LedgerEntry is one movement of money: a succeeded charge (positive) or a
// refund (negative amount).
type LedgerEntry struct {
	Kind     string    `json:"kind"` // charge or refund
	ID       string    `json:"id"`
	ChargeID string    `json:"charge_id"`
	Amount   int64     `json:"amount"`
	Currency string    `json:"currency"`
	At       time.Time `json:"at"`
}

// Ledger is the answer to GET /v1/ledger.
type Ledger struct {
	Entries []LedgerEntry `json:"entries"`
	// Received counts requests by endpoint (charges, refunds, queries),
	// including refused ones.
	Received map[string]int `json:"received"`
}

// APIError is the body of every error answer.
type APIError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// New returns a bank with the given configuration.
func New(cfg Config) (*Bank, error) {
	if err := cfg.Faults.Validate(); err != nil {
		return nil, err
	}
	if cfg.Hang == 0 {
		cfg.Hang = 30 * time.Second
	}
	for _, w := range cfg.Outages {
		if w.Start < 0 || w.Duration <= 0 {
			return nil, errors.New("an outage needs a start >= 0 and a positive duration")
		}
	}
	return &Bank{
		start:    time.Now(),
		done:     make(chan struct{}),
		faults:   cfg.Faults,
		outages:  cfg.Outages,
		rng:      rand.New(rand.NewPCG(cfg.Seed, cfg.Seed^0x9e3779b97f4a7c15)),
		charges:  map[string]*charge{},
		refunds:  map[string]*refund{},
		received: map[string]int{},
	}, nil
}

// Close releases every held (hanging) answer and makes later injected hangs
// return at once, so an http.Server can shut down promptly.
func (b *Bank) Close() { b.once.Do(func() { close(b.done) }) }

// Faults returns the current fault settings.
func (b *Bank) Faults() Faults {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.faults
}

// SetFaults replaces the fault settings.
func (b *Bank) SetFaults(f Faults) error {
	if err := f.Validate(); err != nil {
		return err
	}
	if f.Hang == 0 {
		f.Hang = 30 * time.Second
	}
	b.mu.Lock()
	b.faults = f
	b.mu.Unlock()
	return nil
}

// Ledger returns a copy of the bank's record of money moved.
func (b *Bank) Ledger() Ledger {
	b.mu.Lock()
	defer b.mu.Unlock()
	l := Ledger{Entries: append([]LedgerEntry{}, b.ledger...), Received: map[string]int{}}
	for k, v := range b.received {
		l.Received[k] = v
	}
	return l
}

// draw decides, under b.mu, the latency and the injected faults of one request.
type draw struct {
	latency time.Duration
	down    bool
	fail    bool
	hang    time.Duration
}

func (b *Bank) drawLocked(mutating bool) draw {
	f := b.faults
	var d draw
	now := time.Now()
	if now.Before(f.DownUntil) {
		d.down = true
	}
	since := now.Sub(b.start)
	for _, w := range b.outages {
		if since >= w.Start && since < w.Start+w.Duration {
			d.down = true
		}
	}
	if f.P50 > 0 {
		d.latency = f.P50
		if f.P99 > f.P50 {
			// Log-normal: median exp(mu) = p50, exp(mu + 2.3263 sigma) = p99.
			sigma := math.Log(float64(f.P99)/float64(f.P50)) / 2.3263478740408408
			v := float64(f.P50) * math.Exp(sigma*b.rng.NormFloat64())
			d.latency = time.Duration(min(v, 20*float64(f.P99)))
		}
	}
	if f.ErrorRate > 0 && b.rng.Float64() < f.ErrorRate {
		d.fail = true
	}
	if mutating && f.TimeoutRate > 0 && b.rng.Float64() < f.TimeoutRate {
		d.hang = f.Hang
	}
	return d
}

// sleep waits d, or until the bank closes. It deliberately ignores the
// client going away: a bank that received a request processes it.
func (b *Bank) sleep(d time.Duration) {
	if d <= 0 {
		return
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-b.done:
	}
}

// hold keeps an answer back for d, until the client goes away or the bank closes.
func (b *Bank) hold(r *http.Request, d time.Duration) {
	if d <= 0 {
		return
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-r.Context().Done():
	case <-b.done:
	}
}

// Handler returns the bank's HTTP handler.
func (b *Bank) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/charges", b.handleCharge)
	mux.HandleFunc("POST /v1/refunds", b.handleRefund)
	mux.HandleFunc("GET /v1/charges/{id}", b.handleQuery)
	mux.HandleFunc("GET /v1/ledger", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, b.Ledger())
	})
	mux.HandleFunc("GET /admin/faults", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, faultsJSON(b.Faults()))
	})
	mux.HandleFunc("POST /admin/faults", b.handleFaults)
	return mux
}

func (b *Bank) handleCharge(w http.ResponseWriter, r *http.Request) {
	var req ChargeRequest
	if !decode(w, r, &req) {
		return
	}
	if req.ID == "" || req.Amount <= 0 || len(req.Currency) != 3 {
		writeErr(w, http.StatusBadRequest, "invalid", "id, a positive amount and a 3-letter currency are required")
		return
	}
	b.mu.Lock()
	b.received["charges"]++
	d := b.drawLocked(true)
	if d.down || d.fail {
		b.mu.Unlock()
		b.sleep(d.latency)
		writeErr(w, http.StatusServiceUnavailable, "unavailable", "the bank did not process the request; retry later")
		return
	}
	if c, ok := b.charges[req.ID]; ok {
		b.mu.Unlock()
		switch {
		case c.req != req:
			writeErr(w, http.StatusUnprocessableEntity, "idempotency_mismatch", "this id was used with different parameters")
		case c.pending:
			writeErr(w, http.StatusConflict, "in_progress", "a request with this id is being processed")
		default:
			b.sleep(d.latency)
			b.mu.Lock()
			res := c.result
			b.mu.Unlock()
			b.hold(r, d.hang)
			writeJSON(w, http.StatusOK, res)
		}
		return
	}
	c := &charge{req: req, pending: true}
	b.charges[req.ID] = c
	b.mu.Unlock()

	b.sleep(d.latency)

	now := time.Now().UTC()
	res := ChargeResult{ID: req.ID, Status: StatusSucceeded, Amount: req.Amount, Currency: req.Currency, CreatedAt: now}
	if declined(req.Source) {
		res.Status, res.DeclineReason = StatusFailed, "card_declined"
	}
	b.mu.Lock()
	c.pending, c.result = false, res
	if res.Status == StatusSucceeded {
		b.ledger = append(b.ledger, LedgerEntry{Kind: "charge", ID: req.ID, ChargeID: req.ID, Amount: req.Amount, Currency: req.Currency, At: now})
	}
	b.mu.Unlock()

	b.hold(r, d.hang)
	writeJSON(w, http.StatusOK, res)
}

// declined reports whether the issuer declines the source: the token
// "tok_decline", the test card 4000000000000002, or a wallet code starting
// with DECLINE.
func declined(source string) bool {
	return source == "tok_decline" || strings.HasPrefix(source, "card:4000000000000002:") || strings.HasPrefix(source, "wallet:DECLINE")
}

func (b *Bank) handleRefund(w http.ResponseWriter, r *http.Request) {
	var req RefundRequest
	if !decode(w, r, &req) {
		return
	}
	if req.ID == "" || req.ChargeID == "" || req.Amount <= 0 {
		writeErr(w, http.StatusBadRequest, "invalid", "id, charge_id and a positive amount are required")
		return
	}
	b.mu.Lock()
	b.received["refunds"]++
	d := b.drawLocked(true)
	if d.down || d.fail {
		b.mu.Unlock()
		b.sleep(d.latency)
		writeErr(w, http.StatusServiceUnavailable, "unavailable", "the bank did not process the request; retry later")
		return
	}
	if rf, ok := b.refunds[req.ID]; ok {
		b.mu.Unlock()
		switch {
		case rf.req != req:
			writeErr(w, http.StatusUnprocessableEntity, "idempotency_mismatch", "this id was used with different parameters")
		case rf.pending:
			writeErr(w, http.StatusConflict, "in_progress", "a request with this id is being processed")
		default:
			b.sleep(d.latency)
			b.hold(r, d.hang)
			writeJSON(w, rf.status, rf.body)
		}
		return
	}
	rf := &refund{req: req, pending: true}
	b.refunds[req.ID] = rf
	b.mu.Unlock()

	b.sleep(d.latency)

	// Check and record in one critical section: concurrent refunds of one
	// charge can never pass its amount together.
	now := time.Now().UTC()
	b.mu.Lock()
	c, ok := b.charges[req.ChargeID]
	switch {
	case !ok:
		rf.status, rf.body = http.StatusNotFound, APIError{Code: "not_found", Message: "no such charge"}
	case c.pending || c.result.Status != StatusSucceeded:
		rf.status, rf.body = http.StatusConflict, APIError{Code: "charge_not_succeeded", Message: "only a succeeded charge can be refunded"}
	case c.refunded+req.Amount > c.req.Amount:
		rf.status, rf.body = http.StatusUnprocessableEntity, APIError{Code: "refund_exceeds_charge",
			Message: fmt.Sprintf("refunds would total %d of a %d charge", c.refunded+req.Amount, c.req.Amount)}
	default:
		c.refunded += req.Amount
		c.refundID = append(c.refundID, req.ID)
		rf.status, rf.body = http.StatusOK, RefundResult{ID: req.ID, ChargeID: req.ChargeID, Status: StatusSucceeded,
			Amount: req.Amount, Currency: c.req.Currency, CreatedAt: now}
		b.ledger = append(b.ledger, LedgerEntry{Kind: "refund", ID: req.ID, ChargeID: req.ChargeID, Amount: -req.Amount, Currency: c.req.Currency, At: now})
	}
	rf.pending = false
	status, body := rf.status, rf.body
	b.mu.Unlock()

	b.hold(r, d.hang)
	writeJSON(w, status, body)
}

func (b *Bank) handleQuery(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	b.mu.Lock()
	b.received["queries"]++
	d := b.drawLocked(false)
	if d.down || d.fail {
		b.mu.Unlock()
		b.sleep(d.latency)
		writeErr(w, http.StatusServiceUnavailable, "unavailable", "the bank did not process the request; retry later")
		return
	}
	b.mu.Unlock()
	b.sleep(d.latency)

	b.mu.Lock()
	c, ok := b.charges[id]
	var res ChargeResult
	if ok {
		if c.pending {
			res = ChargeResult{ID: id, Status: StatusProcessing, Amount: c.req.Amount, Currency: c.req.Currency}
		} else {
			res = c.result
			res.Refunded = c.refunded
			res.Refunds = append([]string(nil), c.refundID...)
		}
	}
	b.mu.Unlock()
	if !ok {
		writeErr(w, http.StatusNotFound, "not_found", "no charge with this id")
		return
	}
	writeJSON(w, http.StatusOK, res)
}

// FaultsPatch is the body of POST /admin/faults: every member is optional
// and durations are Go duration strings ("250ms").
type FaultsPatch struct {
	P50         *string  `json:"p50,omitempty"`
	P99         *string  `json:"p99,omitempty"`
	ErrorRate   *float64 `json:"error_rate,omitempty"`
	TimeoutRate *float64 `json:"timeout_rate,omitempty"`
	Hang        *string  `json:"hang,omitempty"`
	// DownFor starts an outage of this length now; "0s" ends one.
	DownFor *string `json:"down_for,omitempty"`
}

type faultsView struct {
	P50         string    `json:"p50"`
	P99         string    `json:"p99"`
	ErrorRate   float64   `json:"error_rate"`
	TimeoutRate float64   `json:"timeout_rate"`
	Hang        string    `json:"hang"`
	DownUntil   time.Time `json:"down_until"`
	Down        bool      `json:"down"`
}

func faultsJSON(f Faults) faultsView {
	return faultsView{P50: f.P50.String(), P99: f.P99.String(), ErrorRate: f.ErrorRate, TimeoutRate: f.TimeoutRate,
		Hang: f.Hang.String(), DownUntil: f.DownUntil, Down: time.Now().Before(f.DownUntil)}
}

// Apply returns f with the patch applied.
func (p FaultsPatch) Apply(f Faults) (Faults, error) {
	dur := func(name string, s *string, dst *time.Duration) error {
		if s == nil {
			return nil
		}
		d, err := time.ParseDuration(*s)
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		*dst = d
		return nil
	}
	var downFor time.Duration = -1
	for _, e := range []error{dur("p50", p.P50, &f.P50), dur("p99", p.P99, &f.P99), dur("hang", p.Hang, &f.Hang), dur("down_for", p.DownFor, &downFor)} {
		if e != nil {
			return f, e
		}
	}
	if p.ErrorRate != nil {
		f.ErrorRate = *p.ErrorRate
	}
	if p.TimeoutRate != nil {
		f.TimeoutRate = *p.TimeoutRate
	}
	if p.DownFor != nil {
		f.DownUntil = time.Now().Add(downFor)
	}
	return f, f.Validate()
}

func (b *Bank) handleFaults(w http.ResponseWriter, r *http.Request) {
	var p FaultsPatch
	if !decode(w, r, &p) {
		return
	}
	b.mu.Lock()
	f, err := p.Apply(b.faults)
	if err == nil {
		if f.Hang == 0 {
			f.Hang = 30 * time.Second
		}
		b.faults = f
	}
	b.mu.Unlock()
	if err != nil {
		writeErr(w, http.StatusBadRequest, "invalid", err.Error())
		return
	}
	writeJSON(w, http.StatusOK, faultsJSON(f))
}

func decode(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<16))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		writeErr(w, http.StatusBadRequest, "invalid", "malformed JSON body: "+err.Error())
		return false
	}
	return true
}

func writeErr(w http.ResponseWriter, status int, code, msg string) {
	writeJSON(w, status, APIError{Code: code, Message: msg})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

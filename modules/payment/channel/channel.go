package channel

import (
	"context"
	"errors"
	"net/http"
	"time"
)

// Status is the outcome of a bank operation as the channel knows it.
type Status string

// The statuses a Channel reports.
const (
	// StatusSucceeded: the bank charged (or refunded).
	StatusSucceeded Status = "succeeded"
	// StatusFailed: the bank declined; nothing moved.
	StatusFailed Status = "failed"
	// StatusInDoubt: the bank may or may not have moved money (timeout,
	// lost answer); resolve with Query (a charge) or by sending the same
	// refund again (a refund).
	StatusInDoubt Status = "in_doubt"
	// StatusProcessing: Query found the charge still being processed.
	StatusProcessing Status = "processing"
	// StatusNotFound: Query found no charge with this id: the bank never
	// processed it.
	StatusNotFound Status = "not_found"
)

// Channel is a bank channel: how the payment service moves money.
type Channel interface {
	// Pay charges req.Amount. A nil error comes with StatusSucceeded,
	// StatusFailed (declined) or StatusInDoubt. Errors: Unavailable (nothing
	// was charged: breaker open, bulkhead full, bank down), Conflict (the id
	// was used with other parameters), Invalid.
	Pay(ctx context.Context, req PayRequest) (Result, error)
	// Refund refunds part or all of a succeeded charge. A nil error comes
	// with StatusSucceeded or StatusInDoubt. Errors: Unavailable, NotFound
	// (no such charge), Conflict (the charge did not succeed, the refunds
	// would pass the charge, or the id was used with other parameters), Invalid.
	Refund(ctx context.Context, req RefundRequest) (Result, error)
	// Query asks the bank for a charge's status: StatusSucceeded, StatusFailed,
	// StatusProcessing or StatusNotFound. Errors: Unavailable.
	Query(ctx context.Context, chargeID string) (Result, error)
}

// PayRequest is a charge. ID is the idempotency key the bank deduplicates on.
type PayRequest struct {
	ID       string
	Amount   int64 // minor units
	Currency string
	Source   string // card token or wallet code
	Merchant string
}

// RefundRequest is a refund of ChargeID. ID is its own idempotency key.
type RefundRequest struct {
	ID       string
	ChargeID string
	Amount   int64
}

// Result is what the bank said (or, for StatusInDoubt, did not say).
type Result struct {
	ID            string
	Status        Status
	Amount        int64
	Currency      string
	DeclineReason string
	// Refunded is, for Query, the total refunded so far.
	Refunded int64
	// Attempts is how many attempts the call made.
	Attempts int
}

// BreakerMode is the operator's setting of a channel's circuit breaker.
type BreakerMode string

// The breaker modes.
const (
	BreakerAuto         BreakerMode = "auto"
	BreakerForcedOpen   BreakerMode = "forced_open"
	BreakerForcedClosed BreakerMode = "forced_closed"
)

// Config configures an HTTP channel. Zero values take the defaults shown.
type Config struct {
	Name    string // required
	BaseURL string // required: the bank's base URL
	// Client is the HTTP client (default: a client with its own transport).
	Client *http.Client

	TimeoutFloor   time.Duration // 50ms
	TimeoutCeiling time.Duration // 5s
	InitialTimeout time.Duration // TimeoutCeiling
	Window         int           // 200 latency samples
	MinSamples     int           // 20

	MaxAttempts int           // 3
	BackoffMin  time.Duration // 20ms
	BackoffMax  time.Duration // 500ms

	BreakerFailureRate float64       // 0.5
	BreakerMinCalls    uint          // 10
	BreakerPeriod      time.Duration // 10s
	BreakerDelay       time.Duration // 5s
	BreakerSuccesses   uint          // 3
	SlowCall           time.Duration // 2s

	MaxConcurrent uint // 64
}

func (c *Config) defaults() error {
	if c.Name == "" || c.BaseURL == "" {
		return errors.New("channel: Name and BaseURL are required")
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&c.TimeoutFloor, 50*time.Millisecond)
	def(&c.TimeoutCeiling, 5*time.Second)
	def(&c.InitialTimeout, c.TimeoutCeiling)
	def(&c.BackoffMin, 20*time.Millisecond)
	def(&c.BackoffMax, 500*time.Millisecond)
	def(&c.BreakerPeriod, 10*time.Second)
	def(&c.BreakerDelay, 5*time.Second)
	def(&c.SlowCall, 2*time.Second)
	if c.TimeoutCeiling < c.TimeoutFloor {
		return errors.New("channel: TimeoutCeiling is below TimeoutFloor")
	}
	if c.Window <= 0 {
		c.Window = 200
	}
	if c.MinSamples <= 0 {
		c.MinSamples = 20
	}
	if c.MinSamples > c.Window {
		c.MinSamples = c.Window
	}
	if c.MaxAttempts <= 0 {
		c.MaxAttempts = 3
	}
	if c.BreakerFailureRate <= 0 || c.BreakerFailureRate > 1 {
		c.BreakerFailureRate = 0.5
	}
	if c.BreakerMinCalls == 0 {
		c.BreakerMinCalls = 10
	}
	if c.BreakerSuccesses == 0 {
		c.BreakerSuccesses = 3
	}
	if c.MaxConcurrent == 0 {
		c.MaxConcurrent = 64
	}
	if c.Client == nil {
		c.Client = &http.Client{Transport: &http.Transport{
			MaxIdleConnsPerHost: int(c.MaxConcurrent),
			IdleConnTimeout:     90 * time.Second,
		}}
	}
	return nil
}

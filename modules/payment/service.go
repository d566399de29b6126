// Package payment is the POS payment core: merchants, idempotent payments
// through bank channels (modules/payment/channel) behind timeouts, circuit
// breakers and bulkheads, recovery of payments left in doubt, refunds and
// voids, card numbers sealed with AES-256-GCM, a double-entry ledger and a
// pull-based event feed (the outbox).
//
// The paying path (Create) is: validate → transaction 1 (idempotency key,
// payment row "processing") → the channel call, outside any transaction →
// transaction 2 (outcome, transition, ledger entries, outbox event, stored
// response). A crash between any two steps leaves a row the recovery worker
// (one leader in the cluster) resolves by asking the bank.
package payment

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/atriumhq/atrium/modules/payment/channel"

	"github.com/atriumhq/atrium/platform/keyring"
	"github.com/atriumhq/atrium/platform/postgres"
	"github.com/atriumhq/atrium/platform/redisx"
)

// Terminal is what the payment module needs to know of a POS terminal.
type Terminal struct {
	MerchantRef string
	TestMode    bool
}

// Terminals looks up terminals (the auth module, which owns them).
type Terminals interface {
	TerminalProfile(ctx context.Context, id string) (Terminal, error)
}

// Usage meters succeeded live payments (the quota module's meter).
type Usage interface {
	AddPayment(ctx context.Context, tenant, currency string, amountMinor int64) error
}

// Config configures the payment module.
type Config struct {
	// Channels are the bank channels, "name=base-url" entries in priority order.
	Channels []string
	// TestChannels are the channels of test-mode payments (simulated banks),
	// in the same form; test-mode payments use no other.
	TestChannels []string
	// IdempotencyTTL is how long idempotency keys are kept (at least 24h).
	IdempotencyTTL time.Duration
	// RecoverAfter is how long a payment may stay processing before the
	// recovery worker asks the bank about it; it must exceed the longest
	// a request can run.
	RecoverAfter time.Duration
	// RecoveryInterval is how often the recovery leader scans.
	RecoveryInterval time.Duration
	// CallTimeout bounds one payment's or refund's channel calls, failover
	// included, whatever the client does (default 20s).
	CallTimeout time.Duration
	// Channel is the template of every channel's configuration (timeouts,
	// retries, breaker, bulkhead); Name and BaseURL come from Channels.
	Channel channel.Config
}

// Deps are what the payment module needs from the process.
type Deps struct {
	Tx        *postgres.Tx
	Redis     *redisx.Client
	Log       zerolog.Logger
	Cards     *keyring.Keyring
	Terminals Terminals
	Usage     Usage
	Instance  string
	Now       func() time.Time
}

// Service is the payment module.
type Service struct {
	cfg      Config
	tx       *postgres.Tx
	redis    *redisx.Client
	log      zerolog.Logger
	cards    *keyring.Keyring
	terms    Terminals
	usage    Usage
	instance string
	now      func() time.Time
	channels *Channels
	accounts accountCache
}

// New builds the payment module.
func New(cfg Config, deps Deps) (*Service, error) {
	if cfg.IdempotencyTTL < 24*time.Hour {
		cfg.IdempotencyTTL = 24 * time.Hour
	}
	if cfg.CallTimeout <= 0 {
		cfg.CallTimeout = 20 * time.Second
	}
	if cfg.RecoverAfter < cfg.CallTimeout+5*time.Second {
		cfg.RecoverAfter = max(2*cfg.CallTimeout, cfg.CallTimeout+5*time.Second)
	}
	if cfg.RecoveryInterval <= 0 {
		cfg.RecoveryInterval = 5 * time.Second
	}
	if deps.Now == nil {
		deps.Now = func() time.Time { return time.Now().UTC() }
	}
	if deps.Cards == nil || deps.Terminals == nil || deps.Tx == nil {
		return nil, errors.New("payment: Tx, Cards and Terminals are required")
	}
	chs, err := NewChannels(cfg.Channels, cfg.Channel)
	if err != nil {
		return nil, err
	}
	if err := chs.AddTest(cfg.TestChannels, cfg.Channel); err != nil {
		return nil, err
	}
	if err := chs.Connect(ChannelsDeps{Tx: deps.Tx, Redis: deps.Redis, Log: deps.Log, Instance: deps.Instance, Now: deps.Now}); err != nil {
		return nil, err
	}
	return &Service{cfg: cfg, tx: deps.Tx, redis: deps.Redis, log: deps.Log, cards: deps.Cards, terms: deps.Terminals,
		usage: deps.Usage, instance: deps.Instance, now: deps.Now, channels: chs}, nil
}

// Run runs the module's background work until ctx ends: the recovery
// worker, while this instance leads, and the channels' share of the
// cluster (Channels.Run) on every instance.
func (s *Service) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	wg.Go(func() { s.runRecovery(ctx) })
	wg.Go(func() { _ = s.channels.Run(ctx) })
	wg.Wait()
	return nil
}

// Channels returns the bank channels (their dashboard and breaker switch).
func (s *Service) Channels() *Channels { return s.channels }

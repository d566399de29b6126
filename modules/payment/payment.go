package payment

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"math"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/atriumhq/atrium/modules/payment/channel"
	"github.com/atriumhq/atrium/platform/errs"
	"github.com/atriumhq/atrium/platform/postgres"
	"github.com/atriumhq/atrium/platform/principal"
)

// Payment statuses. processing → succeeded | failed | in_doubt;
// in_doubt → succeeded | failed (recovery); succeeded → partially_refunded
// → refunded; succeeded → voided (same UTC day, before settlement).
const (
	StatusProcessing        = "processing"
	StatusSucceeded         = "succeeded"
	StatusFailed            = "failed"
	StatusInDoubt           = "in_doubt"
	StatusPartiallyRefunded = "partially_refunded"
	StatusRefunded          = "refunded"
	StatusVoided            = "voided"
)

// Method is how a payment is paid: a card, or a QR/wallet code.
type Method struct {
	Type string `json:"type"` // card or wallet
	Card
	Code string `json:"code,omitempty"` // the wallet's one-time payment code
}

// String keeps card numbers and wallet codes out of formatted output.
func (m Method) String() string {
	if m.Type == "card" {
		return m.Card.String()
	}
	return m.Type
}

// GoString keeps card numbers out of %#v.
func (m Method) GoString() string { return m.String() }

// Discounts are what the customer redeems: a spend-X-save-Y promotion of
// the merchant's and loyalty points.
type Discounts struct {
	PromotionID string `json:"promotion_id,omitempty"`
	Points      int64  `json:"points,omitempty"`
}

// NewPayment is the body of POST /api/v1/payments.
type NewPayment struct {
	Amount      int64           `json:"amount"`   // minor units, before discounts
	Currency    string          `json:"currency"` // ISO 4217
	Method      Method          `json:"method"`
	CustomerRef string          `json:"customer_ref,omitempty"`
	Device      json.RawMessage `json:"device,omitempty"`
	Discounts   Discounts       `json:"discounts"`
	// Payable, when sent, is what the terminal computed; the server
	// computes it from the discount rules and refuses a mismatch.
	Payable *int64 `json:"payable,omitempty"`
}

// Transition is one state change of a payment or one of its refunds.
type Transition struct {
	Status   string    `json:"status"`
	RefundID string    `json:"refund_id,omitempty"`
	Detail   string    `json:"detail,omitempty"`
	At       time.Time `json:"at"`
}

// CardView is what is shown of a card.
type CardView struct {
	BIN   string `json:"bin"`
	Last4 string `json:"last4"`
}

// Payment is a payment as the API shows it.
type Payment struct {
	ID             string          `json:"id"`
	TenantID       string          `json:"tenant_id"`
	MerchantID     string          `json:"merchant_id"`
	TerminalID     string          `json:"terminal_id"`
	OrderNo        string          `json:"order_no"`
	Livemode       bool            `json:"livemode"`
	Amount         int64           `json:"amount"`
	Currency       string          `json:"currency"`
	PromotionID    string          `json:"promotion_id,omitempty"`
	Discount       int64           `json:"discount"`
	Points         int64           `json:"points"`
	PointsAmount   int64           `json:"points_amount"`
	Payable        int64           `json:"payable"`
	Fee            int64           `json:"fee"`
	Method         string          `json:"method"`
	Card           *CardView       `json:"card,omitempty"`
	WalletCode     string          `json:"wallet_code,omitempty"` // masked
	CustomerRef    string          `json:"customer_ref,omitempty"`
	Device         json.RawMessage `json:"device,omitempty"`
	Status         string          `json:"status"`
	Channel        string          `json:"channel"`
	DeclineReason  string          `json:"decline_reason,omitempty"`
	Refunded       int64           `json:"refunded"`
	RefundReserved int64           `json:"refund_pending"`
	CreatedAt      time.Time       `json:"created_at"`
	UpdatedAt      time.Time       `json:"updated_at"`
	Timeline       []Transition    `json:"timeline,omitempty"`
	Refunds        []Refund        `json:"refunds,omitempty"`
}

const paymentCols = `id, tenant_id, merchant_id, terminal_id, order_no, livemode, amount, currency, promotion_id, discount,
	points, points_amount, payable, fee, method, card_bin, card_last4, wallet_code, customer_ref, device, status, channel,
	decline_reason, refunded, refund_reserved, created_at, updated_at`

func scanPayment(r pgx.Row) (*Payment, error) {
	var p Payment
	var promo, bin, last4, wallet, cust, decline *string
	err := r.Scan(&p.ID, &p.TenantID, &p.MerchantID, &p.TerminalID, &p.OrderNo, &p.Livemode, &p.Amount, &p.Currency,
		&promo, &p.Discount, &p.Points, &p.PointsAmount, &p.Payable, &p.Fee, &p.Method, &bin, &last4, &wallet, &cust,
		&p.Device, &p.Status, &p.Channel, &decline, &p.Refunded, &p.RefundReserved, &p.CreatedAt, &p.UpdatedAt)
	if err != nil {
		return nil, err
	}
	deref := func(s *string) string {
		if s == nil {
			return ""
		}
		return *s
	}
	p.PromotionID, p.WalletCode, p.CustomerRef, p.DeclineReason = deref(promo), deref(wallet), deref(cust), deref(decline)
	if bin != nil {
		p.Card = &CardView{BIN: *bin, Last4: deref(last4)}
	}
	return &p, nil
}

// rowTo makes a scan function of single rows into a pgx.RowToFunc.
func rowTo[T any](scan func(pgx.Row) (*T, error)) pgx.RowToFunc[T] {
	return func(r pgx.CollectableRow) (T, error) {
		v, err := scan(r)
		if err != nil {
			var zero T
			return zero, err
		}
		return *v, nil
	}
}

// validate checks what can be checked without the merchant. It never puts
// the card number or wallet code in an error.
func (in *NewPayment) validate(now time.Time) error {
	if in.Amount <= 0 {
		return errs.Field("amount", "must be a positive number of minor units")
	}
	if in.Amount > 1e13 {
		return errs.Field("amount", "is too large")
	}
	in.Currency = strings.ToUpper(strings.TrimSpace(in.Currency))
	if len(in.Currency) != 3 || strings.Trim(in.Currency, "ABCDEFGHIJKLMNOPQRSTUVWXYZ") != "" {
		return errs.Field("currency", "must be a three-letter ISO 4217 code")
	}
	switch in.Method.Type {
	case "card":
		if in.Method.Code != "" {
			return errs.Field("method.code", "is for wallet payments only")
		}
		if err := in.Method.Card.validate(now); err != nil {
			return err
		}
	case "wallet":
		if in.Method.Number != "" || in.Method.ExpMonth != 0 || in.Method.ExpYear != 0 {
			return errs.Field("method.number", "is for card payments only")
		}
		if c := strings.TrimSpace(in.Method.Code); len(c) < 8 || len(c) > 64 || !cleanText(c) {
			return errs.Field("method.code", "must be 8 to 64 characters")
		}
	case "":
		return errs.Field("method.type", "is required: card or wallet")
	default:
		return errs.Field("method.type", "must be card or wallet")
	}
	if len(in.CustomerRef) > 64 || !cleanText(in.CustomerRef) {
		return errs.Field("customer_ref", "must be at most 64 characters, without control characters")
	}
	if len(in.Device) > 0 {
		if len(in.Device) > 2048 {
			return errs.Field("device", "must be at most 2048 bytes")
		}
		var obj map[string]any
		if json.Unmarshal(in.Device, &obj) != nil || obj == nil {
			return errs.Field("device", "must be a JSON object")
		}
		// PostgreSQL's jsonb cannot hold a NUL character.
		if bytes.Contains(in.Device, []byte(`\u0000`)) {
			return errs.Field("device", "must not contain NUL characters")
		}
	}
	if len(in.Discounts.PromotionID) > 64 || !cleanText(in.Discounts.PromotionID) {
		return errs.Field("discounts.promotion_id", "must be at most 64 characters")
	}
	if in.Discounts.Points < 0 {
		return errs.Field("discounts.points", "must not be negative")
	}
	if in.Discounts.Points > 0 && in.CustomerRef == "" {
		return errs.Field("discounts.points", "redeeming points needs the customer_ref whose points they are")
	}
	if in.Payable != nil && *in.Payable <= 0 {
		return errs.Field("payable", "must be positive")
	}
	return nil
}

// fingerprint identifies a request's parameters for idempotency. The card
// number is reduced to its BIN and last four, so no PAN-derived hash is kept.
func (in NewPayment) fingerprint(kind string) []byte {
	c := in
	if c.Method.Type == "card" {
		c.Method.Number = maskPAN(c.Method.Number)
	}
	b, _ := json.Marshal(c)
	return fingerprintOf(kind, b)
}

func fingerprintOf(kind string, body []byte) []byte {
	sum := sha256.Sum256(append([]byte(kind+"\x00"), body...))
	return sum[:]
}

// price applies the merchant's discount rules and fee schedule.
type price struct {
	discount, pointsAmount, payable, fee int64
}

func (m *Merchant) price(in NewPayment) (price, error) {
	var p price
	if id := in.Discounts.PromotionID; id != "" {
		var promo *Promotion
		for i := range m.Promotions {
			if m.Promotions[i].ID == id {
				promo = &m.Promotions[i]
			}
		}
		if promo == nil {
			return p, errs.Field("discounts.promotion_id", "the merchant has no promotion %q", id)
		}
		if in.Amount < promo.Spend {
			return p, errs.Field("discounts.promotion_id", "promotion %q needs a spend of at least %d; the amount is %d", id, promo.Spend, in.Amount)
		}
		p.discount = promo.Save
	}
	if in.Discounts.Points > 0 {
		if m.PointValue == 0 {
			return p, errs.Field("discounts.points", "this merchant does not take points")
		}
		if in.Discounts.Points > math.MaxInt64/m.PointValue {
			return p, errs.Field("discounts.points", "is too large")
		}
		p.pointsAmount = in.Discounts.Points * m.PointValue
	}
	p.payable = in.Amount - p.discount - p.pointsAmount
	if p.payable <= 0 {
		return p, errs.Field("discounts", "the discounts (%d) and points (%d) leave nothing to pay on %d", p.discount, p.pointsAmount, in.Amount)
	}
	if in.Payable != nil && *in.Payable != p.payable {
		return p, errs.Field("payable", "is %d, but the discounts make it %d", *in.Payable, p.payable)
	}
	p.fee = min(p.payable, (p.payable*int64(m.FeeBPS)+5000)/10000+m.FeeFixed)
	return p, nil
}

// Response is an API response as stored for an idempotency key.
type Response struct {
	Status int
	Body   []byte
	// Replayed reports a stored response answered again.
	Replayed bool
}

// Create takes a payment from a terminal. key is the Idempotency-Key. A
// returned error was not stored (validation, a concurrent request with the
// key, every channel refusing): the caller may send the same key again.
func (s *Service) Create(ctx context.Context, key string, in NewPayment) (*Response, error) {
	p := principal.From(ctx)
	if p == nil || p.Kind != principal.Terminal {
		return nil, errs.E(errs.Forbidden, "payments are taken by POS terminals; use a terminal's access token")
	}
	if err := checkKey(key); err != nil {
		return nil, err
	}
	now := s.now()
	if err := in.validate(now); err != nil {
		return nil, err
	}
	term, err := s.terms.TerminalProfile(ctx, p.ID)
	if err != nil {
		return nil, err
	}
	pay := &Payment{ID: uuid.Must(uuid.NewV7()).String(), TenantID: p.TenantID, TerminalID: p.ID, Livemode: !term.TestMode,
		Amount: in.Amount, Currency: in.Currency, PromotionID: in.Discounts.PromotionID, Points: in.Discounts.Points,
		Method: in.Method.Type, CustomerRef: in.CustomerRef, Device: in.Device, Status: StatusProcessing,
		CreatedAt: now, UpdatedAt: now}
	var sealed *string
	if in.Method.Type == "card" {
		pay.Card = &CardView{BIN: in.Method.Number[:6], Last4: in.Method.Number[len(in.Method.Number)-4:]}
		v := s.sealCard(pay.ID, in.Method.Card)
		sealed = &v
	} else {
		pay.WalletCode = "****" + in.Method.Code[len(in.Method.Code)-4:]
	}

	var routes []*namedChannel
	var merchant *Merchant
	var replay *Response
	// The terminal is part of the request: another terminal sending the same
	// key (a receipt counter, say) is told so (422), never handed this one's
	// payment.
	hash := in.fingerprint("payment:" + p.ID)
	for attempt := 0; ; attempt++ {
		pay.OrderNo = newOrderNo(now)
		err = s.tx.Do(ctx, "payment.begin", func(tx pgx.Tx) error {
			var err error
			if replay, err = s.claimKey(ctx, tx, p.TenantID, key, hash, pay.ID, "", now); err != nil || replay != nil {
				return err
			}
			if merchant, err = merchantByRef(ctx, tx, term.MerchantRef); err != nil {
				return err
			}
			pr, err := merchant.price(in)
			if err != nil {
				return err
			}
			pay.MerchantID, pay.Discount, pay.PointsAmount, pay.Payable, pay.Fee = merchant.ID, pr.discount, pr.pointsAmount, pr.payable, pr.fee
			if routes, err = s.channels.route(merchant.Channels, pay.Livemode); err != nil {
				return err
			}
			pay.Channel = routes[0].name
			_, err = tx.Exec(ctx, `WITH p AS (
				INSERT INTO payments (id, tenant_id, merchant_id, terminal_id, order_no, livemode, amount, currency, promotion_id,
					discount, points, points_amount, payable, fee, method, card_bin, card_last4, card_sealed, wallet_code,
					customer_ref, device, status, channel, created_at, updated_at, idempotency_key)
				VALUES ($1, $2, $3, $4, $5, $6, $7, $8, NULLIF($9, ''), $10, $11, $12, $13, $14, $15, $16, $17, $18,
					NULLIF($19, ''), NULLIF($20, ''), $21, 'processing', $22, $23, clock_timestamp(), $24)
				RETURNING id, tenant_id, created_at)
				INSERT INTO payment_transitions (tenant_id, payment_id, status, at) SELECT tenant_id, id, 'processing', created_at FROM p`,
				pay.ID, pay.TenantID, pay.MerchantID, pay.TerminalID, pay.OrderNo, pay.Livemode, pay.Amount, pay.Currency,
				pay.PromotionID, pay.Discount, pay.Points, pay.PointsAmount, pay.Payable, pay.Fee, pay.Method,
				cardField(pay.Card, true), cardField(pay.Card, false), sealed, pay.WalletCode, pay.CustomerRef,
				nullJSON(pay.Device), pay.Channel, now, key)
			return err
		})
		if postgres.IsUnique(err, "payments_tenant_id_order_no_key") && attempt < 3 {
			continue // an order number collided (2^-40 per pair in a second): draw another
		}
		break
	}
	if err != nil {
		return nil, err
	}
	if replay != nil {
		return replay, nil
	}
	return s.pay(ctx, pay, routes, in.Method.source())
}

func cardField(c *CardView, bin bool) *string {
	if c == nil {
		return nil
	}
	if bin {
		return &c.BIN
	}
	return &c.Last4
}

func nullJSON(b json.RawMessage) any {
	if len(b) == 0 {
		return nil
	}
	return []byte(b)
}

// cleanText reports whether s is valid UTF-8 without control characters
// (PostgreSQL's text refuses NUL; the others have no place in these fields).
func cleanText(s string) bool {
	if !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if unicode.IsControl(r) {
			return false
		}
	}
	return true
}

// pay calls the channels in route order, failing over while a channel
// refuses without charging, and records the outcome.
func (s *Service) pay(ctx context.Context, pay *Payment, routes []*namedChannel, source string) (*Response, error) {
	// The bank calls, failover included, end within CallTimeout whatever the
	// terminal does; recording their outcome gets its own deadline, so a
	// payment charged at the last moment is still recorded.
	ctx = context.WithoutCancel(ctx)
	callCtx, cancel := context.WithTimeout(ctx, s.cfg.CallTimeout)
	defer cancel()
	record := func() (context.Context, context.CancelFunc) { return context.WithTimeout(ctx, recordTimeout) }
	var last error
	for i, nc := range routes {
		if i > 0 {
			rctx, done := record()
			err := s.failover(rctx, pay, routes[i-1].name, nc.name, last)
			done()
			if err != nil {
				return nil, err
			}
		}
		res, err := nc.ch.Pay(callCtx, channel.PayRequest{ID: pay.ID, Amount: pay.Payable, Currency: pay.Currency,
			Source: source, Merchant: pay.MerchantID})
		if errs.CodeOf(err) == errs.Unavailable {
			last = err
			continue // nothing was charged: the next channel may take it
		}
		out := outcomeOf(res, err)
		if out.status == StatusInDoubt {
			s.log.Warn().Ctx(ctx).Err(err).Str("payment", pay.ID).Str("channel", nc.name).Msg("payment in doubt: the recovery worker will ask the bank")
		}
		rctx, done := record()
		defer done()
		resp, err := s.finish(rctx, pay, out)
		if err != nil {
			// The bank answered but the outcome could not be recorded: the
			// payment stays processing and the recovery worker records it.
			// The terminal must not pay again: it is told to ask.
			s.log.Error().Ctx(ctx).Err(err).Str("payment", pay.ID).Str("outcome", out.status).Msg("recording a payment's outcome failed; recovery will")
			return nil, &errs.Error{Code: errs.Unavailable, Extra: map[string]any{"retry_after_seconds": 5, "payment_id": pay.ID},
				Message: "the payment's outcome could not be recorded yet; do not pay again: ask GET /api/v1/payments/" + pay.ID + " or retry with the same Idempotency-Key"}
		}
		return resp, nil
	}
	// Every channel refused: nothing was charged. The payment is recorded as
	// failed and the key released, so the terminal may retry with it.
	rctx, done := record()
	defer done()
	return nil, s.abandon(rctx, pay, last)
}

// recordTimeout bounds recording an outcome after the bank call.
const recordTimeout = 10 * time.Second

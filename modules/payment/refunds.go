package payment

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/atriumhq/atrium/modules/payment/channel"
	"github.com/atriumhq/atrium/platform/auditlog"
	"github.com/atriumhq/atrium/platform/errs"
	"github.com/atriumhq/atrium/platform/postgres"
	"github.com/atriumhq/atrium/platform/principal"
)

// Refund is a refund (or void) of part or all of a succeeded payment.
type Refund struct {
	ID        string    `json:"id"`
	PaymentID string    `json:"payment_id"`
	TenantID  string    `json:"tenant_id"`
	Livemode  bool      `json:"livemode"`
	Amount    int64     `json:"amount"`
	Currency  string    `json:"currency"`
	Kind      string    `json:"kind"` // refund or void
	Reason    string    `json:"reason,omitempty"`
	Status    string    `json:"status"` // processing, succeeded, failed, in_doubt
	Channel   string    `json:"channel"`
	CreatedBy string    `json:"created_by"`
	CreatedAt time.Time `json:"created_at"`
	UpdatedAt time.Time `json:"updated_at"`
}

// NewRefund is the body of POST /api/v1/payments/{id}/refunds.
type NewRefund struct {
	// Amount defaults to everything still refundable.
	Amount *int64 `json:"amount,omitempty"`
	Reason string `json:"reason,omitempty"`
}

const refundCols = `id, payment_id, tenant_id, livemode, amount, currency, kind, COALESCE(reason, ''), status, channel,
	created_by, created_at, updated_at`

func scanRefund(r pgx.Row) (*Refund, error) {
	var x Refund
	err := r.Scan(&x.ID, &x.PaymentID, &x.TenantID, &x.Livemode, &x.Amount, &x.Currency, &x.Kind, &x.Reason, &x.Status,
		&x.Channel, &x.CreatedBy, &x.CreatedAt, &x.UpdatedAt)
	return &x, err
}

// CreateRefund refunds part or all of a payment (kind "refund"), or voids
// it (kind "void": the whole amount and the fee, the same UTC day, before
// any refund, as before settlement). Concurrent refunds never together
// pass the payment's amount: each reserves its amount on the payment row
// under the row's lock before the bank is called.
func (s *Service) CreateRefund(ctx context.Context, key, paymentID, kind string, in NewRefund) (*Response, error) {
	if err := principal.Check(ctx, "payments:refund"); err != nil {
		return nil, err
	}
	if err := checkKey(key); err != nil {
		return nil, err
	}
	if in.Amount != nil && *in.Amount <= 0 {
		return nil, errs.Field("amount", "must be a positive number of minor units")
	}
	if kind == "void" && in.Amount != nil {
		return nil, errs.Field("amount", "a void is always of the whole payment; leave amount out")
	}
	in.Reason = strings.TrimSpace(in.Reason)
	if len(in.Reason) > 200 || !cleanText(in.Reason) {
		return nil, errs.Field("reason", "must be at most 200 characters, without control characters")
	}
	// The payment's tenant scopes everything after (a platform
	// administrator reads it across tenants; anyone else only sees theirs).
	pay, err := s.load(ctx, paymentID)
	if err != nil {
		return nil, err
	}
	ctx = postgres.WithTenant(ctx, pay.TenantID)
	raw, _ := json.Marshal(in)
	hash := fingerprintOf(kind+":"+paymentID, raw)
	now := s.now()
	ref := &Refund{ID: uuid.Must(uuid.NewV7()).String(), PaymentID: paymentID, TenantID: pay.TenantID, Kind: kind,
		Reason: in.Reason, Status: StatusProcessing, CreatedBy: auditlog.Actor(ctx), CreatedAt: now, UpdatedAt: now}
	var replay *Response
	err = s.tx.Do(ctx, "refund.begin", func(tx pgx.Tx) error {
		var err error
		if replay, err = s.claimKey(ctx, tx, pay.TenantID, key, hash, paymentID, ref.ID, now); err != nil || replay != nil {
			return err
		}
		p, err := scanPayment(tx.QueryRow(ctx, `SELECT `+paymentCols+` FROM payments WHERE id = $1 FOR UPDATE`, paymentID))
		if err != nil {
			return err
		}
		if p.Status != StatusSucceeded && p.Status != StatusPartiallyRefunded {
			return errs.E(errs.Conflict, "payment %s is %s; only a succeeded payment can be refunded or voided", p.OrderNo, p.Status)
		}
		refundable := p.Payable - p.Refunded - p.RefundReserved
		switch {
		case kind == "void" && (p.Refunded > 0 || p.RefundReserved > 0):
			return errs.E(errs.Conflict, "payment %s has refunds; it can no longer be voided", p.OrderNo)
		case kind == "void" && !sameUTCDay(p.CreatedAt, now):
			return errs.E(errs.Conflict, "payment %s was taken before today's settlement cut-off (00:00 UTC); refund it instead", p.OrderNo)
		case in.Amount == nil:
			ref.Amount = refundable
		case *in.Amount > refundable:
			return errs.Field("amount", "is %d, but only %d of the payment's %d is refundable", *in.Amount, refundable, p.Payable)
		default:
			ref.Amount = *in.Amount
		}
		if ref.Amount <= 0 {
			return errs.E(errs.Conflict, "payment %s has nothing left to refund", p.OrderNo)
		}
		ref.Livemode, ref.Currency, ref.Channel = p.Livemode, p.Currency, p.Channel
		if _, err := tx.Exec(ctx, `UPDATE payments SET refund_reserved = refund_reserved + $2, updated_at = $3 WHERE id = $1`,
			paymentID, ref.Amount, now); err != nil {
			return err
		}
		b := &pgx.Batch{}
		b.Queue(`INSERT INTO refunds (id, tenant_id, payment_id, livemode, amount, currency, kind, reason, status, channel, created_by, created_at, updated_at)
			VALUES ($1, $2, $3, $4, $5, $6, $7, NULLIF($8, ''), 'processing', $9, $10, $11, clock_timestamp())`,
			ref.ID, ref.TenantID, paymentID, ref.Livemode, ref.Amount, ref.Currency, kind, ref.Reason, ref.Channel, ref.CreatedBy, now)
		queueTransition(b, ref.TenantID, paymentID, ref.ID, StatusProcessing, kind+" requested", now)
		if err := runBatch(ctx, tx, b); err != nil {
			return err
		}
		return auditlog.Record(ctx, tx, now, ref.TenantID, ref.CreatedBy, "payment."+kind, "payment:"+paymentID,
			map[string]any{"refund": ref.ID, "amount": ref.Amount})
	})
	if err != nil {
		return nil, err
	}
	if replay != nil {
		return replay, nil
	}
	// As for payments: the bank call and the recording of its outcome run
	// to their end whatever the client does.
	ctx = context.WithoutCancel(ctx)
	rctx, done := context.WithTimeout(ctx, s.cfg.CallTimeout+recordTimeout)
	defer done()
	nc, ok := s.channels.get(ref.Channel)
	if !ok {
		return nil, s.abandonRefund(rctx, ref, errs.E(errs.Unavailable, "bank channel %s is no longer configured", ref.Channel))
	}
	cctx, cancel := context.WithTimeout(ctx, s.cfg.CallTimeout)
	defer cancel()
	res, err := nc.ch.Refund(cctx, channel.RefundRequest{ID: ref.ID, ChargeID: paymentID, Amount: ref.Amount})
	if errs.CodeOf(err) == errs.Unavailable {
		return nil, s.abandonRefund(rctx, ref, err)
	}
	return s.finishRefund(rctx, ref, refundOutcome(res, err))
}

func sameUTCDay(a, b time.Time) bool {
	ay, am, ad := a.UTC().Date()
	by, bm, bd := b.UTC().Date()
	return ay == by && am == bm && ad == bd
}

// refundOutcome maps the channel's answer to a refund. Refunds carry their
// own id, which the bank deduplicates, so an in-doubt refund is resolved
// by sending it again.
func refundOutcome(res channel.Result, err error) outcome {
	switch errs.CodeOf(err) {
	case "":
		if res.Status == channel.StatusSucceeded {
			return outcome{status: StatusSucceeded}
		}
		return outcome{StatusInDoubt, "no_answer_from_bank"}
	case errs.NotFound, errs.Conflict, errs.Invalid:
		return outcome{StatusFailed, "bank_refused: " + errs.As(err).Message}
	}
	return outcome{StatusInDoubt, "no_answer_from_bank"}
}

// finishRefund records a refund's outcome with the payment's new refunded
// total and status, the ledger entries, the event and the stored response.
func (s *Service) finishRefund(ctx context.Context, ref *Refund, out outcome) (*Response, error) {
	ctx = postgres.WithTenant(ctx, ref.TenantID)
	var acc accounts
	var pay *Payment
	if out.status == StatusSucceeded {
		var err error
		if pay, err = s.load(ctx, ref.PaymentID); err != nil {
			return nil, err
		}
		if acc, err = s.accountsFor(ctx, ref.TenantID, pay.MerchantID, pay.Currency, pay.Livemode); err != nil {
			return nil, err
		}
	}
	now := s.now()
	var resp *Response
	err := s.tx.Do(ctx, "refund.finish", func(tx pgx.Tx) error {
		r, err := scanRefund(tx.QueryRow(ctx, `UPDATE refunds SET status = $2, updated_at = $3
			WHERE id = $1 AND status IN ('processing', 'in_doubt') AND status <> $2 RETURNING `+refundCols, ref.ID, out.status, now))
		if postgres.IsNoRows(err) {
			if r, err = scanRefund(tx.QueryRow(ctx, `SELECT `+refundCols+` FROM refunds WHERE id = $1`, ref.ID)); err != nil {
				return err
			}
			resp, err = storeResponse(ctx, tx, r.TenantID, r.PaymentID, r.ID, refundStatus(r), r)
			return err
		}
		if err != nil {
			return err
		}
		b := &pgx.Batch{}
		queueTransition(b, r.TenantID, r.PaymentID, r.ID, out.status, strings.TrimSpace(r.Kind+" "+out.reason), now)
		switch out.status {
		case StatusSucceeded:
			p, err := scanPayment(tx.QueryRow(ctx, `UPDATE payments SET refunded = refunded + $2, refund_reserved = refund_reserved - $2,
				status = CASE WHEN $3 = 'void' THEN 'voided' WHEN refunded + $2 = payable THEN 'refunded' ELSE 'partially_refunded' END,
				updated_at = $4 WHERE id = $1 RETURNING `+paymentCols, r.PaymentID, r.Amount, r.Kind, now))
			if err != nil {
				return err
			}
			queueTransition(b, r.TenantID, r.PaymentID, "", p.Status, "", now)
			if r.Kind == "void" {
				queueEntry(b, r.TenantID, "void", r.PaymentID, r.ID, r.Currency, r.Livemode, now,
					posting{acc.payable, r.Amount}, posting{acc.clearing, -r.Amount})
				queueEntry(b, r.TenantID, "fee_reversal", r.PaymentID, r.ID, r.Currency, r.Livemode, now,
					posting{acc.fees, p.Fee}, posting{acc.payable, -p.Fee})
			} else {
				queueEntry(b, r.TenantID, "refund", r.PaymentID, r.ID, r.Currency, r.Livemode, now,
					posting{acc.payable, r.Amount}, posting{acc.clearing, -r.Amount})
			}
			queueEvent(b, r.TenantID, "payment."+p.Status, "payment:"+p.ID, p.Livemode, p)
		case StatusFailed:
			b.Queue(`UPDATE payments SET refund_reserved = refund_reserved - $2, updated_at = $3 WHERE id = $1`, r.PaymentID, r.Amount, now)
		}
		if resp, err = queueResponse(b, r.TenantID, r.PaymentID, r.ID, refundStatus(r), r); err != nil {
			return err
		}
		queueEvent(b, r.TenantID, "refund."+out.status, "refund:"+r.ID, r.Livemode, json.RawMessage(resp.Body))
		return runBatch(ctx, tx, b)
	})
	return resp, err
}

func refundStatus(r *Refund) int {
	if r.Status == StatusInDoubt || r.Status == StatusProcessing {
		return http.StatusAccepted
	}
	return http.StatusCreated
}

// abandonRefund records a refund no channel took (nothing was refunded)
// as failed, gives its reservation back and releases its key.
func (s *Service) abandonRefund(ctx context.Context, ref *Refund, cause error) error {
	ctx = postgres.WithTenant(ctx, ref.TenantID)
	now := s.now()
	err := s.tx.Do(ctx, "refund.abandon", func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `UPDATE refunds SET status = 'failed', updated_at = $2 WHERE id = $1 AND status = 'processing'`, ref.ID, now)
		if err != nil || tag.RowsAffected() != 1 {
			return err
		}
		b := &pgx.Batch{}
		b.Queue(`UPDATE payments SET refund_reserved = refund_reserved - $2, updated_at = $3 WHERE id = $1`, ref.PaymentID, ref.Amount, now)
		queueTransition(b, ref.TenantID, ref.PaymentID, ref.ID, StatusFailed, ref.Kind+" channel_unavailable", now)
		ref.Status = StatusFailed
		queueEvent(b, ref.TenantID, "refund.failed", "refund:"+ref.ID, ref.Livemode, ref)
		if err := runBatch(ctx, tx, b); err != nil {
			return err
		}
		return releaseKey(ctx, tx, ref.TenantID, ref.PaymentID, ref.ID)
	})
	if err != nil {
		return err
	}
	e := errs.As(cause)
	return &errs.Error{Code: errs.Unavailable, Extra: withRetryAfter(e.Extra),
		Message: "the bank channel did not take the " + ref.Kind + " (" + e.Message + "); nothing was refunded: retry later with the same Idempotency-Key"}
}

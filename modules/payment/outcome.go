package payment

import (
	"context"
	"encoding/json"
	"net/http"

	"github.com/google/uuid"

	"github.com/jackc/pgx/v5"

	"github.com/atriumhq/atrium/modules/payment/channel"
	"github.com/atriumhq/atrium/platform/errs"
	"github.com/atriumhq/atrium/platform/postgres"
)

// outcome is what a channel call decided for a payment.
type outcome struct {
	status string // succeeded, failed or in_doubt
	reason string // a decline reason, or why the payment is in doubt
}

// outcomeOf maps a channel's answer to a payment outcome. Only the bank's
// own "declined" or a refusal that proves nothing was processed is a
// failure: anything else the bank may have charged is in doubt.
func outcomeOf(res channel.Result, err error) outcome {
	if err != nil {
		if errs.CodeOf(err) == errs.Invalid {
			return outcome{StatusFailed, "bank_rejected_request"}
		}
		return outcome{StatusInDoubt, "no_answer_from_bank"}
	}
	switch res.Status {
	case channel.StatusSucceeded:
		return outcome{status: StatusSucceeded}
	case channel.StatusFailed:
		reason := res.DeclineReason
		if reason == "" {
			reason = "declined"
		}
		return outcome{StatusFailed, reason}
	}
	return outcome{StatusInDoubt, "no_answer_from_bank"}
}

// responseStatus is the HTTP status of a payment's answer: 201 once its
// outcome is known, 202 while it is in doubt (ask GET /payments/{id}).
func responseStatus(p *Payment) int {
	if p.Status == StatusInDoubt || p.Status == StatusProcessing {
		return http.StatusAccepted
	}
	return http.StatusCreated
}

// finish records a payment's outcome: its status, the transition, the
// ledger entries of a capture, the outbox event and the stored response of
// its idempotency key, in one transaction. A payment already past
// processing/in_doubt (recovery got there first) is left as it is.
func (s *Service) finish(ctx context.Context, known *Payment, out outcome) (*Response, error) {
	tenant, id := known.TenantID, known.ID
	ctx = postgres.WithTenant(ctx, tenant)
	var acc accounts
	if out.status == StatusSucceeded {
		var err error
		if acc, err = s.accountsFor(ctx, tenant, known.MerchantID, known.Currency, known.Livemode); err != nil {
			return nil, err
		}
	}
	var pay *Payment
	var resp *Response
	now := s.now()
	err := s.tx.Do(ctx, "payment.finish", func(tx pgx.Tx) error {
		var err error
		pay, err = scanPayment(tx.QueryRow(ctx, `UPDATE payments SET status = $2, decline_reason = NULLIF($3, ''), updated_at = $4
			WHERE id = $1 AND status IN ('processing', 'in_doubt') AND status <> $2 RETURNING `+paymentCols, id, out.status, out.reason, now))
		if postgres.IsNoRows(err) {
			// Decided already: answer with the payment as it stands.
			if pay, err = scanPayment(tx.QueryRow(ctx, `SELECT `+paymentCols+` FROM payments WHERE id = $1`, id)); err != nil {
				return err
			}
			if out.status == StatusSucceeded && pay.Status == StatusFailed {
				// Cannot happen while RecoverAfter exceeds every call's
				// lifetime; if it does, a person must look.
				s.log.Error().Str("payment", id).Str("decline_reason", pay.DeclineReason).
					Msg("the bank charged a payment recorded as failed: refund it or correct it by hand")
			}
			resp, err = storedOrCurrent(ctx, tx, pay)
			return err
		}
		if err != nil {
			return err
		}
		b := &pgx.Batch{}
		queueTransition(b, tenant, id, "", out.status, out.reason, now)
		if out.status == StatusSucceeded {
			queueEntry(b, tenant, "capture", id, "", pay.Currency, pay.Livemode, now,
				posting{acc.clearing, pay.Payable}, posting{acc.payable, -pay.Payable})
			queueEntry(b, tenant, "fee", id, "", pay.Currency, pay.Livemode, now,
				posting{acc.payable, pay.Fee}, posting{acc.fees, -pay.Fee})
		}
		// The stored response and the event carry the same payment: one
		// encoding, one round trip for the rest of the transaction.
		if resp, err = queueResponse(b, tenant, id, "", responseStatus(pay), pay); err != nil {
			return err
		}
		queueEvent(b, tenant, "payment."+out.status, "payment:"+id, pay.Livemode, json.RawMessage(resp.Body))
		return runBatch(ctx, tx, b)
	})
	if err != nil {
		return nil, err
	}
	if out.status == StatusSucceeded && pay.Livemode && s.usage != nil {
		_ = s.usage.AddPayment(ctx, tenant, pay.Currency, pay.Payable)
	}
	return resp, nil
}

// storedOrCurrent is the stored response of a payment's key, or the
// payment as it stands.
func storedOrCurrent(ctx context.Context, tx pgx.Tx, pay *Payment) (*Response, error) {
	var status *int
	var body []byte
	err := tx.QueryRow(ctx, `SELECT response_status, response_body FROM idempotency_keys
		WHERE tenant_id = $1 AND payment_id = $2 AND refund_id IS NULL AND state = 'done'`, pay.TenantID, pay.ID).Scan(&status, &body)
	if err == nil && status != nil {
		return &Response{Status: *status, Body: body}, nil
	}
	if err != nil && !postgres.IsNoRows(err) {
		return nil, err
	}
	return storeResponse(ctx, tx, pay.TenantID, pay.ID, "", responseStatus(pay), pay)
}

// abandon records a payment no channel would take (nothing was charged)
// as failed, and releases its idempotency key.
func (s *Service) abandon(ctx context.Context, pay *Payment, cause error) error {
	ctx = postgres.WithTenant(ctx, pay.TenantID)
	now := s.now()
	err := s.tx.Do(ctx, "payment.abandon", func(tx pgx.Tx) error {
		p, err := scanPayment(tx.QueryRow(ctx, `UPDATE payments SET status = 'failed', decline_reason = 'channel_unavailable', updated_at = $2
			WHERE id = $1 AND status = 'processing' RETURNING `+paymentCols, pay.ID, now))
		if postgres.IsNoRows(err) {
			return nil // decided already (the recovery worker): nothing to undo
		}
		if err != nil {
			return err
		}
		b := &pgx.Batch{}
		queueTransition(b, pay.TenantID, pay.ID, "", StatusFailed, "channel_unavailable", now)
		queueEvent(b, pay.TenantID, "payment.failed", "payment:"+pay.ID, pay.Livemode, p)
		if err := runBatch(ctx, tx, b); err != nil {
			return err
		}
		return releaseKey(ctx, tx, pay.TenantID, pay.ID, "")
	})
	if err != nil {
		return err
	}
	if e := errs.As(cause); e.Code == errs.Unavailable {
		return &errs.Error{Code: errs.Unavailable, Extra: withRetryAfter(e.Extra),
			Message: "no bank channel took the payment (" + e.Message + "); nothing was charged: retry later with the same Idempotency-Key"}
	}
	return cause
}

// withRetryAfter is extra with retry_after_seconds, 1 unless it has one:
// every "nothing was charged, retry" answer tells the client when.
func withRetryAfter(extra map[string]any) map[string]any {
	out := map[string]any{"retry_after_seconds": 1}
	for k, v := range extra {
		out[k] = v
	}
	return out
}

// failover moves a processing payment to the next channel after the
// previous one refused it without charging.
func (s *Service) failover(ctx context.Context, pay *Payment, from, to string, cause error) error {
	ctx = postgres.WithTenant(ctx, pay.TenantID)
	now := s.now()
	return s.tx.Do(ctx, "payment.failover", func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `UPDATE payments SET channel = $2, updated_at = $3 WHERE id = $1 AND status = 'processing'`, pay.ID, to, now)
		if err != nil {
			return err
		}
		if tag.RowsAffected() != 1 {
			return errs.E(errs.Conflict, "payment %s is no longer processing", pay.ID)
		}
		pay.Channel = to
		b := &pgx.Batch{}
		queueTransition(b, pay.TenantID, pay.ID, "", StatusProcessing, "failover from "+from+" to "+to+": "+errs.As(cause).Message, now)
		return runBatch(ctx, tx, b)
	})
}

// load reads a payment in ctx's scope.
func (s *Service) load(ctx context.Context, id string) (*Payment, error) {
	if _, err := uuid.Parse(id); err != nil {
		return nil, errs.E(errs.NotFound, "no such payment")
	}
	var p *Payment
	err := s.tx.Do(ctx, "payment.load", func(tx pgx.Tx) error {
		var err error
		p, err = scanPayment(tx.QueryRow(ctx, `SELECT `+paymentCols+` FROM payments WHERE id = $1`, id))
		return err
	})
	if postgres.IsNoRows(err) {
		return nil, errs.E(errs.NotFound, "no such payment")
	}
	return p, err
}

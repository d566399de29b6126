package payment

import (
	"bytes"
	"context"
	"encoding/json"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/atriumhq/atrium/platform/errs"
	"github.com/atriumhq/atrium/platform/postgres"
)

// Idempotency keys follow Stripe's semantics, per tenant:
//
//   - The first request with a key claims it in the transaction that
//     records the payment (or refund), so a key and its payment exist
//     together or not at all.
//   - The outcome (status and body, declines included) is stored in the
//     transaction that records it and replayed for the same key.
//   - The same key with other parameters: 422. While the first request
//     runs: 409.
//   - Nothing is stored when validation fails or when every channel refuses
//     at once (503, nothing charged): the key may be sent again.
//   - An in-doubt payment's stored answer (202) is replaced by its final
//     one when recovery resolves it: a terminal that retries its key learns
//     the outcome, as Adyen's TransactionStatus tells it.
//   - Keys are kept for the configured TTL (at least 24 h), then swept.

func checkKey(key string) error {
	if key == "" {
		return errs.Field("Idempotency-Key", "the Idempotency-Key header is required on every POST")
	}
	if len(key) > 255 {
		return errs.Field("Idempotency-Key", "must be at most 255 characters")
	}
	for _, r := range key {
		if r < 0x21 || r > 0x7e {
			return errs.Field("Idempotency-Key", "must be printable ASCII without spaces")
		}
	}
	return nil
}

// claimKey claims key for the payment (and refund) being created, in tx.
// It returns the stored response when the key was used before with the
// same parameters, or an error: 422 for other parameters, 409 while the
// first request runs.
func (s *Service) claimKey(ctx context.Context, tx pgx.Tx, tenant, key string, hash []byte, paymentID, refundID string, now time.Time) (*Response, error) {
	for range 2 {
		tag, err := tx.Exec(ctx, `INSERT INTO idempotency_keys (tenant_id, key, request_hash, state, payment_id, refund_id, created_at, expires_at)
			VALUES ($1, $2, $3, 'running', $4, NULLIF($5, '')::uuid, $6, $7) ON CONFLICT (tenant_id, key) DO NOTHING`,
			tenant, key, hash, paymentID, refundID, now, now.Add(s.cfg.IdempotencyTTL))
		if err != nil {
			return nil, err
		}
		if tag.RowsAffected() == 1 {
			return nil, nil
		}
		var (
			stored  []byte
			state   string
			status  *int
			body    []byte
			expires time.Time
		)
		err = tx.QueryRow(ctx, `SELECT request_hash, state, response_status, response_body, expires_at
			FROM idempotency_keys WHERE tenant_id = $1 AND key = $2`, tenant, key).Scan(&stored, &state, &status, &body, &expires)
		if postgres.IsNoRows(err) {
			continue // released in between (nothing was charged): claim it again
		}
		if err != nil {
			return nil, err
		}
		if !expires.After(now) {
			// An expired key the sweep has not reached yet is free again.
			if _, err := tx.Exec(ctx, `DELETE FROM idempotency_keys WHERE tenant_id = $1 AND key = $2 AND expires_at <= $3`, tenant, key, now); err != nil {
				return nil, err
			}
			continue
		}
		switch {
		case !bytes.Equal(stored, hash):
			return nil, &errs.Error{Code: errs.Unprocessable,
				Message: "this Idempotency-Key was used with different parameters; use a new key for a new request"}
		case state == "running" || status == nil:
			return nil, &errs.Error{Code: errs.Conflict, Extra: map[string]any{"retry_after_seconds": 1},
				Message: "a request with this Idempotency-Key is still being processed; ask again shortly"}
		}
		return &Response{Status: *status, Body: body, Replayed: true}, nil
	}
	return nil, errs.E(errs.Conflict, "the Idempotency-Key is being reused; retry")
}

// queueResponse adds to b the recording of the response of the payment's
// key (refundID ""), or of the refund's.
func queueResponse(b *pgx.Batch, tenant, paymentID, refundID string, status int, v any) (*Response, error) {
	body, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	if refundID == "" {
		b.Queue(`UPDATE idempotency_keys SET state = 'done', response_status = $3, response_body = $4
			WHERE tenant_id = $1 AND payment_id = $2 AND refund_id IS NULL`, tenant, paymentID, status, body)
	} else {
		b.Queue(`UPDATE idempotency_keys SET state = 'done', response_status = $3, response_body = $4
			WHERE tenant_id = $1 AND refund_id = $2`, tenant, refundID, status, body)
	}
	return &Response{Status: status, Body: body}, nil
}

// storeResponse records the response of the payment's or refund's key in tx.
func storeResponse(ctx context.Context, tx pgx.Tx, tenant, paymentID, refundID string, status int, v any) (*Response, error) {
	b := &pgx.Batch{}
	resp, err := queueResponse(b, tenant, paymentID, refundID, status, v)
	if err != nil {
		return nil, err
	}
	return resp, runBatch(ctx, tx, b)
}

// releaseKey forgets the key of a request that charged nothing.
func releaseKey(ctx context.Context, tx pgx.Tx, tenant, paymentID, refundID string) error {
	var err error
	if refundID == "" {
		_, err = tx.Exec(ctx, `DELETE FROM idempotency_keys WHERE tenant_id = $1 AND payment_id = $2 AND refund_id IS NULL`, tenant, paymentID)
	} else {
		_, err = tx.Exec(ctx, `DELETE FROM idempotency_keys WHERE tenant_id = $1 AND refund_id = $2`, tenant, refundID)
	}
	return err
}

// sweepKeys deletes expired keys whose request has finished.
func (s *Service) sweepKeys(ctx context.Context) (int64, error) {
	var n int64
	// In batches, so that no sweep holds many row locks or runs long.
	for {
		var batch int64
		err := s.tx.Do(ctx, "payment.sweep_keys", func(tx pgx.Tx) error {
			tag, err := tx.Exec(ctx, `DELETE FROM idempotency_keys WHERE ctid IN (SELECT ctid FROM idempotency_keys
				WHERE expires_at < $1 AND state = 'done' LIMIT 5000)`, s.now())
			batch = tag.RowsAffected()
			return err
		})
		n += batch
		if err != nil || batch < 5000 {
			return n, err
		}
	}
}

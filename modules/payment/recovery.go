package payment

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/atriumhq/atrium/modules/payment/channel"
	"github.com/atriumhq/atrium/platform/errs"
	"github.com/atriumhq/atrium/platform/postgres"
	"github.com/atriumhq/atrium/platform/redisx"
)

// Recovery: one instance at a time (a Redis lease) resolves payments and
// refunds left processing or in doubt by a crash, a timeout or a lost
// answer, by asking the bank:
//
//   - a payment in doubt, or processing for longer than RecoverAfter (longer
//     than any request can run, so no call is still in flight), is queried:
//     succeeded or failed as the bank says; "not found" once RecoverAfter has
//     passed since its last change means the bank never processed it, so it
//     failed; "processing", or "not found" earlier, waits for a later scan.
//     A payment the bank may have charged is never marked failed.
//   - a refund in the same state is sent again under its own id, which the
//     bank deduplicates, and recorded as the bank answers.
//
// It also sweeps expired idempotency keys.

// RecoveryReport counts what one scan did.
type RecoveryReport struct {
	Resolved, Pending, Refunds, KeysSwept int
}

// Recover runs one recovery scan (the leader calls it every interval).
func (s *Service) Recover(ctx context.Context) (RecoveryReport, error) {
	var rep RecoveryReport
	ctx = postgres.AllTenants(ctx, "payment recovery")
	// Ages are judged by the database's clock, which stamped updated_at,
	// never by this instance's.
	var dbNow time.Time
	if err := s.tx.QueryRow(ctx, "payment.recovery_clock", `SELECT now()`, nil, &dbNow); err != nil {
		return rep, err
	}
	cutoff := dbNow.Add(-s.cfg.RecoverAfter)
	// Rows of channels no longer configured are left out (they would stay
	// at the head of the queue for ever); each scan walks up to 2000 rows
	// in pages, so rows that stay unresolved cannot starve the others.
	names := s.channels.allNames()
	var pays []Payment
	for page, after := 0, (struct {
		at time.Time
		id string
	}{}); page < 10; page++ {
		batch, err := postgres.Collect(ctx, s.tx, "payment.recovery_scan", rowTo(scanPayment), `SELECT `+paymentCols+` FROM payments
			WHERE status IN ('processing', 'in_doubt') AND (status = 'in_doubt' OR updated_at < $1) AND channel = ANY($2)
			AND (updated_at, id) > ($3, $4::uuid) ORDER BY updated_at, id LIMIT 200`, cutoff, names, after.at, orNil(after.id))
		if err != nil {
			return rep, err
		}
		pays = append(pays, batch...)
		if len(batch) < 200 {
			break
		}
		after.at, after.id = batch[len(batch)-1].UpdatedAt, batch[len(batch)-1].ID
	}
	for i := range pays {
		p := &pays[i]
		nc, ok := s.channels.get(p.Channel)
		if !ok {
			s.log.Error().Str("payment", p.ID).Str("channel", p.Channel).Msg("recovery: the payment's channel is not configured; it stays unresolved")
			rep.Pending++
			continue
		}
		qctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		res, err := nc.ch.Query(qctx, p.ID)
		cancel()
		var out outcome
		switch {
		case err != nil:
			rep.Pending++
			continue
		case res.Status == channel.StatusSucceeded:
			out = outcome{status: StatusSucceeded}
		case res.Status == channel.StatusFailed:
			out = outcome{StatusFailed, res.DeclineReason}
		case res.Status == channel.StatusNotFound && p.UpdatedAt.Before(cutoff):
			// Only once no call can still be on its way to the bank: a
			// bank that records a charge late must not see it marked failed.
			out = outcome{StatusFailed, "not_processed_by_bank"}
		default:
			rep.Pending++
			continue
		}
		if _, err := s.finish(ctx, p, out); err != nil {
			s.log.Warn().Err(err).Str("payment", p.ID).Msg("recovery: recording the outcome failed; next scan retries")
			continue
		}
		s.log.Info().Str("payment", p.ID).Str("was", p.Status).Str("now", out.status).Msg("recovery: payment resolved")
		rep.Resolved++
	}

	var refs []*Refund
	err := s.tx.Do(ctx, "refund.recovery_scan", func(tx pgx.Tx) error {
		rows, _ := tx.Query(ctx, `SELECT `+refundCols+` FROM refunds WHERE status IN ('processing', 'in_doubt')
			AND (status = 'in_doubt' OR updated_at < $1) AND channel = ANY($2) ORDER BY updated_at, id LIMIT 2000`, cutoff, names)
		xs, err := pgx.CollectRows(rows, rowTo(scanRefund))
		for i := range xs {
			refs = append(refs, &xs[i])
		}
		return err
	})
	if err != nil {
		return rep, err
	}
	for _, r := range refs {
		nc, ok := s.channels.get(r.Channel)
		if !ok {
			continue
		}
		qctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		res, err := nc.ch.Refund(qctx, channel.RefundRequest{ID: r.ID, ChargeID: r.PaymentID, Amount: r.Amount})
		cancel()
		if errs.CodeOf(err) == errs.Unavailable {
			continue
		}
		out := refundOutcome(res, err)
		if out.status == StatusInDoubt {
			continue
		}
		if _, err := s.finishRefund(ctx, r, out); err == nil {
			rep.Refunds++
		}
	}
	if n, err := s.sweepKeys(ctx); err == nil {
		rep.KeysSwept = int(n)
	}
	return rep, nil
}

// runRecovery keeps recovering while this instance holds the lease.
func (s *Service) runRecovery(ctx context.Context) {
	lease := redisx.NewLease(s.redis, "payment-recovery", s.instance, 15*time.Second)
	lease.Run(ctx, s.log, func(ctx context.Context, _ int64) {
		t := time.NewTicker(s.cfg.RecoveryInterval)
		defer t.Stop()
		for {
			if rep, err := s.Recover(ctx); err != nil {
				s.log.Warn().Err(err).Msg("recovery scan failed")
			} else if rep.Resolved+rep.Refunds > 0 {
				s.log.Info().Int("payments", rep.Resolved).Int("refunds", rep.Refunds).Int("pending", rep.Pending).Msg("recovery scan")
			}
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	})
}

// orNil is the zero UUID for "", so a keyset starts before every id.
func orNil(id string) string {
	if id == "" {
		return "00000000-0000-0000-0000-000000000000"
	}
	return id
}

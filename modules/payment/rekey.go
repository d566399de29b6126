package payment

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/atriumhq/atrium/platform/auditlog"
	"github.com/atriumhq/atrium/platform/keyring"
	"github.com/atriumhq/atrium/platform/postgres"
)

// Card keys rotate (docs/operations.md): the new key is put first in
// ATRIUM_PAYMENTS_CARD_KEYS on every instance, so new cards are sealed
// under it, and Rekey (atrium payments rekey) re-seals the stored ones
// that are not; then the old key can be dropped.

// rekeyPasses is how many times Rekey goes over the payments, a moment
// apart, for rows that were locked (a payment being decided) when it first
// passed them.
const rekeyPasses = 5

// Rekey re-seals every stored card under the current card key and returns
// how many it re-sealed. It works through the payments of every tenant in
// batches of batch rows (0 for 500), each its own short transaction taking
// the rows FOR UPDATE SKIP LOCKED, so it can run while payments flow: a
// row locked by a payment in progress is passed over and tried again on a
// later pass. It fails, naming the payment but never its card, if a card
// does not open (sealed under a key no longer listed), and when cards
// sealed under another key remain after its passes (an instance still
// sealing under an old key). Rekey leaves updated_at alone: the recovery
// worker reads it.
func (s *Service) Rekey(ctx context.Context, batch int) (int, error) {
	if batch <= 0 {
		batch = 500
	}
	ctx = postgres.AllTenants(ctx, "card rekey")
	current := s.cards.Current()
	total := 0
	for pass := 1; ; pass++ {
		// Keyset order over the primary key, so each batch starts where the
		// previous one ended instead of rescanning rows already done.
		after := "00000000-0000-0000-0000-000000000000"
		for {
			n, last, err := s.rekeyBatch(ctx, current, after, batch)
			total += n
			if err != nil {
				return total, err
			}
			if last == "" {
				break
			}
			after = last
		}
		var left int
		if err := s.tx.QueryRow(ctx, "payment.card_rekey_left", `SELECT count(*) FROM payments
			WHERE card_sealed IS NOT NULL AND split_part(card_sealed, '$', 1) <> $1`, []any{current}, &left); err != nil {
			return total, err
		}
		if left == 0 {
			return total, nil
		}
		if pass == rekeyPasses {
			return total, fmt.Errorf("card rekey: %d payment(s) still have cards sealed under another key than %q "+
				"(locked by payments in progress, or sealed by an instance that does not list %q first yet): run it again", left, current, current)
		}
		select {
		case <-ctx.Done():
			return total, ctx.Err()
		case <-time.After(time.Duration(pass) * 200 * time.Millisecond):
		}
	}
}

// rekeyBatch re-seals the cards of up to batch payments with ids above
// after that are not under key current, and returns how many it re-sealed
// and the last id it looked at ("" when there were none).
func (s *Service) rekeyBatch(ctx context.Context, current, after string, batch int) (int, string, error) {
	var n int
	var last string
	err := s.tx.Do(ctx, "payment.card_rekey", func(tx pgx.Tx) error {
		n, last = 0, ""
		rows, _ := tx.Query(ctx, `SELECT id::text, tenant_id::text, card_sealed FROM payments
			WHERE id > $1 AND card_sealed IS NOT NULL AND split_part(card_sealed, '$', 1) <> $2
			ORDER BY id LIMIT $3 FOR UPDATE SKIP LOCKED`, after, current, batch)
		type sealedCard struct{ id, tenant, sealed string }
		cards, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (sealedCard, error) {
			var c sealedCard
			return c, r.Scan(&c.id, &c.tenant, &c.sealed)
		})
		if err != nil || len(cards) == 0 {
			return err
		}
		last = cards[len(cards)-1].id
		ids := make([]string, len(cards))
		sealed := make([]string, len(cards))
		tenants := map[string]int{}
		for i, c := range cards {
			plain, err := s.cards.Open(c.sealed, []byte(c.id))
			if err != nil {
				// The error says which key, never anything of the card.
				return fmt.Errorf("card rekey: payment %s: card sealed under key %q: %w", c.id, keyring.KeyID(c.sealed), err)
			}
			ids[i], sealed[i] = c.id, s.cards.Seal(plain, []byte(c.id))
			clear(plain)
			tenants[c.tenant]++
		}
		if _, err := tx.Exec(ctx, `UPDATE payments p SET card_sealed = x.sealed
			FROM unnest($1::uuid[], $2::text[]) AS x(id, sealed) WHERE p.id = x.id`, ids, sealed); err != nil {
			return err
		}
		n = len(cards)
		return auditlog.Record(ctx, tx, s.now(), "", auditlog.Actor(ctx), "payment.card_rekey", "payments",
			map[string]any{"key": current, "cards": n, "tenants": tenants})
	})
	return n, last, err
}

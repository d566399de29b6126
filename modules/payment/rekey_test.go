package payment

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/atriumhq/atrium/platform/keyring"
)

// sealedPayment stores, as the schema owner, a card payment of tenant
// whose card is sealed by svc as the payment path seals it.
func (e *opsEnv) sealedPayment(t *testing.T, svc *Service, tenant, merchant string, c Card) string {
	t.Helper()
	id := uuid.Must(uuid.NewV7()).String()
	e.exec(t, `INSERT INTO payments (id, tenant_id, merchant_id, terminal_id, order_no, idempotency_key, livemode, amount, currency, payable, fee,
			method, card_bin, card_last4, card_sealed, status, channel, created_at, updated_at)
		VALUES ($1, $2, $3, $4, $5, $5, true, 1000, 'EUR', 1000, 0, 'card', $6, $7, $8, 'succeeded', 'sim', now(), now() - interval '1 hour')`,
		id, tenant, merchant, uuid.NewString(), "order-"+id, c.Number[:6], c.Number[len(c.Number)-4:], svc.sealCard(id, c))
	return id
}

func TestRekeyReSealsEveryCardUnderTheCurrentKey(t *testing.T) {
	e := newOpsEnv(t, testCardKey1)
	old := e.s
	cards := map[string]Card{}
	for i := range 7 {
		tenant := e.tenant(t) // several tenants: rekey crosses them
		m := e.merchant(t, tenant, "shop", 0)
		c := Card{Number: fmt.Sprintf("4000000000%06d", i), ExpMonth: 1 + i, ExpYear: 2030 + i}
		cards[e.sealedPayment(t, old, tenant, m, c)] = c
	}
	tenant := e.tenant(t)
	wallet := uuid.NewString()
	e.exec(t, `INSERT INTO payments (id, tenant_id, merchant_id, terminal_id, order_no, idempotency_key, livemode, amount, currency, payable, fee,
			method, wallet_code, status, channel, created_at, updated_at)
		VALUES ($1, $2, $3, $4, 'wallet-order', 'wallet-order', true, 500, 'EUR', 500, 0, 'wallet', '****1234', 'succeeded', 'sim', now(), now())`,
		wallet, tenant, e.merchant(t, tenant, "shop", 0), uuid.NewString())

	// The new key first, the old one still listed.
	rotated := e.service(t, testCardKey2+","+testCardKey1, noTerminals{}, nil)
	// One payment already sealed under the new key is left as it is.
	newer := e.sealedPayment(t, rotated, tenant, e.merchant(t, tenant, "other", 0), Card{Number: "4111111111111111", ExpMonth: 5, ExpYear: 2031})
	before := e.sealedRows(t)

	n, err := rotated.Rekey(context.Background(), 3) // batches smaller than the work
	if err != nil {
		t.Fatal(err)
	}
	if n != len(cards) {
		t.Errorf("Rekey re-sealed %d, want %d", n, len(cards))
	}
	after := e.sealedRows(t)
	if after[newer] != before[newer] {
		t.Error("a card already under the current key was re-sealed")
	}
	onlyNew, _ := keyring.Parse(testCardKey2)
	for id, c := range cards {
		sealed := after[id]
		if keyring.KeyID(sealed) != "k2" {
			t.Errorf("payment %s: sealed under %q after rekey", id, keyring.KeyID(sealed))
		}
		// It opens with the new key alone, to the same card, and only
		// for its own payment.
		plain, err := onlyNew.Open(sealed, []byte(id))
		if want := fmt.Sprintf("%s|%02d/%04d", c.Number, c.ExpMonth, c.ExpYear); err != nil || string(plain) != want {
			t.Errorf("payment %s: opens to %q, %v; want the same card", id, plain, err)
		}
		if _, err := onlyNew.Open(sealed, []byte(newer)); err == nil {
			t.Errorf("payment %s: the re-sealed card opens for another payment", id)
		}
	}
	var updated int
	if err := e.owner.QueryRow(context.Background(), `SELECT count(*) FROM payments WHERE updated_at > now() - interval '1 minute' AND method = 'card' AND id <> $1`, newer).Scan(&updated); err != nil || updated != 0 {
		t.Errorf("rekey touched updated_at of %d payments (%v)", updated, err)
	}
	var audited int
	if err := e.owner.QueryRow(context.Background(), `SELECT coalesce(sum((detail->>'cards')::int), 0) FROM audit_log WHERE action = 'payment.card_rekey'`).Scan(&audited); err != nil || audited != len(cards) {
		t.Errorf("audit log records %d re-sealed cards (%v), want %d", audited, err, len(cards))
	}

	if n, err := rotated.Rekey(context.Background(), 0); n != 0 || err != nil {
		t.Errorf("second Rekey = %d, %v; want 0, nil", n, err)
	}
}

func TestRekeyWaitsForLockedRowsAndNamesWhatItCannotOpen(t *testing.T) {
	e := newOpsEnv(t, testCardKey1)
	tenant := e.tenant(t)
	m := e.merchant(t, tenant, "shop", 0)
	card := Card{Number: "4000000000000002", ExpMonth: 3, ExpYear: 2033}
	locked := e.sealedPayment(t, e.s, tenant, m, card)
	free := e.sealedPayment(t, e.s, tenant, m, card)
	rotated := e.service(t, testCardKey2+","+testCardKey1, noTerminals{}, nil)

	// A payment being decided holds its row for a moment: rekey passes it
	// over, re-seals the rest, and comes back for it.
	tx, err := e.owner.Begin(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(context.Background(), `SELECT 1 FROM payments WHERE id = $1 FOR UPDATE`, locked); err != nil {
		t.Fatal(err)
	}
	// The lock is held until the other row is re-sealed (committed): a
	// rekey that waited for the lock would never get there.
	passedOver := make(chan bool, 1)
	go func() {
		deadline := time.Now().Add(5 * time.Second)
		for time.Now().Before(deadline) {
			var sealed string
			if err := e.owner.QueryRow(context.Background(), `SELECT card_sealed FROM payments WHERE id = $1`, free).Scan(&sealed); err == nil &&
				keyring.KeyID(sealed) == "k2" {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		passedOver <- time.Now().Before(deadline)
		_ = tx.Rollback(context.Background())
	}()
	if n, err := rotated.Rekey(context.Background(), 10); n != 2 || err != nil {
		t.Fatalf("Rekey with a locked row = %d, %v; want 2, nil", n, err)
	}
	if !<-passedOver {
		t.Error("Rekey waited for the locked row instead of passing it over")
	}
	rows := e.sealedRows(t)
	if keyring.KeyID(rows[locked]) != "k2" || keyring.KeyID(rows[free]) != "k2" {
		t.Fatalf("keys after rekey: %s, %s", keyring.KeyID(rows[locked]), keyring.KeyID(rows[free]))
	}

	// A card sealed under a key the keyring no longer lists stops the
	// rekey with the payment's id and the key's, never the card.
	orphan := e.sealedPayment(t, e.service(t, "k0:"+strings.SplitN(testCardKey1, ":", 2)[1], noTerminals{}, nil), tenant, m, card)
	_, err = rotated.Rekey(context.Background(), 10)
	if err == nil || !strings.Contains(err.Error(), orphan) || !strings.Contains(err.Error(), `"k0"`) || strings.Contains(err.Error(), card.Number) {
		t.Fatalf("Rekey over a card under an unknown key: %v", err)
	}
}

// sealedRows reads every payment's sealed card, by payment id.
func (e *opsEnv) sealedRows(t *testing.T) map[string]string {
	t.Helper()
	rows, err := e.owner.Query(context.Background(), `SELECT id::text, card_sealed FROM payments WHERE card_sealed IS NOT NULL`)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for rows.Next() {
		var id, s string
		if err := rows.Scan(&id, &s); err != nil {
			t.Fatal(err)
		}
		out[id] = s
	}
	return out
}

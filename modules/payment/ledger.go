package payment

import (
	"context"
	"encoding/json"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/atriumhq/atrium/platform/postgres"
)

// The ledger is double-entry: every posting is a debit (positive) or a
// credit (negative) to an account, and each entry's postings sum to zero
// per currency, which a deferred constraint trigger checks at commit. The
// accounts of a tenant, per currency and mode:
//
//	bank_clearing      what the banks owe (debit balance)
//	merchant_payable   what is owed to each merchant (credit balance)
//	fee_revenue        the fees earned (credit balance)
//
// A capture debits clearing and credits the merchant the payable amount; a
// fee debits the merchant and credits fee revenue; a refund debits the
// merchant and credits clearing; a void reverses the capture and the fee.
// Entries are written in the transaction of the state change they record,
// at most one of each kind per payment or refund (a unique constraint).

// accounts are the ids of one payment's ledger accounts.
type accounts struct{ clearing, payable, fees string }

// accountCache remembers account ids: accounts are never deleted, so an id
// once read stays right.
type accountCache struct{ m sync.Map }

// accountsFor returns (creating on first use) the accounts a payment of the
// merchant posts to. It runs its own transaction, so a cached id always
// names a committed row.
func (s *Service) accountsFor(ctx context.Context, tenant, merchant, currency string, live bool) (accounts, error) {
	key := tenant + "|" + merchant + "|" + currency
	if !live {
		key += "|test"
	}
	if v, ok := s.accounts.m.Load(key); ok {
		return v.(accounts), nil
	}
	var a accounts
	err := s.tx.Do(postgres.WithTenant(ctx, tenant), "payment.ledger_accounts", func(tx pgx.Tx) error {
		for _, k := range []struct {
			kind     string
			merchant *string
			dst      *string
		}{{"bank_clearing", nil, &a.clearing}, {"merchant_payable", &merchant, &a.payable}, {"fee_revenue", nil, &a.fees}} {
			if _, err := tx.Exec(ctx, `INSERT INTO ledger_accounts (id, tenant_id, merchant_id, kind, currency, livemode)
				VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING`, uuid.Must(uuid.NewV7()), tenant, k.merchant, k.kind, currency, live); err != nil {
				return err
			}
			if err := tx.QueryRow(ctx, `SELECT id FROM ledger_accounts WHERE tenant_id = $1 AND kind = $2
				AND merchant_id IS NOT DISTINCT FROM $3 AND currency = $4 AND livemode = $5`,
				tenant, k.kind, k.merchant, currency, live).Scan(k.dst); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return accounts{}, err
	}
	s.accounts.m.Store(key, a)
	return a, nil
}

// posting is one leg of an entry.
type posting struct {
	account string
	amount  int64
}

// queueEntry adds a journal entry and its postings to b.
func queueEntry(b *pgx.Batch, tenant, kind, paymentID, refundID, currency string, live bool, at time.Time, ps ...posting) {
	ids := make([]string, 0, len(ps))
	amounts := make([]int64, 0, len(ps))
	for _, p := range ps {
		if p.amount != 0 {
			ids, amounts = append(ids, p.account), append(amounts, p.amount)
		}
	}
	if len(ids) == 0 {
		return
	}
	var refund *string
	if refundID != "" {
		refund = &refundID
	}
	b.Queue(`WITH e AS (INSERT INTO ledger_entries (id, tenant_id, kind, payment_id, refund_id, livemode, created_at)
			VALUES ($1, $2, $3, $4, $5, $6, $7))
		INSERT INTO ledger_postings (tenant_id, entry_id, account_id, amount, currency)
		SELECT $2, $1, x.a, x.m, $8 FROM unnest($9::uuid[], $10::bigint[]) AS x(a, m)`,
		uuid.Must(uuid.NewV7()), tenant, kind, paymentID, refund, live, at, currency, ids, amounts)
}

// queueEvent adds an outbox event to b.
func queueEvent(b *pgx.Batch, tenant, typ, subject string, live bool, data any) {
	raw, _ := json.Marshal(data)
	b.Queue(`INSERT INTO events (tenant_id, type, subject, livemode, data) VALUES ($1, $2, $3, $4, $5)`, tenant, typ, subject, live, raw)
}

// queueTransition adds a transition row to b.
func queueTransition(b *pgx.Batch, tenant, paymentID, refundID, status, detail string, at time.Time) {
	var refund, det *string
	if refundID != "" {
		refund = &refundID
	}
	if detail != "" {
		det = &detail
	}
	b.Queue(`INSERT INTO payment_transitions (tenant_id, payment_id, refund_id, status, detail, at) VALUES ($1, $2, $3, $4, $5, $6)`,
		tenant, paymentID, refund, status, det, at)
}

// runBatch sends b in tx and reads every result.
func runBatch(ctx context.Context, tx pgx.Tx, b *pgx.Batch) error {
	return tx.SendBatch(ctx, b).Close()
}

// Balance is what the ledger holds for a merchant in one currency.
type Balance struct {
	MerchantID string `json:"merchant_id"`
	Currency   string `json:"currency"`
	Livemode   bool   `json:"livemode"`
	// Owed is what is owed to the merchant: captures less fees and refunds.
	Owed int64 `json:"owed"`
}

// Balances returns the balances of a merchant (every merchant in scope
// when merchantID is ""), live ones unless test.
func (s *Service) Balances(ctx context.Context, merchantID string, test bool) ([]Balance, error) {
	return postgres.Collect(ctx, s.tx, "payment.balances", func(r pgx.CollectableRow) (Balance, error) {
		var b Balance
		return b, r.Scan(&b.MerchantID, &b.Currency, &b.Livemode, &b.Owed)
	}, `SELECT a.merchant_id, a.currency, a.livemode, -COALESCE(sum(b.balance), 0)::bigint
		FROM ledger_accounts a LEFT JOIN account_balances b ON b.account_id = a.id
		WHERE a.kind = 'merchant_payable' AND a.livemode = $1 AND ($2 = '' OR a.merchant_id::text = $2)
		GROUP BY a.merchant_id, a.currency, a.livemode ORDER BY a.merchant_id, a.currency`, !test, merchantID)
}

// Entry is a journal entry with its postings, as the payment page shows it.
type Entry struct {
	ID        string        `json:"id"`
	Kind      string        `json:"kind"`
	RefundID  string        `json:"refund_id,omitempty"`
	CreatedAt time.Time     `json:"created_at"`
	Postings  []PostingView `json:"postings"`
}

// PostingView is one posting of an entry.
type PostingView struct {
	Account  string `json:"account"` // kind of account
	Amount   int64  `json:"amount"`  // debit positive, credit negative
	Currency string `json:"currency"`
}

// Entries returns a payment's journal entries in order.
func (s *Service) Entries(ctx context.Context, paymentID string) ([]Entry, error) {
	var out []Entry
	err := s.tx.Do(ctx, "payment.entries", func(tx pgx.Tx) error {
		rows, _ := tx.Query(ctx, `SELECT e.id, e.kind, COALESCE(e.refund_id::text, ''), e.created_at, a.kind, p.amount, p.currency
			FROM ledger_entries e JOIN ledger_postings p ON p.entry_id = e.id JOIN ledger_accounts a ON a.id = p.account_id
			WHERE e.payment_id = $1 ORDER BY e.created_at, e.id, p.id`, paymentID)
		defer rows.Close()
		for rows.Next() {
			var e Entry
			var pv PostingView
			if err := rows.Scan(&e.ID, &e.Kind, &e.RefundID, &e.CreatedAt, &pv.Account, &pv.Amount, &pv.Currency); err != nil {
				return err
			}
			if n := len(out); n == 0 || out[n-1].ID != e.ID {
				out = append(out, e)
			}
			out[len(out)-1].Postings = append(out[len(out)-1].Postings, pv)
		}
		return rows.Err()
	})
	return out, err
}

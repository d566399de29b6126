package payment

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"

	"github.com/google/uuid"

	"github.com/atriumhq/atrium/modules/payment/simbank"
	"github.com/atriumhq/atrium/platform/principal"
)

// terminalMap is the Terminals of a test: terminal id → profile.
type terminalMap map[string]Terminal

func (m terminalMap) TerminalProfile(_ context.Context, id string) (Terminal, error) {
	return m[id], nil
}

// ledgerWorld is a tenant taking real payments through a simulated bank,
// so that its ledger is what the payment code writes.
type ledgerWorld struct {
	*opsEnv
	s        *Service
	tenant   string
	terminal map[string]context.Context // by name: "shop", "free", "test"
	staff    context.Context
	n        int
}

func newLedgerWorld(t *testing.T) *ledgerWorld {
	t.Helper()
	e := newOpsEnv(t, testCardKey1)
	bank, err := simbank.New(simbank.Config{Seed: 1})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(bank.Handler())
	t.Cleanup(func() { bank.Close(); srv.Close() })
	w := &ledgerWorld{opsEnv: e, tenant: e.tenant(t), terminal: map[string]context.Context{}}
	e.merchant(t, w.tenant, "shop", 250) // 2.5% fee
	e.merchant(t, w.tenant, "free", 0)   // no fee
	terms := terminalMap{}
	for name, prof := range map[string]Terminal{"shop": {MerchantRef: "shop"}, "free": {MerchantRef: "free"},
		"test": {MerchantRef: "shop", TestMode: true}} {
		id := uuid.NewString()
		terms[id] = prof
		w.terminal[name] = principal.With(context.Background(), &principal.Principal{Kind: principal.Terminal, ID: id,
			TenantID: w.tenant, Permissions: []string{"payments:create", "payments:read"}})
	}
	w.staff = userCtx(w.tenant, "payments:read", "payments:refund")
	w.s = e.service(t, testCardKey1, terms, []string{"sim=" + srv.URL})
	return w
}

// pay takes a card payment at the named terminal and returns its id.
func (w *ledgerWorld) pay(t *testing.T, terminal string, amount int64) string {
	t.Helper()
	w.n++
	in := NewPayment{Amount: amount, Currency: "EUR", Method: Method{Type: "card", Card: Card{Number: "4242424242424242", ExpMonth: 12, ExpYear: 2099}}}
	resp, err := w.s.Create(w.terminal[terminal], fmt.Sprintf("pay-%d", w.n), in)
	if err != nil {
		t.Fatalf("pay: %v", err)
	}
	var p Payment
	if err := json.Unmarshal(resp.Body, &p); err != nil {
		t.Fatal(err)
	}
	return p.ID
}

// declined records, as the schema owner, a wallet payment the bank
// declined (simbank declines no wallet), and returns its id.
func (w *ledgerWorld) declined(t *testing.T, amount int64) string {
	t.Helper()
	w.n++
	id := uuid.NewString()
	w.exec(t, `INSERT INTO payments (id, tenant_id, merchant_id, terminal_id, order_no, idempotency_key, livemode, amount, currency, payable, fee,
			method, wallet_code, status, channel, decline_reason, created_at, updated_at)
		SELECT $1, $2, m.id, $3, $4, $4, true, $5, 'EUR', $5, 10, 'wallet', '****1234', 'failed', 'sim', 'declined', now(), now()
		FROM merchants m WHERE m.tenant_id = $2 AND m.ref = 'shop'`, id, w.tenant, uuid.NewString(), fmt.Sprintf("declined-%d", w.n), amount)
	return id
}

// refund refunds (kind "refund", amount 0 for the rest) or voids a
// payment and returns the refund's id.
func (w *ledgerWorld) refund(t *testing.T, paymentID, kind string, amount int64) string {
	t.Helper()
	w.n++
	var in NewRefund
	if amount > 0 {
		in.Amount = &amount
	}
	resp, err := w.s.CreateRefund(w.staff, fmt.Sprintf("refund-%d", w.n), paymentID, kind, in)
	if err != nil {
		t.Fatalf("%s: %v", kind, err)
	}
	var r Refund
	if err := json.Unmarshal(resp.Body, &r); err != nil || r.Status != StatusSucceeded {
		t.Fatalf("%s: %v %s", kind, err, resp.Body)
	}
	return r.ID
}

// id reads one id as the schema owner.
func (w *ledgerWorld) id(t *testing.T, sql string, args ...any) string {
	t.Helper()
	var id string
	if err := w.owner.QueryRow(context.Background(), sql, args...).Scan(&id); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return id
}

// status reads a payment's status.
func (w *ledgerWorld) status(t *testing.T, paymentID string) string {
	return w.id(t, `SELECT status FROM payments WHERE id = $1`, paymentID)
}

func (w *ledgerWorld) verify(t *testing.T) []Violation {
	t.Helper()
	vs, err := VerifyLedger(context.Background(), w.owner)
	if err != nil {
		t.Fatalf("VerifyLedger: %v", err)
	}
	return vs
}

func TestVerifyLedger(t *testing.T) {
	w := newLedgerWorld(t)
	if vs := w.verify(t); len(vs) != 0 {
		t.Fatalf("an empty ledger: %v", vs)
	}

	// A day's trade through the real payment path.
	p := map[string]string{}
	for _, name := range []string{"refunded", "partial", "overstated", "unrefunded", "reserved",
		"repriced", "doubted", "rehomed", "untouched"} {
		p[name] = w.pay(t, "shop", 10_000)
	}
	p["voided"] = w.pay(t, "shop", 4_000)
	p["voided free"] = w.pay(t, "free", 3_000)
	p["declined"] = w.declined(t, 500)
	p["declined 2"] = w.declined(t, 700)
	p["test"] = w.pay(t, "test", 1_000)
	w.refund(t, p["refunded"], "refund", 2_500)
	refundedRest := w.refund(t, p["refunded"], "refund", 0)
	w.refund(t, p["partial"], "refund", 1_000)
	w.refund(t, p["overstated"], "refund", 1_000)
	doubted := w.refund(t, p["doubted"], "refund", 1_000)
	void := w.refund(t, p["voided"], "void", 0)
	w.refund(t, p["voided free"], "void", 0)
	w.refund(t, p["test"], "refund", 400)
	for name, want := range map[string]string{"refunded": StatusRefunded, "partial": StatusPartiallyRefunded,
		"voided": StatusVoided, "voided free": StatusVoided, "declined": StatusFailed, "untouched": StatusSucceeded} {
		if got := w.status(t, p[name]); got != want {
			t.Fatalf("payment %s is %s, want %s", name, got, want)
		}
	}
	rep, err := VerifyLedgerReport(context.Background(), w.owner)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Violations) != 0 {
		t.Fatalf("the ledger the payment code wrote: %v", rep.Violations)
	}
	// 11 captured live payments with a capture entry each, 10 with a fee;
	// 5 refunds, 2 voids and a fee reversal; the test payment's capture,
	// fee and refund.
	if rep.Entries != 11+10+5+2+1+3 || rep.Accounts != 3+1+3 {
		t.Fatalf("report counts %d entries, %d accounts", rep.Entries, rep.Accounts)
	}

	account := func(kind, merchantRef string) string {
		return w.id(t, `SELECT a.id FROM ledger_accounts a LEFT JOIN merchants m ON m.id = a.merchant_id
			WHERE a.kind = $1 AND a.livemode AND (m.ref IS NOT DISTINCT FROM NULLIF($2, ''))`, kind, merchantRef)
	}
	entry := func(paymentID, kind string) string {
		return w.id(t, `SELECT id FROM ledger_entries WHERE payment_id = $1 AND kind = $2`, paymentID, kind)
	}
	injected := uuid.NewString()

	type row struct{ check, table, id string }
	var want []row
	for _, step := range []struct {
		name    string
		corrupt []string
		args    [][]any
		want    []row
	}{
		{
			name:    "a balance bucket off by one",
			corrupt: []string{`UPDATE account_balances SET balance = balance + 1 WHERE account_id = $1 AND bucket = (SELECT min(bucket) FROM account_balances WHERE account_id = $1)`},
			args:    [][]any{{account("fee_revenue", "")}},
			want:    []row{{"account_balance", "ledger_accounts", account("fee_revenue", "")}},
		},
		{
			name: "an unbalanced entry for a declined payment, past the triggers",
			corrupt: []string{
				`SET session_replication_role = replica`,
				`INSERT INTO ledger_entries (id, tenant_id, kind, payment_id, livemode, created_at) VALUES ($1, $2, 'capture', $3, true, now())`,
				`INSERT INTO ledger_postings (tenant_id, entry_id, account_id, amount, currency) VALUES ($1, $2, $3, 7, 'EUR')`,
				`RESET session_replication_role`,
			},
			args: [][]any{nil, {injected, w.tenant, p["declined"]}, {w.tenant, injected, account("bank_clearing", "")}, nil},
			want: []row{{"entry_balance", "ledger_entries", injected}, {"account_balance", "ledger_accounts", account("bank_clearing", "")},
				{"payment_entries", "payments", p["declined"]}},
		},
		{
			name:    "a refund entry's postings in another currency",
			corrupt: []string{`UPDATE ledger_postings SET currency = 'USD' WHERE entry_id = $1`},
			args:    [][]any{{entry(p["partial"], "refund")}},
			want: []row{{"posting_currency", "ledger_postings", w.id(t, `SELECT min(id)::text FROM ledger_postings WHERE entry_id = $1`, entry(p["partial"], "refund"))},
				{"posting_currency", "ledger_postings", w.id(t, `SELECT max(id)::text FROM ledger_postings WHERE entry_id = $1`, entry(p["partial"], "refund"))}},
		},
		{
			name:    "refunded overstated",
			corrupt: []string{`UPDATE payments SET refunded = refunded + 1 WHERE id = $1`},
			args:    [][]any{{p["overstated"]}},
			want:    []row{{"payment_refunds", "payments", p["overstated"]}},
		},
		{
			name:    "marked refunded without a refund",
			corrupt: []string{`UPDATE payments SET status = 'refunded', refunded = payable WHERE id = $1`},
			args:    [][]any{{p["unrefunded"]}},
			want:    []row{{"payment_refunds", "payments", p["unrefunded"]}},
		},
		{
			name:    "a reservation no refund holds",
			corrupt: []string{`UPDATE payments SET refund_reserved = 5 WHERE id = $1`},
			args:    [][]any{{p["reserved"]}},
			want:    []row{{"payment_refunds", "payments", p["reserved"]}},
		},
		{
			name:    "a refunded payment labelled partially refunded",
			corrupt: []string{`UPDATE payments SET status = 'partially_refunded' WHERE id = $1`},
			args:    [][]any{{p["refunded"]}},
			want:    []row{{"payment_status", "payments", p["refunded"]}},
		},
		{
			name:    "a declined payment marked succeeded has no capture",
			corrupt: []string{`UPDATE payments SET status = 'succeeded' WHERE id = $1`},
			args:    [][]any{{p["declined 2"]}},
			want:    []row{{"payment_entries", "payments", p["declined 2"]}},
		},
		{
			name:    "a payable that is not what was captured",
			corrupt: []string{`UPDATE payments SET amount = amount + 1, payable = payable + 1 WHERE id = $1`},
			args:    [][]any{{p["repriced"]}},
			want:    []row{{"payment_entries", "payments", p["repriced"]}},
		},
		{
			name:    "a succeeded refund said to be in doubt",
			corrupt: []string{`UPDATE refunds SET status = 'in_doubt' WHERE id = $1`},
			args:    [][]any{{doubted}},
			want:    []row{{"refund_entries", "refunds", doubted}, {"payment_refunds", "payments", p["doubted"]}},
		},
		{
			name:    "a void whose fee reversal became a refund entry",
			corrupt: []string{`UPDATE ledger_entries SET kind = 'refund' WHERE refund_id = $1 AND kind = 'fee_reversal'`},
			args:    [][]any{{void}},
			want:    []row{{"refund_entries", "refunds", void}, {"entry_links", "ledger_entries", entry(p["voided"], "fee_reversal")}},
		},
		{
			name:    "a refund entry moved to another payment",
			corrupt: []string{`UPDATE ledger_entries SET payment_id = $2 WHERE refund_id = $1`},
			args:    [][]any{{refundedRest, p["untouched"]}},
			want:    []row{{"entry_links", "ledger_entries", w.id(t, `SELECT id FROM ledger_entries WHERE refund_id = $1`, refundedRest)}},
		},
		{
			name:    "a posting of another tenant",
			corrupt: []string{`UPDATE ledger_postings SET tenant_id = $2 WHERE id = (SELECT min(id) FROM ledger_postings WHERE entry_id = $1)`},
			args:    [][]any{{entry(p["rehomed"], "capture"), w.opsEnv.tenant(t)}},
			want:    []row{{"posting_scope", "ledger_postings", w.id(t, `SELECT min(id)::text FROM ledger_postings WHERE entry_id = $1`, entry(p["rehomed"], "capture"))}},
		},
	} {
		conn, err := w.owner.Acquire(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		for i, sql := range step.corrupt {
			var args []any
			if i < len(step.args) {
				args = step.args[i]
			}
			if _, err := conn.Exec(context.Background(), sql, args...); err != nil {
				t.Fatalf("%s: %s: %v", step.name, sql, err)
			}
		}
		conn.Release()
		want = append(want, step.want...)
		var got []row
		for _, v := range w.verify(t) {
			got = append(got, row{v.Check, v.Table, v.ID})
			if v.Detail == "" || strings.Contains(v.String(), "4242424242424242") {
				t.Errorf("%s: violation %v", step.name, v)
			}
		}
		cmp := func(a, b row) int { return strings.Compare(a.check+a.table+a.id, b.check+b.table+b.id) }
		slices.SortFunc(got, cmp)
		exp := slices.Clone(want)
		slices.SortFunc(exp, cmp)
		if !slices.Equal(got, slices.Compact(exp)) {
			t.Fatalf("after %s:\n got  %v\n want %v\n%v", step.name, got, exp, w.verify(t))
		}
	}
	// The untouched test-mode ledger still verifies: nothing above named it.
	for _, v := range w.verify(t) {
		if strings.Contains(v.String(), p["test"]) {
			t.Errorf("test-mode payment named: %v", v)
		}
	}
}

package payment

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// VerifyLedger (atrium ledger verify) re-checks, from the rows alone, what
// the payment code and the ledger triggers are meant to keep true:
//
//   - entry_balance: each entry's postings sum to zero per currency, and an
//     entry has postings;
//   - posting_currency: a posting is in its account's and its payment's
//     currency;
//   - posting_scope: a posting, its entry and its account exist and agree on
//     tenant and mode, and a merchant account is the payment's merchant's;
//   - account_balance: an account's balance (the sum of its account_balances
//     buckets) is the sum of its postings;
//   - payment_refunds: payments.refunded is the sum of the payment's
//     succeeded refunds, at most payable, and refund_reserved the sum of
//     those still processing or in doubt;
//   - payment_status: the status agrees with the refunded amount;
//   - payment_entries: a captured payment (succeeded, partially_refunded,
//     refunded, voided) has exactly one capture entry, debiting clearing by
//     the payable amount, and one fee entry, crediting fee revenue by the
//     fee, if and only if the fee is above zero; a payment processing,
//     failed or in doubt has no entry;
//   - refund_entries: a succeeded refund has exactly one refund entry (kind
//     refund) or one void entry and, if the payment had a fee, one
//     fee_reversal entry (kind void), crediting clearing by the refund's
//     amount; a refund not succeeded has no entry;
//   - entry_links: capture and fee entries name no refund; other entries
//     name an existing refund of their own payment, of the matching kind.
//
// All checks read one snapshot (REPEATABLE READ), so the ledger may be
// verified while payments flow: every state change and its entries commit
// together.

// Violation is one row that breaks a ledger invariant.
type Violation struct {
	Check  string // the invariant (see VerifyLedger)
	Table  string // the offending row's table
	ID     string // and its id
	Detail string
}

func (v Violation) String() string {
	return fmt.Sprintf("%s: %s %s: %s", v.Check, v.Table, v.ID, v.Detail)
}

// LedgerReport is the result of a verification.
type LedgerReport struct {
	Entries, Postings, Accounts int64
	Violations                  []Violation
}

// maxViolationsPerCheck bounds the report of a badly damaged ledger.
const maxViolationsPerCheck = 1000

// ledgerChecks are the checks; each query returns (table, id, detail) of
// the offending rows. A detail is built with concat_ws from one CASE per
// problem, so a row is listed once with all its problems and the
// conditions are written once.
var ledgerChecks = []struct{ name, sql string }{
	{"entry_balance", `
		SELECT 'ledger_entries', entry_id::text, format('its %s postings sum to %s, not 0', currency, sum(amount))
		FROM ledger_postings GROUP BY entry_id, currency HAVING sum(amount) <> 0
		UNION ALL
		SELECT 'ledger_entries', e.id::text, 'it has no postings' FROM ledger_entries e
		WHERE NOT EXISTS (SELECT 1 FROM ledger_postings p WHERE p.entry_id = e.id)`},
	{"posting_currency", `
		SELECT * FROM (
			SELECT 'ledger_postings' AS tbl, p.id::text AS id, concat_ws('; ',
				CASE WHEN p.currency <> a.currency THEN format('currency %s, but its account %s is in %s', p.currency, a.id, a.currency) END,
				CASE WHEN p.currency <> pay.currency THEN format('currency %s, but its payment %s is in %s', p.currency, pay.id, pay.currency) END
			) AS detail
			FROM ledger_postings p JOIN ledger_accounts a ON a.id = p.account_id
				JOIN ledger_entries e ON e.id = p.entry_id JOIN payments pay ON pay.id = e.payment_id
		) v WHERE detail <> ''`},
	{"posting_scope", `
		SELECT * FROM (
			SELECT 'ledger_postings' AS tbl, p.id::text AS id, concat_ws('; ',
				CASE WHEN a.id IS NULL THEN format('its account %s does not exist', p.account_id) END,
				CASE WHEN e.id IS NULL THEN format('its entry %s does not exist', p.entry_id) END,
				CASE WHEN e.id IS NOT NULL AND pay.id IS NULL THEN format('the payment %s of its entry does not exist', e.payment_id) END,
				CASE WHEN p.tenant_id <> a.tenant_id THEN format('tenant %s, but its account''s is %s', p.tenant_id, a.tenant_id) END,
				CASE WHEN p.tenant_id <> e.tenant_id THEN format('tenant %s, but its entry''s is %s', p.tenant_id, e.tenant_id) END,
				CASE WHEN a.livemode <> e.livemode THEN format('its account has livemode %s, its entry %s', a.livemode, e.livemode) END,
				CASE WHEN a.kind = 'merchant_payable' AND a.merchant_id <> pay.merchant_id
					THEN format('it posts to merchant %s''s account for a payment of merchant %s', a.merchant_id, pay.merchant_id) END
			) AS detail
			FROM ledger_postings p LEFT JOIN ledger_accounts a ON a.id = p.account_id
				LEFT JOIN ledger_entries e ON e.id = p.entry_id LEFT JOIN payments pay ON pay.id = e.payment_id
		) v WHERE detail <> ''`},
	{"account_balance", `
		WITH b AS (SELECT account_id, sum(balance) AS s FROM account_balances GROUP BY account_id),
		     p AS (SELECT account_id, sum(amount) AS s FROM ledger_postings GROUP BY account_id)
		SELECT 'ledger_accounts', a.id::text, format('balance %s (account_balances), but its postings sum to %s', COALESCE(b.s, 0), COALESCE(p.s, 0))
		FROM ledger_accounts a LEFT JOIN b ON b.account_id = a.id LEFT JOIN p ON p.account_id = a.id
		WHERE COALESCE(b.s, 0) <> COALESCE(p.s, 0)
		UNION ALL
		SELECT 'account_balances', b.account_id::text, 'a balance of an account that does not exist' FROM b
		WHERE NOT EXISTS (SELECT 1 FROM ledger_accounts a WHERE a.id = b.account_id)`},
	{"payment_refunds", `
		WITH r AS (
			SELECT payment_id, sum(amount) FILTER (WHERE status = 'succeeded') AS done,
				sum(amount) FILTER (WHERE status IN ('processing', 'in_doubt')) AS open
			FROM refunds GROUP BY payment_id)
		SELECT * FROM (
			SELECT 'payments' AS tbl, p.id::text AS id, concat_ws('; ',
				CASE WHEN p.refunded <> COALESCE(r.done, 0)
					THEN format('refunded %s, but its succeeded refunds sum to %s', p.refunded, COALESCE(r.done, 0)) END,
				CASE WHEN p.refunded > p.payable THEN format('refunded %s exceeds the payable %s', p.refunded, p.payable) END,
				CASE WHEN p.refund_reserved <> COALESCE(r.open, 0)
					THEN format('refund_reserved %s, but its refunds processing or in doubt sum to %s', p.refund_reserved, COALESCE(r.open, 0)) END
			) AS detail
			FROM payments p LEFT JOIN r ON r.payment_id = p.id
		) v WHERE detail <> ''`},
	{"payment_status", `
		SELECT 'payments', id::text, format('status %s with %s of %s refunded and %s reserved', status, refunded, payable, refund_reserved)
		FROM payments WHERE CASE status
			WHEN 'succeeded' THEN refunded <> 0
			WHEN 'partially_refunded' THEN NOT (refunded > 0 AND refunded < payable)
			WHEN 'refunded' THEN refunded <> payable OR refund_reserved <> 0
			WHEN 'voided' THEN refunded <> payable OR refund_reserved <> 0
			ELSE refunded <> 0 OR refund_reserved <> 0 END`},
	{"payment_entries", `
		WITH e AS (
			SELECT payment_id, count(*) AS total, count(*) FILTER (WHERE kind = 'capture') AS captures,
				count(*) FILTER (WHERE kind = 'fee') AS fees
			FROM ledger_entries GROUP BY payment_id),
		legs AS (
			SELECT e.payment_id,
				sum(p.amount) FILTER (WHERE e.kind = 'capture' AND a.kind = 'bank_clearing') AS captured,
				sum(p.amount) FILTER (WHERE e.kind = 'fee' AND a.kind = 'fee_revenue') AS fee_revenue
			FROM ledger_entries e JOIN ledger_postings p ON p.entry_id = e.id JOIN ledger_accounts a ON a.id = p.account_id
			WHERE e.kind IN ('capture', 'fee') GROUP BY e.payment_id),
		x AS (
			SELECT p.id, p.status, p.payable, p.fee,
				p.status IN ('succeeded', 'partially_refunded', 'refunded', 'voided') AS captured_status,
				COALESCE(e.total, 0) AS total, COALESCE(e.captures, 0) AS captures, COALESCE(e.fees, 0) AS fees,
				l.captured, l.fee_revenue
			FROM payments p LEFT JOIN e ON e.payment_id = p.id LEFT JOIN legs l ON l.payment_id = p.id)
		SELECT * FROM (
			SELECT 'payments' AS tbl, id::text AS id, concat_ws('; ',
				CASE WHEN captured_status AND captures <> 1 THEN format('%s with %s capture entries, want 1', status, captures) END,
				CASE WHEN captured_status AND captures = 1 AND captured IS DISTINCT FROM payable
					THEN format('its capture debits clearing %s, want the payable %s', COALESCE(captured, 0), payable) END,
				CASE WHEN captured_status AND fees <> (fee > 0)::int
					THEN format('%s fee entries for a fee of %s, want %s', fees, fee, (fee > 0)::int) END,
				CASE WHEN captured_status AND fees = 1 AND fee > 0 AND fee_revenue IS DISTINCT FROM -fee
					THEN format('its fee entry credits fee revenue %s, want the fee %s', -COALESCE(fee_revenue, 0), fee) END,
				CASE WHEN NOT captured_status AND total <> 0 THEN format('%s with %s ledger entries, want none', status, total) END
			) AS detail FROM x
		) v WHERE detail <> ''`},
	{"refund_entries", `
		WITH e AS (
			SELECT refund_id, count(*) AS total, count(*) FILTER (WHERE kind = 'refund') AS refunds,
				count(*) FILTER (WHERE kind = 'void') AS voids, count(*) FILTER (WHERE kind = 'fee_reversal') AS reversals
			FROM ledger_entries WHERE refund_id IS NOT NULL GROUP BY refund_id),
		legs AS (
			SELECT e.refund_id, sum(p.amount) AS cleared
			FROM ledger_entries e JOIN ledger_postings p ON p.entry_id = e.id JOIN ledger_accounts a ON a.id = p.account_id
			WHERE e.refund_id IS NOT NULL AND e.kind IN ('refund', 'void') AND a.kind = 'bank_clearing' GROUP BY e.refund_id),
		x AS (
			SELECT r.id, r.kind, r.status, r.amount, pay.fee, COALESCE(e.total, 0) AS total, COALESCE(e.refunds, 0) AS refunds,
				COALESCE(e.voids, 0) AS voids, COALESCE(e.reversals, 0) AS reversals, l.cleared
			FROM refunds r LEFT JOIN payments pay ON pay.id = r.payment_id
				LEFT JOIN e ON e.refund_id = r.id LEFT JOIN legs l ON l.refund_id = r.id)
		SELECT * FROM (
			SELECT 'refunds' AS tbl, id::text AS id, concat_ws('; ',
				CASE WHEN status = 'succeeded' AND kind = 'refund' AND NOT (refunds = 1 AND total = 1)
					THEN format('succeeded refund with %s refund and %s other entries, want exactly one refund entry', refunds, total - refunds) END,
				CASE WHEN status = 'succeeded' AND kind = 'void' AND NOT (voids = 1 AND reversals = (fee > 0)::int AND total = voids + reversals)
					THEN format('succeeded void with %s void, %s fee_reversal and %s other entries, want 1 void and %s fee_reversal (fee %s)',
						voids, reversals, total - voids - reversals, (fee > 0)::int, fee) END,
				CASE WHEN status = 'succeeded' AND total > 0 AND cleared IS DISTINCT FROM -amount
					THEN format('its entry credits clearing %s, want the refund''s %s', -COALESCE(cleared, 0), amount) END,
				CASE WHEN status <> 'succeeded' AND total <> 0 THEN format('%s %s with %s ledger entries, want none', status, kind, total) END
			) AS detail FROM x
		) v WHERE detail <> ''`},
	{"entry_links", `
		SELECT * FROM (
			SELECT 'ledger_entries' AS tbl, e.id::text AS id, concat_ws('; ',
				CASE WHEN e.kind IN ('capture', 'fee') AND e.refund_id IS NOT NULL THEN format('a %s entry names refund %s', e.kind, e.refund_id) END,
				CASE WHEN e.kind NOT IN ('capture', 'fee') AND e.refund_id IS NULL THEN format('a %s entry names no refund', e.kind) END,
				CASE WHEN e.refund_id IS NOT NULL AND r.id IS NULL THEN format('its refund %s does not exist', e.refund_id) END,
				CASE WHEN r.payment_id <> e.payment_id THEN format('its refund %s is of payment %s, not %s', r.id, r.payment_id, e.payment_id) END,
				CASE WHEN (r.kind = 'refund' AND e.kind <> 'refund') OR (r.kind = 'void' AND e.kind NOT IN ('void', 'fee_reversal'))
					THEN format('a %s entry for a %s', e.kind, r.kind) END,
				CASE WHEN pay.id IS NULL THEN format('its payment %s does not exist', e.payment_id) END,
				CASE WHEN pay.tenant_id <> e.tenant_id OR pay.livemode <> e.livemode THEN 'its tenant or mode is not its payment''s' END
			) AS detail
			FROM ledger_entries e LEFT JOIN refunds r ON r.id = e.refund_id LEFT JOIN payments pay ON pay.id = e.payment_id
		) v WHERE detail <> ''`},
}

// VerifyLedger checks the ledger's invariants (see the comment at the top
// of this file) and returns every violation found, at most 1000 per check;
// none means the ledger is consistent. db must be a pool of the schema
// owner: the check reads every tenant's rows.
func VerifyLedger(ctx context.Context, db *pgxpool.Pool) ([]Violation, error) {
	r, err := VerifyLedgerReport(ctx, db)
	if err != nil {
		return nil, err
	}
	return r.Violations, nil
}

// VerifyLedgerReport is VerifyLedger with the counts of what was checked,
// read in the same snapshot.
func VerifyLedgerReport(ctx context.Context, db *pgxpool.Pool) (*LedgerReport, error) {
	tx, err := db.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return nil, fmt.Errorf("ledger verify: begin: %w", err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	// The tables force row-level security even on their owner (unless it
	// is a superuser): take the cross-tenant path.
	if _, err := tx.Exec(ctx, `SELECT set_config('atrium.all_tenants', 'on', true)`); err != nil {
		return nil, fmt.Errorf("ledger verify: %w", err)
	}
	rep := &LedgerReport{}
	if err := tx.QueryRow(ctx, `SELECT (SELECT count(*) FROM ledger_entries), (SELECT count(*) FROM ledger_postings),
		(SELECT count(*) FROM ledger_accounts)`).Scan(&rep.Entries, &rep.Postings, &rep.Accounts); err != nil {
		return nil, fmt.Errorf("ledger verify: counts: %w", err)
	}
	for _, c := range ledgerChecks {
		rows, _ := tx.Query(ctx, c.sql+` LIMIT `+fmt.Sprint(maxViolationsPerCheck+1))
		vs, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Violation, error) {
			v := Violation{Check: c.name}
			return v, r.Scan(&v.Table, &v.ID, &v.Detail)
		})
		if err != nil {
			return nil, fmt.Errorf("ledger verify: %s: %w", c.name, err)
		}
		if len(vs) > maxViolationsPerCheck {
			vs = append(vs[:maxViolationsPerCheck], Violation{Check: c.name, Table: "-", ID: "-",
				Detail: fmt.Sprintf("more violations of this check not listed (the first %d are)", maxViolationsPerCheck)})
		}
		rep.Violations = append(rep.Violations, vs...)
	}
	return rep, nil
}

package main

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/atriumhq/atrium/platform/keyring"
	"github.com/atriumhq/atrium/platform/testenv"
	atriumsql "github.com/atriumhq/atrium/sql"
)

// runCLI runs atrium with args against the database at dbURL and returns
// its exit status and output.
func runCLI(t *testing.T, dbURL string, env map[string]string, args ...string) (int, string, string) {
	t.Helper()
	t.Setenv("ATRIUM_DATABASE_URL", dbURL)
	t.Setenv("ATRIUM_REDIS_URL", testenv.RedisURL())
	t.Setenv("ATRIUM_MASTER_KEY", testMasterKey)
	t.Setenv("ATRIUM_PAYMENTS_CARD_KEYS", "")
	for k, v := range env {
		t.Setenv(k, v)
	}
	var stdout, stderr bytes.Buffer
	code := exitCode(run(context.Background(), args, nil, &stdout, &stderr), &stderr)
	return code, stdout.String(), stderr.String()
}

// paymentsDB is a fresh database with a tenant and a merchant, and a pool
// as its owner.
func paymentsDB(t *testing.T) (url string, owner *pgxpool.Pool, tenant, merchant string) {
	t.Helper()
	url = testenv.Database(t, atriumsql.Migrations())
	owner, err := pgxpool.New(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(owner.Close)
	tenant, merchant = uuid.NewString(), uuid.NewString()
	ownerExec(t, owner, `INSERT INTO tenants (id, name) VALUES ($1, 'Shops')`, tenant)
	ownerExec(t, owner, `INSERT INTO merchants (id, tenant_id, ref, name, mcc, settlement_account, fee_bps)
		VALUES ($1, $2, 'shop', 'Shop', '5411', 'DE00', 100)`, merchant, tenant)
	return url, owner, tenant, merchant
}

func ownerExec(t *testing.T, owner *pgxpool.Pool, sql string, args ...any) {
	t.Helper()
	if _, err := owner.Exec(context.Background(), sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

func TestLedgerVerifyCommand(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		code int
		err  string
	}{
		{"no subcommand", []string{"ledger"}, 2, "needs a subcommand: verify"},
		{"unknown subcommand", []string{"ledger", "fix"}, 2, `unknown ledger subcommand "fix"`},
		{"help", []string{"ledger", "verify", "--help"}, 0, "Usage: atrium ledger verify"},
		{"argument", []string{"ledger", "verify", "now"}, 2, "takes no arguments"},
	} {
		if code, _, stderr := runCLI(t, "postgres://postgres@127.0.0.1:5432/atrium", nil, tc.args...); code != tc.code || !strings.Contains(stderr, tc.err) {
			t.Errorf("%s: exit %d, stderr %q; want %d and %q", tc.name, code, stderr, tc.code, tc.err)
		}
	}

	url, owner, tenant, merchant := paymentsDB(t)
	// A captured payment of 10.00 with a fee of 0.10, as the payment code
	// writes it: two entries, balanced (the deferred trigger checks it).
	pay, clearing, payable, fees := uuid.NewString(), uuid.NewString(), uuid.NewString(), uuid.NewString()
	ownerExec(t, owner, `INSERT INTO payments (id, tenant_id, merchant_id, terminal_id, order_no, idempotency_key, livemode, amount, currency,
			payable, fee, method, wallet_code, status, channel, created_at, updated_at)
		VALUES ($1, $2, $3, $4, 'o-1', 'o-1', true, 1000, 'EUR', 1000, 10, 'wallet', '****1234', 'succeeded', 'sim', now(), now())`,
		pay, tenant, merchant, uuid.NewString())
	ownerExec(t, owner, `INSERT INTO ledger_accounts (id, tenant_id, merchant_id, kind, currency, livemode) VALUES
		($1, $4, NULL, 'bank_clearing', 'EUR', true), ($2, $4, $5, 'merchant_payable', 'EUR', true), ($3, $4, NULL, 'fee_revenue', 'EUR', true)`,
		clearing, payable, fees, tenant, merchant)
	capture, fee := uuid.NewString(), uuid.NewString()
	ownerExec(t, owner, `WITH e AS (INSERT INTO ledger_entries (id, tenant_id, kind, payment_id, livemode, created_at) VALUES
			($1, $3, 'capture', $4, true, now()), ($2, $3, 'fee', $4, true, now()))
		INSERT INTO ledger_postings (tenant_id, entry_id, account_id, amount, currency) VALUES
			($3, $1, $5, 1000, 'EUR'), ($3, $1, $6, -1000, 'EUR'), ($3, $2, $6, 10, 'EUR'), ($3, $2, $7, -10, 'EUR')`,
		capture, fee, tenant, pay, clearing, payable, fees)

	code, stdout, stderr := runCLI(t, url, nil, "ledger", "verify")
	if code != 0 || stdout != "ledger verified: 2 entries, 4 postings, 3 accounts: ok\n" {
		t.Fatalf("clean ledger: exit %d\nstdout: %s\nstderr: %s", code, stdout, stderr)
	}

	ownerExec(t, owner, `UPDATE account_balances SET balance = balance - 1 WHERE account_id = $1`, fees)
	code, stdout, stderr = runCLI(t, url, nil, "ledger", "verify")
	if code != 1 || !strings.Contains(stdout, "account_balance: ledger_accounts "+fees+": ") ||
		!strings.Contains(stderr, "ledger verify: 1 violation(s) in 2 entries, 4 postings, 3 accounts") {
		t.Fatalf("damaged ledger: exit %d\nstdout: %s\nstderr: %s", code, stdout, stderr)
	}
}

func TestPaymentsRekeyCommand(t *testing.T) {
	const k1 = "k1:MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="
	const k2 = "k2:ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA="
	for _, tc := range []struct {
		name string
		args []string
		env  map[string]string
		code int
		err  string
	}{
		{"no subcommand", []string{"payments"}, nil, 2, "needs a subcommand: rekey"},
		{"unknown subcommand", []string{"payments", "purge"}, nil, 2, `unknown payments subcommand "purge"`},
		{"help", []string{"payments", "rekey", "--help"}, nil, 0, "Usage: atrium payments rekey"},
		{"bad batch", []string{"payments", "rekey", "--batch", "0"}, nil, 2, "--batch must be 1 to 10000"},
		{"bad keyring", []string{"payments", "rekey"}, map[string]string{"ATRIUM_PAYMENTS_CARD_KEYS": "k2:short"}, 2, "ATRIUM_PAYMENTS_CARD_KEYS"},
	} {
		if code, _, stderr := runCLI(t, "postgres://postgres@127.0.0.1:5432/atrium", tc.env, tc.args...); code != tc.code || !strings.Contains(stderr, tc.err) {
			t.Errorf("%s: exit %d, stderr %q; want %d and %q", tc.name, code, stderr, tc.code, tc.err)
		}
	}

	url, owner, tenant, merchant := paymentsDB(t)
	old, err := keyring.Parse(k1)
	if err != nil {
		t.Fatal(err)
	}
	const card = "4242424242424242|12/2030"
	var ids []string
	for range 3 {
		id := uuid.Must(uuid.NewV7()).String()
		ownerExec(t, owner, `INSERT INTO payments (id, tenant_id, merchant_id, terminal_id, order_no, idempotency_key, livemode, amount, currency,
				payable, fee, method, card_bin, card_last4, card_sealed, status, channel, created_at, updated_at)
			VALUES ($1, $2, $3, $4, $5, $5, true, 1000, 'EUR', 1000, 10, 'card', '424242', '4242', $6, 'succeeded', 'sim', now(), now())`,
			id, tenant, merchant, uuid.NewString(), "o-"+id, old.Seal([]byte(card), []byte(id)))
		ids = append(ids, id)
	}
	rotated := map[string]string{"ATRIUM_PAYMENTS_CARD_KEYS": k2 + "," + k1}
	code, stdout, stderr := runCLI(t, url, rotated, "payments", "rekey", "--batch", "2")
	if code != 0 || stdout != "re-sealed 3 card number(s) under key k2\n" {
		t.Fatalf("rekey: exit %d\nstdout: %s\nstderr: %s", code, stdout, stderr)
	}
	onlyNew, _ := keyring.Parse(k2)
	for _, id := range ids {
		var sealed string
		if err := owner.QueryRow(context.Background(), `SELECT card_sealed FROM payments WHERE id = $1`, id).Scan(&sealed); err != nil {
			t.Fatal(err)
		}
		if plain, err := onlyNew.Open(sealed, []byte(id)); err != nil || string(plain) != card {
			t.Errorf("payment %s after rekey: %q, %v", id, plain, err)
		}
	}
	if strings.Contains(stdout+stderr, "4242424242424242") {
		t.Error("a card number was printed")
	}
	if code, stdout, _ = runCLI(t, url, rotated, "payments", "rekey"); code != 0 || stdout != "re-sealed 0 card number(s) under key k2\n" {
		t.Fatalf("second rekey: exit %d, %s", code, stdout)
	}
}

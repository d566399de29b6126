package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/atriumhq/atrium/modules/payment/simbank"
	"github.com/atriumhq/atrium/platform/testenv"
	atriumsql "github.com/atriumhq/atrium/sql"
)

// TestCrashChild is the server process of TestPaymentsSurviveKill9: the
// test binary run again with ATRIUM_CRASH_CHILD=1 serves Atrium from its
// environment until it is killed.
func TestCrashChild(t *testing.T) {
	if os.Getenv("ATRIUM_CRASH_CHILD") != "1" {
		t.Skip("the server process of TestPaymentsSurviveKill9")
	}
	if err := run(context.Background(), []string{"serve"}, os.Stdin, os.Stdout, os.Stderr); err != nil {
		t.Fatal(err)
	}
}

// TestPaymentsSurviveKill9: a load of payments runs from clients that
// retry with the same Idempotency-Key on any error; the server is killed
// with SIGKILL in the middle and started again. Afterwards every charge
// the simulated bank made belongs to exactly one payment, which succeeded;
// no key was charged twice; every payment the server answered for is in
// the database; the ledger holds one capture per succeeded payment.
func TestPaymentsSurviveKill9(t *testing.T) {
	if testing.Short() {
		t.Skip("integration")
	}
	// The bank lives in the test process: it outlives the server it witnesses.
	bank, bankSrv := startBank(t, simbank.Config{Seed: 7, Faults: simbank.Faults{P50: 3 * time.Millisecond, P99: 40 * time.Millisecond,
		TimeoutRate: 0.02, Hang: 2 * time.Second}})
	dbURL := testenv.Database(t, atriumsql.Migrations())
	prefix := testenv.RedisPrefix(t)

	// Set up the tenant, merchant and terminal through an ordinary
	// in-process instance, then stop it.
	setup := startInstance(t, testConfig(dbURL, prefix, "setup"))
	admin := loginAdmin(t, setup)
	tenant := uuid.NewString()
	ensureTenant(t, setup, tenant)
	liftPaymentLimits(t, setup, admin, tenant)
	createMerchant(t, setup, admin, tenant, "crash-shop", nil)
	terminal := newTerminalToken(t, setup, admin, tenant, "crash-shop", false)
	if err := setup.Stop(); err != nil {
		t.Fatal(err)
	}

	addr := freeAddr(t)
	base := "http://" + addr
	env := append(os.Environ(), "ATRIUM_CRASH_CHILD=1", "ATRIUM_ENV=development", "ATRIUM_HTTP_ADDR="+addr,
		"ATRIUM_DATABASE_URL="+dbURL, "ATRIUM_REDIS_URL="+testenv.RedisURL(), "ATRIUM_REDIS_PREFIX="+prefix,
		"ATRIUM_MASTER_KEY="+testMasterKey, "ATRIUM_INSTANCE_ID=crash", "ATRIUM_AUTH_ISSUER=http://atrium.test", "ATRIUM_LOG_LEVEL=warn", "ATRIUM_LOG_FORMAT=json",
		"ATRIUM_PAYMENTS_CHANNELS=simbank="+bankSrv, "ATRIUM_PAYMENTS_CALL_TIMEOUT=1s", "ATRIUM_PAYMENTS_RECOVER_AFTER=6s",
		"ATRIUM_PAYMENTS_RECOVERY_INTERVAL=200ms", "ATRIUM_PAYMENTS_TIMEOUT_CEILING=500ms")
	logs := &testenv.LogBuffer{}
	start := func() *exec.Cmd {
		cmd := exec.Command(os.Args[0], "-test.run=^TestCrashChild$", "-test.count=1")
		cmd.Env, cmd.Stdout, cmd.Stderr = env, logs, logs
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		waitReady(t, base)
		return cmd
	}
	server := start()
	t.Cleanup(func() {
		_ = server.Process.Kill()
		_, _ = server.Process.Wait()
		if t.Failed() {
			t.Logf("server logs:\n%s", logs.String())
		}
	})

	// Clients: each pays its own keys in turn, sending a key again until
	// the server answers it (201 or 202), whatever else happens.
	const clients, perClient = 8, 40
	var answered atomic.Int64
	answers := make([]map[string]string, clients) // key → payment id
	var wg sync.WaitGroup
	hc := &http.Client{Timeout: 5 * time.Second}
	for c := range clients {
		answers[c] = map[string]string{}
		wg.Go(func() {
			for range perClient {
				key := uuid.NewString()
				for {
					id, ok := payOnce(hc, base, terminal, key)
					if ok {
						answers[c][key] = id
						answered.Add(1)
						break
					}
					time.Sleep(20 * time.Millisecond)
				}
			}
		})
	}
	// Kill the server with payments in flight, then start it again.
	eventually(t, 30*time.Second, func() error {
		if answered.Load() < clients*perClient/4 {
			return fmt.Errorf("%d answered", answered.Load())
		}
		return nil
	})
	if err := server.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_, _ = server.Process.Wait()
	killedAt := answered.Load()
	time.Sleep(300 * time.Millisecond) // clients meet a dead server
	server = start()
	wg.Wait()
	t.Logf("%d payments answered before the kill, %d in all", killedAt, answered.Load())

	// Recovery resolves whatever the crash and the bank's hangs left.
	owner, err := pgx.Connect(context.Background(), dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer owner.Close(context.Background())
	eventually(t, 30*time.Second, func() error {
		var n int
		if err := owner.QueryRow(context.Background(), `SELECT count(*) FROM payments WHERE status IN ('processing', 'in_doubt')`).Scan(&n); err != nil {
			return err
		}
		if n > 0 {
			return fmt.Errorf("%d payments unresolved", n)
		}
		return nil
	})

	type row struct{ key, status string }
	rows, _ := owner.Query(context.Background(), `SELECT id::text, idempotency_key, status FROM payments`)
	payments := map[string]row{}
	for rows.Next() {
		var id string
		var r row
		if err := rows.Scan(&id, &r.key, &r.status); err != nil {
			t.Fatal(err)
		}
		payments[id] = r
	}
	if rows.Err() != nil {
		t.Fatal(rows.Err())
	}
	charged := map[string]bool{}
	chargesPerKey := map[string]int{}
	for _, e := range bank.Ledger().Entries {
		if e.Kind != "charge" {
			continue
		}
		p, ok := payments[e.ChargeID]
		switch {
		case !ok:
			t.Errorf("the bank charged %s, which is no payment of Atrium's", e.ChargeID)
		case p.status != "succeeded":
			t.Errorf("the bank charged payment %s, which Atrium records as %s", e.ChargeID, p.status)
		}
		charged[e.ChargeID] = true
		chargesPerKey[p.key]++
	}
	for key, n := range chargesPerKey {
		if n > 1 {
			t.Errorf("key %s was charged %d times", key, n)
		}
	}
	for id, p := range payments {
		if p.status == "succeeded" && !charged[id] {
			t.Errorf("payment %s is succeeded but the bank never charged it", id)
		}
	}
	for _, m := range answers {
		for key, id := range m {
			p, ok := payments[id]
			if !ok || p.key != key {
				t.Errorf("the answer to key %s named payment %s, which is not that key's", key, id)
			}
		}
	}
	var summary string
	if err := owner.QueryRow(context.Background(), `SELECT string_agg(s, ', ') FROM (SELECT status || COALESCE('/' || decline_reason, '') || ': ' || count(*) AS s
		FROM payments GROUP BY status, decline_reason ORDER BY 1) x`).Scan(&summary); err != nil {
		t.Fatal(err)
	}
	var recovered int
	if err := owner.QueryRow(context.Background(), `SELECT count(DISTINCT payment_id) FROM payment_transitions t
		WHERE status IN ('in_doubt') OR (status = 'failed' AND detail = 'not_processed_by_bank')`).Scan(&recovered); err != nil {
		t.Fatal(err)
	}
	t.Logf("payments by outcome: %s; %d were in doubt or left by the crash and resolved by recovery", summary, recovered)
	var captures, succeeded int
	if err := owner.QueryRow(context.Background(), `SELECT (SELECT count(*) FROM ledger_entries WHERE kind = 'capture'),
		(SELECT count(*) FROM payments WHERE status = 'succeeded')`).Scan(&captures, &succeeded); err != nil {
		t.Fatal(err)
	}
	if captures != succeeded || succeeded < clients*perClient*9/10 {
		t.Errorf("%d captures in the ledger, %d succeeded payments of %d", captures, succeeded, clients*perClient)
	}
	// And `atrium ledger verify` passes.
	t.Setenv("ATRIUM_DATABASE_URL", dbURL)
	t.Setenv("ATRIUM_REDIS_URL", testenv.RedisURL())
	t.Setenv("ATRIUM_MASTER_KEY", testMasterKey)
	var out, errOut strings.Builder
	if err := run(context.Background(), []string{"ledger", "verify"}, nil, &out, &errOut); err != nil {
		t.Errorf("atrium ledger verify: %v\n%s%s", err, out.String(), errOut.String())
	}
}

// payOnce sends one payment; ok reports an answer the terminal can act on.
func payOnce(hc *http.Client, base, token, key string) (id string, ok bool) {
	req, _ := http.NewRequest(http.MethodPost, base+"/api/v1/payments", jsonBody(cardPayment(1500)))
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Idempotency-Key", key)
	resp, err := hc.Do(req)
	if err != nil {
		return "", false
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusCreated && resp.StatusCode != http.StatusAccepted {
		return "", false
	}
	var p struct{ ID string }
	if err := json.NewDecoder(resp.Body).Decode(&p); err != nil || p.ID == "" {
		return "", false
	}
	return p.ID, true
}

func freeAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

package main

import (
	"encoding/base64"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/atriumhq/atrium/modules/auth"
	"github.com/atriumhq/atrium/modules/payment"
	"github.com/atriumhq/atrium/modules/payment/simbank"
	"github.com/atriumhq/atrium/platform/config"
	"github.com/atriumhq/atrium/platform/testenv"
	atriumsql "github.com/atriumhq/atrium/sql"
)

// payEnv is a cluster with a simulated bank behind its one channel, a
// tenant, a merchant and a terminal of that merchant.
type payEnv struct {
	in       []*instance
	bank     *simbank.Bank
	admin    string // platform administrator's token
	tenant   string
	merchant payment.Merchant
	terminal string // the terminal's access token
}

// payConfig adjusts the payment settings of test instances; channels are
// "name=url" entries in priority order.
func payConfig(cfg *config.Config, channels ...string) {
	cfg.Payments = config.Payments{IdempotencyTTL: 24 * time.Hour, TimeoutFloor: 50 * time.Millisecond,
		TimeoutCeiling: 1 * time.Second, MaxConcurrent: 64, CallTimeout: 3 * time.Second,
		RecoverAfter: 8 * time.Second, RecoveryInterval: 200 * time.Millisecond}
	cfg.Payments.Channels = channels
	// Test-mode payments go to the first bank too, through a channel of their own.
	if len(channels) > 0 {
		_, u, _ := strings.Cut(channels[0], "=")
		cfg.Payments.TestChannels = []string{"test-bank=" + u}
	}
}

// startBank serves a simulated bank made with cfg for the test's length.
func startBank(t testing.TB, cfg simbank.Config) (*simbank.Bank, string) {
	t.Helper()
	bank, err := simbank.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(bank.Handler())
	t.Cleanup(func() { bank.Close(); srv.Close() })
	return bank, srv.URL
}

// startPaymentCluster starts n instances whose one bank channel,
// "simbank", is a fresh simulated bank.
func startPaymentCluster(t testing.TB, n int) []*instance {
	t.Helper()
	ins, _ := startPaymentClusterBank(t, n)
	return ins
}

func startPaymentClusterBank(t testing.TB, n int) ([]*instance, *simbank.Bank) {
	t.Helper()
	bank, bankURL := startBank(t, simbank.Config{Seed: 1})
	dbURL := testenv.Database(t, atriumsql.Migrations())
	prefix := testenv.RedisPrefix(t)
	var out []*instance
	for i := range n {
		cfg := testConfig(dbURL, prefix, fmt.Sprintf("pay-%d", i))
		payConfig(&cfg, "simbank="+bankURL)
		out = append(out, startInstance(t, cfg))
	}
	return out, bank
}

func startPayments(t testing.TB, n int) *payEnv {
	t.Helper()
	env := &payEnv{tenant: uuid.NewString()}
	env.in, env.bank = startPaymentClusterBank(t, n)
	in := env.in[0]
	env.admin = loginAdmin(t, in)
	ensureTenant(t, in, env.tenant)
	liftPaymentLimits(t, in, env.admin, env.tenant)
	env.merchant = createMerchant(t, in, env.admin, env.tenant, "shop-1", map[string]any{
		"fee_bps": 250, "fee_fixed": 10, "point_value": 1,
		"promotions": []map[string]any{{"id": "spend100save10", "spend": 10000, "save": 1000}}})
	env.terminal = newTerminalToken(t, in, env.admin, env.tenant, "shop-1", false)
	return env
}

// liftPaymentLimits lifts the tenant's payment and terminal rate limits:
// tests send payments faster than a real terminal may.
func liftPaymentLimits(t testing.TB, in *instance, admin, tenant string) {
	t.Helper()
	for _, q := range []string{"payments_per_second", "terminal_requests_per_second"} {
		resp, body := call(t, http.MethodPut, in.URL+"/api/v1/tenants/"+tenant+"/quotas/"+q,
			jsonBody(map[string]int{"value": 1_000_000}), withJSON(bearer(admin)))
		wantStatus(t, resp, body, http.StatusOK)
	}
}

func createMerchant(t testing.TB, in *instance, token, tenant, ref string, extra map[string]any) payment.Merchant {
	t.Helper()
	body := map[string]any{"tenant_id": tenant, "ref": ref, "name": "Merchant " + ref, "mcc": "5411", "settlement_account": "DE89370400440532013000"}
	for k, v := range extra {
		body[k] = v
	}
	resp, b := apiAs(t, in, token)(http.MethodPost, "/api/v1/merchants", body)
	wantStatus(t, resp, b, http.StatusCreated)
	return decodeJSON[payment.Merchant](t, b)
}

// newTerminalToken registers a terminal of the merchant and returns its
// access token.
func newTerminalToken(t testing.TB, in *instance, admin, tenant, merchantRef string, test bool) string {
	t.Helper()
	resp, body := call(t, http.MethodPost, in.URL+"/api/v1/terminals",
		jsonBody(map[string]any{"merchant_ref": merchantRef, "tenant_id": tenant, "test_mode": test}), withJSON(bearer(admin)))
	wantStatus(t, resp, body, http.StatusCreated)
	term := decodeJSON[auth.Terminal](t, body)
	basic := http.Header{"Authorization": {"Basic " + base64.StdEncoding.EncodeToString([]byte(term.ID+":"+term.Secret))}}
	resp, body = postForm(t, in.URL+"/oauth2/token", url.Values{"grant_type": {"client_credentials"}}, basic)
	wantStatus(t, resp, body, http.StatusOK)
	return decodeJSON[authTokens](t, body).AccessToken
}

const testCard = "4242424242424242"

func cardPayment(amount int64) map[string]any {
	return map[string]any{"amount": amount, "currency": "EUR",
		"method": map[string]any{"type": "card", "number": testCard, "exp_month": 12, "exp_year": 2031}}
}

// post sends a POST with an Idempotency-Key (none when key is "").
func post(t testing.TB, in *instance, token, path, key string, body any) (*http.Response, []byte) {
	t.Helper()
	h := withJSON(bearer(token))
	if key != "" {
		h.Set("Idempotency-Key", key)
	}
	return call(t, http.MethodPost, in.URL+path, jsonBody(body), h)
}

func pay(t testing.TB, env *payEnv, in *instance, key string, body any, status int) payment.Payment {
	t.Helper()
	resp, b := post(t, in, env.terminal, "/api/v1/payments", key, body)
	wantStatus(t, resp, b, status)
	return decodeJSON[payment.Payment](t, b)
}

func TestPaymentsEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("integration")
	}
	env := startPayments(t, 1)
	in := env.in[0]

	t.Run("a card payment succeeds and is replayed for its key", func(t *testing.T) {
		key := uuid.NewString()
		p := pay(t, env, in, key, cardPayment(2000), http.StatusCreated)
		if p.Status != payment.StatusSucceeded || p.Payable != 2000 || p.Fee != 2000*250/10000+10 || p.Card == nil ||
			p.Card.BIN != "424242" || p.Card.Last4 != "4242" || !p.Livemode || p.Channel != "simbank" {
			t.Fatalf("payment: %+v", p)
		}
		if len(p.OrderNo) != 22 || p.OrderNo[6] != '-' || p.OrderNo[13] != '-' {
			t.Errorf("order number %q", p.OrderNo)
		}
		resp, b := post(t, in, env.terminal, "/api/v1/payments", key, cardPayment(2000))
		wantStatus(t, resp, b, http.StatusCreated)
		if resp.Header.Get("Idempotent-Replayed") != "true" || decodeJSON[payment.Payment](t, b).ID != p.ID {
			t.Errorf("replay: %s %s", resp.Header, b)
		}
		resp, b = post(t, in, env.terminal, "/api/v1/payments", key, cardPayment(2001))
		wantProblem(t, resp, b, http.StatusUnprocessableEntity, "unprocessable")
		if n := len(env.bank.Ledger().Entries); n != 1 {
			t.Errorf("the bank charged %d times, want once", n)
		}
		resp, b = apiAs(t, in, env.terminal)(http.MethodGet, "/api/v1/payments/"+p.ID, nil)
		wantStatus(t, resp, b, http.StatusOK)
		got := decodeJSON[payment.Payment](t, b)
		if len(got.Timeline) != 2 || got.Timeline[0].Status != "processing" || got.Timeline[1].Status != "succeeded" {
			t.Errorf("timeline: %+v", got.Timeline)
		}
		if strings.Contains(string(b), testCard) {
			t.Error("the card number is in the response")
		}
	})

	t.Run("bad input names the field and stores nothing", func(t *testing.T) {
		resp, b := post(t, in, env.terminal, "/api/v1/payments", "", cardPayment(100))
		wantProblem(t, resp, b, http.StatusBadRequest, "invalid")
		if !strings.Contains(string(b), "Idempotency-Key") {
			t.Errorf("no key: %s", b)
		}
		key := uuid.NewString()
		bad := cardPayment(100)
		bad["method"] = map[string]any{"type": "card", "number": "4242424242424241", "exp_month": 12, "exp_year": 2031}
		resp, b = post(t, in, env.terminal, "/api/v1/payments", key, bad)
		wantProblem(t, resp, b, http.StatusBadRequest, "invalid")
		if !strings.Contains(string(b), `"method.number"`) || strings.Contains(string(b), "4242424242424241") {
			t.Errorf("bad card: %s", b)
		}
		// Nothing was stored: the same key now takes a good payment.
		pay(t, env, in, key, cardPayment(100), http.StatusCreated)
		for field, body := range map[string]map[string]any{
			"amount":      {"amount": 0, "currency": "EUR", "method": map[string]any{"type": "wallet", "code": "WALLET-123456"}},
			"currency":    {"amount": 10, "currency": "EURO", "method": map[string]any{"type": "wallet", "code": "WALLET-123456"}},
			"method.type": {"amount": 10, "currency": "EUR", "method": map[string]any{"type": "cash"}},
			"discounts.points": {"amount": 10, "currency": "EUR", "method": map[string]any{"type": "wallet", "code": "WALLET-123456"},
				"discounts": map[string]any{"points": 5}},
		} {
			resp, b := post(t, in, env.terminal, "/api/v1/payments", uuid.NewString(), body)
			wantProblem(t, resp, b, http.StatusBadRequest, "invalid")
			if !strings.Contains(string(b), `"field":"`+field+`"`) {
				t.Errorf("%s: %s", field, b)
			}
		}
	})

	t.Run("a key is its terminal's, terminals cannot read merchants, odd input is refused", func(t *testing.T) {
		key := uuid.NewString()
		pay(t, env, in, key, cardPayment(321), http.StatusCreated)
		other := newTerminalToken(t, in, env.admin, env.tenant, "shop-1", false)
		resp, b := post(t, in, other, "/api/v1/payments", key, cardPayment(321))
		wantProblem(t, resp, b, http.StatusUnprocessableEntity, "unprocessable")
		for _, path := range []string{"/api/v1/merchants", "/api/v1/merchants/" + env.merchant.ID, "/api/v1/merchants/" + env.merchant.ID + "/balances"} {
			resp, b := apiAs(t, in, env.terminal)(http.MethodGet, path, nil)
			wantProblem(t, resp, b, http.StatusForbidden, "forbidden")
		}
		nul := cardPayment(100)
		nul["customer_ref"] = "a\x00b"
		resp, b = post(t, in, env.terminal, "/api/v1/payments", uuid.NewString(), nul)
		wantProblem(t, resp, b, http.StatusBadRequest, "invalid")
		nul = cardPayment(100)
		nul["device"] = map[string]any{"model": "a\x00b"}
		resp, b = post(t, in, env.terminal, "/api/v1/payments", uuid.NewString(), nul)
		wantProblem(t, resp, b, http.StatusBadRequest, "invalid")
		resp, b = post(t, in, env.admin, "/api/v1/payments/not-an-id/refunds", uuid.NewString(), map[string]any{})
		wantProblem(t, resp, b, http.StatusNotFound, "not_found")
		resp, b = apiAs(t, in, env.admin)(http.MethodGet, "/api/v1/payments?order_no=%00", nil)
		wantProblem(t, resp, b, http.StatusBadRequest, "invalid")
	})

	t.Run("discounts are computed by the server", func(t *testing.T) {
		body := cardPayment(12000)
		body["customer_ref"] = "cust-1"
		body["discounts"] = map[string]any{"promotion_id": "spend100save10", "points": 500}
		body["payable"] = 10500
		p := pay(t, env, in, uuid.NewString(), body, http.StatusCreated)
		if p.Discount != 1000 || p.PointsAmount != 500 || p.Payable != 10500 {
			t.Errorf("discounts: %+v", p)
		}
		body["payable"] = 10000
		resp, b := post(t, in, env.terminal, "/api/v1/payments", uuid.NewString(), body)
		wantProblem(t, resp, b, http.StatusBadRequest, "invalid")
		if !strings.Contains(string(b), `"field":"payable"`) {
			t.Errorf("mismatch: %s", b)
		}
		small := cardPayment(5000)
		small["discounts"] = map[string]any{"promotion_id": "spend100save10"}
		resp, b = post(t, in, env.terminal, "/api/v1/payments", uuid.NewString(), small)
		wantProblem(t, resp, b, http.StatusBadRequest, "invalid")
	})

	t.Run("a declined card is a failed payment", func(t *testing.T) {
		body := cardPayment(700)
		body["method"] = map[string]any{"type": "card", "number": "4000000000000002", "exp_month": 1, "exp_year": 2032}
		p := pay(t, env, in, uuid.NewString(), body, http.StatusCreated)
		if p.Status != payment.StatusFailed || p.DeclineReason != "card_declined" {
			t.Errorf("decline: %+v", p)
		}
	})

	t.Run("refunds never pass the payment, even concurrently", func(t *testing.T) {
		p := pay(t, env, in, uuid.NewString(), cardPayment(1000), http.StatusCreated)
		var wg sync.WaitGroup
		var mu sync.Mutex
		codes := map[int]int{}
		for range 10 {
			wg.Go(func() {
				resp, _ := post(t, in, env.admin, "/api/v1/payments/"+p.ID+"/refunds", uuid.NewString(), map[string]any{"amount": 150})
				mu.Lock()
				codes[resp.StatusCode]++
				mu.Unlock()
			})
		}
		wg.Wait()
		if codes[http.StatusCreated] != 6 || codes[http.StatusBadRequest] != 4 {
			t.Errorf("refund statuses: %v (want 6 created, 4 refused)", codes)
		}
		resp, b := apiAs(t, in, env.admin)(http.MethodGet, "/api/v1/payments/"+p.ID, nil)
		wantStatus(t, resp, b, http.StatusOK)
		got := decodeJSON[payment.Payment](t, b)
		if got.Refunded != 900 || got.Status != payment.StatusPartiallyRefunded || got.RefundReserved != 0 {
			t.Errorf("after refunds: %+v", got)
		}
		// The rest, by default amount.
		resp, b = post(t, in, env.admin, "/api/v1/payments/"+p.ID+"/refunds", uuid.NewString(), map[string]any{})
		wantStatus(t, resp, b, http.StatusCreated)
		if r := decodeJSON[payment.Refund](t, b); r.Amount != 100 || r.Status != payment.StatusSucceeded {
			t.Errorf("final refund: %+v", r)
		}
		var refunded int64
		for _, e := range env.bank.Ledger().Entries {
			if e.ChargeID == p.ID && e.Kind == "refund" {
				refunded -= e.Amount
			}
		}
		if refunded != 1000 {
			t.Errorf("the bank refunded %d", refunded)
		}
	})

	t.Run("a void reverses the payment and its fee", func(t *testing.T) {
		p := pay(t, env, in, uuid.NewString(), cardPayment(3000), http.StatusCreated)
		resp, b := post(t, in, env.admin, "/api/v1/payments/"+p.ID+"/void", uuid.NewString(), map[string]any{})
		wantStatus(t, resp, b, http.StatusCreated)
		resp, b = apiAs(t, in, env.admin)(http.MethodGet, "/api/v1/payments/"+p.ID+"/ledger", nil)
		wantStatus(t, resp, b, http.StatusOK)
		for _, kind := range []string{"capture", "fee", "void", "fee_reversal"} {
			if !strings.Contains(string(b), `"kind":"`+kind+`"`) {
				t.Errorf("no %s entry: %s", kind, b)
			}
		}
	})

	t.Run("test-mode terminals stay out of live lists", func(t *testing.T) {
		testTerm := newTerminalToken(t, in, env.admin, env.tenant, "shop-1", true)
		resp, b := post(t, in, testTerm, "/api/v1/payments", uuid.NewString(), cardPayment(999))
		wantStatus(t, resp, b, http.StatusCreated)
		p := decodeJSON[payment.Payment](t, b)
		if p.Livemode || p.Channel != "test-bank" {
			t.Fatalf("a test terminal's payment is live or went to a live channel: %+v", p)
		}
		resp, b = apiAs(t, in, env.admin)(http.MethodGet, "/api/v1/payments?order_no="+p.OrderNo, nil)
		wantStatus(t, resp, b, http.StatusOK)
		if len(decodeJSON[payment.Page](t, b).Payments) != 0 {
			t.Error("the test payment is in the live list")
		}
		resp, b = apiAs(t, in, env.admin)(http.MethodGet, "/api/v1/payments?mode=test&order_no="+p.OrderNo, nil)
		wantStatus(t, resp, b, http.StatusOK)
		if len(decodeJSON[payment.Page](t, b).Payments) != 1 {
			t.Error("the test payment is not in the test list")
		}
	})

	t.Run("a bank that is down charges nothing and the key can be retried", func(t *testing.T) {
		f := env.bank.Faults()
		f.DownUntil = time.Now().Add(time.Hour)
		if err := env.bank.SetFaults(f); err != nil {
			t.Fatal(err)
		}
		key := uuid.NewString()
		resp, b := post(t, in, env.terminal, "/api/v1/payments", key, cardPayment(4200))
		wantProblem(t, resp, b, http.StatusServiceUnavailable, "unavailable")
		if resp.Header.Get("Retry-After") == "" {
			t.Error("no Retry-After")
		}
		f.DownUntil = time.Time{}
		if err := env.bank.SetFaults(f); err != nil {
			t.Fatal(err)
		}
		// The breaker may be open for a moment after the outage.
		eventually(t, 10*time.Second, func() error {
			resp, b := post(t, in, env.terminal, "/api/v1/payments", key, cardPayment(4200))
			if resp.StatusCode != http.StatusCreated {
				return fmt.Errorf("status %d: %s", resp.StatusCode, b)
			}
			return nil
		})
	})

	t.Run("a payment in doubt is resolved by recovery", func(t *testing.T) {
		f := env.bank.Faults()
		f.TimeoutRate, f.Hang = 1, 3*time.Second
		if err := env.bank.SetFaults(f); err != nil {
			t.Fatal(err)
		}
		key := uuid.NewString()
		p := pay(t, env, in, key, cardPayment(555), http.StatusAccepted)
		f.TimeoutRate = 0
		if err := env.bank.SetFaults(f); err != nil {
			t.Fatal(err)
		}
		if p.Status != payment.StatusInDoubt {
			t.Fatalf("status %s, want in_doubt", p.Status)
		}
		eventually(t, 15*time.Second, func() error {
			resp, b := apiAs(t, in, env.terminal)(http.MethodGet, "/api/v1/payments/"+p.ID, nil)
			if got := decodeJSON[payment.Payment](t, b); resp.StatusCode != http.StatusOK || got.Status != payment.StatusSucceeded {
				return fmt.Errorf("status %s", got.Status)
			}
			return nil
		})
		// The key now answers with the outcome.
		resp, b := post(t, in, env.terminal, "/api/v1/payments", key, cardPayment(555))
		wantStatus(t, resp, b, http.StatusCreated)
	})
}

// TestPaymentRoutingAndFailover: payments go to the first channel the
// merchant allows whose breaker is not open; a channel that refuses
// without charging (down, or forced open by an operator) hands the
// payment to the next within the same request; with none left the answer
// is 503 and nothing is charged anywhere.
func TestPaymentRoutingAndFailover(t *testing.T) {
	if testing.Short() {
		t.Skip("integration")
	}
	bankA, urlA := startBank(t, simbank.Config{Seed: 1})
	bankB, urlB := startBank(t, simbank.Config{Seed: 1})
	cfg := testConfig(testenv.Database(t, atriumsql.Migrations()), testenv.RedisPrefix(t), "route-0")
	payConfig(&cfg, "bank-a="+urlA, "bank-b="+urlB)
	in := startInstance(t, cfg)
	admin := loginAdmin(t, in)
	tenant := uuid.NewString()
	ensureTenant(t, in, tenant)
	liftPaymentLimits(t, in, admin, tenant)
	createMerchant(t, in, admin, tenant, "any", nil)
	createMerchant(t, in, admin, tenant, "b-only", map[string]any{"channels": []string{"bank-b"}})
	anyTerm := newTerminalToken(t, in, admin, tenant, "any", false)
	bTerm := newTerminalToken(t, in, admin, tenant, "b-only", false)
	payVia := func(term string, status int) payment.Payment {
		t.Helper()
		resp, b := post(t, in, term, "/api/v1/payments", uuid.NewString(), cardPayment(800))
		wantStatus(t, resp, b, status)
		return decodeJSON[payment.Payment](t, b)
	}
	setMode := func(name, mode string) {
		t.Helper()
		resp, b := call(t, http.MethodPut, in.URL+"/api/v1/payment-channels/"+name+"/breaker", jsonBody(map[string]string{"mode": mode}), withJSON(bearer(admin)))
		wantStatus(t, resp, b, http.StatusOK)
	}
	charges := func(b *simbank.Bank) int { return len(b.Ledger().Entries) }

	if p := payVia(anyTerm, http.StatusCreated); p.Channel != "bank-a" {
		t.Errorf("by priority: channel %s, want bank-a", p.Channel)
	}
	if p := payVia(bTerm, http.StatusCreated); p.Channel != "bank-b" {
		t.Errorf("the merchant's own rule: channel %s, want bank-b", p.Channel)
	}

	// bank-a down: it answers 503 unprocessed, and the payment moves on.
	f := bankA.Faults()
	f.DownUntil = time.Now().Add(time.Hour)
	if err := bankA.SetFaults(f); err != nil {
		t.Fatal(err)
	}
	p := payVia(anyTerm, http.StatusCreated)
	if p.Channel != "bank-b" || p.Status != payment.StatusSucceeded {
		t.Fatalf("failover: %+v", p)
	}
	resp, b := apiAs(t, in, admin)(http.MethodGet, "/api/v1/payments/"+p.ID, nil)
	wantStatus(t, resp, b, http.StatusOK)
	if !strings.Contains(string(b), "failover from bank-a to bank-b") {
		t.Errorf("the timeline does not show the failover: %s", b)
	}
	f.DownUntil = time.Time{}
	if err := bankA.SetFaults(f); err != nil {
		t.Fatal(err)
	}

	// An operator forces bank-a open: payments skip it without trying.
	setMode("bank-a", "forced_open")
	before := charges(bankA)
	if p := payVia(anyTerm, http.StatusCreated); p.Channel != "bank-b" {
		t.Errorf("bank-a forced open: channel %s, want bank-b", p.Channel)
	}
	// bank-b forced open too: nothing is left for anyone, nothing is charged.
	setMode("bank-b", "forced_open")
	beforeB := charges(bankB)
	resp, b = post(t, in, bTerm, "/api/v1/payments", uuid.NewString(), cardPayment(800))
	wantProblem(t, resp, b, http.StatusServiceUnavailable, "unavailable")
	if resp.Header.Get("Retry-After") == "" {
		t.Error("503 without Retry-After")
	}
	if charges(bankA) != before || charges(bankB) != beforeB {
		t.Error("a refused payment reached a bank")
	}
	setMode("bank-a", "auto")
	setMode("bank-b", "auto")
	if p := payVia(anyTerm, http.StatusCreated); p.Channel != "bank-a" {
		t.Errorf("after auto: channel %s, want bank-a", p.Channel)
	}
}

package simbank

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestLatencyFitsP50AndP99(t *testing.T) {
	b, err := New(Config{Faults: Faults{P50: 20 * time.Millisecond, P99: 200 * time.Millisecond}, Seed: 7})
	if err != nil {
		t.Fatal(err)
	}
	const n = 20000
	lat := make([]time.Duration, n)
	b.mu.Lock()
	for i := range lat {
		lat[i] = b.drawLocked(false).latency
	}
	b.mu.Unlock()
	slices.Sort(lat)
	p50, p99 := lat[n/2], lat[n*99/100]
	if p50 < 18*time.Millisecond || p50 > 22*time.Millisecond {
		t.Errorf("p50 %s, want about 20ms", p50)
	}
	if p99 < 170*time.Millisecond || p99 > 230*time.Millisecond {
		t.Errorf("p99 %s, want about 200ms", p99)
	}
	// The same seed draws the same latencies.
	b2, _ := New(Config{Faults: Faults{P50: 20 * time.Millisecond, P99: 200 * time.Millisecond}, Seed: 7})
	b3, _ := New(Config{Faults: Faults{P50: 20 * time.Millisecond, P99: 200 * time.Millisecond}, Seed: 7})
	for range 10 {
		b2.mu.Lock()
		x := b2.drawLocked(false).latency
		b2.mu.Unlock()
		b3.mu.Lock()
		y := b3.drawLocked(false).latency
		b3.mu.Unlock()
		if x != y {
			t.Fatalf("same seed, different draws: %s and %s", x, y)
		}
	}
}

func TestFaultsValidate(t *testing.T) {
	for _, f := range []Faults{
		{P50: 10 * time.Millisecond, P99: time.Millisecond},
		{ErrorRate: 1.5},
		{TimeoutRate: -0.1},
		{P50: -time.Millisecond},
	} {
		if _, err := New(Config{Faults: f}); err == nil {
			t.Errorf("New accepted %+v", f)
		}
	}
	if _, err := New(Config{Outages: []Window{{Start: time.Second}}}); err == nil {
		t.Error("New accepted an outage without a duration")
	}
}

type client struct {
	t   *testing.T
	url string
}

func (c client) do(method, path, body string) (int, map[string]any) {
	c.t.Helper()
	req, _ := http.NewRequest(method, c.url+path, strings.NewReader(body))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		c.t.Fatal(err)
	}
	defer resp.Body.Close()
	var m map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&m)
	return resp.StatusCode, m
}

func start(t *testing.T, cfg Config) (*Bank, client) {
	b, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(b.Handler())
	t.Cleanup(func() { b.Close(); srv.Close() })
	return b, client{t, srv.URL}
}

func TestHTTPSemantics(t *testing.T) {
	b, c := start(t, Config{})
	const charge = `{"id":"c1","amount":500,"currency":"EUR","source":"tok_visa","merchant":"m"}`
	for _, tc := range []struct {
		name, method, path, body string
		status                   int
		code                     string
	}{
		{"charge", "POST", "/v1/charges", charge, 200, ""},
		{"replay", "POST", "/v1/charges", charge, 200, ""},
		{"same id, other amount", "POST", "/v1/charges", strings.Replace(charge, "500", "501", 1), 422, "idempotency_mismatch"},
		{"invalid", "POST", "/v1/charges", `{"id":"c2","amount":0,"currency":"EUR"}`, 400, "invalid"},
		{"unknown field", "POST", "/v1/charges", `{"id":"c2","amount":1,"currency":"EUR","pan":"4111"}`, 400, "invalid"},
		{"declined", "POST", "/v1/charges", `{"id":"d1","amount":5,"currency":"EUR","source":"tok_decline"}`, 200, ""},
		{"refund", "POST", "/v1/refunds", `{"id":"r1","charge_id":"c1","amount":300}`, 200, ""},
		{"refund replay", "POST", "/v1/refunds", `{"id":"r1","charge_id":"c1","amount":300}`, 200, ""},
		{"refund too much", "POST", "/v1/refunds", `{"id":"r2","charge_id":"c1","amount":201}`, 422, "refund_exceeds_charge"},
		{"refund the rest", "POST", "/v1/refunds", `{"id":"r3","charge_id":"c1","amount":200}`, 200, ""},
		{"refund a decline", "POST", "/v1/refunds", `{"id":"r4","charge_id":"d1","amount":1}`, 409, "charge_not_succeeded"},
		{"refund unknown", "POST", "/v1/refunds", `{"id":"r5","charge_id":"zz","amount":1}`, 404, "not_found"},
		{"query", "GET", "/v1/charges/c1", "", 200, ""},
		{"query unknown", "GET", "/v1/charges/zz", "", 404, "not_found"},
		{"faults bad", "POST", "/admin/faults", `{"p50":"1s","p99":"1ms"}`, 400, "invalid"},
	} {
		status, body := c.do(tc.method, tc.path, tc.body)
		if status != tc.status || (tc.code != "" && body["code"] != tc.code) {
			t.Errorf("%s: %d %v, want %d %s", tc.name, status, body, tc.status, tc.code)
		}
	}
	if _, q := c.do("GET", "/v1/charges/c1", ""); q["status"] != "succeeded" || q["refunded"] != 500.0 {
		t.Errorf("query c1: %v", q)
	}
	if _, q := c.do("GET", "/v1/charges/d1", ""); q["status"] != "failed" {
		t.Errorf("query d1: %v", q)
	}
	var sum int64
	for _, e := range b.Ledger().Entries {
		sum += e.Amount
	}
	if l := b.Ledger(); len(l.Entries) != 3 || sum != 0 || l.Received["charges"] != 4 {
		t.Errorf("ledger %+v (sum %d), want 1 charge and 2 refunds summing to 0", l, sum)
	}
}

func TestConcurrentSameIDIsInProgress(t *testing.T) {
	b, c := start(t, Config{Faults: Faults{P50: 200 * time.Millisecond, P99: 200 * time.Millisecond}})
	const charge = `{"id":"c1","amount":500,"currency":"EUR","source":"tok_visa"}`
	var wg sync.WaitGroup
	wg.Go(func() { c.do("POST", "/v1/charges", charge) })
	deadline := time.Now().Add(5 * time.Second)
	for {
		b.mu.Lock()
		_, seen := b.charges["c1"]
		b.mu.Unlock()
		if seen || time.Now().After(deadline) {
			break
		}
		time.Sleep(time.Millisecond)
	}
	if status, body := c.do("POST", "/v1/charges", charge); status != 409 || body["code"] != "in_progress" {
		t.Errorf("second request while the first runs: %d %v, want 409 in_progress", status, body)
	}
	if _, q := c.do("GET", "/v1/charges/c1", ""); q["status"] != "processing" && q["status"] != "succeeded" {
		t.Errorf("query while processing: %v", q)
	}
	wg.Wait()
}

func TestOutagesAndAdminFaults(t *testing.T) {
	b, c := start(t, Config{Outages: []Window{{Start: 0, Duration: time.Hour}}})
	if status, body := c.do("POST", "/v1/charges", `{"id":"c1","amount":1,"currency":"EUR"}`); status != 503 || body["code"] != "unavailable" {
		t.Fatalf("charge during an outage window: %d %v", status, body)
	}
	b.mu.Lock()
	b.outages = nil // the window is over
	b.mu.Unlock()
	if status, f := c.do("POST", "/admin/faults", `{"down_for":"1h","error_rate":0.25}`); status != 200 || f["down"] != true || f["error_rate"] != 0.25 {
		t.Fatalf("set faults: %d %v", status, f)
	}
	if status, _ := c.do("GET", "/v1/charges/c1", ""); status != 503 {
		t.Fatalf("query while down: %d", status)
	}
	c.do("POST", "/admin/faults", `{"down_for":"0s","error_rate":0}`)
	if status, _ := c.do("POST", "/v1/charges", `{"id":"c1","amount":1,"currency":"EUR"}`); status != 200 {
		t.Fatalf("charge after the outage: %d", status)
	}
	if len(b.Ledger().Entries) != 1 {
		t.Fatalf("ledger %+v: the refused charge must not be recorded", b.Ledger())
	}
	if _, f := c.do("GET", "/admin/faults", ""); f["down"] != false {
		t.Fatalf("faults %v", f)
	}
}

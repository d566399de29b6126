// Command paybench is make bench's POS payment load: it sets up a tenant, a
// merchant and a terminal on a running Atrium through its API, then sends
// POST /api/v1/payments with a fresh Idempotency-Key per payment from N
// concurrent clients for a while, and prints payments per second, p50 and
// p99. With -ids it writes the tenant and merchant it made, so that
// scripts/bench.sh can run pgbench's equivalent two-transaction script
// (scripts/payment.pgbench) on the same rows.
package main

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
)

func main() {
	base := flag.String("url", "http://127.0.0.1:18080", "Atrium's base URL")
	email := flag.String("email", "bench@atrium.local", "platform administrator's email")
	password := flag.String("password", "", "platform administrator's password")
	clients := flag.String("clients", "16,64", "comma-separated client counts, one run each")
	duration := flag.Duration("duration", 5*time.Second, "length of each run")
	warmup := flag.Duration("warmup", time.Second, "unmeasured load before each run")
	ids := flag.String("ids", "", "write the tenant and merchant ids, space-separated, to this file after setting up")
	flag.Parse()

	hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 256}, Timeout: 30 * time.Second}
	s := setup(hc, *base, *email, *password)
	if *ids != "" {
		if err := os.WriteFile(*ids, []byte(s.tenant+" "+s.merchant+"\n"), 0o600); err != nil {
			log.Fatal(err)
		}
	}
	fmt.Printf("%-10s %12s %10s %10s %8s\n", "clients", "payments/s", "p50 ms", "p99 ms", "errors")
	for _, c := range strings.Split(*clients, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(c))
		if err != nil || n < 1 {
			log.Fatalf("bad -clients %q", c)
		}
		load(hc, *base, s.terminal, n, *warmup)
		rate, p50, p99, errs := load(hc, *base, s.terminal, n, *duration)
		fmt.Printf("%-10d %12.0f %10.2f %10.2f %8d\n", n, rate, ms(p50), ms(p99), errs)
	}
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

type env struct{ tenant, merchant, terminal string }

func must(resp *http.Response, err error, want int) []byte {
	if err != nil {
		log.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != want {
		log.Fatalf("%s %s: %d %s", resp.Request.Method, resp.Request.URL.Path, resp.StatusCode, b)
	}
	return b
}

func do(hc *http.Client, method, u, token string, body any, want int) map[string]any {
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, u, rd)
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := hc.Do(req)
	var out map[string]any
	_ = json.Unmarshal(must(resp, err, want), &out)
	return out
}

func setup(hc *http.Client, base, email, password string) env {
	b, _ := json.Marshal(map[string]string{"email": email, "password": password})
	resp, err := hc.Post(base+"/api/v1/auth/login", "application/json", bytes.NewReader(b))
	var login struct {
		AccessToken string `json:"access_token"`
	}
	_ = json.Unmarshal(must(resp, err, http.StatusOK), &login)
	admin := login.AccessToken

	tenant := do(hc, http.MethodPost, base+"/api/v1/tenants", admin, map[string]any{"name": "bench " + uuid.NewString()[:8], "plan": "enterprise"}, http.StatusCreated)["id"].(string)
	// The load is many payments from one terminal: lift its rate limits.
	for _, q := range []string{"payments_per_second", "terminal_requests_per_second", "api_requests_per_second"} {
		req, _ := http.NewRequest(http.MethodPut, base+"/api/v1/tenants/"+tenant+"/quotas/"+q, strings.NewReader(`{"value": 10000000}`))
		req.Header.Set("Authorization", "Bearer "+admin)
		req.Header.Set("Content-Type", "application/json")
		resp, err := hc.Do(req)
		if err == nil {
			resp.Body.Close()
		}
	}
	ref := "bench-" + uuid.NewString()[:8]
	merchant := do(hc, http.MethodPost, base+"/api/v1/merchants", admin, map[string]any{"tenant_id": tenant, "ref": ref, "name": "Bench shop",
		"mcc": "5411", "settlement_account": "BENCH", "fee_bps": 120}, http.StatusCreated)["id"].(string)
	term := do(hc, http.MethodPost, base+"/api/v1/terminals", admin, map[string]any{"tenant_id": tenant, "merchant_ref": ref}, http.StatusCreated)
	form := url.Values{"grant_type": {"client_credentials"}}
	req, _ := http.NewRequest(http.MethodPost, base+"/oauth2/token", strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Authorization", "Basic "+base64.StdEncoding.EncodeToString([]byte(term["id"].(string)+":"+term["client_secret"].(string))))
	resp, err = hc.Do(req)
	var tok struct {
		AccessToken string `json:"access_token"`
	}
	_ = json.Unmarshal(must(resp, err, http.StatusOK), &tok)
	return env{tenant: tenant, merchant: merchant, terminal: tok.AccessToken}
}

var body = []byte(`{"amount":1999,"currency":"EUR","method":{"type":"card","number":"4242424242424242","exp_month":12,"exp_year":2031}}`)

// load runs n clients for d and returns payments/s, p50, p99 and errors.
func load(hc *http.Client, base, token string, n int, d time.Duration) (float64, time.Duration, time.Duration, int64) {
	var (
		mu    sync.Mutex
		lats  []time.Duration
		errs  atomic.Int64
		wg    sync.WaitGroup
		stop  = time.Now().Add(d)
		start = time.Now()
	)
	for range n {
		wg.Go(func() {
			var mine []time.Duration
			for time.Now().Before(stop) {
				req, _ := http.NewRequest(http.MethodPost, base+"/api/v1/payments", bytes.NewReader(body))
				req.Header.Set("Authorization", "Bearer "+token)
				req.Header.Set("Content-Type", "application/json")
				req.Header.Set("Idempotency-Key", uuid.NewString())
				t0 := time.Now()
				resp, err := hc.Do(req)
				if err != nil {
					errs.Add(1)
					continue
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusCreated {
					errs.Add(1)
					continue
				}
				mine = append(mine, time.Since(t0))
			}
			mu.Lock()
			lats = append(lats, mine...)
			mu.Unlock()
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	if len(lats) == 0 {
		return 0, 0, 0, errs.Load()
	}
	slices.Sort(lats)
	q := func(p float64) time.Duration { return lats[min(len(lats)-1, int(p*float64(len(lats))))] }
	return float64(len(lats)) / elapsed.Seconds(), q(0.50), q(0.99), errs.Load()
}

package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/atriumhq/atrium/platform/testenv"
	atriumsql "github.com/atriumhq/atrium/sql"
)

func instanceIDs(t *testing.T, in *instance) []string {
	t.Helper()
	resp, body := call(t, "GET", in.URL+"/api/v1/cluster/instances", nil, bearer(loginAdmin(t, in)))
	if resp.StatusCode != 200 {
		t.Fatalf("instances: %d %s", resp.StatusCode, body)
	}
	var out struct {
		Instances []struct {
			ID     string            `json:"id"`
			Checks map[string]string `json:"checks"`
		} `json:"instances"`
	}
	if err := json.Unmarshal(body, &out); err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, i := range out.Instances {
		ids = append(ids, i.ID)
	}
	return ids
}

func TestEveryInstanceSeesTheWholeCluster(t *testing.T) {
	c := startCluster(t, 3)
	for _, in := range c {
		eventually(t, 5*time.Second, func() error {
			if got := strings.Join(instanceIDs(t, in), ","); got != "test-0,test-1,test-2" {
				return fmt.Errorf("%s sees %q", in.URL, got)
			}
			return nil
		})
	}
	// A clean shutdown leaves the list at once, without waiting for the TTL.
	if err := c[2].Stop(); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(instanceIDs(t, c[0]), ","); got != "test-0,test-1" {
		t.Fatalf("after stopping test-2, test-0 sees %q", got)
	}
}

func TestGracefulShutdownFinishesInFlightRequests(t *testing.T) {
	started := make(chan struct{})
	slow := func(a *app) {
		a.router.Get("/test/slow", func(w http.ResponseWriter, r *http.Request) {
			close(started)
			time.Sleep(700 * time.Millisecond)
			fmt.Fprint(w, "finished")
		})
	}
	in := startCluster(t, 1, slow)[0]

	type result struct {
		status int
		body   string
		err    error
	}
	res := make(chan result, 1)
	go func() {
		resp, err := http.Get(in.URL + "/test/slow")
		if err != nil {
			res <- result{err: err}
			return
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		res <- result{status: resp.StatusCode, body: string(b)}
	}()
	<-started
	stopped := make(chan error, 1)
	go func() { stopped <- in.Stop() }()

	r := <-res
	if r.err != nil || r.status != 200 || r.body != "finished" {
		t.Fatalf("in-flight request during shutdown: %+v", r)
	}
	if err := <-stopped; err != nil {
		t.Fatalf("serve returned %v", err)
	}
	if _, err := http.Get(in.URL + "/healthz"); err == nil {
		t.Fatal("instance still accepts connections after shutdown")
	}
}

func TestReadyzReportsDependencies(t *testing.T) {
	in := startCluster(t, 1)[0]
	resp, body := call(t, "GET", in.URL+"/readyz", nil, nil)
	if resp.StatusCode != 200 || !strings.Contains(string(body), `"postgres":"ok"`) ||
		!strings.Contains(string(body), `"redis":"ok"`) || !strings.Contains(string(body), `"schema":"ok"`) {
		t.Fatalf("readyz: %d %s", resp.StatusCode, body)
	}
	in.app.draining.Store(true)
	resp, body = call(t, "GET", in.URL+"/readyz", nil, nil)
	if resp.StatusCode != 503 || !strings.Contains(string(body), "draining") {
		t.Fatalf("readyz while draining: %d %s", resp.StatusCode, body)
	}
	in.app.draining.Store(false)
}

func TestRequestLinesCarryRequestAndTraceIDs(t *testing.T) {
	in := startCluster(t, 1)[0]
	const traceID = "4bf92f3577b34da6a3ce929d0e0e4736"
	h := bearer(loginAdmin(t, in))
	h["X-Request-Id"] = []string{"req-from-lb-42"}
	h["Traceparent"] = []string{"00-" + traceID + "-00f067aa0ba902b7-01"}
	resp, _ := call(t, "GET", in.URL+"/api/v1/cluster/instances", nil, h)
	if got := resp.Header.Get("X-Request-ID"); got != "req-from-lb-42" {
		t.Errorf("X-Request-ID echoed as %q", got)
	}
	if tp := resp.Header.Get("traceparent"); !strings.HasPrefix(tp, "00-"+traceID+"-") || strings.Contains(tp, "00f067aa0ba902b7") {
		t.Errorf("traceparent %q should continue the trace with a new span", tp)
	}
	found := false
	for _, line := range strings.Split(in.Logs.String(), "\n") {
		if strings.Contains(line, "/api/v1/cluster/instances") {
			found = true
			if !strings.Contains(line, `"request_id":"req-from-lb-42"`) || !strings.Contains(line, `"trace_id":"`+traceID+`"`) {
				t.Errorf("log line lacks request or trace id: %s", line)
			}
		}
	}
	if !found {
		t.Fatal("no access log line for the request")
	}

	// A malformed incoming id is replaced, not trusted.
	resp, _ = call(t, "GET", in.URL+"/healthz", nil, http.Header{"X-Request-Id": {"bad id <script>"}})
	if got := resp.Header.Get("X-Request-ID"); got == "" || strings.ContainsAny(got, " <>") {
		t.Errorf("malformed request id was kept: %q", got)
	}
}

func TestUnknownRoutesAndMethodsAreProblems(t *testing.T) {
	in := startCluster(t, 1)[0]
	for _, tc := range []struct {
		method, path string
		status       int
		code         string
	}{
		{"GET", "/api/v1/nope", 404, "not_found"},
		{"DELETE", "/api/v1/cluster/instances", 405, "invalid"},
	} {
		resp, body := call(t, tc.method, in.URL+tc.path, nil, nil)
		if resp.StatusCode != tc.status {
			t.Errorf("%s %s: status %d, want %d", tc.method, tc.path, resp.StatusCode, tc.status)
		}
		if tc.status == 405 && resp.Header.Get("Allow") != "GET" {
			t.Errorf("%s %s: Allow = %q, want GET", tc.method, tc.path, resp.Header.Get("Allow"))
		}
		if ct := resp.Header.Get("Content-Type"); ct != "application/problem+json" {
			t.Errorf("%s %s: content type %q", tc.method, tc.path, ct)
		}
		if !strings.Contains(string(body), `"code":"`+tc.code+`"`) {
			t.Errorf("%s %s: body %s", tc.method, tc.path, body)
		}
	}
}

func TestMetricsAreLabelledByRoutePattern(t *testing.T) {
	in := startCluster(t, 1)[0]
	call(t, "GET", in.URL+"/api/v1/cluster/instances", nil, bearer(loginAdmin(t, in)))
	call(t, "GET", in.URL+"/api/v1/does-not-exist-123", nil, nil)
	_, body := call(t, "GET", in.URL+"/metrics", nil, nil)
	m := string(body)
	for _, want := range []string{
		`atrium_http_requests_total{code="200",method="GET",route="/api/v1/cluster/instances"}`,
		`atrium_http_request_duration_seconds_bucket{method="GET",route="/api/v1/cluster/instances"`,
		`go_goroutines`,
	} {
		if !strings.Contains(m, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	if strings.Contains(m, "does-not-exist-123") {
		t.Error("raw paths leak into metric labels")
	}
}

func TestServeRefusesASchemaThatIsBehind(t *testing.T) {
	cfg := testConfig(testenv.EmptyDatabase(t), testenv.RedisPrefix(t), "behind")
	cfg.Env = "production"
	_, err := newApp(context.Background(), cfg, zerolog.Nop())
	if err == nil || !strings.Contains(err.Error(), "atrium migrate up") {
		t.Fatalf("newApp on an unmigrated database: %v", err)
	}
}

func TestConcurrentStartsMigrateOnce(t *testing.T) {
	dbURL := testenv.EmptyDatabase(t)
	prefix := testenv.RedisPrefix(t)
	var wg sync.WaitGroup
	errs := make([]error, 3)
	apps := make([]*app, 3)
	for i := range 3 {
		wg.Go(func() {
			cfg := testConfig(dbURL, prefix, fmt.Sprintf("m-%d", i))
			apps[i], errs[i] = newApp(context.Background(), cfg, zerolog.Nop())
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("instance %d: %v", i, err)
		}
		defer apps[i].close()
	}
	cur, target, err := apps[0].migrator.Versions(context.Background())
	if err != nil || cur != target {
		t.Fatalf("schema at %d, want %d (%v)", cur, target, err)
	}
}

func TestUnreachableDatabaseFailsWithAClearMessage(t *testing.T) {
	testenv.Integration(t)
	cfg := testConfig("postgres://postgres@127.0.0.1:1/atrium?sslmode=disable", "x", "nodb")
	cfg.Database.ConnectTimeout = 2 * time.Second // room for several attempts on a loaded machine
	start := time.Now()
	_, err := newApp(context.Background(), cfg, zerolog.Nop())
	if err == nil || !strings.Contains(err.Error(), "unreachable") {
		t.Fatalf("err = %v", err)
	}
	if d := time.Since(start); d < 500*time.Millisecond {
		t.Fatalf("gave up after %s without retrying", d)
	}
}

func TestMigrationsUpDownRoundTrip(t *testing.T) {
	// Rolling back to 0 and up again must work for every migration.
	dbURL := testenv.Database(t, atriumsql.Migrations())
	t.Setenv("ATRIUM_DATABASE_URL", dbURL)
	t.Setenv("ATRIUM_REDIS_URL", testenv.RedisURL())
	t.Setenv("ATRIUM_MASTER_KEY", testMasterKey)
	var out strings.Builder
	if err := run(context.Background(), []string{"migrate", "down", "--to", "0"}, nil, &out, io.Discard); err != nil {
		t.Fatalf("down: %v", err)
	}
	if err := run(context.Background(), []string{"migrate", "up"}, nil, &out, io.Discard); err != nil {
		t.Fatalf("up: %v", err)
	}
	out.Reset()
	if err := run(context.Background(), []string{"migrate", "status"}, nil, &out, io.Discard); err != nil {
		t.Fatalf("status: %v", err)
	}
	if strings.Contains(out.String(), "pending") || !strings.Contains(out.String(), "applied") {
		t.Fatalf("status after up:\n%s", out.String())
	}
}

func TestRedisOutageDegradesButKeepsTheInstanceReady(t *testing.T) {
	cfg := testConfig(testenv.Database(t, atriumsql.Migrations()), testenv.RedisPrefix(t), "no-redis")
	cfg.Redis.URL = "redis://127.0.0.1:1/0"
	cfg.Redis.Timeout = 100 * time.Millisecond
	in := startInstance(t, cfg)
	resp, body := call(t, "GET", in.URL+"/readyz", nil, nil)
	if resp.StatusCode != 200 || !strings.Contains(string(body), `"status":"degraded"`) || !strings.Contains(string(body), `"redis":"unreachable"`) {
		t.Fatalf("readyz without Redis: %d %s", resp.StatusCode, body)
	}
	if strings.Contains(string(body), "connection refused") {
		t.Fatalf("readyz leaks the error text: %s", body)
	}
	// The cluster list needs Redis: a clear 503 problem, not a 500. (Sign-in
	// still works: login protection fails open without Redis.)
	resp, body = call(t, "GET", in.URL+"/api/v1/cluster/instances", nil, bearer(loginAdmin(t, in)))
	if resp.StatusCode != 503 || !strings.Contains(string(body), `"code":"unavailable"`) {
		t.Fatalf("instances without Redis: %d %s", resp.StatusCode, body)
	}
}

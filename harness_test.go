package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/atriumhq/atrium/modules/auth"
	"github.com/atriumhq/atrium/platform/config"
	"github.com/atriumhq/atrium/platform/logging"
	"github.com/atriumhq/atrium/platform/testenv"
	atriumsql "github.com/atriumhq/atrium/sql"
)

// instance is one real Atrium instance started by a test on port 0.
type instance struct {
	app  *app
	URL  string
	Logs *testenv.LogBuffer
	stop context.CancelFunc
	done chan struct{} // closed when serve returns
	err  error         // serve's result, valid once done is closed
}

// Stop shuts the instance down gracefully and returns serve's error.
func (i *instance) Stop() error {
	i.stop()
	<-i.done
	return i.err
}

// testMasterKey is the keyring of test instances (32 bytes, base64).
const testMasterKey = "dGVzdC1tYXN0ZXIta2V5LTMyLWJ5dGVzLWxvbmctISE="

// testConfig is the configuration of a test instance: defaults as in
// docs/operations.md, development mode, listening on a free port.
func testConfig(dbURL, redisPrefix, id string) config.Config {
	return config.Config{
		Env:        "development",
		InstanceID: id,
		HTTP: config.HTTP{Addr: "127.0.0.1:0", BodyLimit: 1 << 20, RequestTimeout: 30 * time.Second,
			ShutdownGrace: 5 * time.Second, TrustedProxies: []string{"127.0.0.0/8"}},
		Database:  config.Database{URL: dbURL, MaxConns: 8, ConnectTimeout: 5 * time.Second},
		Redis:     config.Redis{URL: testenv.RedisURL(), Prefix: redisPrefix, Timeout: 500 * time.Millisecond},
		Log:       config.Log{Level: "debug", Format: "json"},
		MasterKey: testMasterKey,
		GPU:       config.GPU{Backend: "none", Policy: "least_loaded"},
		Auth: config.Auth{Issuer: "http://atrium.test", Audience: "atrium-api", AccessTTL: 10 * time.Minute,
			SessionIdle: 30 * time.Minute, SessionMax: 12 * time.Hour, KeyRotation: 720 * time.Hour},
	}
}

// startInstance starts one instance with cfg and stops it when the test ends.
func startInstance(t testing.TB, cfg config.Config, opts ...appOption) *instance {
	t.Helper()
	logs := &testenv.LogBuffer{}
	log := logging.New(logs, cfg.Log.Level, "json", false)
	ctx, cancel := context.WithCancel(context.Background())
	a, err := newApp(ctx, cfg, log, opts...)
	if err != nil {
		cancel()
		t.Fatalf("start instance %s: %v", cfg.InstanceID, err)
	}
	in := &instance{app: a, URL: "http://" + a.addr(), Logs: logs, stop: cancel, done: make(chan struct{})}
	go func() {
		in.err = a.serve(ctx)
		close(in.done)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-in.done:
		case <-time.After(10 * time.Second):
			t.Errorf("instance %s did not stop", cfg.InstanceID)
		}
		if t.Failed() {
			t.Logf("logs of %s:\n%s", cfg.InstanceID, logs.String())
		}
	})
	waitReady(t, in.URL)
	return in
}

// startCluster starts n real instances sharing one fresh database and one
// Redis key space: the harness for propagation and failover tests.
func startCluster(t testing.TB, n int, opts ...appOption) []*instance {
	t.Helper()
	dbURL := testenv.Database(t, atriumsql.Migrations())
	prefix := testenv.RedisPrefix(t)
	out := make([]*instance, n)
	for i := range out {
		out[i] = startInstance(t, testConfig(dbURL, prefix, fmt.Sprintf("test-%d", i)), opts...)
	}
	return out
}

func waitReady(t testing.TB, base string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := http.Get(base + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s never became ready", base)
}

// eventually retries f until it returns nil or the timeout passes.
func eventually(t testing.TB, timeout time.Duration, f func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var err error
	for time.Now().Before(deadline) {
		if err = f(); err == nil {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("not within %s: %v", timeout, err)
}

// adminPassword is the password of the platform administrator that
// loginAdmin creates.
const adminPassword = "correct horse battery staple"

// loginAdmin creates a platform administrator (once per database) through
// the instance's auth service and signs in over HTTP, returning the access
// token.
func loginAdmin(t testing.TB, in *instance) string {
	t.Helper()
	return loginAs(t, in, "admin@atrium.test", adminPassword, "platform_admin", "")
}

// loginAs creates a user with the given role and tenant if the email is not
// registered yet, and signs in, returning the access token.
func loginAs(t testing.TB, in *instance, email, password, role, tenant string) string {
	t.Helper()
	if tenant != "" {
		ensureTenant(t, in, tenant)
	}
	_, err := in.app.auth.CreateFirstAdmin(context.Background(), auth.NewUser{Email: email, Password: password, Roles: []string{role}, TenantID: tenant})
	if err != nil && !strings.Contains(err.Error(), "already registered") {
		t.Fatalf("create %s: %v", email, err)
	}
	resp, err := http.Post(in.URL+"/api/v1/auth/login", "application/json",
		strings.NewReader(`{"email":"`+email+`","password":"`+password+`"}`))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out struct {
		AccessToken string `json:"access_token"`
	}
	if resp.StatusCode != http.StatusOK || json.NewDecoder(resp.Body).Decode(&out) != nil || out.AccessToken == "" {
		t.Fatalf("login %s: status %d", email, resp.StatusCode)
	}
	return out.AccessToken
}

// bearer is the Authorization header for token.
func bearer(token string) http.Header { return http.Header{"Authorization": {"Bearer " + token}} }

// ensureTenant creates the tenant with this id unless it exists, as the
// schema's owner (tests pick tenant ids before any tenant exists).
func ensureTenant(t testing.TB, in *instance, id string) {
	t.Helper()
	_, err := in.app.ownerPool.Exec(context.Background(),
		`INSERT INTO tenants (id, name) VALUES ($1::uuid, 'Tenant ' || $1::text) ON CONFLICT DO NOTHING`, id)
	if err != nil {
		t.Fatalf("create tenant %s: %v", id, err)
	}
}

// apiAs returns a function that calls in's API with token, sending body (if
// not nil) as JSON; responses are validated against the OpenAPI spec.
func apiAs(t testing.TB, in *instance, token string) func(method, path string, body any) (*http.Response, []byte) {
	return func(method, path string, body any) (*http.Response, []byte) {
		t.Helper()
		if body == nil {
			return call(t, method, in.URL+path, nil, bearer(token))
		}
		return call(t, method, in.URL+path, jsonBody(body), withJSON(bearer(token)))
	}
}

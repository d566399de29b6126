package auth

import (
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/atriumhq/atrium/platform/config"
	"github.com/atriumhq/atrium/platform/keyring"
	"github.com/atriumhq/atrium/platform/postgres"
	"github.com/atriumhq/atrium/platform/principal"
	"github.com/atriumhq/atrium/platform/testenv"
	atriumsql "github.com/atriumhq/atrium/sql"
)

// testMasterKey is a fixed keyring for tests (32 bytes 0x00..0x1f): the
// signing keys it seals live only in the test's own database.
const testMasterKey = "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="

// testAuthConfig is the auth configuration tests and benchmarks run under.
var testAuthConfig = config.Auth{
	Issuer:      "https://atrium.test",
	Audience:    "atrium-api",
	AccessTTL:   10 * time.Minute,
	SessionIdle: 30 * time.Minute,
	SessionMax:  12 * time.Hour,
	KeyRotation: 720 * time.Hour,
}

// newTestService returns a Service built with New on a fresh migrated
// database and a Redis prefix of its own, both removed when tb ends. It
// does not call Run: nothing in the background talks to PostgreSQL or
// Redis. Skipped under -short.
func newTestService(tb testing.TB) *Service {
	tb.Helper()
	pool := testenv.Pool(tb, atriumsql.Migrations())
	rc := testenv.RedisClient(tb, testenv.RedisPrefix(tb))
	ring, err := keyring.Parse(testMasterKey)
	if err != nil {
		tb.Fatalf("keyring: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := New(ctx, testAuthConfig, Deps{
		Tx: postgres.NewTx(pool, zerolog.Nop()), Redis: rc, Log: zerolog.Nop(),
		Keyring: ring, Instance: "test",
	})
	if err != nil {
		tb.Fatalf("auth.New: %v", err)
	}
	if err := s.tx.Exec(postgres.AllTenants(ctx, "test"), "test.tenant",
		`INSERT INTO tenants (id, name) VALUES ($1, 'Test tenant')`, testTenant); err != nil {
		tb.Fatalf("create tenant: %v", err)
	}
	return s
}

// testTenant is the tenant of testUser's users.
const testTenant = "0193a000-0000-7000-8000-0000000000aa"

// testUser creates an active tenant user with the viewer role and returns
// it; its password is password.
func testUser(tb testing.TB, s *Service, email, password string) *User {
	tb.Helper()
	u, err := s.CreateFirstAdmin(context.Background(), NewUser{Email: email, Password: password,
		TenantID: testTenant, Roles: []string{"viewer"}})
	if err != nil {
		tb.Fatalf("create user: %v", err)
	}
	return u
}

// callCounter counts the network calls a Service makes: PostgreSQL
// connection acquisitions from its pool (every query, exec and transaction
// acquires one) and Redis commands and dials through a hook on its client.
type callCounter struct {
	s     *Service
	redis testenv.RedisCounter
}

// countCalls installs a callCounter on s.
func countCalls(s *Service) *callCounter {
	c := &callCounter{s: s}
	s.redis.AddHook(&c.redis)
	return c
}

// snapshot returns the calls counted so far.
func (c *callCounter) snapshot() (db, rds int64) {
	return c.s.tx.Pool().Stat().AcquireCount(), c.redis.Commands.Load() + c.redis.Dials.Load()
}

// report adds db_calls/op and redis_calls/op since (db0, rds0) to b.
func (c *callCounter) report(b *testing.B, db0, rds0 int64) {
	b.Helper()
	db, rds := c.snapshot()
	b.ReportMetric(float64(db-db0)/float64(b.N), "db_calls/op")
	b.ReportMetric(float64(rds-rds0)/float64(b.N), "redis_calls/op")
}

// edgeHandler is Authenticate around a handler that only records whether
// it saw a principal; refused requests get 401.
func edgeHandler(s *Service, seen *atomic.Int64) http.Handler {
	onErr := func(w http.ResponseWriter, _ *http.Request, _ error) { w.WriteHeader(http.StatusUnauthorized) }
	return s.Authenticate(onErr)(http.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) {
		if principal.From(r.Context()) != nil {
			seen.Add(1)
		}
	}))
}

func bearer(token string) *http.Request {
	r := httptest.NewRequest(http.MethodGet, "/v1/payments", nil)
	r.Header.Set("Authorization", "Bearer "+token)
	return r
}

// BenchmarkEdgeAuth measures what the edge does per request to resolve a
// bearer token, against the bare Ed25519 signature check of the same token
// (the baseline: no JWT library can go below it). The extra metrics count
// PostgreSQL acquisitions and Redis commands per request; edge_authenticate
// must show 0 for both once the user's permissions are cached.
func BenchmarkEdgeAuth(b *testing.B) {
	s := newTestService(b)
	ctx := context.Background()
	u := testUser(b, s, "edge@example.com", "correct horse battery staple")
	token, _, _, err := s.issue(tokenSpec{kind: principal.User, subject: u.ID, tenant: *u.TenantID,
		session: "0193a000-0000-7000-8000-0000000000bb", roles: u.Roles})
	if err != nil {
		b.Fatal(err)
	}
	calls := countCalls(s)

	b.Run("raw_ed25519_verify", func(b *testing.B) {
		ks := s.keys.set.Load()
		pub := ks.verify[ks.signKID]
		dot := strings.LastIndexByte(token, '.')
		input := []byte(token[:dot])
		sig, err := base64.RawURLEncoding.DecodeString(token[dot+1:])
		if err != nil || len(pub) != ed25519.PublicKeySize {
			b.Fatalf("token signature or key: %v", err)
		}
		b.ReportAllocs()
		db0, rds0 := calls.snapshot()
		for b.Loop() {
			if !ed25519.Verify(pub, input, sig) {
				b.Fatal("signature does not verify")
			}
		}
		calls.report(b, db0, rds0)
	})

	// A token's first use: its signature is verified (forget makes each
	// iteration a first use).
	forget := func() {
		s.verified.mu.Lock()
		delete(s.verified.m, token)
		s.verified.mu.Unlock()
	}
	b.Run("parse_verify", func(b *testing.B) {
		b.ReportAllocs()
		db0, rds0 := calls.snapshot()
		for b.Loop() {
			forget()
			if _, err := s.parse(ctx, token); err != nil {
				b.Fatal(err)
			}
		}
		calls.report(b, db0, rds0)
	})

	// Later uses of the same token: verified once, remembered.
	b.Run("parse_remembered", func(b *testing.B) {
		b.ReportAllocs()
		db0, rds0 := calls.snapshot()
		for b.Loop() {
			if _, err := s.parse(ctx, token); err != nil {
				b.Fatal(err)
			}
		}
		calls.report(b, db0, rds0)
	})

	b.Run("edge_authenticate", func(b *testing.B) {
		var seen atomic.Int64
		h := edgeHandler(s, &seen)
		req := bearer(token)
		h.ServeHTTP(httptest.NewRecorder(), req) // warm-up: loads the permissions once
		if seen.Load() != 1 {
			b.Fatal("warm-up request was not authenticated")
		}
		b.ReportAllocs()
		db0, rds0 := calls.snapshot()
		for b.Loop() {
			forget()
			w := httptest.NewRecorder()
			h.ServeHTTP(w, req)
			if w.Code != http.StatusOK {
				b.Fatalf("status %d", w.Code)
			}
		}
		calls.report(b, db0, rds0)
		if got := seen.Load() - 1; got != int64(b.N) {
			b.Fatalf("handler saw a principal %d times in %d requests", got, b.N)
		}
	})
}

// BenchmarkTokenIssue measures signing one access token (tokens/s is
// 1e9 / ns/op).
func BenchmarkTokenIssue(b *testing.B) {
	s := newTestService(b)
	calls := countCalls(s)
	spec := tokenSpec{kind: principal.User, subject: "0193a000-0000-7000-8000-0000000000cc",
		tenant: "0193a000-0000-7000-8000-0000000000aa", session: "0193a000-0000-7000-8000-0000000000bb",
		gen: 0, roles: []string{"viewer"}}
	b.ReportAllocs()
	db0, rds0 := calls.snapshot()
	for b.Loop() {
		if _, _, _, err := s.issue(spec); err != nil {
			b.Fatal(err)
		}
	}
	calls.report(b, db0, rds0)
}

// BenchmarkLogin measures the password check at the configured argon2id
// parameters and a whole successful Login (lockout check in Redis, user
// lookup, password check, session and refresh-token rows, token issue).
func BenchmarkLogin(b *testing.B) {
	const password = "correct horse battery staple"

	b.Run("argon2id_verify", func(b *testing.B) {
		phc := hashPassword(password, defaultArgon)
		b.ReportAllocs()
		for b.Loop() {
			ok, _, err := checkPassword(password, phc, defaultArgon)
			if err != nil || !ok {
				b.Fatalf("password check: ok=%v err=%v", ok, err)
			}
		}
	})

	b.Run("login", func(b *testing.B) {
		s := newTestService(b)
		u := testUser(b, s, "login@example.com", password)
		calls := countCalls(s)
		ctx := context.Background()
		b.ReportAllocs()
		db0, rds0 := calls.snapshot()
		for b.Loop() {
			res, err := s.Login(ctx, u.Email, password, "bench")
			if err != nil {
				b.Fatal(err)
			}
			if res.AccessToken == "" {
				b.Fatal("no access token")
			}
		}
		calls.report(b, db0, rds0)
	})
}

// TestEdgeAuthMakesNoNetworkCalls checks the edge's promise: once a user's
// permissions are cached, authenticating a request touches neither
// PostgreSQL nor Redis. It first checks that the counters do count, so a
// broken counter cannot make it pass.
func TestEdgeAuthMakesNoNetworkCalls(t *testing.T) {
	s := newTestService(t)
	u := testUser(t, s, "edge@example.com", "correct horse battery staple")
	calls := countCalls(s)

	rds0 := calls.redis.Commands.Load()
	if err := s.redis.Ping(context.Background()); err != nil {
		t.Fatal(err)
	}
	if calls.redis.Commands.Load() == rds0 {
		t.Fatal("the Redis hook did not count a PING")
	}

	for _, tc := range []struct {
		name string
		spec tokenSpec
		// warmDB is whether the first request loads permissions from
		// PostgreSQL (users; terminals have fixed permissions).
		warmDB bool
	}{
		{"user", tokenSpec{kind: principal.User, subject: u.ID, tenant: *u.TenantID,
			session: "0193a000-0000-7000-8000-0000000000bb", roles: u.Roles}, true},
		{"terminal", tokenSpec{kind: principal.Terminal, subject: "0193a000-0000-7000-8000-0000000000dd",
			tenant: *u.TenantID, roles: []string{terminalRole}}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			token, _, _, err := s.issue(tc.spec)
			if err != nil {
				t.Fatal(err)
			}
			var seen atomic.Int64
			h := edgeHandler(s, &seen)

			db0, _ := calls.snapshot()
			h.ServeHTTP(httptest.NewRecorder(), bearer(token))
			db1, rds1 := calls.snapshot()
			if tc.warmDB && db1 == db0 {
				t.Fatal("the first request did not load permissions from PostgreSQL: the pool counter does not count")
			}

			const n = 100
			for i := range n {
				w := httptest.NewRecorder()
				h.ServeHTTP(w, bearer(token))
				if w.Code != http.StatusOK {
					t.Fatalf("request %d: status %d", i, w.Code)
				}
			}
			if got := seen.Load(); got != n+1 {
				t.Fatalf("handler saw a principal in %d of %d requests", got, n+1)
			}
			db2, rds2 := calls.snapshot()
			if db2 != db1 || rds2 != rds1 {
				t.Errorf("%d authenticated requests made %d PostgreSQL acquisitions and %d Redis calls, want 0 and 0",
					n, db2-db1, rds2-rds1)
			}
		})
	}
}

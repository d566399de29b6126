package main

import (
	"context"
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"io"
	"math/big"
	"net/http"
	"net/http/httptest"
	"net/url"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/lestrrat-go/jwx/v3/jwk"
	"github.com/lestrrat-go/jwx/v3/jwt"

	"github.com/atriumhq/atrium/modules/auth"
	"github.com/atriumhq/atrium/platform/keyring"
)

// End-to-end tests of the auth module: real instances, real PostgreSQL and
// Redis, requests over HTTP, assertions on what a client or an attacker sees.

// authProblem is the part of an RFC 9457 problem body the tests read.
type authProblem struct {
	Status int    `json:"status"`
	Code   string `json:"code"`
	Errors []struct {
		Field string `json:"field"`
	} `json:"errors"`
	// Error is the RFC 6749 error code the /oauth2 endpoints add.
	Error string `json:"error"`
}

// wantProblem fails t unless the response is a problem+json body with the
// given status and code, and returns the problem.
func wantProblem(t testing.TB, resp *http.Response, body []byte, status int, code string) authProblem {
	t.Helper()
	var p authProblem
	if resp.StatusCode != status {
		t.Errorf("status %d, want %d; body %s", resp.StatusCode, status, body)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/problem+json") {
		t.Errorf("Content-Type %q, want application/problem+json; body %s", ct, body)
	}
	if err := json.Unmarshal(body, &p); err != nil {
		t.Errorf("problem body does not decode: %v; body %s", err, body)
	} else if p.Code != code {
		t.Errorf("problem code %q, want %q; body %s", p.Code, code, body)
	}
	return p
}

// wantStatus fails t now unless the response has the status.
func wantStatus(t testing.TB, resp *http.Response, body []byte, status int) {
	t.Helper()
	if resp.StatusCode != status {
		t.Fatalf("%s %s: status %d, want %d; body %s", resp.Request.Method, resp.Request.URL.Path, resp.StatusCode, status, body)
	}
}

// decodeJSON decodes body into a T or fails t.
func decodeJSON[T any](t testing.TB, body []byte) T {
	t.Helper()
	var v T
	if err := json.Unmarshal(body, &v); err != nil {
		t.Fatalf("decode %s: %v", body, err)
	}
	return v
}

// jsonBody encodes v as a request body.
func jsonBody(v any) io.Reader {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return strings.NewReader(string(b))
}

// withJSON is header plus a JSON Content-Type.
func withJSON(header http.Header) http.Header {
	h := http.Header{"Content-Type": {"application/json"}}
	for k, v := range header {
		h[k] = v
	}
	return h
}

// postForm posts a form-encoded body.
func postForm(t testing.TB, target string, form url.Values, header http.Header) (*http.Response, []byte) {
	t.Helper()
	h := http.Header{"Content-Type": {"application/x-www-form-urlencoded"}}
	for k, v := range header {
		h[k] = v
	}
	return call(t, http.MethodPost, target, strings.NewReader(form.Encode()), h)
}

// authTokens is the part of a login or token response the tests use.
type authTokens struct {
	AccessToken  string `json:"access_token"`
	TokenType    string `json:"token_type"`
	RefreshToken string `json:"refresh_token"`
	User         struct {
		ID string `json:"id"`
	} `json:"user"`
}

// meBody is GET /api/v1/me.
type meBody struct {
	Kind string `json:"kind"`
	User *struct {
		ID       string  `json:"id"`
		TenantID *string `json:"tenant_id"`
		Status   string  `json:"status"`
	} `json:"user"`
	TerminalID  string   `json:"terminal_id"`
	TenantID    string   `json:"tenant_id"`
	Roles       []string `json:"roles"`
	Permissions []string `json:"permissions"`
}

// newUser creates a user through the service (as the operator's CLI does)
// and returns its id.
func newUser(t testing.TB, in *instance, email, role, tenant string) string {
	t.Helper()
	u, err := in.app.auth.CreateFirstAdmin(context.Background(), auth.NewUser{Email: email, Password: adminPassword,
		Roles: []string{role}, TenantID: tenant})
	if err != nil {
		t.Fatalf("create %s: %v", email, err)
	}
	return u.ID
}

// tryLogin posts a login and returns the raw answer.
func tryLogin(t testing.TB, in *instance, email, password string) (*http.Response, []byte) {
	t.Helper()
	return call(t, http.MethodPost, in.URL+"/api/v1/auth/login", jsonBody(map[string]string{"email": email, "password": password}),
		withJSON(nil))
}

// apiSignIn logs in with adminPassword and returns the tokens.
func apiSignIn(t testing.TB, in *instance, email string) authTokens {
	t.Helper()
	resp, body := tryLogin(t, in, email, adminPassword)
	wantStatus(t, resp, body, http.StatusOK)
	tok := decodeJSON[authTokens](t, body)
	if tok.AccessToken == "" || tok.RefreshToken == "" || tok.TokenType != "Bearer" {
		t.Fatalf("login %s: incomplete token response %s", email, body)
	}
	return tok
}

// me calls GET /api/v1/me with the Authorization header value authz.
func me(t testing.TB, in *instance, authz string) (*http.Response, []byte) {
	t.Helper()
	return call(t, http.MethodGet, in.URL+"/api/v1/me", nil, http.Header{"Authorization": {authz}})
}

// meStatus is the status of GET /api/v1/me with a bearer token.
func meStatus(t testing.TB, in *instance, token string) int {
	t.Helper()
	resp, _ := me(t, in, "Bearer "+token)
	return resp.StatusCode
}

// refreshGrant exchanges a refresh token at /oauth2/token.
func refreshGrant(t testing.TB, in *instance, rt string) (*http.Response, []byte) {
	t.Helper()
	return postForm(t, in.URL+"/oauth2/token", url.Values{"grant_type": {"refresh_token"}, "refresh_token": {rt}}, nil)
}

// within polls ok every 10 ms from now and fails t unless it reports true
// within d. It returns how long that took.
func within(t testing.TB, d time.Duration, what string, ok func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for {
		if ok() {
			took := time.Since(start)
			if took >= d {
				t.Fatalf("%s took %s, want under %s", what, took, d)
			}
			return took
		}
		if time.Since(start) >= d {
			t.Fatalf("%s: not within %s", what, d)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// signingKey reads the signing key in state from the database and opens
// its private half with the test master key, as an attacker who stole the
// database and the master key could.
func signingKey(t testing.TB, in *instance, state string) (kid string, key ed25519.PrivateKey) {
	t.Helper()
	var sealed string
	err := in.app.ownerPool.QueryRow(context.Background(), `SELECT kid, private_key FROM signing_keys WHERE state = $1`, state).Scan(&kid, &sealed)
	if err != nil {
		t.Fatalf("read %s signing key: %v", state, err)
	}
	ring, err := keyring.Parse(testMasterKey)
	if err != nil {
		t.Fatal(err)
	}
	seed, err := ring.Open(sealed, []byte(kid))
	if err != nil {
		t.Fatalf("open %s signing key: %v", state, err)
	}
	return kid, ed25519.NewKeyFromSeed(seed)
}

var b64url = base64.RawURLEncoding

// compactJWT builds a JWS compact serialisation by hand, so that any header
// an attacker might send can be sent; sign may be nil (no signature).
func compactJWT(t testing.TB, header, claims map[string]any, sign func(signingInput []byte) []byte) string {
	t.Helper()
	h, err := json.Marshal(header)
	if err != nil {
		t.Fatal(err)
	}
	c, err := json.Marshal(claims)
	if err != nil {
		t.Fatal(err)
	}
	in := b64url.EncodeToString(h) + "." + b64url.EncodeToString(c)
	var sig []byte
	if sign != nil {
		sig = sign([]byte(in))
	}
	return in + "." + b64url.EncodeToString(sig)
}

func edSigner(key ed25519.PrivateKey) func([]byte) []byte {
	return func(b []byte) []byte { return ed25519.Sign(key, b) }
}

func hmacSigner(secret []byte) func([]byte) []byte {
	return func(b []byte) []byte {
		m := hmac.New(sha256.New, secret)
		m.Write(b)
		return m.Sum(nil)
	}
}

// serverClaims are the claims the server puts in a user's access token.
func serverClaims(sub string, roles []string) map[string]any {
	now := time.Now()
	return map[string]any{
		"iss": "http://atrium.test", "aud": []string{"atrium-api"}, "sub": sub, "client_id": sub,
		"kind": "user", "tenant": "", "gen": 0, "roles": roles, "jti": uuid.NewString(),
		"iat": now.Unix(), "nbf": now.Unix(), "exp": now.Add(5 * time.Minute).Unix(),
	}
}

// selfSignedCert returns a DER certificate for key's public half.
func selfSignedCert(t testing.TB, key ed25519.PrivateKey) []byte {
	t.Helper()
	tpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "atrium.test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tpl, tpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func TestAuthAttackSuite(t *testing.T) {
	inst := startCluster(t, 1)[0]
	adminToken := loginAdmin(t, inst)
	resp, body := me(t, inst, "Bearer "+adminToken)
	wantStatus(t, resp, body, http.StatusOK)
	adminID := decodeJSON[meBody](t, body).User.ID
	viewerID := newUser(t, inst, "viewer@atrium.test", "viewer", "")

	kid, key := signingKey(t, inst, "current")
	pub := key.Public().(ed25519.PublicKey)
	// forge signs the server's claims for the administrator with the
	// current key after mut changes the header or the claims: every case
	// below differs from the accepted control in what mut changes.
	forge := func(mut func(h, c map[string]any)) string {
		h := map[string]any{"alg": "EdDSA", "typ": "at+jwt", "kid": kid}
		c := serverClaims(adminID, []string{"platform_admin"})
		if mut != nil {
			mut(h, c)
		}
		return compactJWT(t, h, c, edSigner(key))
	}

	// The attacker's own key, published where a careless verifier would
	// fetch it; the server must never ask.
	_, attacker, _ := ed25519.GenerateKey(rand.Reader)
	attackerPub := attacker.Public().(ed25519.PublicKey)
	attackerJWK := map[string]any{"kty": "OKP", "crv": "Ed25519", "x": b64url.EncodeToString(attackerPub),
		"kid": "attacker", "alg": "EdDSA", "use": "sig"}
	attackerDER := selfSignedCert(t, attacker)
	var fetched atomic.Int64
	evil := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fetched.Add(1)
		if r.URL.Path == "/cert.pem" {
			_ = pem.Encode(w, &pem.Block{Type: "CERTIFICATE", Bytes: attackerDER})
			return
		}
		w.Header().Set("Content-Type", "application/jwk-set+json")
		_ = json.NewEncoder(w).Encode(map[string]any{"keys": []any{attackerJWK}})
	}))
	defer evil.Close()
	// byAttacker is forge signed with the attacker's key.
	byAttacker := func(mut func(h, c map[string]any)) string {
		h := map[string]any{"alg": "EdDSA", "typ": "at+jwt", "kid": "attacker"}
		c := serverClaims(adminID, []string{"platform_admin"})
		mut(h, c)
		return compactJWT(t, h, c, edSigner(attacker))
	}

	t.Run("control: a forged token with the server's claims and key is accepted", func(t *testing.T) {
		resp, body := me(t, inst, "Bearer "+forge(nil))
		wantStatus(t, resp, body, http.StatusOK)
		if got := decodeJSON[meBody](t, body); got.User == nil || got.User.ID != adminID || !slices.Contains(got.Permissions, "auth:keys") {
			t.Fatalf("control token resolved to %s, want the administrator", body)
		}
	})

	control := forge(nil)
	parts := strings.Split(control, ".")
	var jwksX string
	{
		resp, body := call(t, http.MethodGet, inst.URL+"/.well-known/jwks.json", nil, nil)
		wantStatus(t, resp, body, http.StatusOK)
		set := decodeJSON[struct {
			Keys []map[string]any `json:"keys"`
		}](t, body)
		for _, k := range set.Keys {
			if k["kid"] == kid {
				jwksX, _ = k["x"].(string)
			}
		}
		if jwksX == "" {
			t.Fatalf("the current key %s is not in the JWKS %s", kid, body)
		}
	}
	refresh := apiSignIn(t, inst, "viewer@atrium.test").RefreshToken
	oversized := forge(func(_, c map[string]any) { c["pad"] = strings.Repeat("a", 4200) })
	if len(oversized) <= 4096 {
		t.Fatalf("oversized token is only %d bytes", len(oversized))
	}
	// The control's header and signature over its claims with the subject
	// changed to another user.
	tampered := func() string {
		raw, err := b64url.DecodeString(parts[1])
		if err != nil {
			t.Fatal(err)
		}
		c := decodeJSON[map[string]any](t, raw)
		c["sub"], c["client_id"] = viewerID, viewerID
		p, err := json.Marshal(c)
		if err != nil {
			t.Fatal(err)
		}
		return parts[0] + "." + b64url.EncodeToString(p) + "." + parts[2]
	}()

	cases := []struct {
		name  string
		authz string
	}{
		{"alg none, unsigned", "Bearer " + compactJWT(t, map[string]any{"alg": "none", "typ": "at+jwt", "kid": kid},
			serverClaims(adminID, []string{"platform_admin"}), nil)},
		{"alg none with the control's signature", "Bearer " + func() string {
			h, _ := json.Marshal(map[string]any{"alg": "none", "typ": "at+jwt", "kid": kid})
			return b64url.EncodeToString(h) + "." + parts[1] + "." + parts[2]
		}()},
		{"HS256 with the public key bytes as HMAC secret", "Bearer " + compactJWT(t,
			map[string]any{"alg": "HS256", "typ": "at+jwt", "kid": kid}, serverClaims(adminID, []string{"platform_admin"}), hmacSigner(pub))},
		{"HS256 with the JWKS x member as HMAC secret", "Bearer " + compactJWT(t,
			map[string]any{"alg": "HS256", "typ": "at+jwt", "kid": kid}, serverClaims(adminID, []string{"platform_admin"}), hmacSigner([]byte(jwksX)))},
		{"unknown kid", "Bearer " + forge(func(h, _ map[string]any) { h["kid"] = uuid.NewString() })},
		{"path-like kid", "Bearer " + forge(func(h, _ map[string]any) { h["kid"] = "../../etc/passwd" })},
		{"no kid", "Bearer " + forge(func(h, _ map[string]any) { delete(h, "kid") })},
		{"jwk header with the attacker's key and the server's kid", "Bearer " + byAttacker(func(h, _ map[string]any) {
			h["kid"], h["jwk"] = kid, attackerJWK
		})},
		{"jwk header with the attacker's key and kid", "Bearer " + byAttacker(func(h, _ map[string]any) { h["jwk"] = attackerJWK })},
		{"jku pointing at the attacker's JWKS", "Bearer " + byAttacker(func(h, _ map[string]any) { h["jku"] = evil.URL + "/jwks.json" })},
		{"jku with the server's kid", "Bearer " + byAttacker(func(h, _ map[string]any) {
			h["kid"], h["jku"] = kid, evil.URL+"/jwks.json"
		})},
		{"x5u pointing at the attacker's certificate", "Bearer " + byAttacker(func(h, _ map[string]any) { h["x5u"] = evil.URL + "/cert.pem" })},
		{"x5c carrying the attacker's certificate", "Bearer " + byAttacker(func(h, _ map[string]any) {
			h["x5c"] = []string{base64.StdEncoding.EncodeToString(attackerDER)}
		})},
		{"expired", "Bearer " + forge(func(_, c map[string]any) {
			now := time.Now()
			c["iat"], c["nbf"], c["exp"] = now.Add(-2*time.Hour).Unix(), now.Add(-2*time.Hour).Unix(), now.Add(-time.Hour).Unix()
		})},
		{"nbf in the future", "Bearer " + forge(func(_, c map[string]any) { c["nbf"] = time.Now().Add(10 * time.Minute).Unix() })},
		{"iat far in the future", "Bearer " + forge(func(_, c map[string]any) { c["iat"] = time.Now().Add(24 * time.Hour).Unix() })},
		{"no exp", "Bearer " + forge(func(_, c map[string]any) { delete(c, "exp") })},
		{"wrong aud", "Bearer " + forge(func(_, c map[string]any) { c["aud"] = []string{"other-api"} })},
		{"no aud", "Bearer " + forge(func(_, c map[string]any) { delete(c, "aud") })},
		{"wrong iss", "Bearer " + forge(func(_, c map[string]any) { c["iss"] = "http://evil.test" })},
		{"typ JWT (an ID-token-like token)", "Bearer " + forge(func(h, _ map[string]any) { h["typ"] = "JWT" })},
		{"typ missing", "Bearer " + forge(func(h, _ map[string]any) { delete(h, "typ") })},
		{"unknown kind", "Bearer " + forge(func(_, c map[string]any) { c["kind"] = "admin" })},
		{"crit header", "Bearer " + forge(func(h, _ map[string]any) { h["crit"] = []string{"exp"} })},
		{"signature stripped", "Bearer " + parts[0] + "." + parts[1] + "."},
		{"signature in non-canonical base64", "Bearer " + func() string {
			// The last of the 86 characters carries 4 unused bits: flip one,
			// and a lax decoder reads the very same signature.
			const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
			sig := []byte(parts[2])
			sig[len(sig)-1] = alphabet[strings.IndexByte(alphabet, sig[len(sig)-1])^1]
			return parts[0] + "." + parts[1] + "." + string(sig)
		}()},
		{"a fourth segment", "Bearer " + control + ".e30"},
		{"refresh token as bearer", "Bearer " + refresh},
		{"payload tampered after signing", "Bearer " + tampered},
		{"oversized but validly signed", "Bearer " + oversized},
		{"Basic scheme with a password", "Basic " + base64.StdEncoding.EncodeToString([]byte("admin@atrium.test:"+adminPassword))},
		{"Basic scheme with a good token", "Basic " + control},
		{"garbage", "Bearer garbage"},
		{"three empty parts", "Bearer .."},
		{"garbage in three parts", "Bearer eyJhbGciOi.eyJzdWIiOi.c2ln"},
		{"two tokens", "Bearer " + control + " " + control},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			resp, body := me(t, inst, c.authz)
			wantProblem(t, resp, body, http.StatusUnauthorized, "unauthenticated")
		})
	}
	if n := fetched.Load(); n != 0 {
		t.Errorf("the server fetched the attacker's jku/x5u URL %d times", n)
	}

	t.Run("real token after logout", func(t *testing.T) {
		tok := apiSignIn(t, inst, "viewer@atrium.test")
		if got := meStatus(t, inst, tok.AccessToken); got != http.StatusOK {
			t.Fatalf("fresh token: %d", got)
		}
		resp, body := call(t, http.MethodPost, inst.URL+"/api/v1/auth/logout", nil, bearer(tok.AccessToken))
		wantStatus(t, resp, body, http.StatusNoContent)
		resp, body = me(t, inst, "Bearer "+tok.AccessToken)
		wantProblem(t, resp, body, http.StatusUnauthorized, "unauthenticated")
	})

	t.Run("real token of a user disabled since", func(t *testing.T) {
		id := newUser(t, inst, "leaver@atrium.test", "viewer", "")
		tok := apiSignIn(t, inst, "leaver@atrium.test")
		if got := meStatus(t, inst, tok.AccessToken); got != http.StatusOK {
			t.Fatalf("fresh token: %d", got)
		}
		resp, body := call(t, http.MethodPost, inst.URL+"/api/v1/users/"+id+"/status", jsonBody(map[string]string{"status": "disabled"}),
			withJSON(bearer(adminToken)))
		wantStatus(t, resp, body, http.StatusOK)
		resp, body = me(t, inst, "Bearer "+tok.AccessToken)
		wantProblem(t, resp, body, http.StatusUnauthorized, "unauthenticated")
	})

	t.Run("token signed by a retired key", func(t *testing.T) {
		rotate := func() {
			t.Helper()
			resp, body := call(t, http.MethodPost, inst.URL+"/api/v1/auth/keys/rotate", nil, bearer(loginAdmin(t, inst)))
			wantStatus(t, resp, body, http.StatusOK)
		}
		oldKeyToken := forge(nil) // kid and key of the key current at the start
		rotate()
		if k, _ := signingKey(t, inst, "previous"); k != kid {
			t.Fatalf("after one rotation the previous key is %s, want %s", k, kid)
		}
		resp, body := me(t, inst, "Bearer "+oldKeyToken)
		wantStatus(t, resp, body, http.StatusOK) // one rotation later it still verifies
		rotate()
		rotate()
		resp, body = me(t, inst, "Bearer "+oldKeyToken)
		wantProblem(t, resp, body, http.StatusUnauthorized, "unauthenticated")
		resp, body = me(t, inst, "Bearer "+forge(nil))
		wantProblem(t, resp, body, http.StatusUnauthorized, "unauthenticated")

		// Control: the same claims signed with today's key are accepted.
		kid2, key2 := signingKey(t, inst, "current")
		h := map[string]any{"alg": "EdDSA", "typ": "at+jwt", "kid": kid2}
		resp, body = me(t, inst, "Bearer "+compactJWT(t, h, serverClaims(adminID, []string{"platform_admin"}), edSigner(key2)))
		wantStatus(t, resp, body, http.StatusOK)
	})
}

// wantInvalidGrant fails t unless a token request was refused as RFC 6749
// §5.2 says for a bad grant: 400, error invalid_grant.
func wantInvalidGrant(t testing.TB, resp *http.Response, body []byte) {
	t.Helper()
	if p := wantProblem(t, resp, body, http.StatusBadRequest, "invalid"); p.Error != "invalid_grant" {
		t.Errorf("OAuth error %q, want invalid_grant", p.Error)
	}
}

// refreshHash is the database key of a refresh token.
func refreshHash(rt string) []byte {
	h := sha256.Sum256([]byte(rt))
	return h[:]
}

// validRefresh returns the hashes of a session's refresh tokens that can
// still be exchanged.
func validRefresh(t testing.TB, in *instance, access string) [][]byte {
	t.Helper()
	var claims struct {
		SID string `json:"sid"`
	}
	if p := strings.Split(access, "."); len(p) == 3 {
		raw, _ := b64url.DecodeString(p[1])
		_ = json.Unmarshal(raw, &claims)
	}
	if claims.SID == "" {
		t.Fatal("access token without sid")
	}
	rows, err := in.app.ownerPool.Query(context.Background(), `SELECT rt.hash FROM refresh_tokens rt JOIN sessions s ON s.id = rt.session_id
		WHERE rt.session_id = $1 AND rt.used_at IS NULL AND s.revoked_at IS NULL`, claims.SID)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out [][]byte
	for rows.Next() {
		var h []byte
		if err := rows.Scan(&h); err != nil {
			t.Fatal(err)
		}
		out = append(out, h)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestAuthRefreshRotationAndReuse(t *testing.T) {
	inst := startCluster(t, 1)[0]
	newUser(t, inst, "rotor@atrium.test", "viewer", "")
	exchange := func(t *testing.T, rt string) authTokens {
		t.Helper()
		resp, body := refreshGrant(t, inst, rt)
		wantStatus(t, resp, body, http.StatusOK)
		tok := decodeJSON[authTokens](t, body)
		if tok.AccessToken == "" || tok.RefreshToken == "" || tok.RefreshToken == rt {
			t.Fatalf("refresh gave %s", body)
		}
		return tok
	}
	refused := func(t *testing.T, rt string) {
		t.Helper()
		resp, body := refreshGrant(t, inst, rt)
		wantInvalidGrant(t, resp, body)
	}

	t.Run("reuse after the grace period revokes the family", func(t *testing.T) {
		first := apiSignIn(t, inst, "rotor@atrium.test")
		second := exchange(t, first.RefreshToken)
		if got := meStatus(t, inst, second.AccessToken); got != http.StatusOK {
			t.Fatalf("new access token: %d", got)
		}
		// Pretend the exchange happened 10 s ago, past the 5 s grace.
		if _, err := inst.app.ownerPool.Exec(context.Background(), `UPDATE refresh_tokens SET used_at = now() - interval '10 seconds' WHERE hash = $1`,
			refreshHash(first.RefreshToken)); err != nil {
			t.Fatal(err)
		}
		refused(t, first.RefreshToken)
		refused(t, second.RefreshToken)
		for i, at := range []string{first.AccessToken, second.AccessToken} {
			resp, body := me(t, inst, "Bearer "+at)
			if resp.StatusCode != http.StatusUnauthorized {
				t.Errorf("access token %d of the revoked family: %d %s", i+1, resp.StatusCode, body)
			}
		}
	})

	t.Run("a retry within grace is refused without ending the session", func(t *testing.T) {
		first := apiSignIn(t, inst, "rotor@atrium.test")
		second := exchange(t, first.RefreshToken)
		// The client lost the answer (or a twin request raced it) and
		// retries: refused as invalid_grant, but nothing is revoked.
		resp, body := call(t, "POST", inst.URL+"/oauth2/token", strings.NewReader(url.Values{"grant_type": {"refresh_token"},
			"refresh_token": {first.RefreshToken}}.Encode()), http.Header{"Content-Type": {"application/x-www-form-urlencoded"}})
		if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(body), `"error":"invalid_grant"`) {
			t.Fatalf("retry within grace: %d %s", resp.StatusCode, body)
		}
		if got := validRefresh(t, inst, second.AccessToken); len(got) != 1 || string(got[0]) != string(refreshHash(second.RefreshToken)) {
			t.Fatalf("after the retry %d refresh tokens are valid, want exactly the first exchange's", len(got))
		}
		if got := meStatus(t, inst, second.AccessToken); got != http.StatusOK {
			t.Fatalf("access token of the first exchange after the retry: %d", got)
		}
		third := exchange(t, second.RefreshToken)
		if got := meStatus(t, inst, third.AccessToken); got != http.StatusOK {
			t.Fatalf("access token after rotating on: %d", got)
		}
	})

	t.Run("concurrent refreshes of one token leave exactly one working token", func(t *testing.T) {
		first := apiSignIn(t, inst, "rotor@atrium.test")
		const n = 10
		type answer struct {
			status int
			body   []byte
			err    error
		}
		answers := make([]answer, n)
		start := make(chan struct{})
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() {
				<-start
				resp, err := http.PostForm(inst.URL+"/oauth2/token", url.Values{"grant_type": {"refresh_token"}, "refresh_token": {first.RefreshToken}})
				if err != nil {
					answers[i].err = err
					return
				}
				defer resp.Body.Close()
				answers[i].status = resp.StatusCode
				answers[i].body, answers[i].err = io.ReadAll(resp.Body)
			})
		}
		close(start)
		wg.Wait()
		issued := map[string]authTokens{}
		for i, a := range answers {
			switch {
			case a.err != nil:
				t.Fatalf("refresh %d: %v", i, a.err)
			case a.status == http.StatusOK:
				tok := decodeJSON[authTokens](t, a.body)
				issued[string(refreshHash(tok.RefreshToken))] = tok
			case a.status != http.StatusBadRequest: // refused as invalid_grant
				t.Errorf("refresh %d: %d %s", i, a.status, a.body)
			}
		}
		if len(issued) != 1 {
			t.Fatalf("%d of %d concurrent refreshes succeeded, want exactly one winner", len(issued), n)
		}
		valid := validRefresh(t, inst, first.AccessToken)
		if len(valid) != 1 {
			t.Fatalf("%d concurrent refreshes (%d answered 200) left %d valid refresh tokens, want 1", n, len(issued), len(valid))
		}
		winner, ok := issued[string(valid[0])]
		if !ok {
			t.Fatal("the one valid refresh token is none of those handed out")
		}
		if got := meStatus(t, inst, winner.AccessToken); got != http.StatusOK {
			t.Fatalf("the winner's access token: %d", got)
		}
		next := exchange(t, winner.RefreshToken)
		if got := meStatus(t, inst, next.AccessToken); got != http.StatusOK {
			t.Fatalf("access token after the winner's refresh: %d", got)
		}
	})
}

func TestAuthTwoInstancesPropagation(t *testing.T) {
	c := startCluster(t, 2)
	for _, in := range c {
		select {
		case <-in.app.auth.Ready():
		case <-time.After(10 * time.Second):
			t.Fatalf("%s never subscribed to auth broadcasts", in.URL)
		}
	}
	adminToken := loginAdmin(t, c[0])
	tenant := uuid.NewString()
	ensureTenant(t, c[0], tenant)
	status := func(t *testing.T, in *instance, method, path string, body any, token string) int {
		t.Helper()
		var r io.Reader
		if body != nil {
			r = jsonBody(body)
		}
		resp, _ := call(t, method, in.URL+path, r, withJSON(bearer(token)))
		return resp.StatusCode
	}

	t.Run("logout", func(t *testing.T) {
		newUser(t, c[0], "leaving@atrium.test", "viewer", tenant)
		tok := apiSignIn(t, c[0], "leaving@atrium.test")
		if got := meStatus(t, c[1], tok.AccessToken); got != http.StatusOK {
			t.Fatalf("token from instance 0 on instance 1: %d", got)
		}
		if got := status(t, c[0], http.MethodPost, "/api/v1/auth/logout", nil, tok.AccessToken); got != http.StatusNoContent {
			t.Fatalf("logout: %d", got)
		}
		took := within(t, time.Second, "logout on instance 1", func() bool { return meStatus(t, c[1], tok.AccessToken) == http.StatusUnauthorized })
		t.Logf("logout reached instance 1 in %s", took)
	})

	t.Run("role change", func(t *testing.T) {
		id := newUser(t, c[0], "promoted@atrium.test", "viewer", tenant)
		other := newUser(t, c[0], "colleague@atrium.test", "viewer", tenant)
		tok := apiSignIn(t, c[0], "promoted@atrium.test")
		// users:manage is needed to set a colleague's status; instance 1
		// caches the viewer's permissions here.
		manage := func() int {
			return status(t, c[1], http.MethodPost, "/api/v1/users/"+other+"/status", map[string]string{"status": "active"}, tok.AccessToken)
		}
		if got := manage(); got != http.StatusForbidden {
			t.Fatalf("viewer managing users on instance 1: %d, want 403", got)
		}
		setRoles := func(role string) {
			if got := status(t, c[0], http.MethodPut, "/api/v1/users/"+id+"/roles", map[string][]string{"roles": {role}}, adminToken); got != http.StatusOK {
				t.Fatalf("set role %s on instance 0: %d", role, got)
			}
		}
		setRoles("tenant_admin")
		took := within(t, time.Second, "promotion on instance 1", func() bool { return manage() == http.StatusOK })
		t.Logf("promotion reached instance 1 in %s", took)
		setRoles("viewer")
		took = within(t, time.Second, "demotion on instance 1", func() bool { return manage() == http.StatusForbidden })
		t.Logf("demotion reached instance 1 in %s", took)
	})

	t.Run("disable", func(t *testing.T) {
		id := newUser(t, c[0], "disabled@atrium.test", "viewer", tenant)
		tok := apiSignIn(t, c[0], "disabled@atrium.test")
		if got := meStatus(t, c[1], tok.AccessToken); got != http.StatusOK {
			t.Fatalf("token on instance 1: %d", got)
		}
		if got := status(t, c[0], http.MethodPost, "/api/v1/users/"+id+"/status", map[string]string{"status": "disabled"}, adminToken); got != http.StatusOK {
			t.Fatalf("disable on instance 0: %d", got)
		}
		took := within(t, time.Second, "disable on instance 1", func() bool { return meStatus(t, c[1], tok.AccessToken) == http.StatusUnauthorized })
		t.Logf("disable reached instance 1 in %s", took)
	})

	t.Run("key rotation", func(t *testing.T) {
		// Two rotations: the key that signs afterwards was created by the
		// first, so instance 1 knows it only from the broadcast.
		for range 2 {
			if got := status(t, c[0], http.MethodPost, "/api/v1/auth/keys/rotate", nil, adminToken); got != http.StatusOK {
				t.Fatalf("rotate on instance 0: %d", got)
			}
		}
		kids := func(in *instance) []string {
			resp, body := call(t, http.MethodGet, in.URL+"/.well-known/jwks.json", nil, nil)
			wantStatus(t, resp, body, http.StatusOK)
			var out []string
			for _, k := range decodeJSON[struct {
				Keys []struct {
					KID string `json:"kid"`
				} `json:"keys"`
			}](t, body).Keys {
				out = append(out, k.KID)
			}
			slices.Sort(out)
			return out
		}
		want := kids(c[0])
		took := within(t, time.Second, "new keys published by instance 1", func() bool { return slices.Equal(kids(c[1]), want) })
		t.Logf("instance 1 published the rotated keys in %s", took)
		tok := loginAdmin(t, c[0])
		current, _ := signingKey(t, c[0], "current")
		if h, err := jwtHeaderKID(tok); err != nil || h != current {
			t.Fatalf("token issued after rotation has kid %q (%v), want the current key %s", h, err, current)
		}
		within(t, time.Second, "token signed with the rotated key on instance 1", func() bool { return meStatus(t, c[1], tok) == http.StatusOK })
	})
}

// jwtHeaderKID returns the kid of a compact JWS.
func jwtHeaderKID(token string) (string, error) {
	h, _, _ := strings.Cut(token, ".")
	raw, err := b64url.DecodeString(h)
	if err != nil {
		return "", err
	}
	var v struct {
		KID string `json:"kid"`
	}
	err = json.Unmarshal(raw, &v)
	return v.KID, err
}

func TestAuthLogin(t *testing.T) {
	inst := startCluster(t, 1)[0]
	newUser(t, inst, "known@atrium.test", "viewer", "")
	newUser(t, inst, "target@atrium.test", "viewer", "")

	t.Run("wrong password and unknown email look the same", func(t *testing.T) {
		wrongResp, wrong := tryLogin(t, inst, "known@atrium.test", "not the password at all")
		unknownResp, unknown := tryLogin(t, inst, "nobody@atrium.test", "not the password at all")
		wantProblem(t, wrongResp, wrong, http.StatusUnauthorized, "unauthenticated")
		wantProblem(t, unknownResp, unknown, http.StatusUnauthorized, "unauthenticated")
		strip := func(b []byte) map[string]any {
			m := decodeJSON[map[string]any](t, b)
			delete(m, "request_id")
			delete(m, "instance")
			return m
		}
		if a, b := strip(wrong), strip(unknown); !reflect.DeepEqual(a, b) {
			t.Fatalf("the answers differ:\nwrong password: %s\nunknown email:  %s", wrong, unknown)
		}
	})

	lockedOut := func(t *testing.T, email, password string) {
		t.Helper()
		resp, body := tryLogin(t, inst, email, password)
		wantProblem(t, resp, body, http.StatusTooManyRequests, "quota_exceeded")
		if n, err := strconv.Atoi(resp.Header.Get("Retry-After")); err != nil || n < 1 {
			t.Errorf("Retry-After %q, want a positive number of seconds", resp.Header.Get("Retry-After"))
		}
	}

	t.Run("five failures lock the account, even for the right password", func(t *testing.T) {
		for i := range 5 {
			resp, body := tryLogin(t, inst, "target@atrium.test", "guess number "+strconv.Itoa(i)+" of many")
			wantProblem(t, resp, body, http.StatusUnauthorized, "unauthenticated")
		}
		lockedOut(t, "target@atrium.test", adminPassword)
		lockedOut(t, "TARGET@atrium.test", adminPassword) // the lock ignores case
		// The lock is per account: another one still signs in.
		apiSignIn(t, inst, "known@atrium.test")
	})

	t.Run("parallel guesses get no more than five tries", func(t *testing.T) {
		newUser(t, inst, "parallel@atrium.test", "viewer", "")
		const n = 20
		statuses := make([]int, n)
		start := make(chan struct{})
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() {
				<-start
				resp, err := http.Post(inst.URL+"/api/v1/auth/login", "application/json",
					jsonBody(map[string]string{"email": "parallel@atrium.test", "password": "parallel guess " + strconv.Itoa(i)}))
				if err != nil {
					return
				}
				resp.Body.Close()
				statuses[i] = resp.StatusCode
			})
		}
		close(start)
		wg.Wait()
		checked, refused := 0, 0
		for i, s := range statuses {
			switch s {
			case http.StatusUnauthorized:
				checked++ // the password was checked
			case http.StatusTooManyRequests:
				refused++
			default:
				t.Errorf("guess %d: status %d", i, s)
			}
		}
		if checked > 5 || refused < n-5 {
			t.Errorf("%d of %d parallel guesses had their password checked and %d were refused, want at most 5 and the rest refused",
				checked, n, refused)
		}
		// No check that the lock still holds afterwards: it starts when the
		// fifth guess is counted, before the passwords are checked, and five
		// argon2 checks on a loaded machine (-race) can outlast the first
		// lock (2 s). The sequential subtests check the lock itself.
	})

	t.Run("unknown emails lock the same way", func(t *testing.T) {
		for i := range 5 {
			resp, body := tryLogin(t, inst, "ghost@atrium.test", "guess number "+strconv.Itoa(i)+" of many")
			wantProblem(t, resp, body, http.StatusUnauthorized, "unauthenticated")
		}
		lockedOut(t, "ghost@atrium.test", adminPassword)
	})
}

func TestAuthTerminalClientCredentials(t *testing.T) {
	inst := startCluster(t, 1)[0]
	adminToken := loginAdmin(t, inst)
	tenant := uuid.NewString()
	ensureTenant(t, inst, tenant)

	resp, body := call(t, http.MethodPost, inst.URL+"/api/v1/terminals", jsonBody(map[string]string{"merchant_ref": "m-1", "tenant_id": tenant}),
		withJSON(bearer(adminToken)))
	wantStatus(t, resp, body, http.StatusCreated)
	term := decodeJSON[auth.Terminal](t, body)
	if term.ID == "" || term.Secret == "" || term.TenantID != tenant || term.Status != "active" {
		t.Fatalf("created terminal %s", body)
	}

	resp, body = call(t, http.MethodGet, inst.URL+"/api/v1/terminals", nil, bearer(adminToken))
	wantStatus(t, resp, body, http.StatusOK)
	if strings.Contains(string(body), term.Secret) || strings.Contains(string(body), "client_secret") {
		t.Fatalf("the terminal list shows the secret: %s", body)
	}
	if !strings.Contains(string(body), term.ID) {
		t.Fatalf("the terminal list lacks %s: %s", term.ID, body)
	}

	grant := func(id, secret string) (*http.Response, []byte) {
		req := http.Header{"Authorization": {"Basic " + base64.StdEncoding.EncodeToString([]byte(id+":"+secret))}}
		return postForm(t, inst.URL+"/oauth2/token", url.Values{"grant_type": {"client_credentials"}}, req)
	}
	refusedClient := func(resp *http.Response, body []byte) {
		t.Helper()
		if p := wantProblem(t, resp, body, http.StatusUnauthorized, "unauthenticated"); p.Error != "invalid_client" {
			t.Errorf("OAuth error %q, want invalid_client", p.Error)
		}
	}

	resp, body = grant(term.ID, term.Secret)
	wantStatus(t, resp, body, http.StatusOK)
	tok := decodeJSON[authTokens](t, body)
	if tok.AccessToken == "" || tok.TokenType != "Bearer" || tok.RefreshToken != "" {
		t.Fatalf("client credentials answer %s", body)
	}

	resp, body = me(t, inst, "Bearer "+tok.AccessToken)
	wantStatus(t, resp, body, http.StatusOK)
	who := decodeJSON[meBody](t, body)
	if who.Kind != "terminal" || who.TerminalID != term.ID || who.TenantID != tenant || !slices.Contains(who.Permissions, "payments:create") {
		t.Fatalf("terminal's /me: %s", body)
	}
	resp, body = call(t, http.MethodGet, inst.URL+"/api/v1/users", nil, bearer(tok.AccessToken))
	wantProblem(t, resp, body, http.StatusForbidden, "forbidden")

	resp, body = grant(term.ID, term.Secret+"x")
	refusedClient(resp, body)
	resp, body = grant(uuid.NewString(), term.Secret)
	refusedClient(resp, body)

	resp, body = call(t, http.MethodPost, inst.URL+"/api/v1/terminals/"+term.ID+"/status", jsonBody(map[string]string{"status": "disabled"}),
		withJSON(bearer(adminToken)))
	wantStatus(t, resp, body, http.StatusOK)
	resp, body = grant(term.ID, term.Secret)
	refusedClient(resp, body)
	resp, body = me(t, inst, "Bearer "+tok.AccessToken)
	wantProblem(t, resp, body, http.StatusUnauthorized, "unauthenticated")
}

func TestAuthTenantIsolation(t *testing.T) {
	inst := startCluster(t, 1)[0]
	tenantA, tenantB := uuid.NewString(), uuid.NewString()
	adminA := loginAs(t, inst, "admin@a.test", adminPassword, "tenant_admin", tenantA)
	adminB := loginAs(t, inst, "admin@b.test", adminPassword, "tenant_admin", tenantB)
	viewerA := newUser(t, inst, "viewer@a.test", "viewer", tenantA)

	// B's administrator creates a user and a terminal in B, through the API.
	resp, body := call(t, http.MethodPost, inst.URL+"/api/v1/users", jsonBody(map[string]string{"email": "viewer@b.test", "password": adminPassword}),
		withJSON(bearer(adminB)))
	wantStatus(t, resp, body, http.StatusCreated)
	userB := decodeJSON[auth.User](t, body)
	if userB.TenantID == nil || *userB.TenantID != tenantB {
		t.Fatalf("user created by B's administrator: %s", body)
	}
	sessionB := apiSignIn(t, inst, "viewer@b.test")
	resp, body = call(t, http.MethodPost, inst.URL+"/api/v1/terminals", jsonBody(map[string]string{"merchant_ref": "m-b"}), withJSON(bearer(adminB)))
	wantStatus(t, resp, body, http.StatusCreated)
	termB := decodeJSON[auth.Terminal](t, body)
	var sessionIDB string
	if err := inst.app.ownerPool.QueryRow(context.Background(), `SELECT id FROM sessions WHERE user_id = $1`, userB.ID).Scan(&sessionIDB); err != nil {
		t.Fatal(err)
	}

	asA := func(method, path string, in any) (*http.Response, []byte) {
		t.Helper()
		var r io.Reader
		if in != nil {
			r = jsonBody(in)
		}
		return call(t, method, inst.URL+path, r, withJSON(bearer(adminA)))
	}
	for _, c := range []struct {
		method, path string
		body         any
	}{
		{http.MethodGet, "/api/v1/users/" + userB.ID, nil},
		{http.MethodPost, "/api/v1/users/" + userB.ID + "/status", map[string]string{"status": "disabled"}},
		{http.MethodPut, "/api/v1/users/" + userB.ID + "/roles", map[string][]string{"roles": {"tenant_admin"}}},
		{http.MethodPost, "/api/v1/users/" + userB.ID + "/password", map[string]string{"password": "a new password of A's choosing"}},
		{http.MethodGet, "/api/v1/users/" + userB.ID + "/sessions", nil},
		{http.MethodDelete, "/api/v1/sessions/" + sessionIDB, nil},
		{http.MethodPost, "/api/v1/terminals/" + termB.ID + "/status", map[string]string{"status": "disabled"}},
	} {
		t.Run(c.method+" "+strings.ReplaceAll(c.path, "/", "_"), func(t *testing.T) {
			resp, body := asA(c.method, c.path, c.body)
			wantProblem(t, resp, body, http.StatusNotFound, "not_found")
		})
	}
	// Nothing of B's changed: its user is active, its session and terminal work.
	resp, body = call(t, http.MethodGet, inst.URL+"/api/v1/users/"+userB.ID, nil, bearer(adminB))
	wantStatus(t, resp, body, http.StatusOK)
	if u := decodeJSON[auth.User](t, body); u.Status != "active" || !slices.Equal(u.Roles, []string{"viewer"}) {
		t.Errorf("B's user after A's attempts: %s", body)
	}
	if got := meStatus(t, inst, sessionB.AccessToken); got != http.StatusOK {
		t.Errorf("B's session after A's attempts: %d", got)
	}
	apiSignIn(t, inst, "viewer@b.test") // the password is unchanged
	resp, body = call(t, http.MethodGet, inst.URL+"/api/v1/terminals", nil, bearer(adminB))
	wantStatus(t, resp, body, http.StatusOK)
	if ts := decodeJSON[struct{ Terminals []auth.Terminal }](t, body).Terminals; len(ts) != 1 || ts[0].Status != "active" {
		t.Errorf("B's terminals after A's attempts: %s", body)
	}

	t.Run("lists show only the caller's tenant", func(t *testing.T) {
		resp, body := asA(http.MethodGet, "/api/v1/users", nil)
		wantStatus(t, resp, body, http.StatusOK)
		var ids []string
		for _, u := range decodeJSON[struct{ Users []auth.User }](t, body).Users {
			if u.TenantID == nil || *u.TenantID != tenantA {
				t.Errorf("A's administrator sees user %s of tenant %v", u.Email, u.TenantID)
			}
			ids = append(ids, u.ID)
		}
		if len(ids) != 2 || !slices.Contains(ids, viewerA) {
			t.Errorf("A's users: %s", body)
		}
		resp, body = asA(http.MethodGet, "/api/v1/terminals", nil)
		wantStatus(t, resp, body, http.StatusOK)
		if ts := decodeJSON[struct{ Terminals []auth.Terminal }](t, body).Terminals; len(ts) != 0 {
			t.Errorf("A's administrator sees terminals %s", body)
		}
		resp, body = asA(http.MethodGet, "/api/v1/audit", nil)
		wantStatus(t, resp, body, http.StatusOK)
		entries := decodeJSON[struct{ Entries []auth.AuditEntry }](t, body).Entries
		if len(entries) == 0 {
			t.Errorf("A's audit log is empty")
		}
		for _, e := range entries {
			if e.TenantID == nil || *e.TenantID != tenantA {
				t.Errorf("A's administrator sees audit entry %s %s of tenant %v", e.Action, e.Object, e.TenantID)
			}
		}
	})

	t.Run("no user in another tenant", func(t *testing.T) {
		resp, body := asA(http.MethodPost, "/api/v1/users", map[string]string{"email": "mole@b.test", "password": adminPassword, "tenant_id": tenantB})
		if p := wantProblem(t, resp, body, http.StatusBadRequest, "invalid"); len(p.Errors) != 1 || p.Errors[0].Field != "tenant_id" {
			t.Errorf("errors %+v, want one naming tenant_id", p.Errors)
		}
		resp, body = asA(http.MethodPost, "/api/v1/terminals", map[string]string{"merchant_ref": "m-mole", "tenant_id": tenantB})
		if p := wantProblem(t, resp, body, http.StatusBadRequest, "invalid"); len(p.Errors) != 1 || p.Errors[0].Field != "tenant_id" {
			t.Errorf("errors %+v, want one naming tenant_id", p.Errors)
		}
	})

	t.Run("no platform_admin", func(t *testing.T) {
		resp, body := asA(http.MethodPost, "/api/v1/users", map[string]any{"email": "boss@a.test", "password": adminPassword, "roles": []string{"platform_admin"}})
		if resp.StatusCode != http.StatusBadRequest && resp.StatusCode != http.StatusForbidden {
			t.Errorf("create platform_admin: %d %s", resp.StatusCode, body)
		}
		resp, body = tryLogin(t, inst, "boss@a.test", adminPassword)
		wantProblem(t, resp, body, http.StatusUnauthorized, "unauthenticated")

		adminAID := decodeJSON[meBody](t, func() []byte { _, b := me(t, inst, "Bearer "+adminA); return b }()).User.ID
		for _, id := range []string{viewerA, adminAID} {
			resp, body := asA(http.MethodPut, "/api/v1/users/"+id+"/roles", map[string][]string{"roles": {"platform_admin"}})
			if p := wantProblem(t, resp, body, http.StatusBadRequest, "invalid"); len(p.Errors) != 1 || p.Errors[0].Field != "roles" {
				t.Errorf("errors %+v, want one naming roles", p.Errors)
			}
		}
		resp, body = asA(http.MethodGet, "/api/v1/me", nil)
		wantStatus(t, resp, body, http.StatusOK)
		if got := decodeJSON[meBody](t, body); slices.Contains(got.Permissions, "tenants:manage") || got.TenantID != tenantA {
			t.Errorf("A's administrator after the attempts: %s", body)
		}
	})
}

func TestAuthIntrospectRevokeDiscovery(t *testing.T) {
	inst := startCluster(t, 1)[0]
	adminToken := loginAdmin(t, inst)
	newUser(t, inst, "subject@atrium.test", "viewer", "")

	t.Run("JWKS", func(t *testing.T) {
		resp, body := call(t, http.MethodGet, inst.URL+"/.well-known/jwks.json", nil, nil)
		wantStatus(t, resp, body, http.StatusOK)
		set := decodeJSON[struct {
			Keys []map[string]any `json:"keys"`
		}](t, body)
		current, _ := signingKey(t, inst, "current")
		next, _ := signingKey(t, inst, "next")
		var kids []string
		for _, k := range set.Keys {
			if k["alg"] != "EdDSA" || k["use"] != "sig" || k["kty"] != "OKP" || k["crv"] != "Ed25519" || k["x"] == nil {
				t.Errorf("key %v", k)
			}
			for _, private := range []string{"d", "p", "q", "k"} {
				if _, ok := k[private]; ok {
					t.Errorf("key %v has private member %q", k["kid"], private)
				}
			}
			kid, _ := k["kid"].(string)
			kids = append(kids, kid)
		}
		slices.Sort(kids)
		want := []string{current, next}
		slices.Sort(want)
		if !slices.Equal(kids, want) {
			t.Errorf("JWKS kids %v, want current and next %v", kids, want)
		}
		// An outside verifier with a standard library checks our tokens
		// with this document alone.
		ks, err := jwk.Parse(body)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := jwt.ParseString(adminToken, jwt.WithKeySet(ks), jwt.WithIssuer("http://atrium.test"), jwt.WithAudience("atrium-api")); err != nil {
			t.Errorf("a token does not verify against the JWKS: %v", err)
		}
	})

	t.Run("discovery", func(t *testing.T) {
		resp, body := call(t, http.MethodGet, inst.URL+"/.well-known/openid-configuration", nil, nil)
		wantStatus(t, resp, body, http.StatusOK)
		got := decodeJSON[map[string]any](t, body)
		for k, v := range map[string]string{
			"issuer":                 "http://atrium.test",
			"jwks_uri":               "http://atrium.test/.well-known/jwks.json",
			"token_endpoint":         "http://atrium.test/oauth2/token",
			"revocation_endpoint":    "http://atrium.test/oauth2/revoke",
			"introspection_endpoint": "http://atrium.test/oauth2/introspect",
		} {
			if got[k] != v {
				t.Errorf("%s = %v, want %s", k, got[k], v)
			}
		}
	})

	introspect := func(t *testing.T, token string) map[string]any {
		t.Helper()
		resp, body := postForm(t, inst.URL+"/oauth2/introspect", url.Values{"token": {token}}, bearer(adminToken))
		wantStatus(t, resp, body, http.StatusOK)
		return decodeJSON[map[string]any](t, body)
	}
	inactive := func(t *testing.T, got map[string]any) {
		t.Helper()
		if len(got) != 1 || got["active"] != false {
			t.Errorf("introspection %v, want only active false", got)
		}
	}

	t.Run("introspect", func(t *testing.T) {
		tok := apiSignIn(t, inst, "subject@atrium.test")
		got := introspect(t, tok.AccessToken)
		if got["active"] != true || got["sub"] != tok.User.ID || got["kind"] != "user" || got["iss"] != "http://atrium.test" {
			t.Errorf("introspection of a good token: %v", got)
		}
		resp, body := call(t, http.MethodPost, inst.URL+"/api/v1/auth/logout", nil, bearer(tok.AccessToken))
		wantStatus(t, resp, body, http.StatusNoContent)
		inactive(t, introspect(t, tok.AccessToken))
		inactive(t, introspect(t, "garbage"))
		inactive(t, introspect(t, tok.RefreshToken))
	})

	t.Run("introspect needs authentication", func(t *testing.T) {
		tok := apiSignIn(t, inst, "subject@atrium.test")
		resp, body := postForm(t, inst.URL+"/oauth2/introspect", url.Values{"token": {tok.AccessToken}}, nil)
		wantProblem(t, resp, body, http.StatusUnauthorized, "unauthenticated")
	})

	t.Run("revoking a refresh token ends the session", func(t *testing.T) {
		tok := apiSignIn(t, inst, "subject@atrium.test")
		resp, body := postForm(t, inst.URL+"/oauth2/revoke", url.Values{"token": {tok.RefreshToken}}, nil)
		wantStatus(t, resp, body, http.StatusOK)
		resp, body = refreshGrant(t, inst, tok.RefreshToken)
		wantInvalidGrant(t, resp, body)
		resp, body = me(t, inst, "Bearer "+tok.AccessToken)
		wantProblem(t, resp, body, http.StatusUnauthorized, "unauthenticated")
		inactive(t, introspect(t, tok.AccessToken))
	})

	t.Run("revoking an access token", func(t *testing.T) {
		tok := apiSignIn(t, inst, "subject@atrium.test")
		resp, body := postForm(t, inst.URL+"/oauth2/revoke", url.Values{"token": {tok.AccessToken}}, nil)
		wantStatus(t, resp, body, http.StatusOK)
		resp, body = me(t, inst, "Bearer "+tok.AccessToken)
		wantProblem(t, resp, body, http.StatusUnauthorized, "unauthenticated")
		// Unknown tokens are not an error (RFC 7009 §2.2).
		resp, body = postForm(t, inst.URL+"/oauth2/revoke", url.Values{"token": {"no such token"}}, nil)
		wantStatus(t, resp, body, http.StatusOK)
	})
}

func TestAuthCSRF(t *testing.T) {
	inst := startCluster(t, 1)[0]
	newUser(t, inst, "browser@atrium.test", "viewer", "")
	tok := apiSignIn(t, inst, "browser@atrium.test")
	csrf := strings.Repeat("c", 32) + "-csrf-token"
	cookie := func(csrfCookie string) http.Header {
		v := "atrium_at=" + tok.AccessToken
		if csrfCookie != "" {
			v += "; atrium_csrf=" + csrfCookie
		}
		return http.Header{"Cookie": {v}}
	}
	logout := func(h http.Header) (*http.Response, []byte) {
		return call(t, http.MethodPost, inst.URL+"/api/v1/auth/logout", nil, h)
	}

	for _, c := range []struct {
		name   string
		header http.Header
	}{
		{"no CSRF token", cookie("")},
		{"CSRF cookie without header", cookie(csrf)},
		{"header without CSRF cookie", func() http.Header { h := cookie(""); h.Set("X-CSRF-Token", csrf); return h }()},
		{"header differs from cookie", func() http.Header { h := cookie(csrf); h.Set("X-CSRF-Token", csrf+"x"); return h }()},
		{"short CSRF token", func() http.Header { h := cookie("short"); h.Set("X-CSRF-Token", "short"); return h }()},
	} {
		t.Run(c.name, func(t *testing.T) {
			resp, body := logout(c.header)
			wantProblem(t, resp, body, http.StatusForbidden, "forbidden")
		})
	}
	// The refused requests logged nothing out: the cookie still works.
	resp, body := call(t, http.MethodGet, inst.URL+"/api/v1/me", nil, cookie(""))
	wantStatus(t, resp, body, http.StatusOK)

	h := cookie(csrf)
	h.Set("X-CSRF-Token", csrf)
	resp, body = logout(h)
	wantStatus(t, resp, body, http.StatusNoContent)
	resp, body = me(t, inst, "Bearer "+tok.AccessToken)
	wantProblem(t, resp, body, http.StatusUnauthorized, "unauthenticated")
}

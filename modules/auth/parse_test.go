package auth

import (
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v3/jwa"
	"github.com/lestrrat-go/jwx/v3/jwt"
)

// sign makes a compact JWS from raw header and claims JSON with key.
func sign(key ed25519.PrivateKey, header, claims string) string {
	enc := base64.RawURLEncoding
	in := enc.EncodeToString([]byte(header)) + "." + enc.EncodeToString([]byte(claims))
	return in + "." + enc.EncodeToString(ed25519.Sign(key, []byte(in)))
}

// TestParseAgreesWithJWX holds Atrium's access-token verifier to its
// profile and, for everything the JWT standard defines (signature,
// issuer, audience, required claims, times), to jwx's verdict on the same
// token.
func TestParseAgreesWithJWX(t *testing.T) {
	s := newTestService(t)
	ks := s.keys.set.Load()
	key, kid := ks.sign, ks.signKID
	now := s.now()
	claims := func(over map[string]any) string {
		m := map[string]any{"iss": s.cfg.Issuer, "aud": []string{s.cfg.Audience}, "sub": "0193a000-0000-7000-8000-000000000001",
			"jti": "j1", "kind": "user", "tenant": "", "gen": 0, "roles": []string{"viewer"}, "sid": "s1",
			"iat": now.Unix(), "nbf": now.Unix(), "exp": now.Add(5 * time.Minute).Unix()}
		for k, v := range over {
			if v == nil {
				delete(m, k)
			} else {
				m[k] = v
			}
		}
		b, _ := json.Marshal(m)
		return string(b)
	}
	hdr := `{"alg":"EdDSA","typ":"at+jwt","kid":"` + kid + `"}`
	_, otherKey, _ := ed25519.GenerateKey(nil)
	good := sign(key, hdr, claims(nil))
	issued, _, _, err := s.issue(tokenSpec{kind: "user", subject: "0193a000-0000-7000-8000-000000000001", tenant: "t", gen: 3})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		token string
		ok    bool
		// profile marks cases that only Atrium's profile decides (header
		// rules jwx leaves to the caller).
		profile bool
	}{
		{"issued by the service", issued, true, false},
		{"well formed", good, true, false},
		{"audience as a string", sign(key, hdr, claims(map[string]any{"aud": s.cfg.Audience})), true, false},
		{"fractional times", sign(key, hdr, claims(map[string]any{"iat": float64(now.Unix()) + .5})), true, false},
		{"expired", sign(key, hdr, claims(map[string]any{"exp": now.Add(-time.Minute).Unix()})), false, false},
		{"expired within skew", sign(key, hdr, claims(map[string]any{"exp": now.Add(-10 * time.Second).Unix()})), true, false},
		{"not yet valid", sign(key, hdr, claims(map[string]any{"nbf": now.Add(time.Minute).Unix()})), false, false},
		{"issued in the future", sign(key, hdr, claims(map[string]any{"iat": now.Add(time.Hour).Unix()})), false, false},
		{"no exp", sign(key, hdr, claims(map[string]any{"exp": nil})), false, false},
		{"no iat", sign(key, hdr, claims(map[string]any{"iat": nil})), false, false},
		{"no jti", sign(key, hdr, claims(map[string]any{"jti": nil})), false, false},
		{"no sub", sign(key, hdr, claims(map[string]any{"sub": nil})), false, false},
		{"wrong issuer", sign(key, hdr, claims(map[string]any{"iss": "https://evil"})), false, false},
		{"wrong audience", sign(key, hdr, claims(map[string]any{"aud": []string{"other"}})), false, false},
		{"other key", sign(otherKey, hdr, claims(nil)), false, false},
		{"tampered payload", strings.Replace(good, ".", ".e30", 1), false, false},
		{"truncated signature", good[:len(good)-4], false, false},
		{"no kind", sign(key, hdr, claims(map[string]any{"kind": nil})), false, true},
		{"unknown kind", sign(key, hdr, claims(map[string]any{"kind": "admin"})), false, true},
		{"no tenant", sign(key, hdr, claims(map[string]any{"tenant": nil})), false, true},
		{"no gen", sign(key, hdr, claims(map[string]any{"gen": nil})), false, true},
		{"fractional gen", sign(key, hdr, claims(map[string]any{"gen": 1.5})), false, true},
		{"typ JWT", sign(key, `{"alg":"EdDSA","typ":"JWT","kid":"`+kid+`"}`, claims(nil)), false, true},
		{"no typ", sign(key, `{"alg":"EdDSA","kid":"`+kid+`"}`, claims(nil)), false, true},
		{"no kid", sign(key, `{"alg":"EdDSA","typ":"at+jwt"}`, claims(nil)), false, true},
		{"unknown kid", sign(key, `{"alg":"EdDSA","typ":"at+jwt","kid":"nope"}`, claims(nil)), false, true},
		{"crit", sign(key, `{"alg":"EdDSA","typ":"at+jwt","kid":"`+kid+`","crit":["exp"]}`, claims(nil)), false, true},
		{"alg none", base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"none","typ":"at+jwt","kid":"`+kid+`"}`)) + "." +
			base64.RawURLEncoding.EncodeToString([]byte(claims(nil))) + ".", false, true},
		{"padded base64", strings.Replace(good, ".", "=.", 1), false, true},
		{"four parts", good + ".x", false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := s.parse(context.Background(), tc.token)
			if got := err == nil; got != tc.ok {
				t.Fatalf("parse accepted=%v, want %v (%v)", got, tc.ok, err)
			}
			if tc.profile {
				return
			}
			_, jerr := jwt.ParseString(tc.token, jwt.WithKey(jwa.EdDSA(), key.Public()),
				jwt.WithIssuer(s.cfg.Issuer), jwt.WithAudience(s.cfg.Audience), jwt.WithAcceptableSkew(clockSkew),
				jwt.WithRequiredClaim("exp"), jwt.WithRequiredClaim("iat"), jwt.WithRequiredClaim("jti"), jwt.WithRequiredClaim("sub"),
				jwt.WithClock(jwt.ClockFunc(s.now)))
			if (jerr == nil) != tc.ok {
				t.Fatalf("jwx accepted=%v, Atrium accepted=%v: the verifiers disagree (%v)", jerr == nil, tc.ok, jerr)
			}
		})
	}
}

// TestParseRemembersOnlyVerifiedTokens: a token verified once is accepted
// again without its signature being checked, but only its exact bytes:
// expiry is still enforced, and a token differing in any byte is verified
// afresh.
func TestParseRemembersOnlyVerifiedTokens(t *testing.T) {
	s := newTestService(t)
	now := s.now()
	token, _, _, err := s.issue(tokenSpec{kind: "user", subject: "0193a000-0000-7000-8000-000000000001", tenant: "t", gen: 1})
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if _, err := s.parse(context.Background(), token); err != nil {
			t.Fatalf("a good token refused: %v", err)
		}
	}
	if _, ok := s.verified.get(token); !ok {
		t.Fatal("a verified token was not remembered")
	}
	tampered := token[:len(token)-2] + map[bool]string{true: "AA", false: "AB"}[!strings.HasSuffix(token, "AA")]
	if _, err := s.parse(context.Background(), tampered); err == nil {
		t.Fatal("a token with another signature was accepted")
	}
	s.now = func() time.Time { return now.Add(24 * time.Hour) }
	if _, err := s.parse(context.Background(), token); err == nil {
		t.Fatal("a remembered token was accepted after it expired")
	}
}

package auth

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"math"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/lestrrat-go/jwx/v3/jwa"
	"github.com/lestrrat-go/jwx/v3/jws"
	"github.com/lestrrat-go/jwx/v3/jwt"

	"github.com/atriumhq/atrium/platform/errs"
	"github.com/atriumhq/atrium/platform/principal"
)

// Access tokens follow the JWT profile for OAuth 2.0 access tokens (RFC
// 9068): typ at+jwt, iss, aud, sub, client_id, jti, iat, exp, plus
//
//	kind    "user" or "terminal"
//	tenant  the tenant id ("" for platform administrators)
//	sid     the login session (users)
//	gen     the subject's token generation (see revocations)
//	roles   the roles at issue time (informational: permissions are
//	        resolved per request, so role changes apply at once)
const (
	maxTokenBytes = 4096
	clockSkew     = 30 * time.Second
	// terminalPermissions are what a POS terminal may do.
	terminalRole = "terminal"
)

var terminalPermissions = []string{"payments:create", "payments:read"}

// TokenResponse is the OAuth 2.0 token response (RFC 6749 §5.1).
type TokenResponse struct {
	AccessToken  string `json:"access_token"`
	TokenType    string `json:"token_type"`
	ExpiresIn    int    `json:"expires_in"`
	RefreshToken string `json:"refresh_token,omitempty"`
	Scope        string `json:"scope,omitempty"`
}

type tokenSpec struct {
	kind                     principal.Kind
	subject, tenant, session string
	gen                      int64
	roles                    []string
}

// issue signs an access token.
func (s *Service) issue(spec tokenSpec) (token, jti string, exp time.Time, err error) {
	now := s.now()
	exp = now.Add(s.cfg.AccessTTL)
	jti = uuid.Must(uuid.NewV7()).String()
	b := jwt.NewBuilder().Issuer(s.cfg.Issuer).Audience([]string{s.cfg.Audience}).Subject(spec.subject).
		JwtID(jti).IssuedAt(now).NotBefore(now).Expiration(exp).
		Claim("client_id", spec.subject).Claim("kind", string(spec.kind)).Claim("tenant", spec.tenant).
		Claim("gen", spec.gen).Claim("roles", spec.roles)
	if spec.session != "" {
		b = b.Claim("sid", spec.session)
	}
	t, err := b.Build()
	if err != nil {
		return "", "", time.Time{}, err
	}
	ks := s.keys.set.Load()
	h := jws.NewHeaders()
	_ = h.Set(jws.KeyIDKey, ks.signKID)
	_ = h.Set(jws.TypeKey, "at+jwt")
	signed, err := jwt.Sign(t, jwt.WithKey(jwa.EdDSA(), ks.sign, jws.WithProtectedHeaders(h)))
	if err != nil {
		return "", "", time.Time{}, err
	}
	return string(signed), jti, exp, nil
}

// claims are the parts of a verified access token the edge uses.
type claims struct {
	kind                          principal.Kind
	subject, tenant, session, jti string
	gen                           int64
	roles                         []string
	iat, exp                      time.Time
}

var errBadToken = errs.E(errs.Unauthenticated, "the access token is invalid, expired or revoked")

// b64 is strict base64url without padding, as JWS compact serialisation
// requires (RFC 7515 §2): no padding, no stray bits.
var b64 = base64.RawURLEncoding.Strict()

// jwsHeader is the protected header of an access token. Nothing else in
// the header is read: jku, x5u, jwk and friends are ignored by construction.
type jwsHeader struct {
	Alg  string   `json:"alg"`
	Typ  string   `json:"typ"`
	Kid  string   `json:"kid"`
	Crit []string `json:"crit"`
}

// tokenClaims are the claims of an access token. Pointers mark the claims
// that must be present.
type tokenClaims struct {
	Iss    string          `json:"iss"`
	Aud    json.RawMessage `json:"aud"`
	Sub    *string         `json:"sub"`
	Jti    *string         `json:"jti"`
	Kind   *string         `json:"kind"`
	Tenant *string         `json:"tenant"`
	Sid    string          `json:"sid"`
	Gen    *int64          `json:"gen"`
	Roles  []string        `json:"roles"`
	Iat    *float64        `json:"iat"`
	Exp    *float64        `json:"exp"`
	Nbf    *float64        `json:"nbf"`
}

// parse verifies an access token and returns its claims; it does not
// check revocation. Atrium verifies exactly one token profile — compact
// JWS, typ at+jwt, alg EdDSA, a kid among the published keys, no crit —
// so it checks that profile directly instead of through jwx's general
// JWT parser, which cost twice the signature check itself (see
// BenchmarkEdgeAuth). jwx still signs the tokens and serves the JWKS, and
// the tests hold this verifier to jwx's verdicts (TestParseAgreesWithJWX).
func (s *Service) parse(ctx context.Context, raw string) (*claims, error) {
	if raw == "" || len(raw) > maxTokenBytes {
		return nil, errBadToken
	}
	h64, rest, ok1 := strings.Cut(raw, ".")
	p64, sig64, ok2 := strings.Cut(rest, ".")
	if !ok1 || !ok2 || strings.Contains(sig64, ".") {
		return nil, errBadToken
	}
	var hdr jwsHeader
	hb, err := b64.DecodeString(h64)
	if err != nil || json.Unmarshal(hb, &hdr) != nil {
		return nil, errBadToken
	}
	if hdr.Typ != "at+jwt" || hdr.Alg != keyAlg || hdr.Kid == "" || hdr.Crit != nil {
		return nil, errBadToken
	}
	key, ok := s.keys.lookup(ctx, hdr.Kid)
	if !ok {
		return nil, errBadToken
	}
	// A token whose exact bytes were verified before skips the signature
	// check (the costliest step of every authenticated request); its key
	// must still be known and its claims are validated again below.
	if tc, ok := s.verified.get(raw); ok {
		return s.validate(tc)
	}
	sig, err := b64.DecodeString(sig64)
	if err != nil || len(sig) != ed25519.SignatureSize || !ed25519.Verify(key, []byte(raw[:len(h64)+1+len(p64)]), sig) {
		return nil, errBadToken
	}
	var tc tokenClaims
	pb, err := b64.DecodeString(p64)
	if err != nil || json.Unmarshal(pb, &tc) != nil {
		return nil, errBadToken
	}
	c, err := s.validate(&tc)
	if err == nil {
		s.verified.put(raw, &tc)
	}
	return c, err
}

// verifiedTokens remembers the claims of tokens whose signature verified,
// by their exact bytes, so that a client's next requests with the same
// token skip the Ed25519 verification. Bounded: when full it starts afresh.
// Revocation, key removal and expiry are still checked on every request.
type verifiedTokens struct {
	mu sync.RWMutex
	m  map[string]*tokenClaims
}

const maxVerifiedTokens = 50_000

func (v *verifiedTokens) get(raw string) (*tokenClaims, bool) {
	v.mu.RLock()
	defer v.mu.RUnlock()
	tc, ok := v.m[raw]
	return tc, ok
}

func (v *verifiedTokens) put(raw string, tc *tokenClaims) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.m == nil || len(v.m) >= maxVerifiedTokens {
		v.m = make(map[string]*tokenClaims, 1024)
	}
	v.m[raw] = tc
}

// validate checks the claims of a correctly signed token: issuer,
// audience, the required claims, and the times with clockSkew of leeway
// (exp in the future, nbf and iat not in the future).
func (s *Service) validate(tc *tokenClaims) (*claims, error) {
	if tc.Iss != s.cfg.Issuer || !hasAudience(tc.Aud, s.cfg.Audience) ||
		tc.Sub == nil || tc.Jti == nil || tc.Kind == nil || tc.Tenant == nil || tc.Gen == nil || tc.Iat == nil || tc.Exp == nil {
		return nil, errBadToken
	}
	now := s.now()
	exp, iat := unixTime(*tc.Exp), unixTime(*tc.Iat)
	if !now.Before(exp.Add(clockSkew)) || iat.After(now.Add(clockSkew)) {
		return nil, errBadToken
	}
	if tc.Nbf != nil && unixTime(*tc.Nbf).After(now.Add(clockSkew)) {
		return nil, errBadToken
	}
	c := &claims{kind: principal.Kind(*tc.Kind), subject: *tc.Sub, tenant: *tc.Tenant, session: tc.Sid, jti: *tc.Jti,
		gen: *tc.Gen, roles: tc.Roles, iat: iat, exp: exp}
	if (c.kind != principal.User && c.kind != principal.Terminal) || c.subject == "" || c.jti == "" {
		return nil, errBadToken
	}
	return c, nil
}

// hasAudience reports whether aud (a string or an array of strings)
// names want.
func hasAudience(aud json.RawMessage, want string) bool {
	var one string
	if json.Unmarshal(aud, &one) == nil {
		return one == want
	}
	var many []string
	return json.Unmarshal(aud, &many) == nil && slices.Contains(many, want)
}

func unixTime(f float64) time.Time {
	sec, frac := math.Modf(f)
	return time.Unix(int64(sec), int64(frac*1e9))
}

// Authenticate resolves a bearer token (or the admin UI's session cookie)
// to a principal, locally: the signature is checked against in-memory keys
// and revocation against in-memory state, with no network round trip on the
// common path (a user's permissions come from the in-process cache). A
// request without credentials passes on anonymous; routes declare what they
// need with principal.Require. A request with bad credentials is refused.
func (s *Service) Authenticate(onErr func(http.ResponseWriter, *http.Request, error)) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			raw, fromCookie := credentials(r)
			if raw == "" {
				next.ServeHTTP(w, r)
				return
			}
			if fromCookie && !safeMethod(r.Method) && !checkCSRF(r) {
				onErr(w, r, errs.E(errs.Forbidden, "missing or wrong CSRF token"))
				return
			}
			p, err := s.principalFor(r.Context(), raw)
			if err != nil {
				if fromCookie {
					// A stale UI cookie makes the request anonymous: the
					// UI then sends the browser to the login page.
					clearCookie(w, accessCookie, s.sec)
					next.ServeHTTP(w, r)
					return
				}
				w.Header().Set("WWW-Authenticate", `Bearer error="invalid_token"`)
				onErr(w, r, err)
				return
			}
			next.ServeHTTP(w, r.WithContext(principal.With(r.Context(), p)))
		})
	}
}

// credentials returns the bearer token of the request, or the UI cookie.
// Another Authorization scheme is not ours to judge: the token endpoint
// reads HTTP Basic client credentials itself, and elsewhere the request is
// anonymous, which routes that need a principal refuse.
func credentials(r *http.Request) (token string, fromCookie bool) {
	if h := r.Header.Get("Authorization"); h != "" {
		scheme, tok, _ := strings.Cut(h, " ")
		if !strings.EqualFold(scheme, "Bearer") {
			return "", false
		}
		return strings.TrimSpace(tok), false
	}
	if c, err := r.Cookie(accessCookie); err == nil {
		return c.Value, true
	}
	return "", false
}

// principalFor verifies a token and builds the principal.
func (s *Service) principalFor(ctx context.Context, raw string) (*principal.Principal, error) {
	c, err := s.parse(ctx, raw)
	if err != nil {
		return nil, err
	}
	if s.revs.revoked(c.jti, c.session, string(c.kind)+":"+c.subject, c.gen) {
		return nil, errBadToken
	}
	if c.tenant != "" && s.tenantActive(ctx, c.tenant) != nil {
		return nil, errBadToken
	}
	p := &principal.Principal{Kind: c.kind, ID: c.subject, TenantID: c.tenant, SessionID: c.session, TokenID: c.jti}
	if c.kind == principal.Terminal {
		p.Roles, p.Permissions = []string{terminalRole}, terminalPermissions
		return p, nil
	}
	if p.Roles, p.Permissions, err = s.userPermissions(scopeFor(ctx, c.tenant), c.subject); err != nil {
		return nil, errs.Wrap(errs.Unavailable, err, "permissions are temporarily unavailable")
	}
	return p, nil
}

// newOpaque returns a random 256-bit opaque token and its SHA-256 hash.
func newOpaque() (token string, hash []byte) {
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	token = base64.RawURLEncoding.EncodeToString(b)
	return token, hashOpaque(token)
}

func hashOpaque(token string) []byte {
	h := sha256.Sum256([]byte(token))
	return h[:]
}

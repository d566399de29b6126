package auth

import (
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/atriumhq/atrium/platform/errs"
	"github.com/atriumhq/atrium/platform/httpx"
	"github.com/atriumhq/atrium/platform/principal"
)

// RegisterPublic adds the OAuth 2.0 and discovery endpoints (/oauth2/*,
// /.well-known/*) to the root router.
func (s *Service) RegisterPublic(r chi.Router) {
	h := httpx.Adapter{Log: s.log}
	r.Post("/oauth2/token", h.H(s.handleToken))
	r.Post("/oauth2/revoke", h.H(s.handleRevoke))
	r.With(principal.Require(h.Error)).Post("/oauth2/introspect", h.H(s.handleIntrospect))
	r.Get("/.well-known/jwks.json", s.handleJWKS)
	r.Get("/.well-known/openid-configuration", h.H(s.handleDiscovery))
}

// Routes are the auth API, mounted under /api/v1.
func (s *Service) Routes() http.Handler {
	h := httpx.Adapter{Log: s.log}
	need := func(perms ...string) func(http.Handler) http.Handler { return principal.Require(h.Error, perms...) }
	r := chi.NewRouter()
	r.Post("/auth/login", h.H(s.handleLogin))
	r.With(need()).Post("/auth/logout", h.H(s.handleLogout))
	r.With(need()).Post("/auth/logout-all", h.H(s.handleLogoutAll))
	r.With(need()).Get("/me", h.H(s.handleMe))
	r.With(need("auth:keys")).Get("/auth/keys", h.H(s.handleKeys))
	r.With(need("auth:keys")).Post("/auth/keys/rotate", h.H(s.handleRotate))
	r.With(need("users:read")).Get("/users", h.H(s.handleListUsers))
	r.With(need("users:manage")).Post("/users", h.H(s.handleCreateUser))
	r.With(need("users:read")).Get("/users/{id}", h.H(s.handleGetUser))
	r.With(need("users:manage")).Post("/users/{id}/status", h.H(s.handleUserStatus))
	r.With(need()).Post("/users/{id}/password", h.H(s.handlePassword))
	r.With(need("users:manage")).Put("/users/{id}/roles", h.H(s.handleUserRoles))
	r.With(need()).Get("/users/{id}/sessions", h.H(s.handleSessions))
	r.With(need()).Delete("/sessions/{id}", h.H(s.handleRevokeSession))
	r.With(need("terminals:read")).Get("/terminals", h.H(s.handleListTerminals))
	r.With(need("terminals:manage")).Post("/terminals", h.H(s.handleCreateTerminal))
	r.With(need("terminals:manage")).Post("/terminals/{id}/status", h.H(s.handleTerminalStatus))
	r.With(need("users:read")).Get("/roles", h.H(s.handleListRoles))
	r.With(need("roles:manage")).Post("/roles", h.H(s.handleCreateRole))
	r.With(need("audit:read")).Get("/audit", h.H(s.handleAudit))
	return r
}

// oauthError decorates a problem with the RFC 6749 error code, so OAuth
// clients find the member they expect.
func oauthError(err error, code string) error {
	e := errs.As(err)
	if e.Code == errs.Internal || e.Code == errs.Unavailable {
		return err
	}
	out := *e
	if code == "invalid_grant" && (out.Code == errs.Unauthenticated || out.Code == errs.Conflict) {
		out.Code = errs.Invalid // RFC 6749 §5.2: a bad grant is a 400
	}
	out.Extra = map[string]any{"error": code, "error_description": e.Message}
	for k, v := range e.Extra {
		out.Extra[k] = v
	}
	return &out
}

func (s *Service) handleToken(w http.ResponseWriter, r *http.Request) error {
	if err := r.ParseForm(); err != nil {
		return oauthError(errs.E(errs.Invalid, "body must be application/x-www-form-urlencoded"), "invalid_request")
	}
	var (
		t   *TokenResponse
		err error
	)
	switch gt := r.PostForm.Get("grant_type"); gt {
	case "client_credentials":
		id, secret, ok := r.BasicAuth()
		if !ok {
			id, secret = r.PostForm.Get("client_id"), r.PostForm.Get("client_secret")
		}
		if id == "" || secret == "" {
			w.Header().Set("WWW-Authenticate", `Basic realm="atrium"`)
			return oauthError(errs.E(errs.Unauthenticated, "client credentials are required (HTTP Basic)"), "invalid_client")
		}
		if t, err = s.ClientCredentials(r.Context(), id, secret); err != nil {
			return oauthError(err, "invalid_client")
		}
	case "refresh_token":
		rt := r.PostForm.Get("refresh_token")
		if rt == "" {
			return oauthError(errs.Field("refresh_token", "is required"), "invalid_request")
		}
		if t, err = s.Refresh(r.Context(), rt); err != nil {
			return oauthError(err, "invalid_grant")
		}
	case "":
		return oauthError(errs.Field("grant_type", "is required"), "invalid_request")
	default:
		return oauthError(errs.Field("grant_type", "must be client_credentials or refresh_token"), "unsupported_grant_type")
	}
	w.Header().Set("Pragma", "no-cache")
	httpx.JSON(w, http.StatusOK, t)
	return nil
}

func (s *Service) handleRevoke(w http.ResponseWriter, r *http.Request) error {
	if err := r.ParseForm(); err != nil || r.PostForm.Get("token") == "" {
		return oauthError(errs.Field("token", "is required"), "invalid_request")
	}
	if err := s.RevokeToken(r.Context(), r.PostForm.Get("token")); err != nil {
		return err
	}
	w.WriteHeader(http.StatusOK)
	return nil
}

func (s *Service) handleIntrospect(w http.ResponseWriter, r *http.Request) error {
	if err := r.ParseForm(); err != nil || r.PostForm.Get("token") == "" {
		return oauthError(errs.Field("token", "is required"), "invalid_request")
	}
	httpx.JSON(w, http.StatusOK, s.Introspect(r.Context(), r.PostForm.Get("token")))
	return nil
}

func (s *Service) handleJWKS(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/jwk-set+json")
	w.Header().Set("Cache-Control", "public, max-age=300")
	_, _ = w.Write(s.JWKS())
}

func (s *Service) handleDiscovery(w http.ResponseWriter, _ *http.Request) error {
	iss := strings.TrimSuffix(s.cfg.Issuer, "/")
	httpx.JSON(w, http.StatusOK, map[string]any{
		"issuer":                                iss,
		"jwks_uri":                              iss + "/.well-known/jwks.json",
		"token_endpoint":                        iss + "/oauth2/token",
		"revocation_endpoint":                   iss + "/oauth2/revoke",
		"introspection_endpoint":                iss + "/oauth2/introspect",
		"grant_types_supported":                 []string{"client_credentials", "refresh_token"},
		"token_endpoint_auth_methods_supported": []string{"client_secret_basic", "client_secret_post"},
		"id_token_signing_alg_values_supported": []string{keyAlg},
		"response_types_supported":              []string{"token"},
		"subject_types_supported":               []string{"public"},
	})
	return nil
}

type loginRequest struct {
	Email    string `json:"email" required:"true"`
	Password string `json:"password" required:"true"`
}

func (s *Service) handleLogin(w http.ResponseWriter, r *http.Request) error {
	var in loginRequest
	if err := httpx.Decode(r, &in); err != nil {
		return err
	}
	res, err := s.Login(r.Context(), in.Email, in.Password, r.UserAgent())
	if err != nil {
		return err
	}
	httpx.JSON(w, http.StatusOK, res)
	return nil
}

func (s *Service) handleLogout(w http.ResponseWriter, r *http.Request) error {
	if err := s.Logout(r.Context()); err != nil {
		return err
	}
	s.ClearSessionCookies(w)
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (s *Service) handleLogoutAll(w http.ResponseWriter, r *http.Request) error {
	if err := s.LogoutAll(r.Context()); err != nil {
		return err
	}
	s.ClearSessionCookies(w)
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// Me is the caller as GET /api/v1/me shows it.
type Me struct {
	Kind        principal.Kind `json:"kind"`
	User        *User          `json:"user,omitempty"`
	TerminalID  string         `json:"terminal_id,omitempty"`
	TenantID    string         `json:"tenant_id"`
	SessionID   string         `json:"session_id,omitempty"`
	Roles       []string       `json:"roles"`
	Permissions []string       `json:"permissions"`
}

// WhoAmI describes the caller.
func (s *Service) WhoAmI(r *http.Request) (*Me, error) {
	p := principal.From(r.Context())
	if p == nil {
		return nil, errs.E(errs.Unauthenticated, "authentication required")
	}
	me := &Me{Kind: p.Kind, TenantID: p.TenantID, SessionID: p.SessionID, Roles: p.Roles, Permissions: p.Permissions}
	if p.Kind == principal.Terminal {
		me.TerminalID = p.ID
		return me, nil
	}
	u, err := s.getUser(r.Context(), p.ID)
	if err != nil {
		return nil, err
	}
	me.User = u
	return me, nil
}

func (s *Service) getUserUnscoped(r *http.Request, id string) (*User, error) {
	return s.getUser(r.Context(), id)
}

func (s *Service) handleMe(w http.ResponseWriter, r *http.Request) error {
	me, err := s.WhoAmI(r)
	if err != nil {
		return err
	}
	httpx.JSON(w, http.StatusOK, me)
	return nil
}

func (s *Service) handleKeys(w http.ResponseWriter, r *http.Request) error {
	keys, err := s.Keys(r.Context())
	if err != nil {
		return err
	}
	httpx.JSON(w, http.StatusOK, map[string]any{"keys": keys})
	return nil
}

func (s *Service) handleRotate(w http.ResponseWriter, r *http.Request) error {
	if err := s.RotateKeys(r.Context()); err != nil {
		return err
	}
	return s.handleKeys(w, r)
}

func (s *Service) handleListUsers(w http.ResponseWriter, r *http.Request) error {
	users, err := s.ListUsers(r.Context())
	if err != nil {
		return err
	}
	httpx.JSON(w, http.StatusOK, map[string]any{"users": users})
	return nil
}

func (s *Service) handleCreateUser(w http.ResponseWriter, r *http.Request) error {
	var in NewUser
	if err := httpx.Decode(r, &in); err != nil {
		return err
	}
	u, err := s.CreateUser(r.Context(), in)
	if err != nil {
		return err
	}
	httpx.JSON(w, http.StatusCreated, u)
	return nil
}

func (s *Service) handleGetUser(w http.ResponseWriter, r *http.Request) error {
	u, err := s.GetUser(r.Context(), chi.URLParam(r, "id"))
	if err != nil {
		return err
	}
	httpx.JSON(w, http.StatusOK, u)
	return nil
}

type statusRequest struct {
	Status string `json:"status" required:"true"`
}

func (s *Service) handleUserStatus(w http.ResponseWriter, r *http.Request) error {
	var in statusRequest
	if err := httpx.Decode(r, &in); err != nil {
		return err
	}
	u, err := s.SetUserStatus(r.Context(), chi.URLParam(r, "id"), in.Status)
	if err != nil {
		return err
	}
	httpx.JSON(w, http.StatusOK, u)
	return nil
}

type passwordRequest struct {
	Password string `json:"password" required:"true"`
	// CurrentPassword is required when users change their own password.
	CurrentPassword string `json:"current_password"`
}

func (s *Service) handlePassword(w http.ResponseWriter, r *http.Request) error {
	var in passwordRequest
	if err := httpx.Decode(r, &in); err != nil {
		return err
	}
	if err := s.ResetPassword(r.Context(), chi.URLParam(r, "id"), in.Password, in.CurrentPassword); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

type rolesRequest struct {
	Roles []string `json:"roles" required:"true"`
}

func (s *Service) handleUserRoles(w http.ResponseWriter, r *http.Request) error {
	var in rolesRequest
	if err := httpx.Decode(r, &in); err != nil {
		return err
	}
	u, err := s.SetUserRoles(r.Context(), chi.URLParam(r, "id"), in.Roles)
	if err != nil {
		return err
	}
	httpx.JSON(w, http.StatusOK, u)
	return nil
}

func (s *Service) handleSessions(w http.ResponseWriter, r *http.Request) error {
	sess, err := s.Sessions(r.Context(), chi.URLParam(r, "id"))
	if err != nil {
		return err
	}
	httpx.JSON(w, http.StatusOK, map[string]any{"sessions": sess})
	return nil
}

func (s *Service) handleRevokeSession(w http.ResponseWriter, r *http.Request) error {
	if err := s.RevokeSession(r.Context(), chi.URLParam(r, "id")); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (s *Service) handleListTerminals(w http.ResponseWriter, r *http.Request) error {
	ts, err := s.ListTerminals(r.Context())
	if err != nil {
		return err
	}
	httpx.JSON(w, http.StatusOK, map[string]any{"terminals": ts})
	return nil
}

func (s *Service) handleCreateTerminal(w http.ResponseWriter, r *http.Request) error {
	var in NewTerminal
	if err := httpx.Decode(r, &in); err != nil {
		return err
	}
	t, err := s.CreateTerminal(r.Context(), in)
	if err != nil {
		return err
	}
	httpx.JSON(w, http.StatusCreated, t)
	return nil
}

func (s *Service) handleTerminalStatus(w http.ResponseWriter, r *http.Request) error {
	var in statusRequest
	if err := httpx.Decode(r, &in); err != nil {
		return err
	}
	t, err := s.SetTerminalStatus(r.Context(), chi.URLParam(r, "id"), in.Status)
	if err != nil {
		return err
	}
	httpx.JSON(w, http.StatusOK, t)
	return nil
}

func (s *Service) handleAudit(w http.ResponseWriter, r *http.Request) error {
	var before time.Time
	if v := r.URL.Query().Get("before"); v != "" {
		t, err := time.Parse(time.RFC3339Nano, v)
		if err != nil {
			return errs.Field("before", "must be an RFC 3339 time")
		}
		before = t
	}
	limit := 100
	if v := r.URL.Query().Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 500 {
			return errs.Field("limit", "must be an integer from 1 to 500")
		}
		limit = n
	}
	entries, err := s.Audit(r.Context(), before, limit)
	if err != nil {
		return err
	}
	httpx.JSON(w, http.StatusOK, map[string]any{"entries": entries})
	return nil
}

func (s *Service) handleListRoles(w http.ResponseWriter, r *http.Request) error {
	roles, err := s.ListRoles(r.Context())
	if err != nil {
		return err
	}
	httpx.JSON(w, http.StatusOK, map[string]any{"roles": roles})
	return nil
}

func (s *Service) handleCreateRole(w http.ResponseWriter, r *http.Request) error {
	var in NewRole
	if err := httpx.Decode(r, &in); err != nil {
		return err
	}
	role, err := s.CreateRole(r.Context(), in)
	if err != nil {
		return err
	}
	httpx.JSON(w, http.StatusCreated, role)
	return nil
}

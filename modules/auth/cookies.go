package auth

import (
	"crypto/subtle"
	"net/http"
	"time"
)

// The admin UI keeps its tokens in HttpOnly, SameSite=Strict cookies
// (Secure outside development): the access token for every request, the
// refresh token only for the UI's own paths. State-changing requests made
// with the cookie must also carry the CSRF token (double submit: a cookie
// the page echoes in a form field or the X-CSRF-Token header).
const (
	accessCookie  = "atrium_at"
	refreshCookie = "atrium_rt"
	csrfCookie    = "atrium_csrf"
	// CSRFField is the form field and CSRFHeader the header that carry the
	// CSRF token.
	CSRFField  = "csrf_token"
	CSRFHeader = "X-CSRF-Token"
)

func setCookie(w http.ResponseWriter, name, value, path string, maxAge time.Duration, secure bool) {
	http.SetCookie(w, &http.Cookie{Name: name, Value: value, Path: path, MaxAge: int(maxAge.Seconds()),
		HttpOnly: true, Secure: secure, SameSite: http.SameSiteStrictMode})
}

func clearCookie(w http.ResponseWriter, name string, secure bool) {
	path := "/"
	if name == refreshCookie {
		path = "/ui/"
	}
	http.SetCookie(w, &http.Cookie{Name: name, Value: "", Path: path, MaxAge: -1, HttpOnly: true, Secure: secure, SameSite: http.SameSiteStrictMode})
}

// SetSessionCookies stores a login's tokens in the UI cookies.
func (s *Service) SetSessionCookies(w http.ResponseWriter, t *TokenResponse) {
	setCookie(w, accessCookie, t.AccessToken, "/", s.cfg.AccessTTL, s.sec)
	if t.RefreshToken != "" {
		setCookie(w, refreshCookie, t.RefreshToken, "/ui/", s.cfg.SessionMax, s.sec)
	}
}

// ClearSessionCookies removes the UI cookies (logout).
func (s *Service) ClearSessionCookies(w http.ResponseWriter) {
	clearCookie(w, accessCookie, s.sec)
	clearCookie(w, refreshCookie, s.sec)
}

// RefreshFromCookie renews the UI session from its refresh cookie, setting
// fresh cookies. It returns the new access token, or "" when there is no
// usable refresh cookie. retry is set when another request of the same
// browser renewed the session a moment ago: the cookies are left alone and
// the request should be repeated, when the browser will have the new ones.
func (s *Service) RefreshFromCookie(w http.ResponseWriter, r *http.Request) (token string, retry bool) {
	c, err := r.Cookie(refreshCookie)
	if err != nil || c.Value == "" {
		return "", false
	}
	t, err := s.Refresh(r.Context(), c.Value)
	if err == ErrRefreshRace {
		return "", true
	}
	if err != nil {
		s.ClearSessionCookies(w)
		return "", false
	}
	s.SetSessionCookies(w, t)
	return t.AccessToken, false
}

// CSRFToken returns the request's CSRF token, setting the cookie when there
// is none yet. Pages render it into their forms.
func (s *Service) CSRFToken(w http.ResponseWriter, r *http.Request) string {
	if c, err := r.Cookie(csrfCookie); err == nil && len(c.Value) >= 32 {
		return c.Value
	}
	tok, _ := newOpaque()
	setCookie(w, csrfCookie, tok, "/", 0, s.sec)
	return tok
}

// checkCSRF reports whether an unsafe request carries the CSRF cookie's
// value in its form field or header.
func checkCSRF(r *http.Request) bool {
	c, err := r.Cookie(csrfCookie)
	if err != nil || len(c.Value) < 32 {
		return false
	}
	got := r.Header.Get(CSRFHeader)
	if got == "" {
		got = r.PostFormValue(CSRFField)
	}
	return subtle.ConstantTimeCompare([]byte(got), []byte(c.Value)) == 1
}

func safeMethod(m string) bool {
	return m == http.MethodGet || m == http.MethodHead || m == http.MethodOptions
}

// CheckCSRF reports whether an unsafe request carries the CSRF cookie's
// value in its form field or header. The admin UI checks it on every form
// post, the sign-in form included, which has no session cookie yet.
func CheckCSRF(r *http.Request) bool { return checkCSRF(r) }

// SecureCookies reports whether the UI's cookies are marked Secure (every
// environment but development), so the UI's own cookies match.
func (s *Service) SecureCookies() bool { return s.sec }

// RevokeRefreshCookie ends the UI session whose refresh cookie r carries,
// for a sign-out whose access cookie has already expired. Without a refresh
// cookie it does nothing.
func (s *Service) RevokeRefreshCookie(r *http.Request) error {
	c, err := r.Cookie(refreshCookie)
	if err != nil || c.Value == "" {
		return nil
	}
	return s.RevokeToken(r.Context(), c.Value)
}

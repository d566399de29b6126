package web

import (
	"net/http"
	"net/url"
	"path"
	"strings"
	"time"

	"github.com/atriumhq/atrium/modules/auth"
	"github.com/atriumhq/atrium/platform/errs"
	"github.com/atriumhq/atrium/platform/httpx"
	"github.com/atriumhq/atrium/platform/logging"
	"github.com/atriumhq/atrium/platform/principal"
)

// page is what the layout needs on every page: the chrome around the
// content.
type page struct {
	Title, Version, InstanceID, Env string
	// Parent, when set, is the page this one belongs to (a breadcrumb).
	Parent *navItem
	Nav    []navSection
	// Email is the signed-in user's; CSRF the token every form carries.
	Email, CSRF string
	Flash       *flash
}

type navItem struct {
	Label, Href string
	// Perm is the permission the page needs; without it the item is hidden.
	Perm string
	// TenantOnly hides the item from platform users, who belong to no tenant.
	TenantOnly bool
	// Members shows the item to every member of a tenant, whatever Perm.
	Members bool
	Active  bool
}

type navSection struct {
	Heading string
	Items   []navItem
}

// sections lists the places of the UI; modules still to come show as
// disabled.
var sections = []navSection{
	{Heading: "Platform", Items: []navItem{
		{Label: "Overview", Href: "/ui/overview", Perm: "cluster:read"},
		{Label: "Tenants", Href: "/ui/tenants", Perm: "tenants:manage"},
		{Label: "Quotas", Href: "/ui/quotas", TenantOnly: true},
		{Label: "Rate limits", Href: "/ui/rate-limits", Perm: "quotas:manage"},
		{Label: "Payments", Href: "/ui/payments", Perm: "payments:read"},
		{Label: "Merchants", Href: "/ui/merchants", Perm: "payments:read"},
		{Label: "Channels", Href: "/ui/channels", Perm: "channels:manage"},
		{Label: "GPUs", Href: "/ui/gpus", Perm: "cluster:read"},
		{Label: "Models", Href: "/ui/models", Perm: "gpu:read"},
		{Label: "Deployments", Href: "/ui/deployments", Perm: "gpu:read"},
	}},
	{Heading: "Access", Items: []navItem{
		{Label: "Users", Href: "/ui/users", Perm: "users:read"},
		{Label: "Terminals", Href: "/ui/terminals", Perm: "terminals:read"},
		{Label: "Audit log", Href: "/ui/audit", Perm: "audit:read"},
		{Label: "Settings", Href: "/ui/settings", Perm: "auth:keys"},
	}},
	// A tenant's members see their tenant's usage; platform administrators
	// (quotas:manage) every tenant's.
	{Heading: "Metering", Items: []navItem{
		{Label: "Usage", Href: "/ui/usage", Perm: "quotas:manage", Members: true},
	}},
}

// nav is the navigation as p may use it, with active marked.
func nav(p *principal.Principal, active string) []navSection {
	out := make([]navSection, 0, len(sections))
	for _, s := range sections {
		sec := navSection{Heading: s.Heading}
		for _, it := range s.Items {
			if it.Perm != "" && !p.Has(it.Perm) && !(it.Members && p != nil && p.TenantID != "") ||
				it.TenantOnly && (p == nil || p.TenantID == "") {
				continue
			}
			it.Active = it.Label == active
			sec.Items = append(sec.Items, it)
		}
		if len(sec.Items) > 0 {
			out = append(out, sec)
		}
	}
	return out
}

// page builds the chrome of a page for the signed-in user: it sets the
// CSRF cookie when there is none yet and consumes the flash message.
func (u *UI) page(w http.ResponseWriter, r *http.Request, title, active string) page {
	p := principal.From(r.Context())
	pg := page{Title: title, Version: u.d.Version, InstanceID: u.d.InstanceID, Env: u.d.Env,
		Nav: nav(p, active), CSRF: u.d.Auth.CSRFToken(w, r), Flash: u.takeFlash(w, r)}
	if me, err := u.d.Auth.WhoAmI(r); err == nil && me.User != nil {
		pg.Email = me.User.Email
	} else if p != nil {
		pg.Email = p.Subject()
	}
	return pg
}

// home sends the browser to the first page the user may open.
func (u *UI) home(w http.ResponseWriter, r *http.Request) {
	target := "/ui/overview" // the gate sends anonymous callers on to sign in
	if p := principal.From(r.Context()); p != nil {
		target = "/ui/sessions"
	first:
		for _, s := range nav(p, "") {
			for _, it := range s.Items {
				if it.Href != "" {
					target = it.Href
					break first
				}
			}
		}
	}
	http.Redirect(w, r, target, http.StatusFound)
}

// csrf refuses any unsafe request that does not carry the CSRF token. The
// authentication middleware already checks requests that carry a session
// cookie; this also covers the sign-in form and requests whose access
// cookie has expired, before anything (a refresh, a sign-in) happens.
func (u *UI) csrf(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead && !auth.CheckCSRF(r) {
			if r.URL.Path == "/ui/login" {
				u.loginForm(w, r, http.StatusForbidden, r.PostFormValue("email"), r.PostFormValue("next"),
					"This sign-in form has expired. Please try again.")
				return
			}
			u.fail(w, r, errs.E(errs.Forbidden, "the form has expired or did not come from this site; reload the page and try again"))
			return
		}
		next.ServeHTTP(w, r)
	})
}

// requireUser is the gate of every page but the sign-in page. A request
// without a principal whose refresh cookie is still good gets fresh cookies
// and is authenticated again in place, so an expired access token is
// invisible to the user; any other goes to the sign-in page.
func (u *UI) requireUser(next http.Handler) http.Handler {
	admit := func(w http.ResponseWriter, r *http.Request) {
		switch p := principal.From(r.Context()); {
		case p == nil:
			u.toLogin(w, r)
		case p.Kind != principal.User:
			u.fail(w, r, errs.E(errs.Forbidden, "the admin UI is for people; terminals use the API"))
		default:
			next.ServeHTTP(w, r)
		}
	}
	reauth := u.d.Auth.Authenticate(u.fail)(http.HandlerFunc(admit))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if principal.From(r.Context()) == nil {
			tok, retry := u.d.Auth.RefreshFromCookie(w, r)
			if tok != "" {
				r = r.Clone(r.Context())
				r.Header.Set("Authorization", "Bearer "+tok)
				reauth.ServeHTTP(w, r)
				return
			}
			if retry && (r.Method == http.MethodGet || r.Method == http.MethodHead) {
				// A concurrent request renewed the session: ask again,
				// with the cookies that request is setting.
				w.Header().Set("Retry-After", "1")
				http.Redirect(w, r, r.URL.RequestURI(), http.StatusSeeOther)
				return
			}
		}
		admit(w, r)
	})
}

// toLogin sends an anonymous request to the sign-in page, which returns it
// where it was going. An htmx fragment request gets HX-Redirect instead, so
// the whole page moves rather than the sign-in form being swapped into it.
func (u *UI) toLogin(w http.ResponseWriter, r *http.Request) {
	next := r.URL.RequestURI()
	if r.Header.Get("HX-Request") == "true" {
		next = "/"
		if cur, err := url.Parse(r.Header.Get("HX-Current-URL")); err == nil {
			next = cur.RequestURI()
		}
		w.Header().Set("HX-Redirect", loginURL(next))
		w.WriteHeader(http.StatusNoContent)
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		next = "/"
	}
	http.Redirect(w, r, loginURL(next), http.StatusSeeOther)
}

func loginURL(next string) string {
	if next = safeNext(next); next == "/" {
		return "/ui/login"
	}
	return "/ui/login?next=" + url.QueryEscape(next)
}

// safeNext keeps a post-sign-in destination on this site's UI, so the
// sign-in page cannot be used as an open redirect nor send the browser out
// of the UI with dot segments.
func safeNext(next string) string {
	if !strings.HasPrefix(next, "/") || strings.HasPrefix(next, "//") || strings.ContainsAny(next, "\\\r\n") {
		return "/"
	}
	u, err := url.Parse(next)
	if err != nil || u.Scheme != "" || u.Host != "" || u.User != nil {
		return "/"
	}
	clean := path.Clean(u.Path)
	if !strings.HasPrefix(clean, "/ui/") || clean == "/ui/login" {
		return "/"
	}
	out := &url.URL{Path: clean, RawQuery: u.RawQuery}
	return out.RequestURI()
}

type loginData struct {
	page
	Email, Next, Error string
}

// loginPage shows the sign-in form, or moves a signed-in user (or one whose
// refresh cookie is still good) straight on.
func (u *UI) loginPage(w http.ResponseWriter, r *http.Request) {
	next := safeNext(r.URL.Query().Get("next"))
	if principal.From(r.Context()) != nil {
		http.Redirect(w, r, next, http.StatusSeeOther)
		return
	}
	if tok, retry := u.d.Auth.RefreshFromCookie(w, r); tok != "" || retry {
		http.Redirect(w, r, next, http.StatusSeeOther)
		return
	}
	u.loginForm(w, r, http.StatusOK, "", next, "")
}

func (u *UI) loginForm(w http.ResponseWriter, r *http.Request, status int, email, next, problem string) {
	d := loginData{page: page{Title: "Sign in", Version: u.d.Version, Env: u.d.Env, CSRF: u.d.Auth.CSRFToken(w, r),
		Flash: u.takeFlash(w, r)}, Email: email, Next: safeNext(next), Error: problem}
	u.render(w, r, status, "login", "login", d)
}

// login checks the credentials (the CSRF middleware has checked the token)
// and keeps the tokens in HttpOnly, SameSite=Strict cookies.
func (u *UI) login(w http.ResponseWriter, r *http.Request) {
	email, next := strings.TrimSpace(r.PostFormValue("email")), r.PostFormValue("next")
	res, err := u.d.Auth.Login(r.Context(), email, r.PostFormValue("password"), r.UserAgent())
	if err != nil {
		e := errs.As(err)
		msg := sentence(e.Message)
		if e.Code == errs.Internal || e.Code == errs.Unavailable {
			u.d.Log.Error().Ctx(r.Context()).Err(err).Msg("sign-in failed")
			msg = "Signing in is not possible at the moment. Please try again shortly."
		}
		u.loginForm(w, r, httpx.Status(e.Code), email, next, msg)
		return
	}
	u.d.Auth.SetSessionCookies(w, &res.TokenResponse)
	http.Redirect(w, r, safeNext(next), http.StatusSeeOther)
}

// logout ends the session (also when only the refresh cookie is left) and
// clears the cookies.
func (u *UI) logout(w http.ResponseWriter, r *http.Request) {
	var err error
	if principal.From(r.Context()) != nil {
		err = u.d.Auth.Logout(r.Context())
	} else {
		err = u.d.Auth.RevokeRefreshCookie(r)
	}
	if err != nil {
		u.d.Log.Warn().Ctx(r.Context()).Err(err).Msg("sign-out could not end the session")
	}
	u.d.Auth.ClearSessionCookies(w)
	u.setFlash(w, "ok", "You have signed out.")
	http.Redirect(w, r, "/ui/login", http.StatusSeeOther)
}

// A flash is a one-line message shown on the next page after a redirect
// (post/redirect/get), carried in a short-lived cookie.
type flash struct {
	Kind, Text string // Kind is "ok" or "bad"
}

const (
	flashCookie  = "atrium_flash"
	revealCookie = "atrium_reveal"
)

func (u *UI) setCookie(w http.ResponseWriter, name, value, path string, maxAge time.Duration) {
	http.SetCookie(w, &http.Cookie{Name: name, Value: value, Path: path, MaxAge: int(maxAge.Seconds()),
		HttpOnly: true, Secure: u.d.Auth.SecureCookies(), SameSite: http.SameSiteStrictMode})
}

func (u *UI) setFlash(w http.ResponseWriter, kind, text string) {
	u.setCookie(w, flashCookie, kind+":"+url.QueryEscape(text), "/ui/", time.Minute)
}

func (u *UI) takeFlash(w http.ResponseWriter, r *http.Request) *flash {
	c, err := r.Cookie(flashCookie)
	if err != nil {
		return nil
	}
	u.setCookie(w, flashCookie, "", "/ui/", -time.Second)
	kind, raw, _ := strings.Cut(c.Value, ":")
	text, err := url.QueryUnescape(raw)
	if err != nil || text == "" || (kind != "ok" && kind != "bad") {
		return nil
	}
	return &flash{Kind: kind, Text: text}
}

// done finishes a successful form post: a flash message and a redirect.
func (u *UI) done(w http.ResponseWriter, r *http.Request, to, message string) {
	u.setFlash(w, "ok", message)
	http.Redirect(w, r, to, http.StatusSeeOther)
}

type errorData struct {
	page
	Heading, Message, RequestID string
}

// fail shows an error as a page, with the status platform/httpx maps its
// code to. An unauthenticated error sends the browser to sign in.
func (u *UI) fail(w http.ResponseWriter, r *http.Request, err error) {
	e := errs.As(err)
	d := errorData{Message: sentence(e.Message)}
	switch e.Code {
	case errs.Unauthenticated:
		u.toLogin(w, r)
		return
	case errs.Forbidden:
		d.Heading = "Access denied"
		if perm, ok := strings.CutPrefix(e.Message, "missing permission "); ok {
			d.Message = "Your roles do not include the " + perm + " permission that this page needs. Ask an administrator if you need access."
		}
	case errs.NotFound:
		d.Heading = "Not found"
	case errs.Invalid, errs.Conflict:
		d.Heading = "That did not work"
	case errs.QuotaExceeded:
		d.Heading = "Quota exceeded"
	default:
		u.d.Log.Error().Ctx(r.Context()).Err(err).Str("path", r.URL.Path).Msg("page failed")
		d.Heading, d.Message = "Something went wrong", "The error has been logged. Please try again in a moment."
		d.RequestID = logging.RequestID(r.Context())
	}
	if r.Header.Get("HX-Request") == "true" {
		w.WriteHeader(httpx.StatusOf(e))
		return
	}
	d.page = u.page(w, r, d.Heading, "")
	u.render(w, r, httpx.StatusOf(e), "error", "layout", d)
}

// sentence turns a caller-safe error message into a sentence.
func sentence(s string) string {
	if s == "" {
		return ""
	}
	s = strings.ToUpper(s[:1]) + s[1:]
	if !strings.HasSuffix(s, ".") {
		s += "."
	}
	return s
}

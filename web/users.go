package web

import (
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/atriumhq/atrium/modules/auth"
	"github.com/atriumhq/atrium/modules/tenant"
	"github.com/atriumhq/atrium/platform/errs"
	"github.com/atriumhq/atrium/platform/httpx"
	"github.com/atriumhq/atrium/platform/principal"
)

// roleOption is a role as a checkbox of a form.
type roleOption struct {
	Name, Description string
	Checked           bool
}

// grantableRoles are the roles the caller may give a user of tenant (""
// for a platform user): the built-in roles, platform_admin only to platform
// users and only by platform administrators, and the tenant's own roles.
func (u *UI) grantableRoles(r *http.Request, tenant string, checked []string) ([]roleOption, error) {
	roles, err := u.d.Auth.ListRoles(r.Context())
	if err != nil {
		return nil, err
	}
	p := principal.From(r.Context())
	var out []roleOption
	for _, role := range roles {
		switch {
		case role.Name == "platform_admin" && (tenant != "" || !p.Has("tenants:manage")):
			continue
		case !role.Builtin && (role.TenantID == nil || *role.TenantID != tenant):
			continue
		}
		out = append(out, roleOption{Name: role.Name, Description: role.Description, Checked: slices.Contains(checked, role.Name)})
	}
	return out, nil
}

type usersData struct {
	page
	Users []auth.User
	Me    string
	// The create form: shown with users:manage; Platform callers may name
	// a tenant.
	CanManage, Platform bool
	Form                auth.NewUser
	Roles               []roleOption
	Error               string
	// Tenants are offered as a choice to platform callers who may list them.
	Tenants []tenant.Tenant
}

func (u *UI) users(w http.ResponseWriter, r *http.Request) {
	u.usersPage(w, r, http.StatusOK, auth.NewUser{Roles: []string{"viewer"}}, "")
}

func (u *UI) usersPage(w http.ResponseWriter, r *http.Request, status int, form auth.NewUser, problem string) {
	users, err := u.d.Auth.ListUsers(r.Context())
	if err != nil {
		u.fail(w, r, err)
		return
	}
	p := principal.From(r.Context())
	d := usersData{Users: users, Me: p.ID, CanManage: p.Has("users:manage"), Platform: p.TenantID == "",
		Form: form, Error: problem}
	if d.CanManage {
		if d.Roles, err = u.grantableRoles(r, p.TenantID, form.Roles); err != nil {
			u.fail(w, r, err)
			return
		}
		if d.Tenants, err = u.tenantChoices(r); err != nil {
			u.fail(w, r, err)
			return
		}
	}
	d.page = u.page(w, r, "Users", "Users")
	u.render(w, r, status, "users", "layout", d)
}

func (u *UI) createUser(w http.ResponseWriter, r *http.Request) {
	in := auth.NewUser{Email: strings.TrimSpace(r.PostFormValue("email")), DisplayName: r.PostFormValue("display_name"),
		Password: r.PostFormValue("password"), TenantID: strings.TrimSpace(r.PostFormValue("tenant_id")), Roles: r.PostForm["roles"]}
	nu, err := u.d.Auth.CreateUser(r.Context(), in)
	if err != nil {
		if formProblem(err) {
			in.Password = ""
			u.usersPage(w, r, httpx.StatusOf(err), in, problemText(err))
			return
		}
		u.fail(w, r, err)
		return
	}
	u.done(w, r, "/ui/users/"+nu.ID, "User "+nu.Email+" created.")
}

type userData struct {
	page
	User            *auth.User
	Roles           []roleOption
	CanManage, Self bool
}

func (u *UI) user(w http.ResponseWriter, r *http.Request) {
	usr, err := u.d.Auth.GetUser(r.Context(), chi.URLParam(r, "id"))
	if err != nil {
		u.fail(w, r, err)
		return
	}
	p := principal.From(r.Context())
	d := userData{User: usr, CanManage: p.Has("users:manage"), Self: p.ID == usr.ID}
	if d.CanManage {
		tenant := ""
		if usr.TenantID != nil {
			tenant = *usr.TenantID
		}
		if d.Roles, err = u.grantableRoles(r, tenant, usr.Roles); err != nil {
			u.fail(w, r, err)
			return
		}
	}
	d.page = u.page(w, r, usr.Email, "Users")
	d.Parent = &navItem{Label: "Users", Href: "/ui/users"}
	u.render(w, r, http.StatusOK, "user", "layout", d)
}

// formFailed finishes a form post that failed: what the user can fix comes
// back as a message on the page they came from, anything else as an error
// page.
func (u *UI) formFailed(w http.ResponseWriter, r *http.Request, back string, err error) {
	if formProblem(err) {
		u.setFlash(w, "bad", problemText(err))
		http.Redirect(w, r, back, http.StatusSeeOther)
		return
	}
	u.fail(w, r, err)
}

// formProblem reports whether err is the user's to fix on the form
// (invalid, conflict, over quota), shown with the form rather than as an
// error page.
func formProblem(err error) bool {
	switch errs.CodeOf(err) {
	case errs.Invalid, errs.Conflict, errs.QuotaExceeded:
		return true
	}
	return false
}

// problemText is an invalid or conflict error as a sentence for a form.
func problemText(err error) string {
	e := errs.As(err)
	if len(e.Fields) == 1 {
		f := e.Fields[0]
		return sentence(strings.ReplaceAll(f.Field, "_", " ") + " " + f.Message)
	}
	return sentence(e.Message)
}

func (u *UI) setUserStatus(w http.ResponseWriter, r *http.Request) {
	id := chi.URLParam(r, "id")
	usr, err := u.d.Auth.SetUserStatus(r.Context(), id, r.PostFormValue("status"))
	if err != nil {
		u.formFailed(w, r, "/ui/users/"+id, err)
		return
	}
	verb := "enabled"
	if usr.Status == "disabled" {
		verb = "disabled; their sessions have ended"
	}
	u.done(w, r, "/ui/users/"+id, usr.Email+" is "+verb+".")
}

func (u *UI) resetPassword(w http.ResponseWriter, r *http.Request) {
	id := chi.URLParam(r, "id")
	back := "/ui/users/" + id
	pw := r.PostFormValue("password")
	if pw != r.PostFormValue("confirm") {
		u.formFailed(w, r, back, errs.Field("confirm", "does not match the new password"))
		return
	}
	if err := u.d.Auth.ResetPassword(r.Context(), id, pw, r.PostFormValue("current_password")); err != nil {
		u.formFailed(w, r, back, err)
		return
	}
	if principal.From(r.Context()).ID == id {
		// A new password ends every session, this one included.
		u.d.Auth.ClearSessionCookies(w)
		u.done(w, r, "/ui/login", "Your password has been changed. Sign in with the new one.")
		return
	}
	u.done(w, r, back, "Password reset. Every session of the user has ended.")
}

func (u *UI) setUserRoles(w http.ResponseWriter, r *http.Request) {
	id := chi.URLParam(r, "id")
	usr, err := u.d.Auth.SetUserRoles(r.Context(), id, r.PostForm["roles"])
	if err != nil {
		u.formFailed(w, r, "/ui/users/"+id, err)
		return
	}
	u.done(w, r, "/ui/users/"+id, "Roles of "+usr.Email+" saved: "+strings.Join(usr.Roles, ", ")+".")
}

type sessionRow struct {
	auth.Session
	State, Client string
}

type sessionsData struct {
	page
	User     *auth.User
	Mine     bool
	Sessions []sessionRow
	Back     string
	Now      time.Time
}

func (u *UI) mySessions(w http.ResponseWriter, r *http.Request) {
	u.sessionsPage(w, r, principal.From(r.Context()).ID, "/ui/sessions")
}

func (u *UI) userSessions(w http.ResponseWriter, r *http.Request) {
	id := chi.URLParam(r, "id")
	if id == principal.From(r.Context()).ID {
		http.Redirect(w, r, "/ui/sessions", http.StatusFound)
		return
	}
	u.sessionsPage(w, r, id, "/ui/users/"+id+"/sessions")
}

func (u *UI) sessionsPage(w http.ResponseWriter, r *http.Request, userID, back string) {
	sessions, err := u.d.Auth.Sessions(r.Context(), userID)
	if err != nil {
		u.fail(w, r, err)
		return
	}
	p := principal.From(r.Context())
	d := sessionsData{Mine: userID == p.ID, Back: back, Now: u.d.Now().UTC()}
	if d.User, err = u.d.Auth.GetUser(r.Context(), userID); err != nil && !d.Mine {
		u.fail(w, r, err)
		return
	}
	for _, s := range sessions {
		row := sessionRow{Session: s, State: "active", Client: clientName(s.UserAgent)}
		switch {
		case s.RevokedAt != nil:
			row.State = "revoked"
		case !d.Now.Before(s.ExpiresAt):
			row.State = "expired"
		}
		d.Sessions = append(d.Sessions, row)
	}
	title, active := "My sessions", ""
	if !d.Mine {
		title, active = "Sessions of "+d.User.Email, "Users"
	}
	d.page = u.page(w, r, title, active)
	if !d.Mine {
		d.Parent = &navItem{Label: d.User.Email, Href: "/ui/users/" + userID}
	}
	u.render(w, r, http.StatusOK, "sessions", "layout", d)
}

func (u *UI) revokeSession(w http.ResponseWriter, r *http.Request) {
	back := safeNext(r.PostFormValue("back"))
	if err := u.d.Auth.RevokeSession(r.Context(), chi.URLParam(r, "id")); err != nil {
		u.formFailed(w, r, back, err)
		return
	}
	u.done(w, r, back, "Session revoked: it can no longer be used, on any instance.")
}

// clientName names the browser and system of a user agent, roughly, for
// people to recognise their sessions.
func clientName(ua string) string {
	if ua == "" {
		return "Unknown client"
	}
	browser := ""
	for _, b := range []struct{ token, name string }{
		{"Edg/", "Edge"}, {"Firefox/", "Firefox"}, {"HeadlessChrome/", "Headless Chrome"}, {"Chrome/", "Chrome"},
		{"Chromium/", "Chromium"}, {"Safari/", "Safari"}, {"curl/", "curl"}, {"Go-http-client/", "Go HTTP client"},
	} {
		if strings.Contains(ua, b.token) {
			browser = b.name
			break
		}
	}
	if browser == "" {
		name, _, _ := strings.Cut(ua, "/")
		return name
	}
	for _, o := range []struct{ token, name string }{
		{"Android", "Android"}, {"iPhone", "iOS"}, {"iPad", "iPadOS"}, {"Windows", "Windows"},
		{"Mac OS X", "macOS"}, {"CrOS", "ChromeOS"}, {"Linux", "Linux"},
	} {
		if strings.Contains(ua, o.token) {
			return browser + " on " + o.name
		}
	}
	return browser
}

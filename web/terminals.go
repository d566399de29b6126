package web

import (
	"net/http"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/atriumhq/atrium/modules/auth"
	"github.com/atriumhq/atrium/modules/tenant"
	"github.com/atriumhq/atrium/platform/errs"
	"github.com/atriumhq/atrium/platform/httpx"
	"github.com/atriumhq/atrium/platform/principal"
)

// revealFor is how long a new terminal's secret waits, in its one-time
// cookie, for the page that shows it.
const revealFor = 5 * time.Minute

type terminalsData struct {
	page
	Terminals []auth.Terminal
	Now       time.Time
	// The create form: shown with terminals:manage; Platform callers name
	// the tenant.
	CanManage, Platform bool
	Form                auth.NewTerminal
	Error               string
	// Tenants are offered as a choice to platform callers who may list them.
	Tenants []tenant.Tenant
}

func (u *UI) terminals(w http.ResponseWriter, r *http.Request) {
	u.terminalsPage(w, r, http.StatusOK, auth.NewTerminal{}, "")
}

func (u *UI) terminalsPage(w http.ResponseWriter, r *http.Request, status int, form auth.NewTerminal, problem string) {
	ts, err := u.d.Auth.ListTerminals(r.Context())
	if err != nil {
		u.fail(w, r, err)
		return
	}
	p := principal.From(r.Context())
	d := terminalsData{Terminals: ts, Now: u.d.Now().UTC(), CanManage: p.Has("terminals:manage"), Platform: p.TenantID == "",
		Form: form, Error: problem}
	if d.CanManage {
		if d.Tenants, err = u.tenantChoices(r); err != nil {
			u.fail(w, r, err)
			return
		}
	}
	d.page = u.page(w, r, "Terminals", "Terminals")
	u.render(w, r, status, "terminals", "layout", d)
}

// createTerminal registers a terminal and sends the browser to its page,
// which shows the client secret once: the secret travels there in a
// short-lived HttpOnly cookie scoped to that page, which the page deletes,
// so a reload (or the back button) cannot show it again.
func (u *UI) createTerminal(w http.ResponseWriter, r *http.Request) {
	in := auth.NewTerminal{MerchantRef: r.PostFormValue("merchant_ref"), Name: r.PostFormValue("name"),
		TenantID: strings.TrimSpace(r.PostFormValue("tenant_id")), TestMode: r.PostFormValue("test_mode") != ""}
	t, err := u.d.Auth.CreateTerminal(r.Context(), in)
	if err != nil {
		if formProblem(err) {
			u.terminalsPage(w, r, httpx.StatusOf(err), in, problemText(err))
			return
		}
		u.fail(w, r, err)
		return
	}
	u.setCookie(w, revealCookie, t.Secret, "/ui/terminals/"+t.ID, revealFor)
	http.Redirect(w, r, "/ui/terminals/"+t.ID, http.StatusSeeOther)
}

type terminalData struct {
	page
	Terminal  auth.Terminal
	Secret    string
	CanManage bool
	Now       time.Time
}

func (u *UI) terminal(w http.ResponseWriter, r *http.Request) {
	id := chi.URLParam(r, "id")
	ts, err := u.d.Auth.ListTerminals(r.Context())
	if err != nil {
		u.fail(w, r, err)
		return
	}
	d := terminalData{CanManage: principal.From(r.Context()).Has("terminals:manage"), Now: u.d.Now().UTC()}
	found := false
	for _, t := range ts {
		if t.ID == id {
			d.Terminal, found = t, true
			break
		}
	}
	if !found {
		u.fail(w, r, errs.E(errs.NotFound, "no such terminal"))
		return
	}
	if c, err := r.Cookie(revealCookie); err == nil && c.Value != "" {
		d.Secret = c.Value
		u.setCookie(w, revealCookie, "", "/ui/terminals/"+id, -time.Second)
	}
	d.page = u.page(w, r, terminalTitle(d.Terminal), "Terminals")
	d.Parent = &navItem{Label: "Terminals", Href: "/ui/terminals"}
	u.render(w, r, http.StatusOK, "terminal", "layout", d)
}

func terminalTitle(t auth.Terminal) string {
	if t.Name != "" {
		return t.Name
	}
	return "Terminal " + t.MerchantRef
}

func (u *UI) setTerminalStatus(w http.ResponseWriter, r *http.Request) {
	id := chi.URLParam(r, "id")
	back := "/ui/terminals/" + id
	if r.PostFormValue("back") == "list" {
		back = "/ui/terminals"
	}
	t, err := u.d.Auth.SetTerminalStatus(r.Context(), id, r.PostFormValue("status"))
	if err != nil {
		u.formFailed(w, r, back, err)
		return
	}
	msg := terminalTitle(*t) + " is enabled."
	if t.Status == "disabled" {
		msg = terminalTitle(*t) + " is disabled: its tokens no longer work, on any instance."
	}
	u.done(w, r, back, msg)
}

package web

import (
	"net/http"
	"strconv"
	"strings"

	"github.com/go-chi/chi/v5"

	"github.com/atriumhq/atrium/modules/quota"
	"github.com/atriumhq/atrium/modules/tenant"
	"github.com/atriumhq/atrium/platform/errs"
	"github.com/atriumhq/atrium/platform/httpx"
	"github.com/atriumhq/atrium/platform/principal"
)

type tenantsData struct {
	page
	Tenants []tenant.Tenant
	Plans   []quota.Plan
	Form    tenant.NewTenant
	Error   string
}

func (u *UI) tenants(w http.ResponseWriter, r *http.Request) {
	u.tenantsPage(w, r, http.StatusOK, tenant.NewTenant{Plan: "default"}, "")
}

func (u *UI) tenantsPage(w http.ResponseWriter, r *http.Request, status int, form tenant.NewTenant, problem string) {
	ts, err := u.d.Tenants.List(r.Context())
	if err != nil {
		u.fail(w, r, err)
		return
	}
	plans, err := u.d.Quotas.Plans(r.Context())
	if err != nil {
		u.fail(w, r, err)
		return
	}
	d := tenantsData{Tenants: ts, Plans: plans, Form: form, Error: problem}
	d.page = u.page(w, r, "Tenants", "Tenants")
	u.render(w, r, status, "tenants", "layout", d)
}

func (u *UI) createTenant(w http.ResponseWriter, r *http.Request) {
	in := tenant.NewTenant{Name: r.PostFormValue("name"), Plan: r.PostFormValue("plan")}
	t, err := u.d.Tenants.Create(r.Context(), in)
	if err != nil {
		if formProblem(err) {
			u.tenantsPage(w, r, httpx.StatusOf(err), in, problemText(err))
			return
		}
		u.fail(w, r, err)
		return
	}
	u.done(w, r, "/ui/tenants/"+t.ID, "Tenant "+t.Name+" created on the "+t.Plan+" plan.")
}

type tenantData struct {
	page
	Tenant    tenant.Tenant
	Plans     []quota.Plan
	Quotas    []quota.Status
	CanManage bool // platform administrators change plan, status and quotas
}

// tenantPage shows a tenant with its quotas: to platform administrators
// any tenant, with the forms to change it; to a tenant's members their own
// (the Quotas page).
func (u *UI) tenantPage(w http.ResponseWriter, r *http.Request, id, active string) {
	ctx := r.Context()
	t, err := u.d.Tenants.Get(ctx, id)
	if err != nil {
		u.fail(w, r, err)
		return
	}
	qs, err := u.d.Quotas.Report(ctx, id)
	if err != nil {
		u.fail(w, r, err)
		return
	}
	p := principal.From(ctx)
	d := tenantData{Tenant: *t, Quotas: qs, CanManage: p.Has("tenants:manage") && p.Has("quotas:manage")}
	if d.CanManage {
		if d.Plans, err = u.d.Quotas.Plans(ctx); err != nil {
			u.fail(w, r, err)
			return
		}
	}
	d.page = u.page(w, r, t.Name, active)
	if active == "Tenants" {
		d.Parent = &navItem{Label: "Tenants", Href: "/ui/tenants"}
	}
	u.render(w, r, http.StatusOK, "tenant", "layout", d)
}

func (u *UI) tenant(w http.ResponseWriter, r *http.Request) {
	u.tenantPage(w, r, chi.URLParam(r, "id"), "Tenants")
}

// quotas is the Quotas page: the caller's own tenant; platform
// administrators, who belong to none, pick a tenant from the list.
func (u *UI) quotas(w http.ResponseWriter, r *http.Request) {
	p := principal.From(r.Context())
	if p.TenantID == "" {
		http.Redirect(w, r, "/ui/tenants", http.StatusSeeOther)
		return
	}
	u.tenantPage(w, r, p.TenantID, "Quotas")
}

func (u *UI) updateTenant(w http.ResponseWriter, r *http.Request) {
	id := chi.URLParam(r, "id")
	var in tenant.Update
	if v, ok := r.PostForm["name"]; ok {
		in.Name = &v[0]
	}
	if v, ok := r.PostForm["plan"]; ok {
		in.Plan = &v[0]
	}
	t, err := u.d.Tenants.Update(r.Context(), id, in)
	if err != nil {
		u.formFailed(w, r, "/ui/tenants/"+id, err)
		return
	}
	u.done(w, r, "/ui/tenants/"+id, "Tenant "+t.Name+" saved.")
}

func (u *UI) setTenantStatus(w http.ResponseWriter, r *http.Request) {
	id := chi.URLParam(r, "id")
	var (
		t   *tenant.Tenant
		err error
		msg string
	)
	if r.PostFormValue("status") == "suspended" {
		t, err = u.d.Tenants.Suspend(r.Context(), id, strings.TrimSpace(r.PostFormValue("reason")))
		msg = " is suspended: its users and terminals are refused on every instance."
	} else {
		t, err = u.d.Tenants.Reactivate(r.Context(), id)
		msg = " is active again."
	}
	if err != nil {
		u.formFailed(w, r, "/ui/tenants/"+id, err)
		return
	}
	u.done(w, r, "/ui/tenants/"+id, t.Name+msg)
}

// setQuota overrides one quota of a tenant, or (with "clear") goes back to
// the plan's limit.
func (u *UI) setQuota(w http.ResponseWriter, r *http.Request) {
	id, name := chi.URLParam(r, "id"), chi.URLParam(r, "quota")
	back := "/ui/tenants/" + id
	var value *int64
	if r.PostFormValue("clear") == "" {
		v, err := strconv.ParseInt(strings.TrimSpace(r.PostFormValue("value")), 10, 64)
		if err != nil {
			u.formFailed(w, r, back, errs.Field("value", "must be a whole number"))
			return
		}
		value = &v
	}
	if err := u.d.Quotas.SetOverride(r.Context(), id, name, value); err != nil {
		u.formFailed(w, r, back, err)
		return
	}
	if value == nil {
		u.done(w, r, back, name+" follows the plan again.")
		return
	}
	u.done(w, r, back, name+" is now "+strconv.FormatInt(*value, 10)+" for this tenant.")
}

// tenantChoices lists the tenants a platform caller may pick from in a
// create form; nil for tenant users (their own tenant is implied) and for
// platform users who may not list tenants (they type the id).
func (u *UI) tenantChoices(r *http.Request) ([]tenant.Tenant, error) {
	p := principal.From(r.Context())
	if p.TenantID != "" || !p.Has("tenants:manage") {
		return nil, nil
	}
	return u.d.Tenants.List(r.Context())
}

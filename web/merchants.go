package web

import (
	"net/http"
	"strconv"
	"strings"

	"github.com/go-chi/chi/v5"

	"github.com/atriumhq/atrium/modules/payment"
	"github.com/atriumhq/atrium/modules/tenant"
	"github.com/atriumhq/atrium/platform/errs"
	"github.com/atriumhq/atrium/platform/httpx"
	"github.com/atriumhq/atrium/platform/principal"
)

// The merchant pages list a tenant's merchants (every tenant's for
// platform administrators) with what the ledger owes each, create them,
// and change or disable one. The payment service checks payments:manage
// on every change; reading needs payments:read.

// merchantForm is the merchant form as typed. Fees, promotions and the
// point value are in minor units: a merchant takes payments in any
// currency.
type merchantForm struct {
	TenantID, Ref, Name, MCC, SettlementAccount, FeeBPS, FeeFixed, Channels, Promotions, PointValue string
}

func merchantFormOf(r *http.Request) merchantForm {
	g := func(k string) string { return strings.TrimSpace(r.PostFormValue(k)) }
	return merchantForm{TenantID: g("tenant_id"), Ref: g("ref"), Name: g("name"), MCC: g("mcc"),
		SettlementAccount: g("settlement_account"), FeeBPS: g("fee_bps"), FeeFixed: g("fee_fixed"), Channels: g("channels"),
		Promotions: r.PostFormValue("promotions"), PointValue: g("point_value")}
}

// formOfMerchant fills the edit form with a merchant's values.
func formOfMerchant(m payment.Merchant) merchantForm {
	var promos []string
	for _, p := range m.Promotions {
		promos = append(promos, p.ID+" "+strconv.FormatInt(p.Spend, 10)+" "+strconv.FormatInt(p.Save, 10))
	}
	return merchantForm{TenantID: m.TenantID, Ref: m.Ref, Name: m.Name, MCC: m.MCC, SettlementAccount: m.SettlementAccount,
		FeeBPS: strconv.Itoa(m.FeeBPS), FeeFixed: strconv.FormatInt(m.FeeFixed, 10), Channels: strings.Join(m.Channels, ", "),
		Promotions: strings.Join(promos, "\n"), PointValue: strconv.FormatInt(m.PointValue, 10)}
}

// input reads the form as a MerchantInput; the ref only when creating (it
// cannot change). Empty numbers are 0.
func (f merchantForm) input(creating bool) (payment.MerchantInput, error) {
	in := payment.MerchantInput{Name: &f.Name, MCC: &f.MCC, SettlementAccount: &f.SettlementAccount}
	if creating {
		in.TenantID, in.Ref = f.TenantID, &f.Ref
	}
	num := func(field, v string) (int64, error) {
		if v == "" {
			return 0, nil
		}
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return 0, errs.Field(field, "must be a whole number")
		}
		return n, nil
	}
	bps, err := num("fee_bps", f.FeeBPS)
	if err != nil {
		return in, err
	}
	fee := int(bps) // the service checks the range
	in.FeeBPS = &fee
	fixed, err := num("fee_fixed", f.FeeFixed)
	if err != nil {
		return in, err
	}
	in.FeeFixed = &fixed
	points, err := num("point_value", f.PointValue)
	if err != nil {
		return in, err
	}
	in.PointValue = &points
	channels := []string{}
	for _, c := range strings.Split(f.Channels, ",") {
		if c = strings.TrimSpace(c); c != "" {
			channels = append(channels, c)
		}
	}
	in.Channels = &channels
	promos := []payment.Promotion{}
	for i, line := range strings.Split(f.Promotions, "\n") {
		fs := strings.Fields(line)
		if len(fs) == 0 {
			continue
		}
		bad := errs.Field("promotions", "line %d: write each promotion as \"id spend save\" (minor units), such as \"coffee10 1000 100\"", i+1)
		if len(fs) != 3 {
			return in, bad
		}
		spend, err1 := strconv.ParseInt(fs[1], 10, 64)
		save, err2 := strconv.ParseInt(fs[2], 10, 64)
		if err1 != nil || err2 != nil {
			return in, bad
		}
		promos = append(promos, payment.Promotion{ID: fs[0], Spend: spend, Save: save})
	}
	in.Promotions = &promos
	return in, nil
}

// merchantRow is one merchant of the list.
type merchantRow struct {
	payment.Merchant
	TenantName string
	Promotions int
	Owed       []string // live balances, one per currency
}

type merchantsData struct {
	page
	Merchants []merchantRow
	// The create form: shown with payments:manage; Platform callers name
	// the tenant, picking from Tenants when they may list them.
	CanManage, Platform bool
	Tenants             []tenant.Tenant
	Form                merchantForm
	Error               string
}

func (u *UI) merchants(w http.ResponseWriter, r *http.Request) {
	u.merchantsPage(w, r, http.StatusOK, merchantForm{FeeBPS: "0", FeeFixed: "0", PointValue: "0"}, "")
}

func (u *UI) merchantsPage(w http.ResponseWriter, r *http.Request, status int, form merchantForm, problem string) {
	ctx := r.Context()
	svc, err := u.paymentsService(ctx)
	if err != nil {
		u.fail(w, r, err)
		return
	}
	ms, err := svc.ListMerchants(ctx)
	if err != nil {
		u.fail(w, r, err)
		return
	}
	bs, err := svc.Balances(ctx, "", false)
	if err != nil {
		u.fail(w, r, err)
		return
	}
	p := principal.From(ctx)
	d := merchantsData{CanManage: p.Has("payments:manage"), Platform: p.TenantID == "", Form: form, Error: problem}
	if d.Tenants, err = u.tenantChoices(r); err != nil {
		u.fail(w, r, err)
		return
	}
	names := map[string]string{}
	for _, t := range d.Tenants {
		names[t.ID] = t.Name
	}
	owed := map[string][]string{}
	for _, b := range bs {
		owed[b.MerchantID] = append(owed[b.MerchantID], money(b.Owed, b.Currency))
	}
	for _, m := range ms {
		d.Merchants = append(d.Merchants, merchantRow{Merchant: m, TenantName: names[m.TenantID], Promotions: len(m.Promotions), Owed: owed[m.ID]})
	}
	d.page = u.page(w, r, "Merchants", "Merchants")
	u.render(w, r, status, "merchants", "layout", d)
}

func (u *UI) createMerchant(w http.ResponseWriter, r *http.Request) {
	svc, err := u.paymentsService(r.Context())
	if err != nil {
		u.fail(w, r, err)
		return
	}
	form := merchantFormOf(r)
	in, err := form.input(true)
	var m *payment.Merchant
	if err == nil {
		m, err = svc.CreateMerchant(r.Context(), in)
	}
	if err != nil {
		if formProblem(err) {
			u.merchantsPage(w, r, httpx.StatusOf(err), form, problemText(err))
			return
		}
		u.fail(w, r, err)
		return
	}
	u.done(w, r, "/ui/merchants/"+m.ID, "Merchant "+m.Name+" created: terminals with merchant reference "+m.Ref+" take its payments.")
}

// balanceRow is one currency of a merchant's balances.
type balanceRow struct {
	Currency, Live, Test string
}

type merchantData struct {
	page
	Merchant   payment.Merchant
	TenantName string
	Balances   []balanceRow
	CanManage  bool
	Form       merchantForm
	Error      string
}

func (u *UI) merchant(w http.ResponseWriter, r *http.Request) {
	u.merchantPage(w, r, http.StatusOK, nil, "")
}

// merchantPage shows a merchant, its balances and (payments:manage) the
// edit form: the merchant's values, or form as typed with its problem.
func (u *UI) merchantPage(w http.ResponseWriter, r *http.Request, status int, form *merchantForm, problem string) {
	ctx := r.Context()
	svc, err := u.paymentsService(ctx)
	if err != nil {
		u.fail(w, r, err)
		return
	}
	m, err := svc.GetMerchant(ctx, chi.URLParam(r, "id"))
	if err != nil {
		u.fail(w, r, err)
		return
	}
	d := merchantData{Merchant: *m, CanManage: principal.From(ctx).Has("payments:manage"), Form: formOfMerchant(*m), Error: problem}
	if form != nil {
		d.Form = *form
	}
	var rows []balanceRow
	byCur := map[string]int{}
	for _, test := range []bool{false, true} {
		bs, err := svc.Balances(ctx, m.ID, test)
		if err != nil {
			u.fail(w, r, err)
			return
		}
		for _, b := range bs {
			i, ok := byCur[b.Currency]
			if !ok {
				i = len(rows)
				byCur[b.Currency] = i
				rows = append(rows, balanceRow{Currency: b.Currency, Live: "—", Test: "—"})
			}
			if test {
				rows[i].Test = money(b.Owed, b.Currency)
			} else {
				rows[i].Live = money(b.Owed, b.Currency)
			}
		}
	}
	d.Balances = rows
	if ts, err := u.tenantChoices(r); err == nil {
		for _, t := range ts {
			if t.ID == m.TenantID {
				d.TenantName = t.Name
			}
		}
	}
	d.page = u.page(w, r, m.Name, "Merchants")
	d.Parent = &navItem{Label: "Merchants", Href: "/ui/merchants"}
	u.render(w, r, status, "merchant", "layout", d)
}

func (u *UI) updateMerchant(w http.ResponseWriter, r *http.Request) {
	svc, err := u.paymentsService(r.Context())
	if err != nil {
		u.fail(w, r, err)
		return
	}
	id := chi.URLParam(r, "id")
	form := merchantFormOf(r)
	in, err := form.input(false)
	var m *payment.Merchant
	if err == nil {
		m, err = svc.UpdateMerchant(r.Context(), id, in)
	}
	if err != nil {
		if formProblem(err) {
			u.merchantPage(w, r, httpx.StatusOf(err), &form, problemText(err))
			return
		}
		u.fail(w, r, err)
		return
	}
	u.done(w, r, "/ui/merchants/"+m.ID, "Merchant "+m.Name+" saved.")
}

func (u *UI) setMerchantStatus(w http.ResponseWriter, r *http.Request) {
	svc, err := u.paymentsService(r.Context())
	if err != nil {
		u.fail(w, r, err)
		return
	}
	id := chi.URLParam(r, "id")
	back := "/ui/merchants/" + id
	status := r.PostFormValue("status")
	m, err := svc.UpdateMerchant(r.Context(), id, payment.MerchantInput{Status: &status})
	if err != nil {
		u.formFailed(w, r, back, err)
		return
	}
	msg := m.Name + " is enabled: its terminals take payments again."
	if m.Status == "disabled" {
		msg = m.Name + " is disabled: its terminals' payments are refused until it is enabled."
	}
	u.done(w, r, back, msg)
}

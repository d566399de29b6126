package web

import (
	"fmt"
	"html/template"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/atriumhq/atrium/modules/quota"
	"github.com/atriumhq/atrium/platform/errs"
	"github.com/atriumhq/atrium/platform/principal"
)

// usagePages are the templates of the usage pages.
var usagePages = []string{"usage"}

// parsePages adds pages, each a template file on top of the layout.
func (u *UI) parsePages(layout *template.Template, pages ...string) error {
	for _, page := range pages {
		t, err := template.Must(layout.Clone()).ParseFS(templateFS, "templates/"+page+".html")
		if err != nil {
			return fmt.Errorf("web: %s: %w", page, err)
		}
		u.pages[page] = t
	}
	return nil
}

// The charts' drawing area, in SVG user units; the SVG stretches to the
// panel's width (CSS), so only the proportions matter.
const (
	chartW = 720
	chartH = 140
)

type usageData struct {
	page
	TenantID string
	From, To string
	Error    string
	Charts   []usageChart
	Days     []usageDayRow // newest first
	// Amounts are the payment totals per currency, recorded.
	Amounts                            []string
	HasProvisional, ProvisionalMissing bool
	Summary                            []usageSummaryRow
	SummaryMode                        bool
	SummaryQuery                       string
}

type usageChart struct {
	ID, Title, Total, Max string
	Width, Height         int
	Bars                  []usageBar
}

// usageBar is one day's bar: the recorded part from the baseline up, the
// provisional part stacked on it. Coordinates are SVG attributes (the CSP
// allows no style attributes).
type usageBar struct {
	X, W, Y, H, PY, PH string
	Label              string
}

type usageDayRow struct {
	Day                          string
	APICalls, Payments, GPUHours string
	Amounts                      []string
	Provisional                  []string
}

type usageSummaryRow struct {
	quota.TenantUsage
	APICalls, Payments, GPUHours string
	Amounts                      []string
}

// usage is the caller's tenant's usage; platform administrators get the
// summary of every tenant.
func (u *UI) usage(w http.ResponseWriter, r *http.Request) {
	p := principal.From(r.Context())
	if p.TenantID == "" {
		u.usageSummary(w, r)
		return
	}
	u.usagePage(w, r, p.TenantID, "Usage", nil)
}

// tenantUsage is one tenant's usage: its members and platform
// administrators with quotas:manage; others get 404.
func (u *UI) tenantUsage(w http.ResponseWriter, r *http.Request) {
	id := chi.URLParam(r, "id")
	var parent *navItem
	if principal.From(r.Context()).TenantID == "" {
		parent = &navItem{Label: "Usage", Href: "/ui/usage"}
	}
	u.usagePage(w, r, id, "Usage of tenant "+shortID(id), parent)
}

// usageRange reads the page's from and to; a bad value shows the default
// range with the problem.
func (u *UI) usageRange(r *http.Request) (from, to time.Time, problem string) {
	q := r.URL.Query()
	from, to, err := quota.UsageRange(q.Get("from"), q.Get("to"), u.d.Now())
	if err != nil {
		from, to, _ = quota.UsageRange("", "", u.d.Now())
		return from, to, problemText(err)
	}
	return from, to, ""
}

func (u *UI) usagePage(w http.ResponseWriter, r *http.Request, tenant, title string, parent *navItem) {
	if u.d.Usage == nil {
		u.fail(w, r, errs.E(errs.NotFound, "usage metering is not enabled"))
		return
	}
	from, to, problem := u.usageRange(r)
	rep, err := u.d.Usage.Usage(r.Context(), tenant, from, to)
	if err != nil {
		u.fail(w, r, err)
		return
	}
	d := usageData{TenantID: tenant, From: rep.From, To: rep.To, Error: problem,
		ProvisionalMissing: rep.ProvisionalUnavailable}
	byDay := map[string]quota.UsageDay{}
	for _, x := range rep.Days {
		byDay[x.Day] = x
		if len(x.Provisional) > 0 {
			d.HasProvisional = true
		}
	}
	var days []string
	for t := from; !t.After(to); t = t.AddDate(0, 0, 1) {
		days = append(days, t.Format(time.DateOnly))
	}
	d.Charts = []usageChart{
		chart("api-calls", "API calls", days, byDay, quota.APICalls, 1, "calls"),
		chart("payments", "Payments", days, byDay, quota.Payments, 1, "payments"),
		chart("gpu-hours", "GPU hours", days, byDay, quota.GPUSeconds, 3600, "GPU hours"),
	}
	d.Amounts = amounts(rep.Totals)
	for i := len(days) - 1; i >= 0; i-- {
		x, ok := byDay[days[i]]
		if !ok {
			continue
		}
		row := usageDayRow{Day: x.Day, APICalls: count(x.Units[quota.APICalls]), Payments: count(x.Units[quota.Payments]),
			GPUHours: hours(x.Units[quota.GPUSeconds]), Amounts: amounts(x.Units)}
		for _, m := range sortedKeys(x.Provisional) {
			row.Provisional = append(row.Provisional, metricText(m, x.Provisional[m]))
		}
		d.Days = append(d.Days, row)
	}
	d.page = u.page(w, r, title, "Usage")
	d.Parent = parent
	status := http.StatusOK
	if problem != "" {
		status = http.StatusBadRequest
	}
	u.render(w, r, status, "usage", "layout", d)
}

// usageSummary lists every tenant's recorded use over the range.
func (u *UI) usageSummary(w http.ResponseWriter, r *http.Request) {
	if u.d.Usage == nil {
		u.fail(w, r, errs.E(errs.NotFound, "usage metering is not enabled"))
		return
	}
	from, to, problem := u.usageRange(r)
	sum, err := u.d.Usage.Summary(r.Context(), from, to)
	if err != nil {
		u.fail(w, r, err)
		return
	}
	d := usageData{SummaryMode: true, From: from.Format(time.DateOnly), To: to.Format(time.DateOnly), Error: problem}
	d.SummaryQuery = "?from=" + d.From + "&to=" + d.To
	for _, t := range sum {
		d.Summary = append(d.Summary, usageSummaryRow{TenantUsage: t, APICalls: count(t.Totals[quota.APICalls]),
			Payments: count(t.Totals[quota.Payments]), GPUHours: hours(t.Totals[quota.GPUSeconds]), Amounts: amounts(t.Totals)})
	}
	d.page = u.page(w, r, "Usage", "Usage")
	status := http.StatusOK
	if problem != "" {
		status = http.StatusBadRequest
	}
	u.render(w, r, status, "usage", "layout", d)
}

// chart draws one metric per day as bars: recorded use, and provisional
// use (counted, not yet flushed) stacked on it.
func chart(id, title string, days []string, byDay map[string]quota.UsageDay, metric string, scale int64, unit string) usageChart {
	c := usageChart{ID: id, Title: title, Width: chartW, Height: chartH}
	var peak, total int64
	for _, d := range days {
		x := byDay[d]
		peak = max(peak, x.Units[metric]+x.Provisional[metric])
		total += x.Units[metric] + x.Provisional[metric]
	}
	step := float64(chartW) / float64(len(days))
	gap := min(2, step/4)
	for i, d := range days {
		x := byDay[d]
		rec, prov := x.Units[metric], x.Provisional[metric]
		b := usageBar{X: num(float64(i)*step + gap/2), W: num(step - gap)}
		h := func(v int64) float64 {
			if peak == 0 {
				return 0
			}
			return float64(v) / float64(peak) * chartH
		}
		rh, ph := h(rec), h(prov)
		b.Y, b.H = num(chartH-rh), num(rh)
		b.PY, b.PH = num(chartH-rh-ph), num(ph)
		b.Label = d + ": " + scaled(rec, scale) + " " + unit
		if prov > 0 {
			b.Label += " (+" + scaled(prov, scale) + " provisional)"
		}
		c.Bars = append(c.Bars, b)
	}
	c.Total, c.Max = scaled(total, scale), scaled(peak, scale)
	return c
}

func num(f float64) string { return strconv.FormatFloat(f, 'f', 2, 64) }

func scaled(v, scale int64) string {
	if scale == 3600 {
		return hours(v)
	}
	return count(v)
}

// count prints an integer with thousands separators.
func count(v int64) string {
	s := strconv.FormatInt(v, 10)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}

// hours prints GPU-seconds as GPU-hours.
func hours(seconds int64) string {
	if seconds == 0 {
		return "0"
	}
	return strconv.FormatFloat(float64(seconds)/3600, 'f', 2, 64)
}

// currencyDigits are the ISO 4217 currencies whose minor unit is not a
// hundredth.
var currencyDigits = map[string]int{
	"BIF": 0, "CLP": 0, "DJF": 0, "GNF": 0, "ISK": 0, "JPY": 0, "KMF": 0, "KRW": 0, "PYG": 0, "RWF": 0, "UGX": 0,
	"UYI": 0, "VND": 0, "VUV": 0, "XAF": 0, "XOF": 0, "XPF": 0,
	"BHD": 3, "IQD": 3, "JOD": 3, "KWD": 3, "LYD": 3, "OMR": 3, "TND": 3, "CLF": 4, "UYW": 4,
}

// money prints an amount in minor units of currency, such as "12.50 EUR".
func money(minor int64, currency string) string {
	digits := currencyExponent(currency)
	if digits == 0 {
		return count(minor) + " " + currency
	}
	div := int64(1)
	for range digits {
		div *= 10
	}
	sign := ""
	if minor < 0 { // a ledger balance can be negative; -0.50 has no negative whole part
		sign, minor = "-", -minor
	}
	return fmt.Sprintf("%s%s.%0*d %s", sign, count(minor/div), digits, minor%div, currency)
}

// amounts lists the payment amounts among metrics, one per currency.
func amounts(metrics map[string]int64) []string {
	var out []string
	for _, m := range sortedKeys(metrics) {
		if cur, ok := strings.CutPrefix(m, quota.PaymentAmount+":"); ok {
			out = append(out, money(metrics[m], cur))
		}
	}
	return out
}

// metricText prints one metric's units for people.
func metricText(metric string, v int64) string {
	switch metric {
	case quota.APICalls:
		return count(v) + " API calls"
	case quota.Payments:
		return count(v) + " payments"
	case quota.GPUSeconds:
		return hours(v) + " GPU hours"
	}
	if cur, ok := strings.CutPrefix(metric, quota.PaymentAmount+":"); ok {
		return money(v, cur)
	}
	return count(v) + " " + metric
}

func sortedKeys(m map[string]int64) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

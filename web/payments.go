package web

import (
	"context"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"html/template"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/google/uuid"

	"github.com/atriumhq/atrium/modules/payment"
	"github.com/atriumhq/atrium/platform/errs"
	"github.com/atriumhq/atrium/platform/httpx"
	"github.com/atriumhq/atrium/platform/principal"
)

// The payment pages list payments with filters and keyset pagination,
// export them as CSV, and show one payment with its timeline, refunds and
// ledger entries, with the refund and void forms for holders of
// payments:refund. Every refund or void form carries an Idempotency-Key
// made when the form was rendered, so submitting the same form twice
// replays the first answer instead of refunding twice.

// parsePaymentPages adds the payment and merchant pages; the merchant
// pages share the merchant form's fields.
func (u *UI) parsePaymentPages(layout *template.Template) error {
	for _, page := range []string{"payments", "payment", "merchants", "merchant"} {
		t, err := template.Must(layout.Clone()).ParseFS(templateFS, "templates/"+page+".html", "templates/merchant_fields.html")
		if err != nil {
			return fmt.Errorf("web: %s: %w", page, err)
		}
		u.pages[page] = t
	}
	return nil
}

// paymentFuncs are the template functions of the payment pages.
var paymentFuncs = template.FuncMap{
	"money":       money,
	"statusClass": statusClass,
	"debit": func(v int64, currency string) string {
		if v > 0 {
			return money(v, currency)
		}
		return ""
	},
	"credit": func(v int64, currency string) string {
		if v < 0 {
			return money(-v, currency)
		}
		return ""
	},
}

// statusClass is the pill class of a payment, refund or merchant status.
func statusClass(status string) string {
	switch status {
	case payment.StatusSucceeded, "active":
		return "ok"
	case payment.StatusFailed, payment.StatusVoided, "disabled":
		return "bad"
	case payment.StatusProcessing, payment.StatusInDoubt:
		return "warn"
	}
	return "muted"
}

// paymentStatuses are the statuses the list filters by.
var paymentStatuses = []string{payment.StatusSucceeded, payment.StatusPartiallyRefunded, payment.StatusRefunded,
	payment.StatusVoided, payment.StatusFailed, payment.StatusInDoubt, payment.StatusProcessing}

// paymentsService returns the payment service after checking that the
// caller may read payments; without the service the pages answer 404.
func (u *UI) paymentsService(ctx context.Context) (*payment.Service, error) {
	if u.d.Payments == nil {
		return nil, errs.E(errs.NotFound, "payments are not enabled")
	}
	if err := principal.Check(ctx, "payments:read"); err != nil {
		return nil, err
	}
	return u.d.Payments, nil
}

// filterForm is the list's filter form as typed.
type filterForm struct {
	Status, From, To, TerminalID, MerchantID, MinAmount, MaxAmount, OrderNo, Mode string
}

func filterFormOf(q url.Values) filterForm {
	g := func(k string) string { return strings.TrimSpace(q.Get(k)) }
	return filterForm{Status: g("status"), From: g("from"), To: g("to"), TerminalID: g("terminal_id"),
		MerchantID: g("merchant_id"), MinAmount: g("min_amount"), MaxAmount: g("max_amount"), OrderNo: g("order_no"), Mode: g("mode")}
}

// uiFilter reads the list's filters as the API does (payment.ParseFilter),
// except that a "to" date includes that whole UTC day, as the form's hint
// says.
func uiFilter(q url.Values) (payment.Filter, error) {
	return payment.ParseFilter(func(k string) string {
		v := strings.TrimSpace(q.Get(k))
		if k == "to" {
			if d, err := time.Parse(time.DateOnly, v); err == nil {
				return d.AddDate(0, 0, 1).Format(time.RFC3339)
			}
		}
		return v
	})
}

// cleanQuery drops the empty parameters an HTML GET form sends, and the
// named ones, so links stay short.
func cleanQuery(q url.Values, drop ...string) url.Values {
	out := url.Values{}
	for k, vs := range q {
		if v := strings.TrimSpace(strings.Join(vs, "")); v != "" && len(vs) == 1 {
			out.Set(k, v)
		}
	}
	for _, k := range drop {
		out.Del(k)
	}
	return out
}

type paymentsData struct {
	page
	Payments []payment.Payment
	Filter   filterForm
	Statuses []string
	// Merchants names merchants by id; Merchant is the one filtered by.
	Merchants map[string]string
	Merchant  string
	Error     string
	// Older is the next page's URL; Newest the first page's, when this is
	// not it. Export downloads every matching row.
	Older, Newest, Export string
}

// payments lists the payments in the caller's scope, newest first, with
// the filters of GET /api/v1/payments.
func (u *UI) payments(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	svc, err := u.paymentsService(ctx)
	if err != nil {
		u.fail(w, r, err)
		return
	}
	q := r.URL.Query()
	d := paymentsData{Filter: filterFormOf(q), Statuses: paymentStatuses, Merchants: map[string]string{}}
	status := http.StatusOK
	f, err := uiFilter(q)
	if err != nil {
		if !formProblem(err) {
			u.fail(w, r, err)
			return
		}
		d.Error, status = problemText(err), httpx.StatusOf(err)
	} else {
		pg, err := svc.List(ctx, f)
		if err != nil {
			u.fail(w, r, err)
			return
		}
		d.Payments = pg.Payments
		if pg.NextCursor != "" {
			older := cleanQuery(q)
			older.Set("cursor", pg.NextCursor)
			d.Older = "/ui/payments?" + older.Encode()
		}
		if f.After != "" {
			d.Newest = "/ui/payments"
			if first := cleanQuery(q, "cursor"); len(first) > 0 {
				d.Newest += "?" + first.Encode()
			}
		}
		d.Export = "/ui/payments/export.csv"
		if all := cleanQuery(q, "cursor", "limit"); len(all) > 0 {
			d.Export += "?" + all.Encode()
		}
	}
	ms, err := svc.ListMerchants(ctx)
	if err != nil {
		u.fail(w, r, err)
		return
	}
	for _, m := range ms {
		d.Merchants[m.ID] = m.Name
	}
	d.Merchant = d.Merchants[d.Filter.MerchantID]
	d.page = u.page(w, r, "Payments", "Payments")
	u.render(w, r, status, "payments", "layout", d)
}

// exportPageSize is how many payments the export reads per page.
const exportPageSize = 1000

// exportFor bounds an export, which may outlast the request timeout; it
// stops early when the browser goes away (a write fails).
const exportFor = 10 * time.Minute

// csvColumns are the export's columns.
var csvColumns = []string{"created_at", "order_no", "id", "merchant_id", "terminal_id", "status", "amount", "discount",
	"points_amount", "payable", "fee", "refunded", "currency", "method", "card_bin", "card_last4", "channel", "decline_reason"}

// exportPayments streams every payment matching the list's filters as
// CSV, page by page, amounts in major units of each row's currency.
func (u *UI) exportPayments(w http.ResponseWriter, r *http.Request) {
	svc, err := u.paymentsService(r.Context())
	if err != nil {
		u.fail(w, r, err)
		return
	}
	f, err := uiFilter(r.URL.Query())
	if err != nil {
		u.fail(w, r, err)
		return
	}
	// A limit the query gives is the page size: the file holds every
	// matching row either way.
	f.After = ""
	if r.URL.Query().Get("limit") == "" {
		f.Limit = exportPageSize
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), exportFor)
	defer cancel()
	pg, err := svc.List(ctx, f)
	if err != nil {
		u.fail(w, r, err)
		return
	}
	mode := "live"
	if f.Test {
		mode = "test"
	}
	name := "payments-" + mode + "-" + u.d.Now().UTC().Format("20060102-150405") + ".csv"
	w.Header().Set("Content-Type", "text/csv; charset=utf-8")
	w.Header().Set("Content-Disposition", `attachment; filename="`+name+`"`)
	w.Header().Set("Cache-Control", "no-store")
	rc := http.NewResponseController(w)
	cw := csv.NewWriter(w)
	_ = cw.Write(csvColumns)
	rows := 0
	for {
		for _, p := range pg.Payments {
			_ = cw.Write(csvRow(p))
		}
		rows += len(pg.Payments)
		cw.Flush()
		if err := cw.Error(); err != nil {
			return // the browser went away
		}
		_ = rc.Flush()
		if pg.NextCursor == "" {
			return
		}
		f.After = pg.NextCursor
		if pg, err = svc.List(ctx, f); err != nil {
			// The status is sent: abort the connection, so the browser
			// reports a failed download instead of a short file.
			u.d.Log.Error().Ctx(r.Context()).Err(err).Int("rows", rows).Msg("payment export failed")
			panic(http.ErrAbortHandler)
		}
	}
}

func csvRow(p payment.Payment) []string {
	amt := func(v int64) string { return decimal(v, p.Currency) }
	var bin, last4 string
	if p.Card != nil {
		bin, last4 = p.Card.BIN, p.Card.Last4
	}
	return []string{p.CreatedAt.UTC().Format(time.RFC3339), p.OrderNo, p.ID, p.MerchantID, p.TerminalID, p.Status,
		amt(p.Amount), amt(p.Discount), amt(p.PointsAmount), amt(p.Payable), amt(p.Fee), amt(p.Refunded), p.Currency,
		p.Method, bin, last4, p.Channel, csvText(p.DeclineReason)}
}

// csvText keeps a free-text cell from being read as a formula by a
// spreadsheet.
func csvText(s string) string {
	if s != "" && strings.ContainsRune("=+-@\t\r", rune(s[0])) {
		return "'" + s
	}
	return s
}

// decimal prints minor units as a plain decimal number of major units,
// such as "1234.50" (no separators: for files, not for people).
func decimal(minor int64, currency string) string {
	digits := currencyExponent(currency)
	neg := minor < 0
	s := strconv.FormatInt(minor, 10)
	if neg {
		s = s[1:]
	}
	if digits > 0 {
		for len(s) <= digits {
			s = "0" + s
		}
		s = s[:len(s)-digits] + "." + s[len(s)-digits:]
	}
	if neg {
		s = "-" + s
	}
	return s
}

// currencyExponent is the number of decimals of currency's minor unit.
func currencyExponent(currency string) int {
	if d, ok := currencyDigits[currency]; ok {
		return d
	}
	return 2
}

// parseMajor reads an amount typed in major units of currency ("12.50")
// as minor units, naming field when it is not one.
func parseMajor(field, s, currency string) (int64, error) {
	digits := currencyExponent(currency)
	example := "12"
	if digits > 0 {
		example += "." + strings.Repeat("5", digits)
	}
	bad := errs.Field(field, "must be an amount in %s with at most %d decimals, such as %s", currency, digits, example)
	s = strings.ReplaceAll(strings.TrimSpace(s), ",", "")
	whole, frac, _ := strings.Cut(s, ".")
	if whole == "" {
		whole = "0"
	}
	if len(frac) > digits || len(whole) > 13 || strings.Trim(whole+frac, "0123456789") != "" || s == "" || s == "." {
		return 0, bad
	}
	frac += strings.Repeat("0", digits-len(frac))
	v, err := strconv.ParseInt(whole+frac, 10, 64)
	if err != nil {
		return 0, bad
	}
	return v, nil
}

// refundForm is the refund form as typed.
type refundForm struct {
	Amount, Reason string
}

type paymentData struct {
	page
	Payment      payment.Payment
	MerchantName string
	Entries      []payment.Entry
	// CanRefund shows the refund form (payments:refund and something left
	// to refund); CanVoid the void button (succeeded, nothing refunded).
	CanRefund, CanVoid bool
	Refundable         int64
	Step               string // the amount input's step
	// RefundKey and VoidKey are the forms' Idempotency-Keys.
	RefundKey, VoidKey string
	Form               refundForm
	Error              string
}

// attempt is a refund or void form post that did not go through: its
// problem, the form as typed and the Idempotency-Key to send again (empty
// for a new one).
type attempt struct {
	Kind, Key, Problem string
	Form               refundForm
}

func (u *UI) paymentPage(w http.ResponseWriter, r *http.Request) {
	u.renderPayment(w, r, http.StatusOK, attempt{})
}

// renderPayment shows a payment, with the attempt that failed, if any.
func (u *UI) renderPayment(w http.ResponseWriter, r *http.Request, status int, at attempt) {
	ctx := r.Context()
	svc, err := u.paymentsService(ctx)
	if err != nil {
		u.fail(w, r, err)
		return
	}
	p, err := svc.Get(ctx, chi.URLParam(r, "id"))
	if err != nil {
		u.fail(w, r, err)
		return
	}
	es, err := svc.Entries(ctx, p.ID)
	if err != nil {
		u.fail(w, r, err)
		return
	}
	d := paymentData{Payment: *p, Entries: es, Form: at.Form, Error: at.Problem, Step: "1"}
	if m, err := svc.GetMerchant(ctx, p.MerchantID); err == nil {
		d.MerchantName = m.Name
	}
	if digits := currencyExponent(p.Currency); digits > 0 {
		d.Step = "0." + strings.Repeat("0", digits-1) + "1"
	}
	refundable := p.Status == payment.StatusSucceeded || p.Status == payment.StatusPartiallyRefunded
	d.Refundable = p.Payable - p.Refunded - p.RefundReserved
	if principal.From(ctx).Has("payments:refund") && refundable {
		d.CanRefund = d.Refundable > 0
		d.CanVoid = p.Status == payment.StatusSucceeded && p.Refunded == 0 && p.RefundReserved == 0
	}
	d.RefundKey, d.VoidKey = uuid.NewString(), uuid.NewString()
	switch {
	case at.Key == "":
	case at.Kind == "void":
		d.VoidKey = at.Key
	default:
		d.RefundKey = at.Key
	}
	title := "Payment " + p.OrderNo
	d.page = u.page(w, r, title, "Payments")
	d.Parent = &navItem{Label: "Payments", Href: "/ui/payments"}
	u.render(w, r, status, "payment", "layout", d)
}

// stillRunning is how long a post waits for an earlier submission of the
// same form to finish, so that it can show that one's outcome.
const stillRunning = 25 * time.Second

// refund refunds (kind "refund") or voids a payment through the form.
func (u *UI) refund(kind string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		ctx := r.Context()
		svc, err := u.paymentsService(ctx)
		if err != nil {
			u.fail(w, r, err)
			return
		}
		id := chi.URLParam(r, "id")
		p, err := svc.Get(ctx, id)
		if err != nil {
			u.fail(w, r, err)
			return
		}
		back := "/ui/payments/" + p.ID
		form := refundForm{Amount: strings.TrimSpace(r.PostFormValue("amount")), Reason: strings.TrimSpace(r.PostFormValue("reason"))}
		key := r.PostFormValue("idempotency_key")
		in := payment.NewRefund{Reason: form.Reason}
		if kind == "refund" && form.Amount != "" {
			v, err := parseMajor("amount", form.Amount, p.Currency)
			if err != nil {
				u.renderPayment(w, r, httpx.StatusOf(err), attempt{Kind: kind, Key: key, Problem: problemText(err), Form: form})
				return
			}
			in.Amount = &v
		}
		resp, err := createRefund(ctx, svc, key, p.ID, kind, in)
		if err != nil {
			switch errs.CodeOf(err) {
			case errs.Unprocessable:
				// The form was used for another refund: a new one gets a new key.
				u.renderPayment(w, r, httpx.StatusOf(err), attempt{Kind: kind, Form: form,
					Problem: "This form was already used for a different " + kind + ". Check the refunds below, then submit the form again if you still want to."})
			case errs.Invalid, errs.Conflict, errs.Unavailable, errs.QuotaExceeded:
				u.renderPayment(w, r, httpx.StatusOf(err), attempt{Kind: kind, Key: key, Problem: problemText(err), Form: form})
			default:
				u.fail(w, r, err)
			}
			return
		}
		var ref payment.Refund
		if err := json.Unmarshal(resp.Body, &ref); err != nil {
			u.fail(w, r, err)
			return
		}
		kindOK, text := refundOutcome(ref)
		if resp.Replayed {
			text = "This form was already submitted; nothing more was done. " + text
		}
		u.setFlash(w, kindOK, text)
		http.Redirect(w, r, back, http.StatusSeeOther)
	}
}

// createRefund calls the payment service; while an earlier submission of
// the same form (the same key) is still with the bank, it waits for that
// one's answer, which is then replayed.
func createRefund(ctx context.Context, svc *payment.Service, key, id, kind string, in payment.NewRefund) (*payment.Response, error) {
	deadline := time.Now().Add(stillRunning)
	for {
		resp, err := svc.CreateRefund(ctx, key, id, kind, in)
		e := errs.As(err)
		if err == nil || e.Code != errs.Conflict || e.Extra["retry_after_seconds"] == nil || time.Now().After(deadline) {
			return resp, err
		}
		select {
		case <-ctx.Done():
			return nil, err
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// refundOutcome is the flash a refund's answer shows: its kind and text.
func refundOutcome(ref payment.Refund) (string, string) {
	what := "Refund"
	if ref.Kind == "void" {
		what = "Void"
	}
	amount := money(ref.Amount, ref.Currency)
	switch ref.Status {
	case payment.StatusSucceeded:
		if ref.Kind == "void" {
			return "ok", "Void of " + amount + " succeeded: the payment is voided and its fee reversed."
		}
		return "ok", "Refund of " + amount + " succeeded."
	case payment.StatusFailed:
		return "bad", what + " of " + amount + " failed: the bank refused it; nothing was refunded."
	}
	return "ok", what + " of " + amount + " was sent; the bank has not confirmed it yet. It is resolved automatically and shown here when it is."
}

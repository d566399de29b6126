package main

import (
	"encoding/csv"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"

	"github.com/google/uuid"

	"github.com/atriumhq/atrium/modules/payment"
)

// startPaymentInstance starts one instance whose payments go to a
// simulated bank.
func startPaymentInstance(t *testing.T) *instance {
	t.Helper()
	return startPaymentCluster(t, 1)[0]
}

// payCard takes a card payment of amount euro cents with the terminal's
// token and wants it to succeed.
func payCard(t testing.TB, in *instance, terminal string, amount int64) payment.Payment {
	t.Helper()
	resp, body := post(t, in, terminal, "/api/v1/payments", uuid.NewString(), cardPayment(amount))
	wantStatus(t, resp, body, http.StatusCreated)
	p := decodeJSON[payment.Payment](t, body)
	if p.Status != payment.StatusSucceeded {
		t.Fatalf("payment %s: %s", p.ID, body)
	}
	return p
}

var idempotencyInput = regexp.MustCompile(`id="(refund|void)-form">\s*<input type="hidden" name="csrf_token" value="([^"]+)">\s*<input type="hidden" name="idempotency_key" value="([^"]+)">`)

// refundForms returns the CSRF token and the refund and void forms'
// Idempotency-Keys that a payment page rendered ("" for a form not shown).
func refundForms(page string) (csrf, refundKey, voidKey string) {
	for _, m := range idempotencyInput.FindAllStringSubmatch(page, -1) {
		csrf = m[2]
		if m[1] == "refund" {
			refundKey = m[3]
		} else {
			voidKey = m[3]
		}
	}
	return csrf, refundKey, voidKey
}

// flashOf is the flash message a page shows, "" if none.
func flashOf(page string) string {
	m := regexp.MustCompile(`data-testid="flash">([^<]*)<`).FindStringSubmatch(page)
	if m == nil {
		return ""
	}
	return m[1]
}

func wantPage(t testing.TB, c *http.Client, u string, status int, wants ...string) string {
	t.Helper()
	resp, page := uiPage(t, c, u)
	if resp.StatusCode != status {
		t.Fatalf("GET %s: %d, want %d\n%s", u, resp.StatusCode, status, page)
	}
	for _, w := range wants {
		if !strings.Contains(page, w) {
			t.Errorf("GET %s lacks %q", u, w)
		}
	}
	if strings.Contains(page, "style=") || strings.Contains(page, "<script>") {
		t.Errorf("GET %s has inline style or script, which the CSP forbids", u)
	}
	return page
}

// postBack posts a form and, when it redirects, returns the page it
// redirects to; otherwise the response's own page.
func postBack(t testing.TB, c *http.Client, base, path string, form url.Values) (int, string) {
	t.Helper()
	resp, page := uiPost(t, c, base+path, form)
	if resp.StatusCode == http.StatusSeeOther {
		_, page = uiPage(t, c, base+resp.Header.Get("Location"))
	}
	return resp.StatusCode, page
}

func TestWebMerchants(t *testing.T) {
	in := startPaymentInstance(t)
	tenantA := uuid.NewString()
	ensureTenant(t, in, tenantA)
	admin := loginAdmin(t, in)
	c := uiLogin(t, in, "admin@atrium.test", adminPassword)

	page := wantPage(t, c, in.URL+"/ui/merchants", http.StatusOK, `href="/ui/merchants" aria-current="page"`,
		`href="/ui/payments"`, `id="create-merchant"`, `<select name="tenant_id" required>`, `value="`+tenantA+`"`)
	csrf := csrfOf(t, page)
	form := url.Values{"csrf_token": {csrf}, "tenant_id": {tenantA}, "ref": {"harbour-01"}, "name": {"Harbour Coffee"},
		"mcc": {"5814"}, "settlement_account": {"DE89370400440532013000"}, "fee_bps": {"100"}, "fee_fixed": {"10"},
		"channels": {"simbank"}, "promotions": {"coffee10 1000 100\r\n\r\nbig 5000 700\r\n"}, "point_value": {"1"}}

	// Field errors come back on the form, with what was typed.
	for _, c2 := range []struct{ field, value, want string }{
		{"fee_bps", "1%", "Fee bps must be a whole number."},
		{"fee_bps", "20000", "Fee bps must be 0 to 10000 basis points."},
		{"mcc", "58", "Mcc must be a four-digit merchant category code"},
		{"channels", "simbank, nope", `Channels no bank channel &#34;nope&#34; (configured: simbank).`},
		{"promotions", "coffee10 1000", `Promotions line 1: write each promotion as`},
		{"promotions", "coffee10 100 1000", `save must be positive and below spend`},
		{"tenant_id", "", "Tenant id is required for a platform administrator"},
	} {
		f := url.Values{}
		for k, v := range form {
			f[k] = v
		}
		f.Set(c2.field, c2.value)
		resp, page := uiPost(t, c, in.URL+"/ui/merchants", f)
		if resp.StatusCode != http.StatusBadRequest || !strings.Contains(page, `data-testid="form-error"`) || !strings.Contains(page, c2.want) ||
			!strings.Contains(page, `value="Harbour Coffee"`) {
			t.Errorf("%s=%q: %d, want 400 with %q on the form", c2.field, c2.value, resp.StatusCode, c2.want)
		}
	}

	status, page := postBack(t, c, in.URL, "/ui/merchants", form)
	if status != http.StatusSeeOther || !strings.Contains(flashOf(page), "Merchant Harbour Coffee created") {
		t.Fatalf("create: %d, flash %q", status, flashOf(page))
	}
	for _, want := range []string{`data-testid="merchant-ref">harbour-01<`, `100 bps + 10 minor units`, `<span class="mono">big</span>: save 700 on 5000`,
		`coffee10 1000 100` + "\nbig 5000 700", `id="edit-merchant-form"`, ` id="merchant-status-form"`, "Nothing is owed yet"} {
		if !strings.Contains(page, want) {
			t.Errorf("the merchant page lacks %q", want)
		}
	}
	if resp, page := uiPost(t, c, in.URL+"/ui/merchants", form); resp.StatusCode != http.StatusConflict && resp.StatusCode != http.StatusBadRequest ||
		!strings.Contains(page, "already exists") {
		t.Errorf("the same ref again: %d", resp.StatusCode)
	}
	m := decodeJSON[struct{ Merchants []payment.Merchant }](t, func() []byte {
		resp, body := call(t, http.MethodGet, in.URL+"/api/v1/merchants", nil, bearer(admin))
		wantStatus(t, resp, body, http.StatusOK)
		return body
	}()).Merchants[0]
	back := "/ui/merchants/" + m.ID

	// Two payments, one refunded in part: the balance is what is owed.
	term := newTerminalToken(t, in, admin, tenantA, "harbour-01", false)
	p1 := payCard(t, in, term, 1000) // fee 10 + 10
	payCard(t, in, term, 6000)       // the big promotion is not asked for: fee 60 + 10
	resp, body := call(t, http.MethodPost, in.URL+"/api/v1/payments/"+p1.ID+"/refunds", jsonBody(map[string]any{"amount": 300}),
		withJSON(http.Header{"Authorization": {"Bearer " + admin}, "Idempotency-Key": {uuid.NewString()}}))
	wantStatus(t, resp, body, http.StatusCreated)
	owed := "66.10 EUR" // 10.00 - 0.20 fee - 3.00 refunded + 60.00 - 0.70 fee
	wantPage(t, c, in.URL+"/ui/merchants", http.StatusOK, `data-merchant="harbour-01"`, `data-testid="owed"><div>`+owed+`</div>`,
		`100 bps + 10`, `<span class="tag">simbank</span>`)
	wantPage(t, c, in.URL+back, http.StatusOK, `data-currency="EUR"`, `data-testid="live">`+owed+`<`, `data-testid="test">—<`,
		`href="/ui/payments?merchant_id=`+m.ID+`"`)

	// Edit: a field error stays on the form; a good change is saved.
	edit := url.Values{"csrf_token": {csrf}, "name": {"Harbour Coffee Pier 3"}, "mcc": {"5812"}, "settlement_account": {"DE89370400440532013000"},
		"fee_bps": {"250"}, "fee_fixed": {"0"}, "channels": {""}, "promotions": {""}, "point_value": {"0"}}
	bad := url.Values{}
	for k, v := range edit {
		bad[k] = v
	}
	bad.Set("point_value", "-1")
	if resp, page := uiPost(t, c, in.URL+back, bad); resp.StatusCode != http.StatusBadRequest ||
		!strings.Contains(page, "Point value must be 0 to 1000000") || !strings.Contains(page, `value="Harbour Coffee Pier 3"`) {
		t.Errorf("a bad point value: %d", resp.StatusCode)
	}
	status, page = postBack(t, c, in.URL, back, edit)
	if status != http.StatusSeeOther || !strings.Contains(flashOf(page), "Harbour Coffee Pier 3 saved") ||
		!strings.Contains(page, "250 bps + 0 minor units") || !strings.Contains(page, "every configured channel") {
		t.Errorf("edit: %d, flash %q", status, flashOf(page))
	}

	// Disabled, its terminals' payments are refused; enabled, taken again.
	status, page = postBack(t, c, in.URL, back+"/status", url.Values{"csrf_token": {csrf}, "status": {"disabled"}})
	if status != http.StatusSeeOther || !strings.Contains(page, `data-testid="merchant-status">disabled<`) {
		t.Fatalf("disable: %d, flash %q", status, flashOf(page))
	}
	h := withJSON(bearer(term))
	h.Set("Idempotency-Key", uuid.NewString())
	resp, body = call(t, http.MethodPost, in.URL+"/api/v1/payments", jsonBody(map[string]any{"amount": 100, "currency": "EUR",
		"method": map[string]any{"type": "card", "number": "4242424242424242", "exp_month": 12, "exp_year": 2030}}), h)
	wantProblem(t, resp, body, http.StatusForbidden, "forbidden")
	status, page = postBack(t, c, in.URL, back+"/status", url.Values{"csrf_token": {csrf}, "status": {"active"}})
	if status != http.StatusSeeOther || !strings.Contains(page, `data-testid="merchant-status">active<`) {
		t.Fatalf("enable: %d, flash %q", status, flashOf(page))
	}
	payCard(t, in, term, 100)

	// A terminal registered with the test-mode box is a test terminal.
	resp, _ = uiPost(t, c, in.URL+"/ui/terminals", url.Values{"csrf_token": {csrf}, "tenant_id": {tenantA}, "merchant_ref": {"harbour-01"},
		"name": {"Training till"}, "test_mode": {"1"}})
	if resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("register a test terminal: %d", resp.StatusCode)
	}
	wantPage(t, c, in.URL+resp.Header.Get("Location"), http.StatusOK, `data-testid="mode"><span class="pill warn">test</span>`)
	page = wantPage(t, c, in.URL+"/ui/terminals", http.StatusOK, `name="test_mode"`, `data-testid="mode"><span class="pill warn">test</span>`,
		`data-testid="mode"><span class="pill muted">live</span>`)
	if strings.Count(page, `data-testid="mode"><span class="pill warn">test</span>`) != 1 {
		t.Error("the terminals list does not show exactly one test terminal")
	}

	// A tenant's viewer sees its merchants, without the forms.
	loginAs(t, in, "vi@a.test", adminPassword, "viewer", tenantA)
	viewer := uiLogin(t, in, "vi@a.test", adminPassword)
	page = wantPage(t, viewer, in.URL+"/ui/merchants", http.StatusOK, `data-merchant="harbour-01"`)
	if strings.Contains(page, `id="create-merchant"`) {
		t.Error("a viewer is offered the create form")
	}
	page = wantPage(t, viewer, in.URL+back, http.StatusOK, "Harbour Coffee Pier 3")
	if strings.Contains(page, `id="edit-merchant-form"`) || strings.Contains(page, ` id="merchant-status-form"`) {
		t.Error("a viewer is offered the edit or status form")
	}
	if resp, _ := uiPost(t, viewer, in.URL+back+"/status", url.Values{"csrf_token": {csrfOf(t, page)}, "status": {"disabled"}}); resp.StatusCode != http.StatusForbidden {
		t.Errorf("a viewer disabling a merchant: %d, want 403", resp.StatusCode)
	}
}

func TestWebPayments(t *testing.T) {
	in := startPaymentInstance(t)
	tenantA := uuid.NewString()
	ensureTenant(t, in, tenantA)
	admin := loginAdmin(t, in)
	c := uiLogin(t, in, "admin@atrium.test", adminPassword)
	m := createMerchant(t, in, admin, tenantA, "pier-3", nil)
	term := newTerminalToken(t, in, admin, tenantA, "pier-3", false)
	testTerm := newTerminalToken(t, in, admin, tenantA, "pier-3", true)
	p1 := payCard(t, in, term, 1000)
	p2 := payCard(t, in, term, 2500)
	p3 := payCard(t, in, term, 1234)
	pt := payCard(t, in, testTerm, 700)

	// The list, newest first, live only; a test payment only in test mode.
	page := wantPage(t, c, in.URL+"/ui/payments", http.StatusOK, `href="/ui/payments" aria-current="page"`,
		`data-payment="`+p3.ID+`"`, `data-payment="`+p1.ID+`"`, `12.34 EUR`, `25.00 EUR`, `href="/ui/payments/export.csv"`,
		`Merchant pier-3`)
	if strings.Index(page, p3.ID) > strings.Index(page, p1.ID) || strings.Contains(page, pt.ID) {
		t.Error("the list is not newest first, or shows a test payment in live mode")
	}
	page = wantPage(t, c, in.URL+"/ui/payments?mode=test", http.StatusOK, `data-payment="`+pt.ID+`"`, "Test payments")
	if strings.Contains(page, p1.ID) {
		t.Error("the test list shows a live payment")
	}

	// Filters.
	for _, f := range []struct {
		query string
		want  []payment.Payment
	}{
		{"order_no=" + url.QueryEscape(p2.OrderNo), []payment.Payment{p2}},
		{"status=succeeded&min_amount=1200&max_amount=2000", []payment.Payment{p3}},
		{"status=refunded", nil},
		{"terminal_id=" + p1.TerminalID + "&from=" + p1.CreatedAt.UTC().Format("2006-01-02") + "&to=" + p1.CreatedAt.UTC().Format("2006-01-02"),
			[]payment.Payment{p1, p2, p3}},
		{"to=" + p1.CreatedAt.UTC().AddDate(0, 0, -1).Format("2006-01-02"), nil},
		{"merchant_id=" + m.ID + "&status=&from=", []payment.Payment{p1, p2, p3}},
	} {
		page := wantPage(t, c, in.URL+"/ui/payments?"+f.query, http.StatusOK)
		if got := strings.Count(page, `data-payment="`); got != len(f.want) {
			t.Errorf("%s: %d rows, want %d", f.query, got, len(f.want))
		}
		for _, p := range f.want {
			if !strings.Contains(page, `data-payment="`+p.ID+`"`) {
				t.Errorf("%s: %s missing", f.query, p.OrderNo)
			}
		}
	}
	wantPage(t, c, in.URL+"/ui/payments?merchant_id="+m.ID, http.StatusOK, `name="merchant_id" value="`+m.ID+`"`,
		`Showing the payments of merchant <a href="/ui/merchants/`+m.ID+`" class="strong">Merchant pier-3</a>`,
		`href="/ui/payments/export.csv?merchant_id=`+m.ID+`"`)
	for query, want := range map[string]string{"status=lost": "Status unknown status", "from=yesterday": "From must be an RFC 3339 time",
		"min_amount=1.5": "Min amount must be a non-negative integer", "terminal_id=7": "Terminal id must be an id"} {
		wantPage(t, c, in.URL+"/ui/payments?"+query, http.StatusBadRequest, `data-testid="filter-error"`, want)
	}

	// Keyset pagination: Older carries the cursor, Newest goes back.
	page = wantPage(t, c, in.URL+"/ui/payments?limit=2&status=", http.StatusOK, `data-testid="older"`)
	if strings.Count(page, `data-payment="`) != 2 || strings.Contains(page, `data-testid="newest"`) {
		t.Errorf("first page of 2")
	}
	older := regexp.MustCompile(`href="([^"]+)" data-testid="older"`).FindStringSubmatch(page)[1]
	older = strings.ReplaceAll(older, "&amp;", "&")
	if !strings.Contains(older, "cursor="+p2.ID) || strings.Contains(older, "status=") {
		t.Errorf("older link %s", older)
	}
	page = wantPage(t, c, in.URL+older, http.StatusOK, `data-payment="`+p1.ID+`"`, `href="/ui/payments?limit=2" data-testid="newest"`)
	if strings.Count(page, `data-payment="`) != 1 || strings.Contains(page, `data-testid="older"`) {
		t.Errorf("last page: want only %s and no Older link", p1.OrderNo)
	}

	// CSV export, read page by page (limit is the page size).
	resp, csvBody := uiPage(t, c, in.URL+"/ui/payments/export.csv?limit=1")
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/csv") ||
		!regexp.MustCompile(`^attachment; filename="payments-live-\d{8}-\d{6}\.csv"$`).MatchString(resp.Header.Get("Content-Disposition")) {
		t.Fatalf("export: %d %v", resp.StatusCode, resp.Header)
	}
	rows, err := csv.NewReader(strings.NewReader(csvBody)).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(rows[0], ",") != "created_at,order_no,id,merchant_id,terminal_id,status,amount,discount,points_amount,payable,fee,refunded,currency,method,card_bin,card_last4,channel,decline_reason" {
		t.Errorf("header %v", rows[0])
	}
	if len(rows) != 4 || rows[1][2] != p3.ID || rows[2][2] != p2.ID || rows[3][2] != p1.ID {
		t.Fatalf("rows %v", rows)
	}
	if got := strings.Join(rows[1][5:], ","); got != "succeeded,12.34,0.00,0.00,12.34,0.00,0.00,EUR,card,424242,4242,simbank," {
		t.Errorf("row %v", got)
	}
	if strings.Contains(csvBody, "4242424242424242") {
		t.Error("the export has a card number")
	}
	_, csvBody = uiPage(t, c, in.URL+"/ui/payments/export.csv?mode=test&order_no="+url.QueryEscape(pt.OrderNo))
	if rows, _ := csv.NewReader(strings.NewReader(csvBody)).ReadAll(); len(rows) != 2 || rows[1][2] != pt.ID {
		t.Errorf("test export by order number: %v", rows)
	}
	if resp, _ := uiPage(t, c, in.URL+"/ui/payments/export.csv?status=lost"); resp.StatusCode != http.StatusBadRequest {
		t.Errorf("export with a bad filter: %d", resp.StatusCode)
	}

	// The payment page: fields, timeline, ledger, the refund and void forms.
	pp := "/ui/payments/" + p1.ID
	page = wantPage(t, c, in.URL+pp, http.StatusOK, `data-testid="order-no">`+p1.OrderNo+`<`, `data-testid="payment-status">succeeded<`,
		`card <span class="mono">424242…4242</span>`, `<td><span class="pill ok">succeeded</span></td>`, `<span class="tag">capture</span>`,
		`<td class="mono">bank_clearing</td>`, `data-testid="debit">10.00 EUR<`, `data-testid="credit">10.00 EUR<`, `class="crumb" href="/ui/payments"`,
		`placeholder="all: 10.00 EUR"`, `step="0.01"`, "No refund or void.")
	csrf, refundKey, voidKey := refundForms(page)
	if refundKey == "" || voidKey == "" || refundKey == voidKey {
		t.Fatalf("refund key %q, void key %q", refundKey, voidKey)
	}
	if _, again, _ := refundForms(wantPage(t, c, in.URL+pp, http.StatusOK)); again == refundKey {
		t.Error("a new rendering of the form has the same Idempotency-Key")
	}

	// A bad amount is a field error on the form, which keeps its key.
	for amount, want := range map[string]string{"1.234": "Amount must be an amount in EUR with at most 2 decimals", "abc": "Amount must be an amount",
		"11.00": "Amount is 1100, but only 1000 of the payment&#39;s 1000 is refundable", "0": "Amount must be a positive number"} {
		resp, page := uiPost(t, c, in.URL+pp+"/refunds", url.Values{"csrf_token": {csrf}, "idempotency_key": {refundKey}, "amount": {amount}, "reason": {"r"}})
		if _, key, _ := refundForms(page); resp.StatusCode != http.StatusBadRequest || !strings.Contains(page, `data-testid="refund-error"`) ||
			!strings.Contains(page, want) || key != refundKey || !strings.Contains(page, `value="`+amount+`"`) {
			t.Errorf("amount %q: %d, key kept %v, want %q", amount, resp.StatusCode, key == refundKey, want)
		}
	}

	// A refund through the form; the same form submitted again replays it.
	refund := url.Values{"csrf_token": {csrf}, "idempotency_key": {refundKey}, "amount": {"3"}, "reason": {"returned cup"}}
	status, page := postBack(t, c, in.URL, pp+"/refunds", refund)
	if status != http.StatusSeeOther || flashOf(page) != "Refund of 3.00 EUR succeeded." ||
		!strings.Contains(page, `data-testid="payment-status">partially_refunded<`) || !strings.Contains(page, `data-testid="refund-status">succeeded<`) ||
		!strings.Contains(page, "returned cup") || !strings.Contains(page, `<span class="tag">refund</span>`) {
		t.Fatalf("refund: %d, flash %q\n%s", status, flashOf(page), page)
	}
	if _, _, vk := refundForms(page); vk != "" {
		t.Error("a partly refunded payment offers a void")
	}
	status, page = postBack(t, c, in.URL, pp+"/refunds", refund)
	if status != http.StatusSeeOther || !strings.HasPrefix(flashOf(page), "This form was already submitted; nothing more was done. Refund of 3.00 EUR succeeded.") {
		t.Errorf("the same form again: %d, flash %q", status, flashOf(page))
	}
	refund.Set("amount", "4")
	resp, page = uiPost(t, c, in.URL+pp+"/refunds", refund)
	if _, key, _ := refundForms(page); resp.StatusCode != http.StatusUnprocessableEntity || !strings.Contains(page, "This form was already used for a different refund") ||
		key == refundKey {
		t.Errorf("the used form with another amount: %d, new key %v", resp.StatusCode, key != refundKey)
	}
	_, body := call(t, http.MethodGet, in.URL+"/api/v1/payments/"+p1.ID, nil, bearer(admin))
	if got := decodeJSON[payment.Payment](t, body); got.Refunded != 300 || len(got.Refunds) != 1 {
		t.Errorf("after the refund and its replays: refunded %d in %d refunds, want 300 in 1", got.Refunded, len(got.Refunds))
	}

	// The rest, with no amount: all that is refundable.
	page = wantPage(t, c, in.URL+pp, http.StatusOK, `placeholder="all: 7.00 EUR"`)
	csrf, refundKey, _ = refundForms(page)
	status, page = postBack(t, c, in.URL, pp+"/refunds", url.Values{"csrf_token": {csrf}, "idempotency_key": {refundKey}})
	if status != http.StatusSeeOther || flashOf(page) != "Refund of 7.00 EUR succeeded." || !strings.Contains(page, `data-testid="payment-status">refunded<`) ||
		strings.Contains(page, `id="refund-form"`) {
		t.Errorf("refund the rest: %d, flash %q", status, flashOf(page))
	}
	resp, page = uiPost(t, c, in.URL+pp+"/refunds", url.Values{"csrf_token": {csrf}, "idempotency_key": {uuid.NewString()}})
	if resp.StatusCode != http.StatusConflict || !strings.Contains(page, "only a succeeded payment can be refunded") {
		t.Errorf("refunding a refunded payment: %d", resp.StatusCode)
	}

	// Void: the whole payment and its fee.
	page = wantPage(t, c, in.URL+"/ui/payments/"+p2.ID, http.StatusOK)
	csrf, _, voidKey = refundForms(page)
	status, page = postBack(t, c, in.URL, "/ui/payments/"+p2.ID+"/void", url.Values{"csrf_token": {csrf}, "idempotency_key": {voidKey}})
	if status != http.StatusSeeOther || !strings.HasPrefix(flashOf(page), "Void of 25.00 EUR succeeded") ||
		!strings.Contains(page, `data-testid="payment-status">voided<`) || !strings.Contains(page, `<span class="tag">void</span>`) {
		t.Errorf("void: %d, flash %q", status, flashOf(page))
	}

	// A viewer reads payments but gets no refund form, and may not refund.
	loginAs(t, in, "vi@a.test", adminPassword, "viewer", tenantA)
	viewer := uiLogin(t, in, "vi@a.test", adminPassword)
	page = wantPage(t, viewer, in.URL+"/ui/payments/"+p3.ID, http.StatusOK, p3.OrderNo)
	if strings.Contains(page, `id="refund-form"`) || strings.Contains(page, `id="void-form"`) {
		t.Error("a viewer is offered the refund or void form")
	}
	if resp, _ := uiPost(t, viewer, in.URL+"/ui/payments/"+p3.ID+"/refunds", url.Values{"csrf_token": {csrfOf(t, page)},
		"idempotency_key": {uuid.NewString()}}); resp.StatusCode != http.StatusForbidden {
		t.Errorf("a viewer refunding: %d, want 403", resp.StatusCode)
	}
	if resp, _ := uiPage(t, c, in.URL+"/ui/payments/"+uuid.NewString()); resp.StatusCode != http.StatusNotFound {
		t.Errorf("an unknown payment: %d", resp.StatusCode)
	}
}

// A tenant's users see only their tenant's payments: another tenant's
// payment page is 404 and the export holds none of its rows.
func TestWebPaymentsTenantIsolation(t *testing.T) {
	in := startPaymentInstance(t)
	tenantA, tenantB := uuid.NewString(), uuid.NewString()
	ensureTenant(t, in, tenantA)
	admin := loginAdmin(t, in)
	m := createMerchant(t, in, admin, tenantA, "a-1", nil)
	pa := payCard(t, in, newTerminalToken(t, in, admin, tenantA, "a-1", false), 1500)
	loginAs(t, in, "bea@b.test", adminPassword, "tenant_admin", tenantB)
	createMerchant(t, in, admin, tenantB, "b-1", nil)
	pb := payCard(t, in, newTerminalToken(t, in, admin, tenantB, "b-1", false), 800)
	b := uiLogin(t, in, "bea@b.test", adminPassword)

	if resp, _ := uiPage(t, b, in.URL+"/ui/payments/"+pa.ID); resp.StatusCode != http.StatusNotFound {
		t.Errorf("B opening A's payment: %d, want 404", resp.StatusCode)
	}
	if resp, _ := uiPage(t, b, in.URL+"/ui/merchants/"+m.ID); resp.StatusCode != http.StatusNotFound {
		t.Errorf("B opening A's merchant: %d, want 404", resp.StatusCode)
	}
	page := wantPage(t, b, in.URL+"/ui/payments/"+pb.ID, http.StatusOK, pb.OrderNo)
	csrf, key, _ := refundForms(page)
	if resp, _ := uiPost(t, b, in.URL+"/ui/payments/"+pa.ID+"/refunds", url.Values{"csrf_token": {csrf}, "idempotency_key": {key}}); resp.StatusCode != http.StatusNotFound {
		t.Errorf("B refunding A's payment: %d, want 404", resp.StatusCode)
	}
	page = wantPage(t, b, in.URL+"/ui/payments", http.StatusOK, pb.ID)
	if strings.Contains(page, pa.ID) {
		t.Error("B's list shows A's payment")
	}
	page = wantPage(t, b, in.URL+"/ui/merchants", http.StatusOK, `data-merchant="b-1"`)
	if strings.Contains(page, `data-merchant="a-1"`) || strings.Contains(page, `name="tenant_id"`) {
		t.Error("B's merchants page shows A's merchant or a tenant picker")
	}
	for _, q := range []string{"", "?order_no=" + url.QueryEscape(pa.OrderNo), "?merchant_id=" + m.ID} {
		resp, body := uiPage(t, b, in.URL+"/ui/payments/export.csv"+q)
		if resp.StatusCode != http.StatusOK || strings.Contains(body, pa.ID) || strings.Contains(body, pa.OrderNo) {
			t.Errorf("B's export%s: %d, has A's row: %v", q, resp.StatusCode, strings.Contains(body, pa.ID))
		}
		if want := q == ""; strings.Contains(body, pb.ID) != want {
			t.Errorf("B's export%s: has B's payment %v, want %v", q, !want, want)
		}
	}
	// The platform administrator sees both.
	admin2 := uiLogin(t, in, "admin@atrium.test", adminPassword)
	wantPage(t, admin2, in.URL+"/ui/payments", http.StatusOK, pa.ID, pb.ID)
}

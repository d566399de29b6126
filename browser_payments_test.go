package main

import (
	"strings"
	"testing"

	"github.com/chromedp/chromedp"
	"github.com/google/uuid"
)

// A platform administrator creates a merchant through the form, finds a
// payment a terminal made by its order number, and refunds part of it
// through the payment page's form.
func TestBrowserPayments(t *testing.T) {
	in := startPaymentInstance(t)
	tenantA := uuid.NewString()
	ensureTenant(t, in, tenantA)
	admin := loginAdmin(t, in)
	ctx, problems := browser(t)
	text := textOf(t, ctx)

	form := `#create-merchant `
	err := chromedp.Do(ctx,
		chromedp.Navigate(in.URL+"/ui/login"),
		fillSignIn("admin@atrium.test", adminPassword),
		chromedp.WaitVisible(chromedp.CSS(`[data-testid="instance-count"]`)),
		chromedp.Click(chromedp.CSS(`nav a[href="/ui/merchants"]`)),
		chromedp.WaitVisible(chromedp.CSS(`#create-merchant`)),
		chromedp.SetValue(chromedp.CSS(form+`select[name="tenant_id"]`), tenantA),
		chromedp.SendKeys(chromedp.CSS(form+`input[name="ref"]`), "pier-3"),
		chromedp.SendKeys(chromedp.CSS(form+`input[name="name"]`), "Harbour Coffee Pier 3"),
		chromedp.SendKeys(chromedp.CSS(form+`input[name="mcc"]`), "5814"),
		chromedp.SendKeys(chromedp.CSS(form+`input[name="settlement_account"]`), "DE89370400440532013000"),
		chromedp.SetValue(chromedp.CSS(form+`input[name="fee_bps"]`), "150"),
		chromedp.SendKeys(chromedp.CSS(form+`textarea[name="promotions"]`), "coffee10 1000 100"),
		chromedp.Click(chromedp.CSS(form+`button[type="submit"]`)),
		chromedp.WaitVisible(chromedp.CSS(`[data-testid="merchant-ref"]`)),
	)
	if err != nil {
		t.Fatalf("create a merchant: %v", err)
	}
	if got := text(`[data-testid="flash"]`); !strings.Contains(got, "Merchant Harbour Coffee Pier 3 created") {
		t.Fatalf("flash after create: %q", got)
	}
	if got := text(`[data-testid="merchant-fee"]`); got != "150 bps + 0 minor units" {
		t.Errorf("fee: %q", got)
	}

	// A terminal of the merchant takes two payments through the API.
	term := newTerminalToken(t, in, admin, tenantA, "pier-3", false)
	p := payCard(t, in, term, 1000)
	other := payCard(t, in, term, 2000)

	err = chromedp.Do(ctx,
		chromedp.Click(chromedp.CSS(`nav a[href="/ui/payments"]`)),
		chromedp.WaitVisible(chromedp.CSS(`tr[data-payment="`+other.ID+`"]`)),
		chromedp.SendKeys(chromedp.CSS(`#payment-filters input[name="order_no"]`), p.OrderNo),
		chromedp.Click(chromedp.CSS(`#payment-filters button[type="submit"]`)),
		chromedp.WaitNotPresent(chromedp.CSS(`tr[data-payment="`+other.ID+`"]`)),
		chromedp.WaitVisible(chromedp.CSS(`tr[data-payment="`+p.ID+`"]`)),
	)
	if err != nil {
		t.Fatalf("filter by order number: %v", err)
	}
	rows, err := chromedp.Run(ctx, chromedp.Evaluate[int](`document.querySelectorAll("#payments tbody tr").length`))
	if err != nil || rows != 1 {
		t.Fatalf("rows after filtering by order number: %d, %v", rows, err)
	}
	row := `tr[data-payment="` + p.ID + `"] `
	if got := text(row + `[data-testid="amount"]`); got != "10.00 EUR" {
		t.Errorf("amount shown: %q", got)
	}
	if got := text(row + `[data-testid="status"]`); got != "succeeded" {
		t.Errorf("status shown: %q", got)
	}
	if loc := location(t, ctx); !strings.Contains(loc, "order_no="+p.OrderNo) {
		t.Errorf("the filter is not in the URL: %s", loc)
	}

	// The payment page: refund 2.50 of it through the form.
	err = chromedp.Do(ctx,
		chromedp.Click(chromedp.CSS(row+`[data-testid="order-no"]`)),
		chromedp.WaitVisible(chromedp.CSS(`#refund-form`)),
	)
	if err != nil {
		t.Fatalf("open the payment: %v", err)
	}
	if got := text(`[data-testid="payment-status"]`); got != "succeeded" {
		t.Errorf("status before the refund: %q", got)
	}
	if got := text(`#ledger`); !strings.Contains(got, "capture") || !strings.Contains(got, "bank_clearing") || !strings.Contains(got, "0.15 EUR") {
		t.Errorf("the ledger shows %q; want the capture and the 0.15 EUR fee", got)
	}
	err = chromedp.Do(ctx,
		chromedp.SendKeys(chromedp.CSS(`#refund-form input[name="amount"]`), "2.50"),
		chromedp.SendKeys(chromedp.CSS(`#refund-form input[name="reason"]`), "cold coffee"),
		chromedp.Click(chromedp.CSS(`#refund-form button[type="submit"]`)),
		chromedp.WaitVisible(chromedp.CSS(`[data-testid="refund-status"]`)),
	)
	if err != nil {
		t.Fatalf("refund: %v", err)
	}
	if got := text(`[data-testid="flash"]`); got != "Refund of 2.50 EUR succeeded." {
		t.Errorf("flash after the refund: %q", got)
	}
	if got := text(`[data-testid="refund-status"]`); got != "succeeded" {
		t.Errorf("refund status: %q", got)
	}
	if got := text(`[data-testid="payment-status"]`); got != "partially_refunded" {
		t.Errorf("payment status after the refund: %q", got)
	}
	if got := text(`[data-testid="refunded"]`); got != "2.50 EUR" {
		t.Errorf("refunded: %q", got)
	}
	if got := text(`#timeline`); !strings.Contains(got, "refund requested") || !strings.Contains(got, "partially_refunded") {
		t.Errorf("timeline: %q", got)
	}
	if n, err := chromedp.Run(ctx, chromedp.Evaluate[int](`document.querySelectorAll("#void-form").length`)); err != nil || n != 0 {
		t.Errorf("a partly refunded payment offers a void: %d, %v", n, err)
	}
	if p := problems(); len(p) > 0 {
		t.Fatalf("console errors or CSP violations: %v", p)
	}
}

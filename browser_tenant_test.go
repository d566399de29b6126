package main

import (
	"strings"
	"testing"

	"github.com/chromedp/chromedp"
)

// A platform administrator creates a tenant, lowers one of its quotas,
// and sees the override and the use bar; then suspends the tenant.
func TestBrowserTenantsAndQuotas(t *testing.T) {
	in := startCluster(t, 1)[0]
	loginAdmin(t, in)
	ctx, problems := browser(t)
	text := textOf(t, ctx)

	err := chromedp.Do(ctx,
		chromedp.Navigate(in.URL+"/ui/login"),
		fillSignIn("admin@atrium.test", adminPassword),
		chromedp.WaitVisible(chromedp.CSS(`[data-testid="instance-count"]`)),
		chromedp.Click(chromedp.CSS(`nav a[href="/ui/tenants"]`)),
		chromedp.WaitVisible(chromedp.CSS(`#create-tenant`)),
		chromedp.SendKeys(chromedp.CSS(`#create-tenant input[name="name"]`), "Harbour Coffee Group"),
		chromedp.Click(chromedp.CSS(`#create-tenant button[type="submit"]`)),
		chromedp.WaitVisible(chromedp.CSS(`#quotas`)),
	)
	if err != nil {
		t.Fatalf("create a tenant: %v", err)
	}
	if got := text(`[data-testid="flash"]`); !strings.Contains(got, "Harbour Coffee Group created") {
		t.Fatalf("flash after create: %q", got)
	}
	if got := text(`tr[data-quota="max_users"] [data-testid="limit"]`); !strings.HasPrefix(got, "50") {
		t.Fatalf("max_users limit of the default plan shows %q", got)
	}

	// Lower max_users to 3: the row shows the override.
	row := `tr[data-quota="max_users"]`
	err = chromedp.Do(ctx,
		chromedp.SetValue(chromedp.CSS(row+` input[name="value"]`), "3"),
		chromedp.Click(chromedp.CSS(row+` button[type="submit"]`)),
		chromedp.WaitVisible(chromedp.CSS(row+` .pill.warn`)),
	)
	if err != nil {
		t.Fatalf("override max_users: %v", err)
	}
	if got := text(row + ` [data-testid="limit"]`); !strings.HasPrefix(got, "3") || !strings.Contains(got, "override") {
		t.Fatalf("max_users after the override shows %q", got)
	}

	// The tenant appears in the list; suspending it shows on its page.
	err = chromedp.Do(ctx,
		chromedp.Click(chromedp.CSS(`#tenant-status button.danger`)),
		chromedp.WaitVisible(chromedp.CSS(`#tenant-status button.primary`)),
	)
	if err != nil {
		t.Fatalf("suspend: %v", err)
	}
	if got := text(`[data-testid="tenant-status"]`); got != "suspended" {
		t.Fatalf("status after suspend: %q", got)
	}
	if p := problems(); len(p) > 0 {
		t.Fatalf("console errors or CSP violations: %v", p)
	}
}

package main

import (
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/atriumhq/atrium/modules/payment"
	"github.com/atriumhq/atrium/modules/payment/simbank"
	"github.com/atriumhq/atrium/platform/testenv"
	atriumsql "github.com/atriumhq/atrium/sql"
)

// startChannelCluster starts n instances whose one bank channel, simbank,
// is a simulated bank, sharing one database and Redis key space.
func startChannelCluster(t *testing.T, n int) []*instance {
	t.Helper()
	_, bankURL := startBank(t, simbank.Config{Seed: 1})
	dbURL := testenv.Database(t, atriumsql.Migrations())
	prefix := testenv.RedisPrefix(t)
	out := make([]*instance, n)
	for i := range out {
		cfg := testConfig(dbURL, prefix, fmt.Sprintf("test-%d", i))
		cfg.Payments.Channels = []string{"simbank=" + bankURL}
		out[i] = startInstance(t, cfg)
	}
	return out
}

type channelsBody struct {
	Channels []payment.ChannelView `json:"channels"`
	Partial  bool                  `json:"partial"`
}

// simbankView reads the simbank channel's dashboard from in.
func simbankView(t testing.TB, in *instance, token string) payment.ChannelView {
	t.Helper()
	resp, body := apiAs(t, in, token)(http.MethodGet, "/api/v1/payment-channels", nil)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET payment-channels: %d %s", resp.StatusCode, body)
	}
	b := decodeJSON[channelsBody](t, body)
	if len(b.Channels) != 1 || b.Channels[0].Name != "simbank" || b.Partial {
		t.Fatalf("channels %s", body)
	}
	return b.Channels[0]
}

func selfRow(v payment.ChannelView) payment.ChannelInstance {
	for _, i := range v.Instances {
		if i.Self {
			return i
		}
	}
	return payment.ChannelInstance{}
}

func TestChannelBreakerAPI(t *testing.T) {
	c := startChannelCluster(t, 2)
	admin := loginAdmin(t, c[0])
	api0, api1 := apiAs(t, c[0], admin), apiAs(t, c[1], admin)

	var v payment.ChannelView
	eventually(t, 5*time.Second, func() error {
		if v = simbankView(t, c[1], admin); len(v.Instances) != 2 {
			return fmt.Errorf("%d instances on the dashboard, want 2", len(v.Instances))
		}
		return nil
	})
	if v.Mode != "auto" || v.Breaker != "closed" || v.MaxConcurrent != 128 || v.TimeoutCeilingMS != 5000 || !selfRow(v).Self {
		t.Fatalf("dashboard %+v", v)
	}

	resp, body := api0(http.MethodPut, "/api/v1/payment-channels/simbank/breaker", map[string]any{"mode": "forced_open"})
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("force open: %d %s", resp.StatusCode, body)
	}
	if m := decodeJSON[payment.ChannelMode](t, body); m.Channel != "simbank" || m.Mode != "forced_open" || !strings.HasPrefix(m.UpdatedBy, "user:") {
		t.Fatalf("force open answered %s", body)
	}
	// The other instance's own breaker (its live figures) is open within a second.
	within(t, time.Second, "forced open on the other instance", func() bool {
		v = simbankView(t, c[1], admin)
		return v.Mode == "forced_open" && selfRow(v).Breaker == "open" && selfRow(v).Mode == "forced_open"
	})
	eventually(t, 3*time.Second, func() error {
		if v = simbankView(t, c[1], admin); v.OpenOn != 2 || v.Breaker != "open" {
			return fmt.Errorf("open on %d instances, breaker %s", v.OpenOn, v.Breaker)
		}
		return nil
	})

	resp, body = api1(http.MethodPut, "/api/v1/payment-channels/simbank/breaker", map[string]any{"mode": "auto"})
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("auto: %d %s", resp.StatusCode, body)
	}
	within(t, time.Second, "auto on the first instance", func() bool {
		v = simbankView(t, c[0], admin)
		return v.Mode == "auto" && selfRow(v).Breaker == "closed"
	})

	tenantToken, _ := tenantUser(t, c[0], "chan@tenant.test")
	for _, tc := range []struct {
		name, method, path string
		token              string
		body               any
		status             int
		field              string
	}{
		{"unknown mode", http.MethodPut, "/api/v1/payment-channels/simbank/breaker", admin, map[string]any{"mode": "half"}, 400, "mode"},
		{"no mode", http.MethodPut, "/api/v1/payment-channels/simbank/breaker", admin, map[string]any{}, 400, "mode"},
		{"unknown field", http.MethodPut, "/api/v1/payment-channels/simbank/breaker", admin, map[string]any{"mode": "auto", "until": 5}, 400, "until"},
		{"unknown channel", http.MethodPut, "/api/v1/payment-channels/nope/breaker", admin, map[string]any{"mode": "auto"}, 404, ""},
		{"tenant user reads", http.MethodGet, "/api/v1/payment-channels", tenantToken, nil, 403, ""},
		{"tenant user switches", http.MethodPut, "/api/v1/payment-channels/simbank/breaker", tenantToken, map[string]any{"mode": "forced_open"}, 403, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := apiAs(t, c[0], tc.token)(tc.method, tc.path, tc.body)
			if resp.StatusCode != tc.status || (tc.field != "" && !strings.Contains(string(body), `"field":"`+tc.field+`"`)) {
				t.Fatalf("%d %s, want %d naming %q", resp.StatusCode, body, tc.status, tc.field)
			}
		})
	}
	if v = simbankView(t, c[0], admin); v.Mode != "auto" {
		t.Fatalf("a refused change took effect: %+v", v)
	}
}

func TestWebChannelsPage(t *testing.T) {
	c := startChannelCluster(t, 1)
	loginAdmin(t, c[0])
	ui := uiLogin(t, c[0], "admin@atrium.test", adminPassword)

	resp, body := uiPage(t, ui, c[0].URL+"/ui/channels")
	if resp.StatusCode != http.StatusOK || !strings.Contains(body, `data-channel="simbank"`) || !strings.Contains(body, `href="/ui/channels"`) {
		t.Fatalf("channels page: %d\n%s", resp.StatusCode, body)
	}
	resp, live := uiPage(t, ui, c[0].URL+"/ui/channels/live")
	if resp.StatusCode != http.StatusOK || !strings.Contains(live, `data-channel="simbank"`) || strings.Contains(live, "<html") {
		t.Fatalf("live fragment: %d\n%s", resp.StatusCode, live)
	}

	csrf := csrfOf(t, body)
	resp, _ = uiPost(t, ui, c[0].URL+"/ui/channels/simbank/breaker", url.Values{"mode": {"forced_open"}})
	if resp.StatusCode != http.StatusForbidden {
		t.Fatalf("a post without the CSRF token: %d, want 403", resp.StatusCode)
	}
	resp, _ = uiPost(t, ui, c[0].URL+"/ui/channels/simbank/breaker", url.Values{"csrf_token": {csrf}, "mode": {"forced_open"}})
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/ui/channels" {
		t.Fatalf("force open: %d to %q", resp.StatusCode, resp.Header.Get("Location"))
	}
	_, body = uiPage(t, ui, c[0].URL+"/ui/channels")
	if !strings.Contains(body, "simbank is forced open") || !strings.Contains(body, `<span class="pill bad">forced open</span>`) ||
		!strings.Contains(body, `data-testid="auto"`) {
		t.Fatalf("after forcing open:\n%s", body)
	}
	resp, _ = uiPost(t, ui, c[0].URL+"/ui/channels/simbank/breaker", url.Values{"csrf_token": {csrf}, "mode": {"sideways"}})
	if resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("bad mode: %d, want a redirect with the problem", resp.StatusCode)
	}
	if _, body = uiPage(t, ui, c[0].URL+"/ui/channels"); !strings.Contains(body, "Mode must be auto, forced_open or forced_closed") {
		t.Fatalf("the bad mode's problem is not shown:\n%s", body)
	}

	tenantUser(t, c[0], "pages@tenant.test")
	tu := uiLogin(t, c[0], "pages@tenant.test", adminPassword)
	for _, p := range []string{"/ui/channels", "/ui/channels/live"} {
		resp, body := uiPage(t, tu, c[0].URL+p)
		if resp.StatusCode != http.StatusForbidden || !strings.Contains(body, "channels:manage") {
			t.Errorf("%s as a tenant administrator: %d, want 403 naming channels:manage", p, resp.StatusCode)
		}
	}
	if _, body := uiPage(t, tu, c[0].URL+"/ui/sessions"); strings.Contains(body, `href="/ui/channels"`) {
		t.Error("the nav offers Channels to a tenant administrator")
	}
}

// TestBrowserChannelBreakerSwitch forces a channel open from the page and
// sees the page, refreshing itself, report it open on both instances; Auto
// releases it.
func TestBrowserChannelBreakerSwitch(t *testing.T) {
	c := startChannelCluster(t, 2)
	admin := loginAdmin(t, c[0])
	ctx, problems := browser(t)
	panel := `section[data-channel="simbank"]`
	text := textOf(t, ctx)
	err := chromedp.Do(ctx,
		chromedp.Navigate(c[0].URL+"/ui/channels"),
		fillSignIn("admin@atrium.test", adminPassword),
		chromedp.WaitVisible(chromedp.CSS(panel)),
	)
	if err != nil {
		t.Fatalf("channels page: %v", err)
	}
	poll := pollerOf(t, ctx, 10*time.Second)
	// Both instances report within seconds, without a reload.
	poll("both instances on the page", `document.querySelectorAll('section[data-channel="simbank"] tbody tr').length === 2`)
	if m := text(panel + ` [data-testid="mode"]`); m != "auto" {
		t.Fatalf("mode %q, want auto", m)
	}

	err = chromedp.Do(ctx,
		chromedp.Click(chromedp.CSS(panel+` [data-testid="force-open"]`)),
		chromedp.WaitVisible(chromedp.CSS(`[data-testid="flash"]`)),
	)
	if err != nil {
		t.Fatalf("force open: %v", err)
	}
	if m := text(panel + ` [data-testid="mode"]`); m != "forced open" {
		t.Fatalf("after forcing open the mode shows %q", m)
	}
	// The other instance applied it: its own figures say so.
	if v := simbankView(t, c[1], admin); selfRow(v).Breaker != "open" {
		eventually(t, time.Second, func() error {
			if v := simbankView(t, c[1], admin); selfRow(v).Breaker != "open" {
				return fmt.Errorf("breaker %s on test-1", selfRow(v).Breaker)
			}
			return nil
		})
	}
	poll("the breaker open on both instances", `(() => { const p = document.querySelector('section[data-channel="simbank"]');
		return !!p && p.querySelector('[data-testid="breaker"]').textContent.trim() === 'open' && p.textContent.includes('open on 2 of 2 instances'); })()`)

	err = chromedp.Do(ctx,
		chromedp.Click(chromedp.CSS(panel+` [data-testid="auto"]`)),
		chromedp.WaitVisible(chromedp.CSS(`[data-testid="flash"]`)),
	)
	if err != nil {
		t.Fatalf("auto: %v", err)
	}
	poll("the breaker closed again", `(() => { const p = document.querySelector('section[data-channel="simbank"]');
		return !!p && p.querySelector('[data-testid="breaker"]').textContent.trim() === 'closed' && p.querySelector('[data-testid="mode"]').textContent.trim() === 'auto'; })()`)
	if p := problems(); len(p) > 0 {
		t.Fatalf("browser reported errors (CSP violations show here): %v", p)
	}
}

package main

import (
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/log"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"
)

// browser starts headless Debian Chromium for one test. Without chromium the
// test is skipped, unless ATRIUM_TEST_REQUIRE_BROWSER is set (make test sets
// it), so a green `make test` means the browser tests really ran. A failing
// test saves a screenshot under testdata/screenshots/. The returned problems
// function lists console errors and CSP violations seen so far.
func browser(t *testing.T) (ctx context.Context, problems func() []string) {
	t.Helper()
	path, err := exec.LookPath("chromium")
	if err != nil {
		if os.Getenv("ATRIUM_TEST_REQUIRE_BROWSER") != "" {
			t.Fatal("chromium is not installed (make test installs Debian's chromium)")
		}
		t.Skip("chromium not installed; make test installs it")
	}
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(path),
		chromedp.Headless, chromedp.NoSandbox, chromedp.DisableGPU, chromedp.NoFirstRun, chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1280, 800),
	}
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelCtx := chromedp.NewContext(actx)
	ctx, cancelTimeout := context.WithTimeout(ctx, 60*time.Second)

	var mu sync.Mutex
	var seen []string
	err = chromedp.Listen(ctx, func(ev any) {
		mu.Lock()
		defer mu.Unlock()
		switch e := ev.(type) {
		case *log.EventEntryAdded:
			if e.Entry.Level == log.EntryLevelError {
				seen = append(seen, "log: "+e.Entry.Text)
			}
		case *runtime.EventConsoleAPICalled:
			if e.Type == runtime.ConsoleAPICalledTypeError {
				seen = append(seen, "console error")
			}
		case *runtime.EventExceptionThrown:
			seen = append(seen, "exception: "+e.ExceptionDetails.Text)
		}
	})
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	if _, err := chromedp.Call(ctx, log.Enable, cdp.Empty{}); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			if png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100)); err == nil {
				dir := filepath.Join("testdata", "screenshots")
				_ = os.MkdirAll(dir, 0o755)
				name := filepath.Join(dir, strings.ReplaceAll(t.Name(), "/", "_")+".png")
				if os.WriteFile(name, png, 0o644) == nil {
					t.Logf("screenshot saved to %s", name)
				}
			}
		}
		cancelTimeout()
		cancelCtx()
		cancelAlloc()
	})
	return ctx, func() []string {
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), seen...)
	}
}

// fillSignIn fills in and submits the sign-in form the browser is showing.
func fillSignIn(email, password string) chromedp.Action[chromedp.Void] {
	return chromedp.Steps(
		chromedp.WaitVisible(chromedp.CSS(`#login-form input[name="email"]`)),
		chromedp.SendKeys(chromedp.CSS(`#login-form input[name="email"]`), email),
		chromedp.SendKeys(chromedp.CSS(`#login-form input[name="password"]`), password),
		chromedp.Click(chromedp.CSS(`#login-form button[type="submit"]`)),
	)
}

// textOf returns a function that reads the trimmed text of the element a
// CSS selector finds, failing the test when there is none.
func textOf(t *testing.T, ctx context.Context) func(sel string) string {
	return func(sel string) string {
		t.Helper()
		s, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(sel)))
		if err != nil {
			t.Fatalf("text of %s: %v", sel, err)
		}
		return strings.TrimSpace(s)
	}
}

// pollerOf returns a function that waits up to timeout for js to be true
// in the page, failing the test after that. A form post navigates: a poll
// that starts on the page being left loses its context (chromedp says so in
// several words), and is started again on the new page.
func pollerOf(t *testing.T, ctx context.Context, timeout time.Duration) func(what, js string) {
	return func(what, js string) {
		t.Helper()
		deadline := time.Now().Add(timeout)
		for {
			_, err := chromedp.Run(ctx, chromedp.Poll[bool](js, chromedp.WithPollingTimeout(time.Until(deadline)), chromedp.WithPollingInterval(100*time.Millisecond)))
			if err == nil {
				return
			}
			transient := strings.Contains(err.Error(), "Cannot find context") || strings.Contains(err.Error(), "navigated") ||
				strings.Contains(err.Error(), "Execution context was destroyed")
			if !transient || time.Now().After(deadline) {
				t.Fatalf("%s: %v", what, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
}

// location is the path and query of the page the browser shows.
func location(t *testing.T, ctx context.Context) string {
	t.Helper()
	loc, err := chromedp.Run(ctx, chromedp.Location())
	if err != nil {
		t.Fatal(err)
	}
	u, err := url.Parse(loc)
	if err != nil {
		t.Fatal(err)
	}
	return u.RequestURI()
}

func TestBrowserClusterOverviewIsLive(t *testing.T) {
	c := startCluster(t, 2)
	loginAdmin(t, c[0])
	ctx, problems := browser(t)

	// The overview needs a signed-in user: the browser goes to sign in and
	// comes back.
	if err := chromedp.Do(ctx, chromedp.Navigate(c[0].URL+"/"), chromedp.WaitVisible(chromedp.CSS(`#login-form`))); err != nil {
		t.Fatalf("sign-in page: %v", err)
	}
	if loc := location(t, ctx); loc != "/ui/login?next=%2Fui%2Foverview" {
		t.Fatalf("anonymous visit landed on %s", loc)
	}
	err := chromedp.Do(ctx,
		fillSignIn("admin@atrium.test", adminPassword),
		chromedp.WaitVisible(chromedp.CSS(`tr[data-instance="test-1"]`)),
	)
	if err != nil {
		t.Fatalf("overview: %v", err)
	}
	title, err := chromedp.Run(ctx, chromedp.Title())
	if err != nil || title != "Cluster overview · Atrium" {
		t.Fatalf("title %q, %v", title, err)
	}
	self, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(`tr[data-instance="test-0"] .self`)))
	if err != nil || self != "this" {
		t.Fatalf("the instance serving the page is not marked: %q, %v", self, err)
	}
	htmx, err := chromedp.Run(ctx, chromedp.Evaluate[bool](`typeof window.htmx === "object"`))
	if err != nil || !htmx {
		t.Fatalf("htmx did not load: %v", err)
	}

	// The page refreshes itself: a stopped instance leaves the table without
	// a reload.
	if err := c[1].Stop(); err != nil {
		t.Fatal(err)
	}
	if err := chromedp.Do(ctx, chromedp.WaitNotPresent(chromedp.CSS(`tr[data-instance="test-1"]`))); err != nil {
		t.Fatalf("stopped instance still listed: %v", err)
	}
	count, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(`[data-testid="instance-count"]`)))
	if err != nil || count != "1" {
		t.Fatalf("instance count %q after stopping test-1: %v", count, err)
	}
	if p := problems(); len(p) > 0 {
		t.Fatalf("browser reported errors (CSP violations show here): %v", p)
	}
}

// TestBrowserAuthFlows walks the auth admin pages as an administrator
// would: sign in, register a terminal (its secret shown once), revoke
// another session, sign out.
func TestBrowserAuthFlows(t *testing.T) {
	in := startCluster(t, 1)[0]
	loginAdmin(t, in)
	const terminalTenant = "0193a000-0000-7000-8000-0000000000aa"
	ensureTenant(t, in, terminalTenant) // terminals belong to an existing tenant
	ctx, problems := browser(t)
	text := textOf(t, ctx)

	// Sign in and see the dashboard, with who is signed in.
	err := chromedp.Do(ctx,
		chromedp.Navigate(in.URL+"/ui/login"),
		fillSignIn("admin@atrium.test", adminPassword),
		chromedp.WaitVisible(chromedp.CSS(`[data-testid="instance-count"]`)),
	)
	if err != nil {
		t.Fatalf("sign in: %v", err)
	}
	if me := text(`[data-testid="me"]`); me != "admin@atrium.test" {
		t.Fatalf("top bar shows %q", me)
	}

	// Register a terminal: the secret is shown once, and it works.
	err = chromedp.Do(ctx,
		chromedp.Click(chromedp.CSS(`nav a[href="/ui/terminals"]`)),
		chromedp.WaitVisible(chromedp.CSS(`#create-terminal`)),
		chromedp.SendKeys(chromedp.CSS(`#create-terminal input[name="merchant_ref"]`), "shop-42"),
		chromedp.SendKeys(chromedp.CSS(`#create-terminal input[name="name"]`), "Front till"),
		chromedp.SetValue(chromedp.CSS(`#create-terminal select[name="tenant_id"]`), terminalTenant),
		chromedp.Click(chromedp.CSS(`#create-terminal button[type="submit"]`)),
		chromedp.WaitVisible(chromedp.CSS(`[data-testid="client-secret"]`)),
	)
	if err != nil {
		t.Fatalf("register terminal: %v", err)
	}
	id, secret := text(`[data-testid="client-id"]`), text(`[data-testid="client-secret"]`)
	if len(secret) < 40 {
		t.Fatalf("client secret %q", secret)
	}
	resp, body := postForm(t, in.URL+"/oauth2/token", url.Values{"grant_type": {"client_credentials"}, "client_id": {id}, "client_secret": {secret}}, nil)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("the shown secret does not work: %d %s", resp.StatusCode, body)
	}
	err = chromedp.Do(ctx,
		chromedp.Reload(),
		chromedp.WaitVisible(chromedp.CSS(`[data-testid="secret-hidden"]`)),
	)
	if err != nil {
		t.Fatalf("reload: %v", err)
	}
	page, err := chromedp.Run(ctx, chromedp.Evaluate[string](`document.documentElement.outerHTML`))
	if err != nil || strings.Contains(page, secret) {
		t.Fatalf("the secret is shown again after a reload (%v)", err)
	}
	err = chromedp.Do(ctx,
		chromedp.Click(chromedp.CSS(`a.crumb`)),
		chromedp.WaitVisible(chromedp.CSS(`tr[data-terminal="`+id+`"]`)),
	)
	if err != nil {
		t.Fatalf("terminal list: %v", err)
	}
	if seen := text(`tr[data-terminal="` + id + `"] [data-testid="last-seen"]`); !strings.HasSuffix(seen, "ago") {
		t.Fatalf("last seen %q after the terminal got a token", seen)
	}

	// A second session of the same user, signed in over the API.
	other := loginAdmin(t, in)
	var me struct {
		SessionID string `json:"session_id"`
	}
	if resp, body := call(t, http.MethodGet, in.URL+"/api/v1/me", nil, bearer(other)); resp.StatusCode != http.StatusOK ||
		json.Unmarshal(body, &me) != nil || me.SessionID == "" {
		t.Fatalf("me: %d %s", resp.StatusCode, body)
	}
	row := `tr[data-session="` + me.SessionID + `"]`
	err = chromedp.Do(ctx,
		chromedp.Click(chromedp.CSS(`a[href="/ui/sessions"]`)),
		chromedp.WaitVisible(chromedp.CSS(row+` button[type="submit"]`)),
	)
	if err != nil {
		t.Fatalf("my sessions: %v", err)
	}
	if state := text(row + ` [data-testid="state"]`); state != "active" {
		t.Fatalf("the other session is %q before revoking", state)
	}
	if n, err := chromedp.Run(ctx, chromedp.Evaluate[int](`document.querySelectorAll("tr[data-session] .self").length`)); err != nil || n != 1 {
		t.Fatalf("%d sessions marked as this one (%v)", n, err)
	}
	err = chromedp.Do(ctx,
		chromedp.Click(chromedp.CSS(row+` button[type="submit"]`)),
		chromedp.WaitVisible(chromedp.CSS(`[data-testid="flash"]`)),
	)
	if err != nil {
		t.Fatalf("revoke: %v", err)
	}
	if state := text(row + ` [data-testid="state"]`); state != "revoked" {
		t.Fatalf("the other session is %q after revoking", state)
	}
	if resp, _ := call(t, http.MethodGet, in.URL+"/api/v1/me", nil, bearer(other)); resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("the revoked session's token still works: %d", resp.StatusCode)
	}

	// Sign out: the UI asks to sign in again.
	err = chromedp.Do(ctx,
		chromedp.Click(chromedp.CSS(`[data-testid="sign-out"]`)),
		chromedp.WaitVisible(chromedp.CSS(`#login-form`)),
		chromedp.Navigate(in.URL+"/ui/overview"),
		chromedp.WaitVisible(chromedp.CSS(`#login-form`)),
	)
	if err != nil {
		t.Fatalf("sign out: %v", err)
	}
	if loc := location(t, ctx); loc != "/ui/login?next=%2Fui%2Foverview" {
		t.Fatalf("after signing out /ui/overview shows %s", loc)
	}
	if p := problems(); len(p) > 0 {
		t.Fatalf("browser reported errors (CSP violations show here): %v", p)
	}
}

package main

import (
	"context"
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
			if png, err := chromedp.Run(ctx, chromedp.FullScreenshot(90)); err == nil {
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

func TestBrowserClusterOverviewIsLive(t *testing.T) {
	c := startCluster(t, 2)
	ctx, problems := browser(t)

	err := chromedp.Do(ctx,
		chromedp.Navigate(c[0].URL+"/"),
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

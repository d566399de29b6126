package main

import (
	"context"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/atriumhq/atrium/modules/gpu"
	"github.com/atriumhq/atrium/platform/testenv"
)

// formErrorOf is the form error a page shows, "" if none.
func formErrorOf(page string) string {
	m := regexp.MustCompile(`data-testid="form-error">([^<]*)<`).FindStringSubmatch(page)
	if m == nil {
		return ""
	}
	return m[1]
}

// TestWebGPUPages walks the GPU pages without a browser: the cluster with
// its GPUs and a re-probe, a model registered and given a version through
// the forms, a deployment created, scaled and acted on; the service's
// field errors come back next to their form, never as an error page; a
// tenant administrator sees only what is theirs and cannot re-probe.
func TestWebGPUPages(t *testing.T) {
	e := startGPUs(t, 1)
	in := e.in[0]
	nodes := e.liveGPUs(t, 8)
	c := uiLogin(t, in, "admin@atrium.test", adminPassword)

	// The cluster: eight mock GPUs, live, and the fragment the page polls.
	page := wantPage(t, c, in.URL+"/ui/gpus", http.StatusOK, `href="/ui/gpus" aria-current="page"`, `data-node="node-0"`,
		`hx-get="/ui/gpus/live"`, `href="/ui/models"`, `href="/ui/deployments"`)
	if n := strings.Count(page, `<tr data-gpu="`); n != 8 {
		t.Errorf("the cluster page lists %d GPUs, want 8", n)
	}
	if !strings.Contains(page, `data-testid="node-live">live<`) || !strings.Contains(page, `<meter class="bar" min="0" max="40960"`) {
		t.Errorf("the node is not shown live with its GPUs' memory")
	}
	_, live := uiPage(t, c, in.URL+"/ui/gpus/live")
	if strings.Contains(live, "<html") || strings.Count(live, `<tr data-gpu="`) != 8 {
		t.Errorf("the live fragment:\n%s", live)
	}
	g := nodes[0].GPUs[0].UUID
	page = wantPage(t, c, in.URL+"/ui/gpus/"+g, http.StatusOK, "Health history", `id="reprobe-form"`, `hx-get="/ui/gpus/`+g+`/live"`)
	csrf := csrfOf(t, page)
	if resp, _ := uiPost(t, c, in.URL+"/ui/gpus/"+g+"/reprobe", url.Values{}); resp.StatusCode != http.StatusForbidden {
		t.Errorf("a re-probe without the CSRF token: %d, want 403", resp.StatusCode)
	}
	if strings.Contains(page, `data-kind="xid"`) {
		t.Fatal("a fresh GPU shows an XID")
	}

	// A critical XID: the cluster page shows the GPU out of service with
	// the reason and a re-probe button, its page the event; the re-probe
	// from the cluster page returns it to service.
	in.app.gpuDevs.(gpu.Simulator).InjectXID(g, 79)
	row := regexp.MustCompile(`(?s)<tr data-gpu="` + g + `" class="gpu-unhealthy">.*?</tr>`)
	testenv.Eventually(t, 10*time.Second, "the GPU unhealthy on the cluster page", func() bool {
		_, live := uiPage(t, c, in.URL+"/ui/gpus/live")
		return row.MatchString(live)
	})
	page = wantPage(t, c, in.URL+"/ui/gpus", http.StatusOK, `data-testid="healthy-count">7<`)
	if r := row.FindString(page); !strings.Contains(r, `<span class="sub">XID 79</span>`) || !strings.Contains(r, `data-testid="reprobe"`) {
		t.Errorf("the unhealthy GPU's row:\n%s", r)
	}
	wantPage(t, c, in.URL+"/ui/gpus/"+g, http.StatusOK, `<tr data-kind="xid">`, `<span class="pill bad">xid 79</span>`,
		`data-testid="unhealthy">Out of service: XID 79.`)
	status, page := postBack(t, c, in.URL, "/ui/gpus/"+g+"/reprobe", url.Values{"csrf_token": {csrf}, "back": {"cluster"}})
	if status != http.StatusSeeOther || !strings.Contains(flashOf(page), "Re-probe of "+g+" requested") || !strings.Contains(page, `id="gpus"`) {
		t.Errorf("re-probe: %d, flash %q", status, flashOf(page))
	}
	testenv.Eventually(t, 10*time.Second, "the GPU back in service with its history", func() bool {
		_, page := uiPage(t, c, in.URL+"/ui/gpus/"+g+"/live")
		return strings.Contains(page, `data-testid="health"><span class="pill ok">healthy</span>`) && strings.Contains(page, `<tr data-kind="recovered">`)
	})
	wantPage(t, c, in.URL+"/ui/gpus/GPU-nope", http.StatusNotFound, "No such GPU")

	// A model through the form; the service's field errors come back on it
	// with what was typed.
	page = wantPage(t, c, in.URL+"/ui/models", http.StatusOK, `id="create-model"`, `<select name="tenant_id" required>`, `value="`+e.tenant+`"`)
	model := url.Values{"csrf_token": {csrf}, "tenant_id": {e.tenant}, "name": {"llama"}, "description": {"a chat model"},
		"version": {"1"}, "artifact_uri": {"s3://models/llama/1"}, "command": {fakeModelCommand(t)}, "port": {"8000"},
		"health_path": {"/health"}, "gpus": {"1"}, "memory_mb": {"20000"}, "sharing": {"exclusive"}}
	for _, bad := range []struct{ field, value, want string }{
		{"port", "80x", "Port must be a whole number."},
		{"port", "70000", "Port must be 1 to 65535."},
		{"command", testBinary() + " --gpu {gpu}", "Command: unknown placeholder {gpu}"},
		{"command", "bash -c reboot", "Command must start one of the programs this platform allows"},
		{"sharing", "mig:huge", `Sharing: MIG profile &#34;huge&#34; is not of the form`},
		{"name", "no spaces", "Name must be 1 to 128 letters"},
		{"tenant_id", "", "Tenant is required for a platform administrator"},
	} {
		f := cloneValues(model)
		f.Set(bad.field, bad.value)
		resp, page := uiPost(t, c, in.URL+"/ui/models", f)
		if resp.StatusCode != http.StatusBadRequest || !strings.Contains(formErrorOf(page), bad.want) || !strings.Contains(page, `value="s3://models/llama/1"`) {
			t.Errorf("%s=%q: %d, form error %q, want 400 with %q and the form as typed", bad.field, bad.value, resp.StatusCode, formErrorOf(page), bad.want)
		}
		if bad.field != "tenant_id" && !strings.Contains(page, `name="`+bad.field+`" value="`+bad.value+`"`) {
			t.Errorf("%s: the typed value is not kept", bad.field)
		}
	}
	f := cloneValues(model)
	f.Set("sharing", "shared")
	f.Set("gpus", "2")
	if resp, page := uiPost(t, c, in.URL+"/ui/models", f); resp.StatusCode != http.StatusBadRequest ||
		formErrorOf(page) != "GPUs: shared replicas take exactly one GPU." || !strings.Contains(page, `name="gpus" value="2" min="1" step="1" aria-invalid="true"`) {
		t.Errorf("shared on 2 GPUs: %d, %q", resp.StatusCode, formErrorOf(page))
	}
	status, page = postBack(t, c, in.URL, "/ui/models", model)
	if status != http.StatusSeeOther || flashOf(page) != "Model llama created with version 1: deployments can run it now." {
		t.Fatalf("create the model: %d, flash %q", status, flashOf(page))
	}
	if !strings.Contains(page, `data-testid="need">1 GPU, exclusive, 20,000 MB each<`) || !strings.Contains(page, `id="add-version"`) {
		t.Errorf("the model page lacks its version's needs or the add-version form")
	}
	modelID := regexp.MustCompile(`action="/ui/models/([0-9a-f-]+)/versions"`).FindStringSubmatch(page)[1]
	version := url.Values{"csrf_token": {csrf}, "version": {"1"}, "artifact_uri": {"s3://models/llama/2"}, "command": {fakeModelCommand(t)},
		"port": {"8000"}, "gpus": {"1"}, "memory_mb": {"20000"}, "sharing": {"exclusive"}}
	if resp, page := uiPost(t, c, in.URL+"/ui/models/"+modelID+"/versions", version); resp.StatusCode != http.StatusBadRequest ||
		formErrorOf(page) != `Version &#34;1&#34; of this model exists.` {
		t.Errorf("a version that exists: %d, %q", resp.StatusCode, formErrorOf(page))
	}
	version.Set("version", "2")
	status, page = postBack(t, c, in.URL, "/ui/models/"+modelID+"/versions", version)
	if status != http.StatusSeeOther || !strings.Contains(flashOf(page), "Version 2 added") || strings.Count(page, `<tr data-version="`) != 2 {
		t.Fatalf("add version 2: %d, flash %q", status, flashOf(page))
	}
	wantPage(t, c, in.URL+"/ui/models", http.StatusOK, `data-model="llama" data-version="1"`, `data-model="llama" data-version="2"`)

	// A deployment through the form.
	page = wantPage(t, c, in.URL+"/ui/deployments", http.StatusOK, `href="/ui/deployments" aria-current="page"`, `id="create-deployment"`,
		`<option value="`+modelID+`">llama · Tenant `+e.tenant+` (versions 1, 2)</option>`)
	dep := url.Values{"csrf_token": {csrf}, "name": {"chat"}, "model_id": {modelID}, "version": {"1"}, "replicas": {"1"}, "min_replicas": {"1"},
		"max_replicas": {"2"}, "strategy": {"canary"}, "canary_steps": {"50, 100"}, "watch_seconds": {"3600"}, "max_error_rate": {"0.05"},
		"max_p99_ms": {"2000"}, "min_requests": {"20"}, "max_surge": {"1"}, "max_unavailable": {"0"}, "rollback_seconds": {"300"}}
	for _, bad := range []struct{ field, value, want string }{
		{"name", "Chat!", "Name must be 1 to 63 lower-case letters"},
		{"replicas", "5", "Replicas must be between min_replicas (1) and max_replicas (2)."},
		{"canary_steps", "10, 50", "Canary steps must be 1 to 10 percentages ending with 100."},
		{"canary_steps", "ten", "Canary steps must be percentages separated by commas"},
		{"max_error_rate", "2", "Max error rate must be 0 to 1"},
		{"version", "9", `Version: &#34;9&#34; is not a version of llama (it has: 1, 2).`},
		{"max_surge", "0", "Max_surge and max_unavailable cannot both be 0"},
	} {
		f := cloneValues(dep)
		f.Set(bad.field, bad.value)
		resp, page := uiPost(t, c, in.URL+"/ui/deployments", f)
		if resp.StatusCode != http.StatusBadRequest || !strings.Contains(formErrorOf(page), bad.want) || !strings.Contains(page, `name="name" value="`+f.Get("name")+`"`) {
			t.Errorf("%s=%q: %d, form error %q, want 400 with %q and the form as typed", bad.field, bad.value, resp.StatusCode, formErrorOf(page), bad.want)
		}
	}
	status, page = postBack(t, c, in.URL, "/ui/deployments", dep)
	if status != http.StatusSeeOther || flashOf(page) != "Deployment chat created: 1 replica of llama version 1 is being placed." {
		t.Fatalf("create the deployment: %d, flash %q", status, flashOf(page))
	}
	depID := regexp.MustCompile(`action="/ui/deployments/([0-9a-f-]+)/scale"`).FindStringSubmatch(page)[1]
	back := "/ui/deployments/" + depID
	for _, want := range []string{`id="release-form"`, `id="scale-form"`, `hx-get="/ui/deployments/` + depID + `/live"`, `data-testid="stable">1<`} {
		if !strings.Contains(page, want) {
			t.Errorf("the deployment page lacks %q", want)
		}
	}
	if n := strings.Count(page, `data-testid="promote"`); n != 0 {
		t.Errorf("promote offered with no release in progress")
	}
	// Actions that make no sense now come back as a message, not an error
	// page; the scale form's error shows next to it.
	status, page = postBack(t, c, in.URL, back+"/promote", url.Values{"csrf_token": {csrf}})
	if status != http.StatusSeeOther || flashOf(page) != "No release in progress." {
		t.Errorf("promote without a release: %d, flash %q", status, flashOf(page))
	}
	resp, page := uiPost(t, c, in.URL+back+"/scale", url.Values{"csrf_token": {csrf}, "replicas": {"7"}, "min_replicas": {"1"}, "max_replicas": {"2"}})
	if resp.StatusCode != http.StatusBadRequest || formErrorOf(page) != "Replicas must be between min_replicas (1) and max_replicas (2)." ||
		!strings.Contains(page, `name="replicas" value="7"`) {
		t.Errorf("scale beyond max: %d, %q", resp.StatusCode, formErrorOf(page))
	}
	status, page = postBack(t, c, in.URL, back+"/scale", url.Values{"csrf_token": {csrf}, "replicas": {"2"}, "min_replicas": {"1"}, "max_replicas": {"2"}})
	if status != http.StatusSeeOther || flashOf(page) != "chat scaled to 2 replicas (between 1 and 2)." {
		t.Errorf("scale: %d, flash %q", status, flashOf(page))
	}
	if status, _ := postBack(t, c, in.URL, back+"/sideways", url.Values{"csrf_token": {csrf}}); status != http.StatusNotFound {
		t.Errorf("an unknown action: %d, want 404", status)
	}
	_, live = uiPage(t, c, in.URL+back+"/live")
	if strings.Contains(live, "<html") || !strings.Contains(live, `id="deployment-live"`) || !strings.Contains(live, `data-deployment="chat"`) {
		t.Errorf("the deployment's live fragment:\n%s", live)
	}
	wantPage(t, c, in.URL+"/ui/deployments", http.StatusOK, `data-deployment="chat"`)

	// A tenant administrator: their own (empty) lists, no tenant to choose,
	// no re-probe.
	_, other := tenantUser(t, in, "gpu-pages@tenant.test")
	tu := uiLogin(t, in, "gpu-pages@tenant.test", adminPassword)
	page = wantPage(t, tu, in.URL+"/ui/models", http.StatusOK, `id="create-model"`)
	if strings.Contains(page, `name="tenant_id"`) || strings.Contains(page, `data-model="llama"`) {
		t.Errorf("a tenant administrator of %s sees another tenant's model or a tenant choice", other)
	}
	if page = wantPage(t, tu, in.URL+"/ui/deployments", http.StatusOK); strings.Contains(page, `data-deployment="chat"`) {
		t.Error("a tenant administrator sees another tenant's deployment")
	}
	wantPage(t, tu, in.URL+back, http.StatusNotFound)
	page = wantPage(t, tu, in.URL+"/ui/gpus/"+g, http.StatusOK)
	if strings.Contains(page, `id="reprobe-form"`) {
		t.Error("a tenant administrator is offered the re-probe")
	}
	resp, page = uiPost(t, tu, in.URL+"/ui/gpus/"+g+"/reprobe", url.Values{"csrf_token": {csrfOf(t, page)}})
	if resp.StatusCode != http.StatusForbidden || !strings.Contains(page, "cluster:manage") {
		t.Errorf("a tenant administrator's re-probe: %d, want 403 naming cluster:manage", resp.StatusCode)
	}
}

func cloneValues(v url.Values) url.Values {
	out := url.Values{}
	for k, vs := range v {
		out[k] = append([]string(nil), vs...)
	}
	return out
}

// TestBrowserGPUCanary: a platform administrator sees the node's eight
// mock GPUs, registers a model and a second version through the forms,
// deploys version 1 on two replicas with a canary strategy whose watch
// window is long enough that only the promote button moves it, starts the
// release of version 2 and promotes it step by step, the page refreshing
// itself, until version 2 is stable at 100 %.
func TestBrowserGPUCanary(t *testing.T) {
	e := startGPUs(t, 1)
	in := e.in[0]
	e.liveGPUs(t, 8)
	ctx, problems := browser(t)
	text := textOf(t, ctx)

	poll := pollerOf(t, ctx, 30*time.Second)

	err := chromedp.Do(ctx,
		chromedp.Navigate(in.URL+"/ui/gpus"),
		fillSignIn("admin@atrium.test", adminPassword),
		chromedp.WaitVisible(chromedp.CSS(`section[data-node="node-0"]`)),
	)
	if err != nil {
		t.Fatalf("GPUs page: %v", err)
	}
	poll("eight live GPUs", `document.querySelectorAll('section[data-node="node-0"] tr[data-gpu]').length === 8 &&
		document.querySelectorAll('section[data-node="node-0"] [data-testid="util"] meter').length === 8`)
	if got := text(`[data-testid="healthy-count"]`); got != "8" {
		t.Errorf("healthy GPUs: %q", got)
	}

	// Register the model with version 1, then add version 2.
	form := `#create-model `
	err = chromedp.Do(ctx,
		chromedp.Click(chromedp.CSS(`nav a[href="/ui/models"]`)),
		chromedp.WaitVisible(chromedp.CSS(`#create-model`)),
		chromedp.SetValue(chromedp.CSS(form+`select[name="tenant_id"]`), e.tenant),
		chromedp.SendKeys(chromedp.CSS(form+`input[name="name"]`), "llama"),
		chromedp.SendKeys(chromedp.CSS(form+`input[name="version"]`), "1"),
		chromedp.SendKeys(chromedp.CSS(form+`input[name="artifact_uri"]`), "s3://models/llama/1"),
		chromedp.SendKeys(chromedp.CSS(form+`input[name="command"]`), fakeModelCommand(t)),
		chromedp.SetValue(chromedp.CSS(form+`input[name="memory_mb"]`), "20000"),
		chromedp.Click(chromedp.CSS(form+`button[type="submit"]`)),
		chromedp.WaitVisible(chromedp.CSS(`#add-version`)),
	)
	if err != nil {
		t.Fatalf("register the model: %v", err)
	}
	if got := text(`[data-testid="flash"]`); got != "Model llama created with version 1: deployments can run it now." {
		t.Fatalf("flash after registering: %q", got)
	}
	err = chromedp.Do(ctx,
		chromedp.SendKeys(chromedp.CSS(`#add-version input[name="version"]`), "2"),
		chromedp.SetValue(chromedp.CSS(`#add-version input[name="artifact_uri"]`), "s3://models/llama/2"),
		chromedp.Click(chromedp.CSS(`#add-version button[type="submit"]`)),
		chromedp.WaitVisible(chromedp.CSS(`#versions tr[data-version="2"]`)),
	)
	if err != nil {
		t.Fatalf("add version 2: %v", err)
	}
	if got := text(`#versions tr[data-version="2"] [data-testid="need"]`); got != "1 GPU, exclusive, 20,000 MB each" {
		t.Errorf("version 2 needs %q", got)
	}

	// Deploy version 1 on two replicas, canary releases.
	form = `#create-deployment `
	err = chromedp.Do(ctx,
		chromedp.Click(chromedp.CSS(`nav a[href="/ui/deployments"]`)),
		chromedp.WaitVisible(chromedp.CSS(`#create-deployment`)),
		chromedp.SendKeys(chromedp.CSS(form+`input[name="name"]`), "chat"),
		chromedp.SendKeys(chromedp.CSS(form+`input[name="version"]`), "1"),
		chromedp.SetValue(chromedp.CSS(form+`select[name="strategy"]`), "canary"),
		chromedp.SetValue(chromedp.CSS(form+`input[name="replicas"]`), "2"),
		chromedp.SetValue(chromedp.CSS(form+`input[name="max_replicas"]`), "4"),
		chromedp.SetValue(chromedp.CSS(form+`input[name="watch_seconds"]`), "3600"),
		chromedp.Click(chromedp.CSS(form+`button[type="submit"]`)),
		chromedp.WaitVisible(chromedp.CSS(`#release-form`)),
	)
	if err != nil {
		t.Fatalf("create the deployment: %v", err)
	}
	poll("two replicas running", `(() => { const r = document.querySelector('[data-testid="running"]'); return !!r && r.textContent.trim() === '2'; })()`)

	// Release version 2 and promote each canary step.
	err = chromedp.Do(ctx,
		chromedp.Click(chromedp.CSS(`#release-form button[type="submit"]`)),
		chromedp.WaitVisible(chromedp.CSS(`[data-testid="step"]`)),
	)
	if err != nil {
		t.Fatalf("start the release: %v", err)
	}
	if got := text(`[data-testid="flash"]`); got != "Canary release of version 2 started." {
		t.Fatalf("flash after starting the release: %q", got)
	}
	for step, want := range []string{
		"Promoted: the canary of version 2 moves to step 2 of 3 (50 % of traffic once its replicas run).",
		"Promoted: the canary of version 2 moves to step 3 of 3 (100 % of traffic once its replicas run).",
		"Promoted: version 2 is stable and takes all traffic.",
	} {
		poll("promote offered at step "+string(rune('1'+step)), `(() => {
			const s = document.querySelector('[data-testid="step"]'), p = document.querySelector('[data-testid="promote"]');
			return !!s && !!p && s.textContent.trim() === '`+string(rune('1'+step))+`'; })()`)
		// The fragment holding the button is replaced every second: a
		// click that meets a replacement is tried again.
		for try := 0; ; try++ {
			err := chromedp.Do(ctx, chromedp.Click(chromedp.CSS(`[data-testid="promote"]`)))
			if err == nil {
				break
			}
			if try == 4 {
				t.Fatalf("promote step %d: %v", step+1, err)
			}
		}
		poll("the flash after promoting step "+string(rune('1'+step)), `(() => { const f = document.querySelector('[data-testid="flash"]');
			return !!f && f.textContent.trim() === `+jsString(want)+`; })()`)
	}
	poll("version 2 stable at 100 %", `(() => {
		const st = document.querySelector('[data-testid="stable"]'), s = document.querySelector('[data-testid="state"]'),
			w = document.querySelectorAll('#traffic tbody tr');
		return !!st && st.textContent.trim() === '2' && s.textContent.trim() === 'steady' && w.length === 1 &&
			w[0].dataset.version === '2' && w[0].querySelector('[data-testid="percent"]').textContent.trim() === '100'; })()`)
	poll("the old replicas gone and two of version 2 running", `(() => {
		const rs = [...document.querySelectorAll('#replicas tr[data-state="running"]')];
		return rs.length === 2 && rs.every(r => r.querySelector('[data-testid="replica-version"]').textContent.trim() === '2'); })()`)
	if got := text(`#events`); !strings.Contains(got, "canary promoted: version 2 takes all traffic") {
		t.Errorf("the history lacks the release: %q", got)
	}
	d := e.deployment(t, deploymentIDFrom(t, ctx))
	if d.TargetVersionID != nil || d.Versions[d.StableVersionID] != "2" || d.Traffic[d.StableVersionID] != 100 {
		t.Errorf("the API disagrees: %+v", d.Deployment)
	}
	if p := problems(); len(p) > 0 {
		t.Fatalf("browser reported errors (CSP violations show here): %v", p)
	}
}

// deploymentIDFrom reads the deployment id from the page's URL.
func deploymentIDFrom(t *testing.T, ctx context.Context) string {
	t.Helper()
	id, ok := strings.CutPrefix(location(t, ctx), "/ui/deployments/")
	if !ok {
		t.Fatalf("not on a deployment page: %s", location(t, ctx))
	}
	return id
}

// jsString quotes s as a JavaScript string literal.
func jsString(s string) string {
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(s) + "'"
}

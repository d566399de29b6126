// Package web is the admin UI: server-rendered html/template pages with a
// vendored, pinned htmx for live fragments, and static assets embedded in
// the binary under content-hashed URLs. `go build` alone produces the whole
// UI; there is no JavaScript build step. No page uses inline script or
// style, so the strict Content-Security-Policy of platform/httpx holds.
//
// Invariants: every page under /ui/ except the sign-in page needs a signed-in
// user (an expired access cookie is renewed from the refresh cookie, anything
// else goes to /ui/login?next=...); every form post carries the CSRF token,
// which is checked before anything else happens; what a page shows and does
// is decided by the auth service's own permission checks, and a refusal is
// a 403 page, never a 500; a terminal's client secret is shown once.
package web

import (
	"bytes"
	"context"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"fmt"
	"html/template"
	"io/fs"
	"net/http"
	"path"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/rs/zerolog"

	"github.com/atriumhq/atrium/modules/auth"
	"github.com/atriumhq/atrium/modules/gpu"
	"github.com/atriumhq/atrium/modules/payment"
	"github.com/atriumhq/atrium/modules/quota"
	"github.com/atriumhq/atrium/modules/tenant"
	"github.com/atriumhq/atrium/platform/cluster"
	"github.com/atriumhq/atrium/platform/httpx"
	"github.com/atriumhq/atrium/platform/principal"
)

//go:embed templates/*.html
var templateFS embed.FS

//go:embed static
var staticFS embed.FS

// ClusterLister lists the live instances.
type ClusterLister interface {
	List(ctx context.Context) ([]cluster.Instance, error)
}

// Deps are what the UI needs.
type Deps struct {
	Cluster ClusterLister
	// Auth signs people in and serves what the access pages show; its own
	// permission checks decide what each user may see and do.
	Auth *auth.Service
	// Tenants and Quotas serve the tenant and quota pages.
	Tenants    *tenant.Service
	Quotas     *quota.Service
	Log        zerolog.Logger
	Version    string
	InstanceID string
	Env        string
	Now        func() time.Time
	// Usage, when set, serves the usage pages.
	Usage *quota.Meter
	// RateLimits serves the rate-limit page; without it the page answers
	// 404.
	RateLimits *quota.RateLimits
	// Channels serves the bank channels page; without it the page answers
	// 404.
	Channels ChannelBoard
	// Payments serves the payment and merchant pages; without it they
	// answer 404.
	Payments *payment.Service
	// GPUs serves the GPU cluster, model and deployment pages; without it
	// they answer 404.
	GPUs *gpu.Service
}

// UI serves the admin pages.
type UI struct {
	d      Deps
	pages  map[string]*template.Template
	assets map[string]string // logical name -> hashed URL
	files  map[string]string // hashed URL path -> file in staticFS
}

// New parses the templates and fingerprints the static assets.
func New(d Deps) (*UI, error) {
	if d.Cluster == nil || d.Auth == nil || d.Tenants == nil || d.Quotas == nil {
		return nil, fmt.Errorf("web: Cluster, Auth, Tenants and Quotas are required")
	}
	if d.Now == nil {
		d.Now = time.Now
	}
	u := &UI{d: d, pages: map[string]*template.Template{}, assets: map[string]string{}, files: map[string]string{}}
	if err := u.fingerprint(); err != nil {
		return nil, err
	}
	funcs := template.FuncMap{
		"asset":  u.asset,
		"uptime": func(start, now time.Time) string { return humanDuration(now.Sub(start)) },
		"ago":    func(t, now time.Time) string { return humanDuration(now.Sub(t)) + " ago" },
		"check":  checkPill,
		"when":   func(t time.Time) string { return t.UTC().Format("2006-01-02 15:04:05") },
		"short":  shortID,
		"initial": func(s string) string {
			for _, r := range s {
				return strings.ToUpper(string(r))
			}
			return "?"
		},
	}
	for k, v := range rateLimitFuncs {
		funcs[k] = v
	}
	for k, v := range paymentFuncs {
		funcs[k] = v
	}
	for k, v := range gpuFuncs {
		funcs[k] = v
	}
	layout, err := template.New("layout").Funcs(funcs).ParseFS(templateFS, "templates/layout.html")
	if err != nil {
		return nil, fmt.Errorf("web: %w", err)
	}
	for _, page := range []string{"overview", "login", "error", "users", "user", "sessions", "terminals", "terminal", "settings", "audit", "tenants", "tenant", "ratelimits"} {
		t, err := template.Must(layout.Clone()).ParseFS(templateFS, "templates/"+page+".html")
		if err != nil {
			return nil, fmt.Errorf("web: %s: %w", page, err)
		}
		u.pages[page] = t
	}
	if err := u.parsePages(layout, usagePages...); err != nil {
		return nil, err
	}
	if err := u.parsePages(layout, "channels"); err != nil {
		return nil, err
	}
	if err := u.parsePaymentPages(layout); err != nil {
		return nil, err
	}
	if err := u.parseGPUPages(layout); err != nil {
		return nil, err
	}
	return u, nil
}

// fingerprint gives every static file a URL with a content hash, so it can
// be cached for a year and still change with each release.
func (u *UI) fingerprint() error {
	return fs.WalkDir(staticFS, "static", func(p string, de fs.DirEntry, err error) error {
		if err != nil || de.IsDir() {
			return err
		}
		b, err := staticFS.ReadFile(p)
		if err != nil {
			return err
		}
		sum := sha256.Sum256(b)
		name := strings.TrimPrefix(p, "static/")
		ext := path.Ext(name)
		hashed := "/static/" + strings.TrimSuffix(name, ext) + "." + hex.EncodeToString(sum[:])[:12] + ext
		u.assets[name] = hashed
		u.files[hashed] = p
		return nil
	})
}

func (u *UI) asset(name string) (string, error) {
	if h, ok := u.assets[name]; ok {
		return h, nil
	}
	return "", fmt.Errorf("web: no static asset %q", name)
}

// Routes returns the UI's handler: pages, live fragments and static files.
// Every form post must carry the CSRF token; every page but the sign-in
// page needs a signed-in user.
func (u *UI) Routes() http.Handler {
	r := chi.NewRouter()
	r.Use(httpx.PageHeaders, u.csrf)
	r.Get("/static/*", u.static)
	r.Get("/", u.home)
	r.Get("/ui/login", u.loginPage)
	r.Post("/ui/login", u.login)
	r.Post("/ui/logout", u.logout)
	r.Group(func(r chi.Router) {
		r.Use(u.requireUser)
		r.Get("/ui/overview", u.overview)
		r.Get("/ui/overview/live", u.overviewLive)
		r.Get("/ui/usage", u.usage)
		r.Get("/ui/tenants/{id}/usage", u.tenantUsage)
		r.Get("/ui/users", u.users)
		r.Post("/ui/users", u.createUser)
		r.Get("/ui/users/{id}", u.user)
		r.Post("/ui/users/{id}/status", u.setUserStatus)
		r.Post("/ui/users/{id}/password", u.resetPassword)
		r.Post("/ui/users/{id}/roles", u.setUserRoles)
		r.Get("/ui/users/{id}/sessions", u.userSessions)
		r.Get("/ui/sessions", u.mySessions)
		r.Post("/ui/sessions/{id}/revoke", u.revokeSession)
		r.Get("/ui/terminals", u.terminals)
		r.Post("/ui/terminals", u.createTerminal)
		r.Get("/ui/terminals/{id}", u.terminal)
		r.Post("/ui/terminals/{id}/status", u.setTerminalStatus)
		r.Get("/ui/settings", u.settings)
		r.Post("/ui/settings/keys/rotate", u.rotateKeys)
		r.Get("/ui/audit", u.audit)
		r.Get("/ui/tenants", u.tenants)
		r.Post("/ui/tenants", u.createTenant)
		r.Get("/ui/tenants/{id}", u.tenant)
		r.Post("/ui/tenants/{id}", u.updateTenant)
		r.Post("/ui/tenants/{id}/status", u.setTenantStatus)
		r.Post("/ui/tenants/{id}/quotas/{quota}", u.setQuota)
		r.Get("/ui/quotas", u.quotas)
		r.Get("/ui/rate-limits", u.rateLimits)
		r.Get("/ui/rate-limits/live", u.rateLimitsLive)
		r.Post("/ui/rate-limits", u.createRule)
		r.Post("/ui/rate-limits/{id}/mode", u.setRuleMode)
		r.Post("/ui/rate-limits/{id}/enabled", u.setRuleEnabled)
		r.Post("/ui/rate-limits/{id}/delete", u.deleteRule)
		r.Get("/ui/channels", u.channels)
		r.Get("/ui/channels/live", u.channelsLive)
		r.Post("/ui/channels/{name}/breaker", u.setChannelMode)
		r.Get("/ui/merchants", u.merchants)
		r.Post("/ui/merchants", u.createMerchant)
		r.Get("/ui/merchants/{id}", u.merchant)
		r.Post("/ui/merchants/{id}", u.updateMerchant)
		r.Post("/ui/merchants/{id}/status", u.setMerchantStatus)
		r.Get("/ui/payments", u.payments)
		r.Get("/ui/payments/export.csv", u.exportPayments)
		r.Get("/ui/payments/{id}", u.paymentPage)
		r.Post("/ui/payments/{id}/refunds", u.refund("refund"))
		r.Post("/ui/payments/{id}/void", u.refund("void"))
		r.Get("/ui/gpus", u.gpuCluster)
		r.Get("/ui/gpus/live", u.gpuClusterLive)
		r.Get("/ui/gpus/{uuid}", u.gpuDevice)
		r.Get("/ui/gpus/{uuid}/live", u.gpuDeviceLive)
		r.Post("/ui/gpus/{uuid}/reprobe", u.reprobeGPU)
		r.Get("/ui/models", u.modelList)
		r.Post("/ui/models", u.createModel)
		r.Get("/ui/models/{id}", u.modelPage)
		r.Post("/ui/models/{id}/versions", u.addModelVersion)
		r.Post("/ui/models/{id}/delete", u.deleteModel)
		r.Get("/ui/deployments", u.deploymentList)
		r.Post("/ui/deployments", u.createDeployment)
		r.Get("/ui/deployments/{id}", u.deploymentPage)
		r.Get("/ui/deployments/{id}/live", u.deploymentLiveFragment)
		r.Get("/ui/deployments/{id}/replicas/{replica}", u.replicaPage)
		r.Post("/ui/deployments/{id}/scale", u.scaleDeployment)
		r.Post("/ui/deployments/{id}/release", u.releaseDeployment)
		r.Post("/ui/deployments/{id}/{action}", u.deploymentAction)
	})
	return r
}

func (u *UI) static(w http.ResponseWriter, r *http.Request) {
	p, ok := u.files[r.URL.Path]
	if !ok {
		http.NotFound(w, r)
		return
	}
	w.Header().Set("Cache-Control", "public, max-age=31536000, immutable")
	http.ServeFileFS(w, r, staticFS, p)
}

type overviewData struct {
	page
	Now               time.Time
	Instances         []cluster.Instance
	Healthy, Versions int
	Error             string
}

func (u *UI) overviewData(ctx context.Context) overviewData {
	d := overviewData{page: page{InstanceID: u.d.InstanceID}, Now: u.d.Now().UTC()}
	inst, err := u.d.Cluster.List(ctx)
	if err != nil {
		u.d.Log.Warn().Ctx(ctx).Err(err).Msg("cluster list failed")
		d.Error = "Redis did not answer"
	}
	d.Instances = inst
	versions := map[string]bool{}
	for _, i := range inst {
		if i.Healthy() {
			d.Healthy++
		}
		versions[i.Version] = true
	}
	d.Versions = len(versions)
	return d
}

// overview is the cluster overview; it shows what GET
// /api/v1/cluster/instances shows, so it needs the same permission.
func (u *UI) overview(w http.ResponseWriter, r *http.Request) {
	if err := principal.Check(r.Context(), "cluster:read"); err != nil {
		u.fail(w, r, err)
		return
	}
	d := u.overviewData(r.Context())
	d.page = u.page(w, r, "Cluster overview", "Overview")
	u.render(w, r, http.StatusOK, "overview", "layout", d)
}

func (u *UI) overviewLive(w http.ResponseWriter, r *http.Request) {
	if err := principal.Check(r.Context(), "cluster:read"); err != nil {
		u.fail(w, r, err)
		return
	}
	u.render(w, r, http.StatusOK, "overview", "overview-live", u.overviewData(r.Context()))
}

// render executes into a buffer first, so a template error becomes a clean
// 500 instead of half a page.
func (u *UI) render(w http.ResponseWriter, r *http.Request, status int, page, name string, data any) {
	var buf bytes.Buffer
	if err := u.pages[page].ExecuteTemplate(&buf, name, data); err != nil {
		u.d.Log.Error().Ctx(r.Context()).Err(err).Str("page", page).Msg("render failed")
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, _ = buf.WriteTo(w)
}

func checkPill(checks map[string]string, name string) template.HTML {
	v, ok := checks[name]
	switch {
	case !ok:
		return `<span class="pill bad">unknown</span>`
	case v == "ok":
		return `<span class="pill ok">ok</span>`
	default:
		return template.HTML(`<span class="pill bad" title="` + template.HTMLEscapeString(v) + `">down</span>`)
	}
}

// shortID is the first block of a UUID, enough to tell rows apart.
func shortID(id string) string {
	if i := strings.IndexByte(id, '-'); i > 0 {
		return id[:i]
	}
	return id
}

func humanDuration(d time.Duration) string {
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm %ds", int(d.Minutes()), int(d.Seconds())%60)
	case d < 24*time.Hour:
		return fmt.Sprintf("%dh %dm", int(d.Hours()), int(d.Minutes())%60)
	default:
		return fmt.Sprintf("%dd %dh", int(d.Hours())/24, int(d.Hours())%24)
	}
}

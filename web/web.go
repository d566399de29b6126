// Package web is the admin UI: server-rendered html/template pages with a
// vendored, pinned htmx for live fragments, and static assets embedded in
// the binary under content-hashed URLs. `go build` alone produces the whole
// UI; there is no JavaScript build step. No page uses inline script or
// style, so the strict Content-Security-Policy of platform/httpx holds.
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

	"github.com/atriumhq/atrium/platform/cluster"
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
	Cluster    ClusterLister
	Log        zerolog.Logger
	Version    string
	InstanceID string
	Env        string
	Now        func() time.Time
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
	if d.Cluster == nil {
		return nil, fmt.Errorf("web: Cluster is required")
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
	}
	layout, err := template.New("layout").Funcs(funcs).ParseFS(templateFS, "templates/layout.html")
	if err != nil {
		return nil, fmt.Errorf("web: %w", err)
	}
	for _, page := range []string{"overview"} {
		t, err := template.Must(layout.Clone()).ParseFS(templateFS, "templates/"+page+".html")
		if err != nil {
			return nil, fmt.Errorf("web: %s: %w", page, err)
		}
		u.pages[page] = t
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
func (u *UI) Routes() http.Handler {
	r := chi.NewRouter()
	r.Get("/", func(w http.ResponseWriter, r *http.Request) { http.Redirect(w, r, "/ui/overview", http.StatusFound) })
	r.Get("/ui/overview", u.overview)
	r.Get("/ui/overview/live", u.overviewLive)
	r.Get("/static/*", u.static)
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

type navItem struct {
	Label, Href string
	Active      bool
}

// nav lists the places of the UI; modules still to come show as disabled.
func nav(active string) []navItem {
	items := []navItem{
		{Label: "Overview", Href: "/ui/overview"},
		{Label: "Payments"}, {Label: "Tenants"}, {Label: "Quotas"}, {Label: "GPUs"},
		{Label: "Deployments"}, {Label: "Users"}, {Label: "Settings"},
	}
	for i := range items {
		items[i].Active = items[i].Label == active
	}
	return items
}

type overviewData struct {
	Title, Version, InstanceID, Env string
	Nav                             []navItem
	Now                             time.Time
	Instances                       []cluster.Instance
	Healthy, Versions               int
	Error                           string
}

func (u *UI) overviewData(ctx context.Context) overviewData {
	d := overviewData{Title: "Cluster overview", Version: u.d.Version, InstanceID: u.d.InstanceID, Env: u.d.Env,
		Nav: nav("Overview"), Now: u.d.Now().UTC()}
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

func (u *UI) overview(w http.ResponseWriter, r *http.Request) {
	u.render(w, r, "overview", "layout", u.overviewData(r.Context()))
}

func (u *UI) overviewLive(w http.ResponseWriter, r *http.Request) {
	u.render(w, r, "overview", "overview-live", u.overviewData(r.Context()))
}

// render executes into a buffer first, so a template error becomes a clean
// 500 instead of half a page.
func (u *UI) render(w http.ResponseWriter, r *http.Request, page, name string, data any) {
	var buf bytes.Buffer
	if err := u.pages[page].ExecuteTemplate(&buf, name, data); err != nil {
		u.d.Log.Error().Ctx(r.Context()).Err(err).Str("page", page).Msg("render failed")
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
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

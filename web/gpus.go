package web

import (
	"fmt"
	"html/template"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/atriumhq/atrium/modules/gpu"
	"github.com/atriumhq/atrium/modules/tenant"
	"github.com/atriumhq/atrium/platform/errs"
	"github.com/atriumhq/atrium/platform/httpx"
	"github.com/atriumhq/atrium/platform/principal"
)

// The GPU pages: the cluster (every node and its GPUs, read live, with
// their health history and the re-probe button), models with their
// versions, and deployments with their releases. The cluster page and a
// deployment's page refresh themselves through htmx fragments; forms with
// inputs stay outside the refreshed parts, so a refresh never eats what is
// being typed. The gpu module checks every permission: cluster:read for
// the cluster, cluster:manage to re-probe, gpu:read to read models and
// deployments, gpu:deploy to change them.

// parseGPUPages adds the GPU pages; the model pages share the version
// form's fields.
func (u *UI) parseGPUPages(layout *template.Template) error {
	for _, page := range []string{"gpus", "gpu", "models", "model", "deployments", "deployment", "replica"} {
		t, err := template.Must(layout.Clone()).ParseFS(templateFS, "templates/"+page+".html", "templates/gpu_fields.html")
		if err != nil {
			return fmt.Errorf("web: %s: %w", page, err)
		}
		u.pages[page] = t
	}
	return nil
}

// gpuFuncs are the template functions of the GPU pages.
var gpuFuncs = template.FuncMap{
	"figures": figuresText,
	"mb":      mbText,
	"memory":  memoryText,
	"tail":    tail,
	"need":    needText,
	// gpuShort is enough of a GPU's UUID to tell it apart.
	"gpuShort": func(uuid string) string {
		if len(uuid) > 12 {
			return uuid[:12]
		}
		return uuid
	},
	"replicaClass": func(state string) string {
		switch state {
		case "running":
			return "ok"
		case "pending":
			return "warn"
		}
		return "muted"
	},
}

// gpuService returns the GPU scheduler; without it the pages answer 404.
func (u *UI) gpuService() (*gpu.Service, error) {
	if u.d.GPUs == nil {
		return nil, errs.E(errs.NotFound, "the GPU scheduler is not available")
	}
	return u.d.GPUs, nil
}

// formError is a problem a form post had: the field it names (empty for
// the whole form) and a sentence for people.
type formError struct {
	Field, Text string
}

// gpuFieldLabels name the service's fields as the forms label them.
var gpuFieldLabels = map[string]string{
	"tenant_id": "Tenant", "name": "Name", "description": "Description", "version": "Version", "version_id": "Version",
	"artifact_uri": "Artifact URI", "command": "Command", "port": "Port", "health_path": "Health path", "gpus": "GPUs",
	"memory_mb": "Memory (MB)", "sharing": "Sharing", "model_id": "Model", "replicas": "Replicas",
	"min_replicas": "Min replicas", "max_replicas": "Max replicas", "strategy": "Strategy",
	"canary_steps": "Canary steps", "watch_seconds": "Watch (seconds)", "max_error_rate": "Max error rate",
	"max_p99_ms": "Max p99 (ms)", "min_requests": "Min requests", "max_surge": "Max surge",
	"max_unavailable": "Max unavailable", "rollback_seconds": "Rollback window (seconds)",
}

// gpuProblem is a form post's error as the form shows it. The service's
// field names become the form's ("params.watch_seconds" is the
// watch_seconds input; a version id is chosen by its name).
func gpuProblem(err error) formError {
	e := errs.As(err)
	if len(e.Fields) != 1 {
		return formError{Text: sentence(e.Message)}
	}
	field := strings.TrimPrefix(e.Fields[0].Field, "params.")
	if field == "version_id" {
		field = "version"
	}
	msg := e.Fields[0].Message
	if strings.HasPrefix(msg, field) {
		// The message names its field already ("version "1" of this
		// model exists").
		return formError{Field: field, Text: sentence(msg)}
	}
	label, ok := gpuFieldLabels[field]
	if !ok {
		label = strings.ReplaceAll(field, "_", " ")
	}
	for _, verb := range []string{"must ", "is ", "are ", "cannot "} {
		if strings.HasPrefix(msg, verb) {
			return formError{Field: field, Text: sentence(label + " " + msg)}
		}
	}
	return formError{Field: field, Text: sentence(label + ": " + msg)}
}

// mbText is an amount of memory in MB as people read it.
func mbText(mb int64) string {
	if mb >= 10*1024 && mb%1024 == 0 {
		return count(mb/1024) + " GB"
	}
	return count(mb) + " MB"
}

// memoryText is a GPU's used memory of its total, in GB from 10 GB on.
func memoryText(used, total int64) string {
	if total < 10*1024 {
		return count(used) + " / " + count(total) + " MB"
	}
	gb := func(mb int64) string {
		return strings.TrimSuffix(strconv.FormatFloat(float64(mb)/1024, 'f', 1, 64), ".0")
	}
	return gb(used) + " / " + gb(total) + " GB"
}

// tail is the end of a UUID: its random part, which tells apart IDs made
// in the same millisecond (UUIDv7 IDs begin with their time).
func tail(id string) string {
	if len(id) > 8 {
		return id[len(id)-8:]
	}
	return id
}

// needText is what a replica needs, in a few words.
func needText(n gpu.Need) string {
	var s string
	switch n.Sharing {
	case gpu.Exclusive:
		s = "1 GPU"
		if n.GPUs != 1 {
			s = strconv.Itoa(n.GPUs) + " GPUs"
		}
		s += ", exclusive"
		if n.MemoryMB > 0 {
			s += ", " + mbText(n.MemoryMB) + " each"
		}
		return s
	case gpu.Shared:
		return "shared GPU, " + mbText(n.MemoryMB)
	case gpu.MIG:
		s = "MIG " + n.MIGProfile
		if n.MemoryMB > 0 {
			s += ", " + mbText(n.MemoryMB)
		}
		return s
	}
	return string(n.Sharing)
}

// sharingValue is a need's sharing as the version form writes it.
func sharingValue(n gpu.Need) string {
	if n.Sharing == gpu.MIG {
		return "mig:" + n.MIGProfile
	}
	return string(n.Sharing)
}

// wholeNumber reads a form's number; empty is def.
func wholeNumber(field, v string, def int) (int, error) {
	if v = strings.TrimSpace(v); v == "" {
		return def, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		return 0, errs.Field(field, "must be a whole number")
	}
	return n, nil
}

// ----- The cluster -----

// gpuRow is one GPU as the cluster page shows it.
type gpuRow struct {
	gpu.GPUView
	Node string
	// Live: its node's inventory is current and the GPU is in it, so the
	// utilization, memory, temperature and power are live figures.
	Live bool
	// Held says what replicas hold on it ("" when nothing); MIG lists its
	// MIG instances' profiles.
	Held, MIG string
	Busy      bool
}

// nodeRow is one node with its GPUs.
type nodeRow struct {
	gpu.NodeView
	Rows []gpuRow
}

// healthRow is one health event, with the GPU it happened to.
type healthRow struct {
	gpu.NodeHealthEvent
	GPU string // the GPU's index on its node, "" when unknown
}

// gpusLive is what the cluster page's live fragment shows.
type gpusLive struct {
	Now       time.Time
	CSRF      string
	CanManage bool
	Nodes     []nodeRow
	Events    []healthRow
	// Summary figures.
	NodesUp, GPUs, Healthy, Busy int
}

func gpuRowOf(node gpu.NodeView, g gpu.GPUView) gpuRow {
	row := gpuRow{GPUView: g, Node: node.ID, Live: node.Live && g.Present}
	var held []string
	switch {
	case g.Exclusive:
		held = append(held, "exclusive")
	case g.SharedMB > 0:
		held = append(held, mbText(g.SharedMB)+" shared")
	}
	if g.MIGCompute > 0 || g.MIGMemoryMB > 0 {
		held = append(held, fmt.Sprintf("MIG %d/7 slices, %s", g.MIGCompute, mbText(g.MIGMemoryMB)))
	}
	row.Held, row.Busy = strings.Join(held, " · "), len(held) > 0
	if g.MIGMode {
		var ps []string
		for _, m := range g.MIGInstances {
			ps = append(ps, m.Profile)
		}
		row.MIG = "on"
		if len(ps) > 0 {
			row.MIG += ": " + strings.Join(ps, ", ")
		}
	}
	return row
}

// clusterLive reads the cluster and its recent health events.
func (u *UI) clusterLive(w http.ResponseWriter, r *http.Request) (gpusLive, error) {
	ctx := r.Context()
	svc, err := u.gpuService()
	if err != nil {
		return gpusLive{}, err
	}
	nodes, err := svc.Cluster(ctx)
	if err != nil {
		return gpusLive{}, err
	}
	evs, err := svc.HealthEvents(ctx, "", 20)
	if err != nil {
		return gpusLive{}, err
	}
	d := gpusLive{Now: u.d.Now().UTC(), CSRF: u.d.Auth.CSRFToken(w, r), CanManage: principal.From(ctx).Has("cluster:manage")}
	index := map[string]string{}
	for _, n := range nodes {
		row := nodeRow{NodeView: n}
		if n.State == "up" {
			d.NodesUp++
		}
		for _, g := range n.GPUs {
			gr := gpuRowOf(n, g)
			row.Rows = append(row.Rows, gr)
			index[g.UUID] = strconv.Itoa(g.Index)
			d.GPUs++
			if g.Healthy {
				d.Healthy++
			}
			if gr.Busy {
				d.Busy++
			}
		}
		d.Nodes = append(d.Nodes, row)
	}
	for _, e := range evs {
		d.Events = append(d.Events, healthRow{NodeHealthEvent: e, GPU: index[e.UUID]})
	}
	return d, nil
}

type gpusData struct {
	page
	Live gpusLive
}

func (u *UI) gpuCluster(w http.ResponseWriter, r *http.Request) {
	live, err := u.clusterLive(w, r)
	if err != nil {
		u.fail(w, r, err)
		return
	}
	d := gpusData{Live: live}
	d.page = u.page(w, r, "GPUs", "GPUs")
	u.render(w, r, http.StatusOK, "gpus", "layout", d)
}

func (u *UI) gpuClusterLive(w http.ResponseWriter, r *http.Request) {
	live, err := u.clusterLive(w, r)
	if err != nil {
		u.fail(w, r, err)
		return
	}
	u.render(w, r, http.StatusOK, "gpus", "gpus-live", live)
}

// gpuLive is what one GPU's page shows, refreshed.
type gpuLive struct {
	Now       time.Time
	CSRF      string
	CanManage bool
	GPU       gpuRow
	Node      gpu.NodeView
	Events    []gpu.NodeHealthEvent
}

// deviceLive finds the GPU named in the URL and reads its history.
func (u *UI) deviceLive(w http.ResponseWriter, r *http.Request) (gpuLive, error) {
	ctx := r.Context()
	svc, err := u.gpuService()
	if err != nil {
		return gpuLive{}, err
	}
	uuid := chi.URLParam(r, "uuid")
	nodes, err := svc.Cluster(ctx)
	if err != nil {
		return gpuLive{}, err
	}
	d := gpuLive{Now: u.d.Now().UTC(), CSRF: u.d.Auth.CSRFToken(w, r), CanManage: principal.From(ctx).Has("cluster:manage")}
	found := false
	for _, n := range nodes {
		for _, g := range n.GPUs {
			if g.UUID == uuid {
				d.GPU, d.Node, found = gpuRowOf(n, g), n, true
			}
		}
	}
	if !found {
		return d, errs.E(errs.NotFound, "no such GPU")
	}
	d.Node.GPUs = nil
	if d.Events, err = svc.HealthEvents(ctx, uuid, 100); err != nil {
		return d, err
	}
	return d, nil
}

type gpuData struct {
	page
	Live gpuLive
}

func (u *UI) gpuDevice(w http.ResponseWriter, r *http.Request) {
	live, err := u.deviceLive(w, r)
	if err != nil {
		u.fail(w, r, err)
		return
	}
	d := gpuData{Live: live}
	d.page = u.page(w, r, fmt.Sprintf("GPU %d on %s", live.GPU.Index, live.GPU.Node), "GPUs")
	d.Parent = &navItem{Label: "GPUs", Href: "/ui/gpus"}
	u.render(w, r, http.StatusOK, "gpu", "layout", d)
}

func (u *UI) gpuDeviceLive(w http.ResponseWriter, r *http.Request) {
	live, err := u.deviceLive(w, r)
	if err != nil {
		u.fail(w, r, err)
		return
	}
	u.render(w, r, http.StatusOK, "gpu", "gpu-live", live)
}

// reprobeGPU asks the GPU's node to probe it again (cluster:manage); the
// form's back field says which page to return to.
func (u *UI) reprobeGPU(w http.ResponseWriter, r *http.Request) {
	svc, err := u.gpuService()
	if err != nil {
		u.fail(w, r, err)
		return
	}
	uuid := chi.URLParam(r, "uuid")
	back := "/ui/gpus/" + uuid
	if r.PostFormValue("back") == "cluster" {
		back = "/ui/gpus"
	}
	if err := svc.Reprobe(r.Context(), uuid); err != nil {
		u.formFailed(w, r, back, err)
		return
	}
	u.done(w, r, back, "Re-probe of "+uuid+" requested: its node reads it again within seconds, and a GPU that reads well returns to service.")
}

// ----- Models -----

// versionForm is the version form as typed.
type versionForm struct {
	Version, ArtifactURI, Command, Port, HealthPath, GPUs, MemoryMB, Sharing string
	// Problem is the form's error, shown next to it.
	Problem formError
}

func versionFormOf(r *http.Request) versionForm {
	g := func(k string) string { return strings.TrimSpace(r.PostFormValue(k)) }
	return versionForm{Version: g("version"), ArtifactURI: g("artifact_uri"), Command: g("command"), Port: g("port"),
		HealthPath: g("health_path"), GPUs: g("gpus"), MemoryMB: g("memory_mb"), Sharing: g("sharing")}
}

// blank reports whether no version field was filled in (the model is
// created without a version).
func (f versionForm) blank() bool {
	return f.Version == "" && f.ArtifactURI == "" && f.Command == ""
}

// input reads the form as a NewVersion; empty GPUs is 1, empty memory 0.
func (f versionForm) input() (gpu.NewVersion, error) {
	in := gpu.NewVersion{Version: f.Version, ArtifactURI: f.ArtifactURI, Command: f.Command, HealthPath: f.HealthPath, Sharing: f.Sharing}
	var err error
	if in.Port, err = wholeNumber("port", f.Port, 0); err != nil {
		return in, err
	}
	if in.GPUs, err = wholeNumber("gpus", f.GPUs, 1); err != nil {
		return in, err
	}
	mem, err := wholeNumber("memory_mb", f.MemoryMB, 0)
	in.MemoryMB = int64(mem)
	return in, err
}

// newVersionForm is an empty version form with its usual values.
func newVersionForm() versionForm {
	return versionForm{HealthPath: "/health", GPUs: "1", Sharing: string(gpu.Exclusive), Port: "8000"}
}

// modelForm is the create-model form as typed.
type modelForm struct {
	TenantID, Name, Description string
	Version                     versionForm
}

// modelRow is one model of the list.
type modelRow struct {
	gpu.Model
	TenantName string
}

type modelsData struct {
	page
	Models []modelRow
	// The create form: shown with gpu:deploy; Platform callers name the
	// tenant, picking from Tenants when they may list them.
	CanDeploy, Platform bool
	Tenants             []tenant.Tenant
	Form                modelForm
}

func (u *UI) modelList(w http.ResponseWriter, r *http.Request) {
	u.modelsPage(w, r, http.StatusOK, modelForm{Version: newVersionForm()})
}

// tenantNames names the tenants the caller may list, by id.
func (u *UI) tenantNames(r *http.Request) ([]tenant.Tenant, map[string]string, error) {
	ts, err := u.tenantChoices(r)
	names := map[string]string{}
	for _, t := range ts {
		names[t.ID] = t.Name
	}
	return ts, names, err
}

func (u *UI) modelsPage(w http.ResponseWriter, r *http.Request, status int, form modelForm) {
	ctx := r.Context()
	svc, err := u.gpuService()
	if err != nil {
		u.fail(w, r, err)
		return
	}
	ms, err := svc.ListModels(ctx)
	if err != nil {
		u.fail(w, r, err)
		return
	}
	p := principal.From(ctx)
	d := modelsData{CanDeploy: p.Has("gpu:deploy"), Platform: p.TenantID == "", Form: form}
	var names map[string]string
	if d.Tenants, names, err = u.tenantNames(r); err != nil {
		u.fail(w, r, err)
		return
	}
	for _, m := range ms {
		d.Models = append(d.Models, modelRow{Model: m, TenantName: names[m.TenantID]})
	}
	d.page = u.page(w, r, "Models", "Models")
	u.render(w, r, status, "models", "layout", d)
}

func (u *UI) createModel(w http.ResponseWriter, r *http.Request) {
	svc, err := u.gpuService()
	if err != nil {
		u.fail(w, r, err)
		return
	}
	form := modelForm{TenantID: strings.TrimSpace(r.PostFormValue("tenant_id")), Name: strings.TrimSpace(r.PostFormValue("name")),
		Description: strings.TrimSpace(r.PostFormValue("description")), Version: versionFormOf(r)}
	in := gpu.NewModel{TenantID: form.TenantID, Name: form.Name, Description: form.Description}
	if !form.Version.blank() {
		var v gpu.NewVersion
		if v, err = form.Version.input(); err == nil {
			in.Version = &v
		}
	}
	var m *gpu.Model
	if err == nil {
		m, err = svc.CreateModel(r.Context(), in)
	}
	if err != nil {
		if formProblem(err) {
			form.Version.Problem = gpuProblem(err)
			u.modelsPage(w, r, httpx.StatusOf(err), form)
			return
		}
		u.fail(w, r, err)
		return
	}
	msg := "Model " + m.Name + " created"
	if len(m.Versions) > 0 {
		msg += " with version " + m.Versions[0].Version + ": deployments can run it now."
	} else {
		msg += ": add a version to deploy it."
	}
	u.done(w, r, "/ui/models/"+m.ID, msg)
}

type modelData struct {
	page
	Model       gpu.Model
	TenantName  string
	Deployments []gpu.Deployment
	CanDeploy   bool
	Form        versionForm
}

func (u *UI) modelPage(w http.ResponseWriter, r *http.Request) {
	u.renderModel(w, r, http.StatusOK, nil)
}

// renderModel shows a model with its versions and the deployments that
// run it, and (gpu:deploy) the add-version form: empty, or as typed with
// its problem.
func (u *UI) renderModel(w http.ResponseWriter, r *http.Request, status int, form *versionForm) {
	ctx := r.Context()
	svc, err := u.gpuService()
	if err != nil {
		u.fail(w, r, err)
		return
	}
	m, err := svc.GetModel(ctx, chi.URLParam(r, "id"))
	if err != nil {
		u.fail(w, r, err)
		return
	}
	ds, err := svc.ListDeployments(ctx)
	if err != nil {
		u.fail(w, r, err)
		return
	}
	d := modelData{Model: *m, CanDeploy: principal.From(ctx).Has("gpu:deploy"), Form: newVersionForm()}
	if n := len(m.Versions); n > 0 {
		last := m.Versions[n-1]
		d.Form = versionForm{ArtifactURI: last.ArtifactURI, Command: last.Command, Port: strconv.Itoa(last.Port), HealthPath: last.HealthPath,
			GPUs: strconv.Itoa(last.Need.GPUs), MemoryMB: strconv.FormatInt(last.Need.MemoryMB, 10), Sharing: sharingValue(last.Need)}
	}
	if form != nil {
		d.Form = *form
	}
	for _, dep := range ds {
		if dep.ModelID == m.ID {
			d.Deployments = append(d.Deployments, dep)
		}
	}
	if _, names, err := u.tenantNames(r); err == nil {
		d.TenantName = names[m.TenantID]
	}
	d.page = u.page(w, r, "Model "+m.Name, "Models")
	d.Parent = &navItem{Label: "Models", Href: "/ui/models"}
	u.render(w, r, status, "model", "layout", d)
}

func (u *UI) addModelVersion(w http.ResponseWriter, r *http.Request) {
	svc, err := u.gpuService()
	if err != nil {
		u.fail(w, r, err)
		return
	}
	id := chi.URLParam(r, "id")
	form := versionFormOf(r)
	in, err := form.input()
	var v *gpu.Version
	if err == nil {
		v, err = svc.AddVersion(r.Context(), id, in)
	}
	if err != nil {
		if formProblem(err) {
			form.Problem = gpuProblem(err)
			u.renderModel(w, r, httpx.StatusOf(err), &form)
			return
		}
		u.fail(w, r, err)
		return
	}
	u.done(w, r, "/ui/models/"+id, "Version "+v.Version+" added: a deployment of this model can release it.")
}

func (u *UI) deleteModel(w http.ResponseWriter, r *http.Request) {
	svc, err := u.gpuService()
	if err != nil {
		u.fail(w, r, err)
		return
	}
	id := chi.URLParam(r, "id")
	if err := svc.DeleteModel(r.Context(), id); err != nil {
		u.formFailed(w, r, "/ui/models/"+id, err)
		return
	}
	u.done(w, r, "/ui/models", "The model and its versions are deleted.")
}

// ----- Deployments -----

// strategies are the release strategies, as the forms offer them.
var strategies = []struct{ Value, Label string }{
	{"rolling", "Rolling"}, {"canary", "Canary"}, {"blue_green", "Blue-green"},
}

// deploymentForm is the create-deployment form as typed.
type deploymentForm struct {
	ModelID, Name, Version, Replicas, MinReplicas, MaxReplicas, Strategy string
	// Params, as typed: canary steps are comma-separated percentages; the
	// error rate is a fraction of requests.
	CanarySteps, WatchSeconds, MaxErrorRate, MaxP99MS, MinRequests, MaxSurge, MaxUnavailable, RollbackSeconds string
	Problem                                                                                                   formError
}

// newDeploymentForm is the create form with the default parameters.
func newDeploymentForm() deploymentForm {
	p := gpu.DefaultParams()
	var steps []string
	for _, s := range p.CanarySteps {
		steps = append(steps, strconv.Itoa(s))
	}
	return deploymentForm{Replicas: "1", MinReplicas: "1", MaxReplicas: "1", Strategy: "rolling",
		CanarySteps: strings.Join(steps, ", "), WatchSeconds: strconv.Itoa(p.WatchSeconds),
		MaxErrorRate: strconv.FormatFloat(p.MaxErrorRate, 'f', -1, 64), MaxP99MS: strconv.Itoa(p.MaxP99MS),
		MinRequests: strconv.Itoa(p.MinRequests), MaxSurge: strconv.Itoa(p.MaxSurge), MaxUnavailable: strconv.Itoa(p.MaxUnavailable),
		RollbackSeconds: strconv.Itoa(p.RollbackSeconds)}
}

func deploymentFormOf(r *http.Request) deploymentForm {
	g := func(k string) string { return strings.TrimSpace(r.PostFormValue(k)) }
	return deploymentForm{ModelID: g("model_id"), Name: g("name"), Version: g("version"), Replicas: g("replicas"),
		MinReplicas: g("min_replicas"), MaxReplicas: g("max_replicas"), Strategy: g("strategy"), CanarySteps: g("canary_steps"),
		WatchSeconds: g("watch_seconds"), MaxErrorRate: g("max_error_rate"), MaxP99MS: g("max_p99_ms"), MinRequests: g("min_requests"),
		MaxSurge: g("max_surge"), MaxUnavailable: g("max_unavailable"), RollbackSeconds: g("rollback_seconds")}
}

// optNumber reads an optional whole number: nil when empty.
func optNumber(field, v string) (*int, error) {
	if strings.TrimSpace(v) == "" {
		return nil, nil
	}
	n, err := wholeNumber(field, v, 0)
	return &n, err
}

// input reads the form as a NewDeployment of one of models: the tenant is
// the chosen model's, and the version is named as people know it (the
// model's newest when empty). Empty numbers are left to the service's
// defaults.
func (f deploymentForm) input(models []gpu.Model) (gpu.NewDeployment, error) {
	in := gpu.NewDeployment{Name: f.Name, ModelID: f.ModelID, Strategy: f.Strategy}
	i := slices.IndexFunc(models, func(m gpu.Model) bool { return m.ID == f.ModelID })
	if i < 0 {
		return in, errs.Field("model_id", "must be one of the models listed")
	}
	m := models[i]
	in.TenantID = m.TenantID
	if f.Version != "" {
		j := slices.IndexFunc(m.Versions, func(v gpu.Version) bool { return v.Version == f.Version })
		if j < 0 {
			var names []string
			for _, v := range m.Versions {
				names = append(names, v.Version)
			}
			return in, errs.Field("version", "%q is not a version of %s (it has: %s)", f.Version, m.Name, strings.Join(names, ", "))
		}
		in.VersionID = m.Versions[j].ID
	}
	var err error
	for _, n := range []struct {
		dst        **int
		field, val string
	}{{&in.Replicas, "replicas", f.Replicas}, {&in.MinReplicas, "min_replicas", f.MinReplicas}, {&in.MaxReplicas, "max_replicas", f.MaxReplicas}} {
		if *n.dst, err = optNumber(n.field, n.val); err != nil {
			return in, err
		}
	}
	p := &gpu.ParamsInput{}
	for _, n := range []struct {
		dst        **int
		field, val string
	}{{&p.WatchSeconds, "params.watch_seconds", f.WatchSeconds}, {&p.MaxP99MS, "params.max_p99_ms", f.MaxP99MS},
		{&p.MinRequests, "params.min_requests", f.MinRequests}, {&p.MaxSurge, "params.max_surge", f.MaxSurge},
		{&p.MaxUnavailable, "params.max_unavailable", f.MaxUnavailable}, {&p.RollbackSeconds, "params.rollback_seconds", f.RollbackSeconds}} {
		if *n.dst, err = optNumber(n.field, n.val); err != nil {
			return in, err
		}
	}
	if f.MaxErrorRate != "" {
		v, err := strconv.ParseFloat(f.MaxErrorRate, 64)
		if err != nil {
			return in, errs.Field("params.max_error_rate", "must be a number from 0 to 1, such as 0.05 for 5 %%")
		}
		p.MaxErrorRate = &v
	}
	if f.CanarySteps != "" {
		var steps []int
		for _, s := range strings.FieldsFunc(f.CanarySteps, func(r rune) bool { return r == ',' || r == ' ' || r == '%' }) {
			n, err := strconv.Atoi(s)
			if err != nil {
				return in, errs.Field("params.canary_steps", "must be percentages separated by commas, such as 10, 50, 100")
			}
			steps = append(steps, n)
		}
		p.CanarySteps = &steps
	}
	in.Params = p
	return in, nil
}

// modelChoice is a model the create form offers.
type modelChoice struct {
	ID, Label string
	Versions  string // its version names, newest last
}

// deploymentRow is one deployment of the list.
type deploymentRow struct {
	gpu.Deployment
	TenantName, Stable, Target, Progress string
}

type deploymentsData struct {
	page
	Deployments []deploymentRow
	Platform    bool
	// The create form, with gpu:deploy: the models to choose from.
	CanDeploy  bool
	Models     []modelChoice
	Strategies []struct{ Value, Label string }
	Form       deploymentForm
}

func (u *UI) deploymentList(w http.ResponseWriter, r *http.Request) {
	u.deploymentsPage(w, r, http.StatusOK, newDeploymentForm())
}

func (u *UI) deploymentsPage(w http.ResponseWriter, r *http.Request, status int, form deploymentForm) {
	ctx := r.Context()
	svc, err := u.gpuService()
	if err != nil {
		u.fail(w, r, err)
		return
	}
	ds, err := svc.ListDeployments(ctx)
	if err != nil {
		u.fail(w, r, err)
		return
	}
	p := principal.From(ctx)
	d := deploymentsData{CanDeploy: p.Has("gpu:deploy"), Platform: p.TenantID == "", Strategies: strategies, Form: form}
	_, names, err := u.tenantNames(r)
	if err != nil {
		u.fail(w, r, err)
		return
	}
	for _, dep := range ds {
		row := deploymentRow{Deployment: dep, TenantName: names[dep.TenantID], Stable: dep.Versions[dep.StableVersionID],
			Progress: progressOf(dep, nil, u.d.Now()).Text}
		if dep.TargetVersionID != nil {
			row.Target = dep.Versions[*dep.TargetVersionID]
		}
		d.Deployments = append(d.Deployments, row)
	}
	if d.CanDeploy {
		ms, err := svc.ListModels(ctx)
		if err != nil {
			u.fail(w, r, err)
			return
		}
		for _, m := range ms {
			c := modelChoice{ID: m.ID, Label: m.Name}
			if d.Platform {
				c.Label += " · " + cmpOr(names[m.TenantID], shortID(m.TenantID))
			}
			var vs []string
			for _, v := range m.Versions {
				vs = append(vs, v.Version)
			}
			c.Versions = strings.Join(vs, ", ")
			d.Models = append(d.Models, c)
		}
	}
	d.page = u.page(w, r, "Deployments", "Deployments")
	u.render(w, r, status, "deployments", "layout", d)
}

// cmpOr is the first of a and b that is not empty.
func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

func (u *UI) createDeployment(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	svc, err := u.gpuService()
	if err != nil {
		u.fail(w, r, err)
		return
	}
	form := deploymentFormOf(r)
	ms, err := svc.ListModels(ctx)
	if err != nil {
		u.fail(w, r, err)
		return
	}
	in, err := form.input(ms)
	var dep *gpu.Deployment
	if err == nil {
		dep, err = svc.CreateDeployment(ctx, in)
	}
	if err != nil {
		if formProblem(err) {
			form.Problem = gpuProblem(err)
			u.deploymentsPage(w, r, httpx.StatusOf(err), form)
			return
		}
		u.fail(w, r, err)
		return
	}
	verb := "are"
	if dep.Replicas == 1 {
		verb = "is"
	}
	u.done(w, r, "/ui/deployments/"+dep.ID, fmt.Sprintf("Deployment %s created: %d replica%s of %s version %s %s being placed.",
		dep.Name, dep.Replicas, plural(dep.Replicas), dep.ModelName, dep.Versions[dep.StableVersionID], verb))
}

func plural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}

// canaryWant is how many replicas a canary runs at a step of pct percent:
// the gpu module's rule (a share of the desired count, rounded up, at
// least one; all of them at 100 %).
func canaryWant(replicas, pct int) int {
	if pct >= 100 {
		return replicas
	}
	return max(1, (replicas*pct+99)/100)
}

// progress is a release's progress as the pages show it.
type progress struct {
	// Kind is canary, rolling, blue_green, window (a blue-green rollback
	// window) or "" when nothing runs.
	Kind string
	Text string
	// Step and Steps count canary steps from 1; Weight is the target's
	// share of traffic in percent.
	Step, Steps, Weight int
	// Done of Want: replicas of the new version running, of those the
	// step or release needs (known with the replica list).
	Done, Want int
	Ready      bool
	// Until ends a blue-green rollback window, Left from now, in which
	// version Previous still runs.
	Until          *time.Time
	Left, Previous string
}

// progressOf describes d's release; reps (nil on the list) are its
// replicas, which say how far the new version has come up.
func progressOf(d gpu.Deployment, reps []gpu.Replica, now time.Time) progress {
	var p progress
	if d.TargetVersionID == nil {
		if d.PreviousVersionID != nil && d.PreviousUntil != nil && now.Before(*d.PreviousUntil) {
			p.Kind, p.Until, p.Previous = "window", d.PreviousUntil, d.Versions[*d.PreviousVersionID]
			p.Left = humanDuration(d.PreviousUntil.Sub(now))
			p.Text = fmt.Sprintf("version %s kept for rollback until %s UTC", p.Previous, d.PreviousUntil.UTC().Format("15:04:05"))
		}
		return p
	}
	t := *d.TargetVersionID
	p.Kind, p.Weight = d.Strategy, d.Traffic[t]
	for _, r := range reps {
		if r.VersionID == t && r.State == "running" {
			p.Done++
		}
	}
	p.Want = d.Replicas
	name := d.Versions[t]
	switch d.Strategy {
	case "canary":
		p.Steps = len(d.Params.CanarySteps)
		p.Step = min(d.Step, p.Steps-1) + 1
		pct := d.Params.CanarySteps[p.Step-1]
		p.Want = canaryWant(d.Replicas, pct)
		p.Text = fmt.Sprintf("canary step %d of %d: %d %% to version %s", p.Step, p.Steps, pct, name)
	case "blue_green":
		p.Text = fmt.Sprintf("blue-green: new set of version %s coming up", name)
	default:
		p.Text = fmt.Sprintf("rolling to version %s", name)
	}
	p.Ready = p.Done >= p.Want
	if reps != nil {
		p.Text += fmt.Sprintf(" · %d of %d replicas run", p.Done, p.Want)
	}
	if d.State == "paused" {
		p.Text += " · paused"
	}
	return p
}

// trafficRow is one version's share of the requests.
type trafficRow struct {
	Version, Role string
	Percent       int
	Figures       *gpu.VersionStats // the routers' last minute
}

// replicaRow is one replica as the deployment page shows it.
type replicaRow struct {
	gpu.Replica
	Version, Node, Need, Since string
}

// statsView are the canary's figures in its current step.
type statsView struct {
	Requests, Errors          int64
	ErrorRate, P99            string
	MaxErrorRate, MaxP99      string
	MinRequests               int
	StepStarted               time.Time
	Watch, WatchLeft, Verdict string
}

// deploymentLive is what a deployment's live fragment shows.
type deploymentLive struct {
	D         gpu.DeploymentDetail
	Now       time.Time
	CSRF      string
	CanDeploy bool
	// CanCluster links replicas' GPUs to their pages (cluster:read).
	CanCluster        bool
	Stable, Target    string
	Progress          progress
	Traffic           []trafficRow
	Replicas          []replicaRow
	Running, Stopped  int
	Stats             *statsView
	Events            []gpu.Event
	Releasing, Moving bool
	// The buttons that make sense now.
	CanPromote, CanRollback, CanPause, CanResume, CanDelete bool
	PromoteLabel                                            string
	// Poll is how often the fragment refreshes: every second while
	// something moves, every five otherwise.
	Poll string
}

// deploymentLiveOf builds the live view of a deployment's detail.
func deploymentLiveOf(dd gpu.DeploymentDetail, now time.Time, canDeploy bool) deploymentLive {
	d := dd.Deployment
	l := deploymentLive{D: dd, Now: now, CanDeploy: canDeploy, Stable: d.Versions[d.StableVersionID], Events: dd.Events,
		Releasing: d.TargetVersionID != nil}
	if l.Releasing {
		l.Target = d.Versions[*d.TargetVersionID]
	}
	l.Progress = progressOf(d, dd.ReplicaList, now)
	for v, pct := range d.Traffic {
		role := "stable"
		if d.TargetVersionID != nil && v == *d.TargetVersionID {
			role = "new"
		}
		row := trafficRow{Version: cmpOr(d.Versions[v], shortID(v)), Role: role, Percent: pct}
		if f, ok := dd.VersionFigures[v]; ok {
			row.Figures = &f
		}
		l.Traffic = append(l.Traffic, row)
	}
	slices.SortFunc(l.Traffic, func(a, b trafficRow) int { return b.Percent - a.Percent })
	for _, r := range dd.ReplicaList {
		row := replicaRow{Replica: r, Version: cmpOr(d.Versions[r.VersionID], shortID(r.VersionID)), Need: needText(r.Need)}
		if r.Node != nil {
			row.Node = *r.Node
		}
		since := r.CreatedAt
		switch {
		case r.StoppedAt != nil:
			since = *r.StoppedAt
		case r.ReadyAt != nil:
			since = *r.ReadyAt
		case r.PlacedAt != nil:
			since = *r.PlacedAt
		}
		row.Since = humanDuration(now.Sub(since)) + " ago"
		switch r.State {
		case "running":
			l.Running++
		case "stopped":
			l.Stopped++
		default:
			l.Moving = true
		}
		l.Replicas = append(l.Replicas, row)
	}
	if st := dd.Stats; st != nil && d.StepStartedAt != nil {
		watch := time.Duration(d.Params.WatchSeconds) * time.Second
		sv := &statsView{Requests: st.Requests, Errors: st.Errors, ErrorRate: strconv.FormatFloat(100*st.ErrorRate(), 'f', 2, 64) + " %",
			P99: "–", MaxErrorRate: strconv.FormatFloat(100*d.Params.MaxErrorRate, 'f', 2, 64) + " %",
			MaxP99: msText(float64(d.Params.MaxP99MS)), MinRequests: d.Params.MinRequests, StepStarted: *d.StepStartedAt,
			Watch: humanDuration(watch)}
		if st.P99 > 0 {
			sv.P99 = msText(float64(st.P99) / float64(time.Millisecond))
		}
		if left := d.StepStartedAt.Add(watch).Sub(now); left > 0 {
			sv.WatchLeft = humanDuration(left)
		}
		switch {
		case st.Requests == 0:
			sv.Verdict = "no requests yet"
		case st.ErrorRate() > d.Params.MaxErrorRate || st.P99 > time.Duration(d.Params.MaxP99MS)*time.Millisecond:
			sv.Verdict = "out of bounds"
		default:
			sv.Verdict = "within bounds"
		}
		l.Stats = sv
	}
	if canDeploy && d.State != "deleting" {
		l.CanDelete = true
		switch {
		case l.Releasing:
			l.CanRollback = true
			l.CanPause, l.CanResume = d.State == "progressing", d.State == "paused"
			switch d.Strategy {
			case "canary":
				l.CanPromote = l.Progress.Ready
				l.PromoteLabel = fmt.Sprintf("Promote step %d", l.Progress.Step)
				if l.Progress.Step == l.Progress.Steps {
					l.PromoteLabel = "Promote: finish the release"
				}
			case "blue_green":
				l.CanPromote, l.PromoteLabel = l.Progress.Ready, "Promote: switch traffic now"
			}
		case l.Progress.Kind == "window":
			l.CanRollback, l.CanPromote, l.PromoteLabel = true, true, "End the rollback window"
		}
	}
	l.Poll = "every 5s"
	if l.Releasing || l.Moving || l.Running != d.Replicas || l.Progress.Kind == "window" || d.State == "deleting" {
		l.Poll = "every 1s"
	}
	return l
}

// scaleForm and releaseForm are the deployment page's forms as typed.
type scaleForm struct {
	Replicas, MinReplicas, MaxReplicas string
	Problem                            formError
}

type releaseForm struct {
	VersionID, Strategy string
	Problem             formError
}

// versionChoice is a version the release form offers.
type versionChoice struct {
	ID, Label string
}

type deploymentData struct {
	page
	Live       deploymentLive
	Versions   []versionChoice
	Strategies []struct{ Value, Label string }
	TenantName string
	Scale      scaleForm
	Release    releaseForm
}

func (u *UI) deploymentPage(w http.ResponseWriter, r *http.Request) {
	u.renderDeployment(w, r, http.StatusOK, nil, nil)
}

// renderDeployment shows a deployment, with a scale or release form as
// typed and its problem when that post failed.
func (u *UI) renderDeployment(w http.ResponseWriter, r *http.Request, status int, scale *scaleForm, release *releaseForm) {
	ctx := r.Context()
	svc, err := u.gpuService()
	if err != nil {
		u.fail(w, r, err)
		return
	}
	dd, err := svc.GetDeployment(ctx, chi.URLParam(r, "id"))
	if err != nil {
		u.fail(w, r, err)
		return
	}
	dep := dd.Deployment
	d := deploymentData{Strategies: strategies,
		Scale:   scaleForm{Replicas: strconv.Itoa(dep.Replicas), MinReplicas: strconv.Itoa(dep.MinReplicas), MaxReplicas: strconv.Itoa(dep.MaxReplicas)},
		Release: releaseForm{Strategy: dep.Strategy}}
	d.Live = deploymentLiveOf(*dd, u.d.Now().UTC(), principal.From(ctx).Has("gpu:deploy"))
	d.Live.CSRF, d.Live.CanCluster = u.d.Auth.CSRFToken(w, r), principal.From(ctx).Has("cluster:read")
	if scale != nil {
		d.Scale = *scale
	}
	if release != nil {
		d.Release = *release
	}
	if m, err := svc.GetModel(ctx, dep.ModelID); err == nil {
		for i := len(m.Versions) - 1; i >= 0; i-- {
			v := m.Versions[i]
			label := v.Version + " · " + needText(v.Need)
			if v.ID == dep.StableVersionID {
				label += " (running)"
			}
			d.Versions = append(d.Versions, versionChoice{ID: v.ID, Label: label})
			if d.Release.VersionID == "" && v.ID != dep.StableVersionID && (dep.TargetVersionID == nil || v.ID != *dep.TargetVersionID) {
				d.Release.VersionID = v.ID
			}
		}
	}
	if _, names, err := u.tenantNames(r); err == nil {
		d.TenantName = names[dep.TenantID]
	}
	d.page = u.page(w, r, "Deployment "+dep.Name, "Deployments")
	d.Parent = &navItem{Label: "Deployments", Href: "/ui/deployments"}
	u.render(w, r, status, "deployment", "layout", d)
}

// deploymentLiveFragment is the detail page's refreshed part. A
// deployment that is gone (deleted) sends the browser to the list.
func (u *UI) deploymentLiveFragment(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	svc, err := u.gpuService()
	if err != nil {
		u.fail(w, r, err)
		return
	}
	dd, err := svc.GetDeployment(ctx, chi.URLParam(r, "id"))
	if errs.CodeOf(err) == errs.NotFound && r.Header.Get("HX-Request") == "true" {
		w.Header().Set("HX-Redirect", "/ui/deployments")
		w.WriteHeader(http.StatusNoContent)
		return
	}
	if err != nil {
		u.fail(w, r, err)
		return
	}
	l := deploymentLiveOf(*dd, u.d.Now().UTC(), principal.From(ctx).Has("gpu:deploy"))
	l.CSRF, l.CanCluster = u.d.Auth.CSRFToken(w, r), principal.From(ctx).Has("cluster:read")
	u.render(w, r, http.StatusOK, "deployment", "deployment-live", l)
}

func (u *UI) scaleDeployment(w http.ResponseWriter, r *http.Request) {
	svc, err := u.gpuService()
	if err != nil {
		u.fail(w, r, err)
		return
	}
	id := chi.URLParam(r, "id")
	g := func(k string) string { return strings.TrimSpace(r.PostFormValue(k)) }
	form := scaleForm{Replicas: g("replicas"), MinReplicas: g("min_replicas"), MaxReplicas: g("max_replicas")}
	var in gpu.DeploymentUpdate
	if in.Replicas, err = optNumber("replicas", form.Replicas); err == nil {
		if in.MinReplicas, err = optNumber("min_replicas", form.MinReplicas); err == nil {
			in.MaxReplicas, err = optNumber("max_replicas", form.MaxReplicas)
		}
	}
	var dep *gpu.Deployment
	if err == nil {
		dep, err = svc.UpdateDeployment(r.Context(), id, in)
	}
	if err != nil {
		if formProblem(err) {
			form.Problem = gpuProblem(err)
			u.renderDeployment(w, r, httpx.StatusOf(err), &form, nil)
			return
		}
		u.fail(w, r, err)
		return
	}
	u.done(w, r, "/ui/deployments/"+id, fmt.Sprintf("%s scaled to %d replica%s (between %d and %d).", dep.Name, dep.Replicas,
		plural(dep.Replicas), dep.MinReplicas, dep.MaxReplicas))
}

func (u *UI) releaseDeployment(w http.ResponseWriter, r *http.Request) {
	svc, err := u.gpuService()
	if err != nil {
		u.fail(w, r, err)
		return
	}
	id := chi.URLParam(r, "id")
	form := releaseForm{VersionID: r.PostFormValue("version_id"), Strategy: r.PostFormValue("strategy")}
	in := gpu.DeploymentUpdate{VersionID: &form.VersionID}
	if form.Strategy != "" {
		in.Strategy = &form.Strategy
	}
	dep, err := svc.UpdateDeployment(r.Context(), id, in)
	if err != nil {
		if formProblem(err) {
			form.Problem = gpuProblem(err)
			u.renderDeployment(w, r, httpx.StatusOf(err), nil, &form)
			return
		}
		u.fail(w, r, err)
		return
	}
	u.done(w, r, "/ui/deployments/"+id, fmt.Sprintf("%s release of version %s started.", strategyLabel(dep.Strategy), dep.Versions[form.VersionID]))
}

// strategyLabel is a strategy as the forms name it.
func strategyLabel(s string) string {
	for _, x := range strategies {
		if x.Value == s {
			return x.Label
		}
	}
	return s
}

// deploymentAction runs one of the deployment page's buttons: promote,
// rollback, pause, resume or delete.
func (u *UI) deploymentAction(w http.ResponseWriter, r *http.Request) {
	svc, err := u.gpuService()
	if err != nil {
		u.fail(w, r, err)
		return
	}
	ctx, id, back := r.Context(), chi.URLParam(r, "id"), "/ui/deployments/"+chi.URLParam(r, "id")
	var dep *gpu.Deployment
	switch chi.URLParam(r, "action") {
	case "promote":
		dep, err = svc.Promote(ctx, id)
	case "rollback":
		dep, err = svc.Rollback(ctx, id)
	case "pause":
		dep, err = svc.Pause(ctx, id)
	case "resume":
		dep, err = svc.Resume(ctx, id)
	case "delete":
		if err = svc.DeleteDeployment(ctx, id); err == nil {
			u.done(w, r, "/ui/deployments", "Deletion requested: the replicas stop, then the deployment is removed.")
			return
		}
	default:
		u.fail(w, r, errs.E(errs.NotFound, "no such action"))
		return
	}
	if err != nil {
		u.formFailed(w, r, back, err)
		return
	}
	u.done(w, r, back, actionOutcome(chi.URLParam(r, "action"), *dep, u.d.Now()))
}

// actionOutcome is the flash after an action: where the deployment now is.
func actionOutcome(action string, d gpu.Deployment, now time.Time) string {
	stable := d.Versions[d.StableVersionID]
	switch action {
	case "promote":
		switch {
		case d.TargetVersionID != nil && d.Strategy == "canary":
			pct := d.Params.CanarySteps[min(d.Step, len(d.Params.CanarySteps)-1)]
			return fmt.Sprintf("Promoted: the canary of version %s moves to step %d of %d (%d %% of traffic once its replicas run).",
				d.Versions[*d.TargetVersionID], d.Step+1, len(d.Params.CanarySteps), pct)
		case d.PreviousVersionID != nil && d.PreviousUntil != nil && d.PreviousUntil.After(now.Add(time.Second)):
			return fmt.Sprintf("Promoted: version %s takes all traffic; the previous set is kept for rollback until %s UTC.",
				stable, d.PreviousUntil.UTC().Format("15:04:05"))
		case d.PreviousVersionID != nil:
			return fmt.Sprintf("Rollback window ended: version %s's previous set stops.", stable)
		case d.TargetVersionID == nil:
			return fmt.Sprintf("Promoted: version %s is stable and takes all traffic.", stable)
		}
		return "Promoted."
	case "rollback":
		return fmt.Sprintf("Rolled back: version %s takes all traffic.", stable)
	case "pause":
		return "Release paused where it is; failed replicas are still replaced."
	case "resume":
		return "Release resumed."
	}
	return "Done."
}

// replicaData is a replica's page: its process and its output.
type replicaData struct {
	page
	Deployment gpu.Deployment
	Replica    gpu.Replica
	Lines      []string
}

// replicaPage shows one replica's process and the last lines of its
// output.
func (u *UI) replicaPage(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	svc, err := u.gpuService()
	if err != nil {
		u.fail(w, r, err)
		return
	}
	dd, err := svc.GetDeployment(ctx, chi.URLParam(r, "id"))
	if err != nil {
		u.fail(w, r, err)
		return
	}
	d := replicaData{Deployment: dd.Deployment}
	found := false
	for _, rep := range dd.ReplicaList {
		if rep.ID == chi.URLParam(r, "replica") {
			d.Replica, found = rep, true
		}
	}
	if !found {
		u.fail(w, r, errs.E(errs.NotFound, "no such replica in this deployment"))
		return
	}
	if d.Lines, err = svc.ReplicaLogs(ctx, dd.ID, d.Replica.ID); err != nil {
		u.fail(w, r, err)
		return
	}
	d.page = u.page(w, r, "Replica of "+dd.Name, "Deployments")
	d.Parent = &navItem{Label: dd.Name, Href: "/ui/deployments/" + dd.ID}
	u.render(w, r, http.StatusOK, "replica", "layout", d)
}

// figuresText is the routers' last minute of a version or replica.
func figuresText(f *gpu.VersionStats) string {
	if f == nil {
		return "—"
	}
	return fmt.Sprintf("%d req · %.1f%% errors · p99 %s", f.Requests, 100*f.ErrorRate(), f.P99.Round(time.Millisecond))
}

package gpu

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/failsafe-go/failsafe-go/circuitbreaker"
	"github.com/go-chi/chi/v5"
	"github.com/jackc/pgx/v5"

	"github.com/atriumhq/atrium/platform/errs"
	"github.com/atriumhq/atrium/platform/httpx"
	"github.com/atriumhq/atrium/platform/postgres"
	"github.com/atriumhq/atrium/platform/principal"
)

// The inference router serves the OpenAI-compatible API (/v1/models,
// /v1/completions, /v1/chat/completions) on every instance. A request's
// "model" names one of the caller's tenant's deployments; the deployment's
// traffic weights pick the version (smooth weighted round robin), the
// balancing strategy picks a ready
// replica of it on any node, and the request is proxied to the replica
// (streamed responses pass through as they come). A connection that cannot
// be made is retried once on another replica; each replica has a circuit
// breaker. Every request's outcome and latency go to the per-version and
// per-replica statistics in Redis that the canary's verdicts read.

// Balancing strategies (seeds/003's client-side load balancing).
const (
	LeastOutstanding     = "least_outstanding"
	RoundRobin           = "round_robin"
	WeightedResponseTime = "weighted_response_time"
)

// RouterConfig configures the inference router.
type RouterConfig struct {
	// Strategy picks a replica within a version (default least_outstanding).
	Strategy string
	// Timeout bounds one inference request, streaming included.
	Timeout time.Duration
	// Hold is how long a request waits for a replica when its deployment
	// has none ready (scaled to zero, or starting).
	Hold time.Duration
	// Reload is how often the route table is reread besides broadcasts.
	Reload time.Duration
}

// Router is the inference router.
type Router struct {
	s     *Service
	cfg   RouterConfig
	table atomic.Pointer[routeTable]
	kick  chan struct{}
	rr    atomic.Uint64
	tr    *http.Transport

	replicas sync.Map // replica id → *replicaLive (read on every request, without a lock)

	mu       sync.Mutex // guards what follows
	inflight map[string]*atomic.Int64
	splits   map[string]*splitter // by deployment
	samples  []sample
}

// routeTable is every deployment's versions and ready replicas.
type routeTable struct {
	byName map[string]*routeDeployment // tenant + "/" + name
	loaded time.Time
}

type routeDeployment struct {
	ID, Tenant, Name string
	Traffic          map[string]int
	Created          time.Time
	ready            map[string][]routeReplica // by version
}

type routeReplica struct{ ID, Version, Endpoint string }

// replicaLive is what this instance knows of a replica from its own
// requests: requests in flight, a response-time average, a breaker.
type replicaLive struct {
	outstanding atomic.Int64
	ewma        atomic.Int64 // nanoseconds
	breaker     circuitbreaker.CircuitBreaker[any]
}

// sample is one request's outcome, buffered for the statistics.
type sample struct {
	deployment, version, replica string
	at                           time.Time
	latency                      time.Duration
	failed                       bool
}

// NewRouter returns the inference router over s.
func (s *Service) NewRouter(cfg RouterConfig) *Router {
	if cfg.Strategy == "" {
		cfg.Strategy = LeastOutstanding
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 2 * time.Minute
	}
	if cfg.Hold <= 0 {
		cfg.Hold = time.Minute
	}
	if cfg.Reload <= 0 {
		cfg.Reload = time.Second
	}
	rt := &Router{s: s, cfg: cfg, kick: make(chan struct{}, 1), inflight: map[string]*atomic.Int64{},
		splits: map[string]*splitter{},
		tr: &http.Transport{
			DialContext:           (&net.Dialer{Timeout: 2 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
			MaxIdleConns:          1024,
			MaxIdleConnsPerHost:   256,
			IdleConnTimeout:       90 * time.Second,
			ResponseHeaderTimeout: cfg.Timeout,
			DisableCompression:    true,
		}}
	rt.table.Store(&routeTable{byName: map[string]*routeDeployment{}})
	return rt
}

// Run keeps the route table current and flushes statistics until ctx ends.
func (rt *Router) Run(ctx context.Context) error {
	go func() {
		_ = rt.s.TrafficChanges(ctx, func(string) { rt.Kick() })
	}()
	reload := time.NewTicker(rt.cfg.Reload)
	defer reload.Stop()
	flush := time.NewTicker(500 * time.Millisecond)
	defer flush.Stop()
	rt.load(ctx)
	for {
		select {
		case <-ctx.Done():
			rt.flush(context.WithoutCancel(ctx))
			return nil
		case <-rt.kick:
			rt.load(ctx)
		case <-reload.C:
			rt.load(ctx)
		case <-flush.C:
			rt.flush(ctx)
		}
	}
}

// Kick asks for a reload of the route table soon.
func (rt *Router) Kick() {
	select {
	case rt.kick <- struct{}{}:
	default:
	}
}

// load rereads the route table.
func (rt *Router) load(ctx context.Context) {
	t := &routeTable{byName: map[string]*routeDeployment{}, loaded: time.Now()}
	err := rt.s.tx.Do(postgres.AllTenants(ctx, "gpu.router"), "gpu.route_table", func(tx pgx.Tx) error {
		rows, _ := tx.Query(ctx, `SELECT d.id, d.tenant_id, d.name, d.traffic, d.created_at, r.id, r.version_id, r.endpoint
			FROM deployments d LEFT JOIN replicas r ON r.deployment_id = d.id AND r.state = 'running' AND r.endpoint <> ''
			WHERE d.state <> 'deleting' ORDER BY d.id, r.id`)
		defer rows.Close()
		byID := map[string]*routeDeployment{}
		for rows.Next() {
			var d routeDeployment
			var traffic []byte
			var rid, rver, rend *string
			if err := rows.Scan(&d.ID, &d.Tenant, &d.Name, &traffic, &d.Created, &rid, &rver, &rend); err != nil {
				return err
			}
			cur, ok := byID[d.ID]
			if !ok {
				if err := json.Unmarshal(traffic, &d.Traffic); err != nil {
					return err
				}
				d.ready = map[string][]routeReplica{}
				cur = &d
				byID[d.ID] = cur
				t.byName[d.Tenant+"/"+d.Name] = cur
			}
			if rid != nil {
				cur.ready[*rver] = append(cur.ready[*rver], routeReplica{ID: *rid, Version: *rver, Endpoint: *rend})
			}
		}
		return rows.Err()
	})
	if err != nil {
		if ctx.Err() == nil {
			rt.s.log.Warn().Err(err).Msg("inference router: route table not reloaded; serving the previous one")
		}
		return
	}
	rt.table.Store(t)
	rt.prune(t)
}

// prune forgets what this instance knew of replicas that are no longer
// ready anywhere, and the in-flight counters of deployments that are gone.
func (rt *Router) prune(t *routeTable) {
	ready := map[string]bool{}
	deps := map[string]bool{}
	for _, d := range t.byName {
		deps[d.ID] = true
		for _, reps := range d.ready {
			for _, r := range reps {
				ready[r.ID] = true
			}
		}
	}
	rt.mu.Lock()
	defer rt.mu.Unlock()
	rt.replicas.Range(func(id, l any) bool {
		if !ready[id.(string)] && l.(*replicaLive).outstanding.Load() == 0 {
			rt.replicas.Delete(id)
		}
		return true
	})
	for id, c := range rt.inflight {
		if !deps[id] && c.Load() == 0 {
			delete(rt.inflight, id)
		}
	}
	for id := range rt.splits {
		if !deps[id] {
			delete(rt.splits, id)
		}
	}
}

// Register adds the OpenAI-compatible endpoints to r (the root router).
func (rt *Router) Register(r chi.Router) {
	r.Route("/v1", func(r chi.Router) {
		r.Use(func(next http.Handler) http.Handler {
			return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				ctx, cancel := context.WithTimeout(r.Context(), rt.cfg.Timeout)
				defer cancel()
				next.ServeHTTP(w, r.WithContext(ctx))
			})
		})
		r.Get("/models", rt.serveModels)
		r.Post("/completions", rt.serveInference)
		r.Post("/chat/completions", rt.serveInference)
	})
}

// openAIError writes an error in the OpenAI API's format.
func openAIError(w http.ResponseWriter, status int, typ, code, param, format string, args ...any) {
	body := map[string]any{"error": map[string]any{"message": fmt.Sprintf(format, args...), "type": typ, "code": code, "param": param}}
	if param == "" {
		body["error"].(map[string]any)["param"] = nil
	}
	httpx.JSON(w, status, body)
}

// caller is the tenant of an authenticated caller allowed to invoke models.
func (rt *Router) caller(w http.ResponseWriter, r *http.Request) (string, bool) {
	p := principal.From(r.Context())
	switch {
	case p == nil:
		// As every other route answers it (the edge's problem).
		httpx.WriteError(w, r, rt.s.log, errs.E(errs.Unauthenticated, "authentication required: send Authorization: Bearer <access token>"))
		return "", false
	case !p.Has("inference:invoke"):
		openAIError(w, http.StatusForbidden, "invalid_request_error", "forbidden", "", "the caller may not invoke models (inference:invoke)")
		return "", false
	case p.TenantID == "":
		openAIError(w, http.StatusForbidden, "invalid_request_error", "forbidden", "", "platform administrators belong to no tenant: call as a tenant's user")
		return "", false
	}
	return p.TenantID, true
}

// serveModels lists the tenant's deployments as models.
func (rt *Router) serveModels(w http.ResponseWriter, r *http.Request) {
	tenant, ok := rt.caller(w, r)
	if !ok {
		return
	}
	type model struct {
		ID      string `json:"id"`
		Object  string `json:"object"`
		Created int64  `json:"created"`
		OwnedBy string `json:"owned_by"`
	}
	out := []model{}
	for _, d := range rt.table.Load().byName {
		if d.Tenant == tenant {
			out = append(out, model{ID: d.Name, Object: "model", Created: d.Created.Unix(), OwnedBy: tenant})
		}
	}
	httpx.JSON(w, http.StatusOK, map[string]any{"object": "list", "data": out})
}

// serveInference routes one completion request.
func (rt *Router) serveInference(w http.ResponseWriter, r *http.Request) {
	tenant, ok := rt.caller(w, r)
	if !ok {
		return
	}
	body, err := io.ReadAll(r.Body)
	if err != nil {
		openAIError(w, http.StatusRequestEntityTooLarge, "invalid_request_error", "too_large", "", "the request body is too large")
		return
	}
	var req struct {
		Model string `json:"model"`
	}
	if err := json.Unmarshal(body, &req); err != nil {
		openAIError(w, http.StatusBadRequest, "invalid_request_error", "invalid_json", "", "the body is not a JSON object: %v", err)
		return
	}
	if req.Model == "" {
		openAIError(w, http.StatusBadRequest, "invalid_request_error", "missing_model", "model", "model is required: the name of one of your deployments")
		return
	}
	d := rt.table.Load().byName[tenant+"/"+req.Model]
	if d == nil {
		openAIError(w, http.StatusNotFound, "invalid_request_error", "model_not_found", "model", "no deployment named %q", req.Model)
		return
	}
	in := rt.inflightOf(d.ID)
	in.Add(1)
	defer in.Add(-1)
	rt.route(w, r, d, body)
}

// inflightOf is the counter of a deployment's requests in flight here.
func (rt *Router) inflightOf(deployment string) *atomic.Int64 {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	c, ok := rt.inflight[deployment]
	if !ok {
		c = &atomic.Int64{}
		rt.inflight[deployment] = c
	}
	return c
}

// route picks a version and replica and proxies, retrying a failed
// connection once on another replica; with no replica ready it waits up to
// Hold for one.
func (rt *Router) route(w http.ResponseWriter, r *http.Request, d *routeDeployment, body []byte) {
	ctx := r.Context()
	deadline := time.Now().Add(rt.cfg.Hold)
	var tried []string
	for attempt := 0; ; {
		d = rt.current(d)
		version := rt.splitterOf(d.ID).next(d.Traffic, d.ready)
		rep, ok := rt.pick(d.ready[version], tried)
		if !ok && len(d.ready[version]) > 0 && len(tried) == 0 {
			// The version drawn has replicas, but every breaker is open:
			// that counts against the version (a failing canary is rolled
			// back on it) and the request goes to another version.
			rt.record(d, routeReplica{Version: version}, time.Now(), true)
		}
		if !ok {
			for v := range d.ready {
				if rep, ok = rt.pick(d.ready[v], tried); ok {
					break
				}
			}
		}
		if !ok {
			if len(tried) > 0 || len(d.ready) > 0 || time.Now().After(deadline) {
				openAIError(w, http.StatusServiceUnavailable, "server_error", "no_replica", "", "deployment %q has no replica able to serve; try again shortly", d.Name)
				return
			}
			// None ready (scaled to zero, or starting): hold the request,
			// counted in flight, which brings a replica up.
			select {
			case <-ctx.Done():
				return
			case <-time.After(200 * time.Millisecond):
				rt.Kick()
				continue
			}
		}
		attempt++
		retry := rt.proxy(w, r, d, rep, body, attempt < 2)
		if !retry {
			return
		}
		tried = append(tried, rep.ID)
	}
}

// current is the latest table's entry for d.
func (rt *Router) current(d *routeDeployment) *routeDeployment {
	if n := rt.table.Load().byName[d.Tenant+"/"+d.Name]; n != nil {
		return n
	}
	return d
}

// splitter divides one deployment's requests between its versions by
// their weights with smooth weighted round robin (as nginx does): over any
// run of requests each version's share is within one request of its
// weight, with no random drift, and the versions interleave evenly.
type splitter struct {
	mu      sync.Mutex
	current map[string]int
}

// next picks a version among those with ready replicas; "" when there is
// none.
func (sp *splitter) next(traffic map[string]int, ready map[string][]routeReplica) string {
	var vs []string
	total := 0
	for v, w := range traffic {
		if w > 0 && len(ready[v]) > 0 {
			vs = append(vs, v)
			total += w
		}
	}
	if len(vs) == 0 {
		// No weighted version can serve: any that can.
		for v := range ready {
			vs = append(vs, v)
		}
		slices.Sort(vs)
		if len(vs) == 0 {
			return ""
		}
		return vs[0]
	}
	slices.Sort(vs)
	sp.mu.Lock()
	defer sp.mu.Unlock()
	if sp.current == nil {
		sp.current = map[string]int{}
	}
	best := ""
	for _, v := range vs {
		sp.current[v] += traffic[v]
		if best == "" || sp.current[v] > sp.current[best] {
			best = v
		}
	}
	sp.current[best] -= total
	return best
}

// splitterOf is a deployment's splitter.
func (rt *Router) splitterOf(deployment string) *splitter {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	sp, ok := rt.splits[deployment]
	if !ok {
		sp = &splitter{}
		rt.splits[deployment] = sp
	}
	return sp
}

func (rt *Router) live(id string) *replicaLive {
	if l, ok := rt.replicas.Load(id); ok {
		return l.(*replicaLive)
	}
	l, _ := rt.replicas.LoadOrStore(id, &replicaLive{breaker: circuitbreaker.NewBuilder[any]().
		WithFailureThresholdRatio(5, 10).
		WithDelay(5 * time.Second).
		WithSuccessThreshold(2).
		Build()})
	return l.(*replicaLive)
}

// pick chooses a replica by the strategy, skipping tried ones and those
// whose breaker is open.
func (rt *Router) pick(cands []routeReplica, tried []string) (routeReplica, bool) {
	var ok []routeReplica
	for _, c := range cands {
		if !contains(tried, c.ID) && !rt.live(c.ID).breaker.IsOpen() {
			ok = append(ok, c)
		}
	}
	if len(ok) == 0 {
		return routeReplica{}, false
	}
	switch rt.cfg.Strategy {
	case RoundRobin:
		return ok[int(rt.rr.Add(1)%uint64(len(ok)))], true
	case WeightedResponseTime:
		// Weight each by the inverse of its average response time.
		var ws []float64
		var sum float64
		for _, c := range ok {
			t := float64(rt.live(c.ID).ewma.Load())
			if t <= 0 {
				t = float64(time.Millisecond)
			}
			ws = append(ws, 1/t)
			sum += 1 / t
		}
		x := rand.Float64() * sum
		for i, w := range ws {
			if x < w {
				return ok[i], true
			}
			x -= w
		}
		return ok[len(ok)-1], true
	}
	// Least outstanding requests; ties by a random start, so equal
	// replicas share the load.
	start := rand.IntN(len(ok))
	best := ok[start]
	bestN := rt.live(best.ID).outstanding.Load()
	for i := 1; i < len(ok); i++ {
		c := ok[(start+i)%len(ok)]
		if n := rt.live(c.ID).outstanding.Load(); n < bestN {
			best, bestN = c, n
		}
	}
	return best, true
}

func contains(xs []string, x string) bool {
	for _, y := range xs {
		if y == x {
			return true
		}
	}
	return false
}

// hopHeaders are not forwarded (RFC 9110 §7.6.1), nor are the caller's
// credentials: the replica trusts the router, not the caller.
var hopHeaders = []string{"Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "Te", "Trailer",
	"Transfer-Encoding", "Upgrade", "Authorization", "Cookie"}

// proxy sends the request to rep and streams its answer back. It returns
// true when the connection could not be made and mayRetry: nothing was
// written and the caller tries another replica.
func (rt *Router) proxy(w http.ResponseWriter, r *http.Request, d *routeDeployment, rep routeReplica, body []byte, mayRetry bool) bool {
	live := rt.live(rep.ID)
	if !live.breaker.TryAcquirePermit() {
		// Half-open and already trying: another replica, or a clear 503.
		if mayRetry {
			return true
		}
		openAIError(w, http.StatusServiceUnavailable, "server_error", "no_replica", "", "deployment %q has no replica able to serve; try again shortly", d.Name)
		return false
	}
	live.outstanding.Add(1)
	defer live.outstanding.Add(-1)
	start := time.Now()
	out, err := http.NewRequestWithContext(r.Context(), http.MethodPost, "http://"+rep.Endpoint+r.URL.Path, bytes.NewReader(body))
	if err != nil {
		openAIError(w, http.StatusInternalServerError, "server_error", "internal", "", "bad replica endpoint")
		return false
	}
	for k, vs := range r.Header {
		out.Header[k] = vs
	}
	for _, h := range hopHeaders {
		out.Header.Del(h)
	}
	if id := w.Header().Get("X-Request-Id"); id != "" {
		out.Header.Set("X-Request-Id", id)
	}
	out.Header.Set("X-Forwarded-For", httpx.ClientIP(r.Context()))
	resp, err := rt.tr.RoundTrip(out)
	if err != nil {
		live.breaker.RecordFailure()
		rt.record(d, rep, start, true)
		var op *net.OpError
		if errors.As(err, &op) && op.Op == "dial" && mayRetry {
			return true
		}
		if r.Context().Err() != nil {
			return false
		}
		openAIError(w, http.StatusBadGateway, "server_error", "replica_unreachable", "", "the replica did not answer: %v", err)
		return false
	}
	defer resp.Body.Close()
	for _, h := range hopHeaders {
		resp.Header.Del(h)
	}
	for k, vs := range resp.Header {
		w.Header()[k] = vs
	}
	w.Header().Set("X-Atrium-Version", rep.Version)
	w.Header().Set("X-Atrium-Replica", rep.ID)
	w.WriteHeader(resp.StatusCode)
	failed := resp.StatusCode >= 500
	stream := strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream")
	var usage bytes.Buffer
	var dst io.Writer = w
	if !stream && resp.ContentLength < 4<<20 {
		dst = io.MultiWriter(w, &usage)
	}
	if _, err := copyFlushing(dst, w, resp.Body, stream); err != nil {
		failed = true
	}
	if failed {
		live.breaker.RecordFailure()
	} else {
		live.breaker.RecordSuccess()
	}
	lat := time.Since(start)
	if old := live.ewma.Load(); old == 0 {
		live.ewma.Store(int64(lat))
	} else {
		live.ewma.Store(old + (int64(lat)-old)/5)
	}
	rt.record(d, rep, start, failed)
	if resp.StatusCode < 300 {
		_ = rt.s.meter.Add(r.Context(), d.Tenant, "inference_requests", 1)
		if !stream {
			var u struct {
				Usage struct {
					TotalTokens int64 `json:"total_tokens"`
				} `json:"usage"`
			}
			if json.Unmarshal(usage.Bytes(), &u) == nil && u.Usage.TotalTokens > 0 {
				_ = rt.s.meter.Add(r.Context(), d.Tenant, "inference_tokens", u.Usage.TotalTokens)
			}
		}
	}
	return false
}

// copyFlushing copies src to dst, flushing w after every read when
// streaming, so server-sent events reach the client as they come.
func copyFlushing(dst io.Writer, w http.ResponseWriter, src io.Reader, stream bool) (int64, error) {
	if !stream {
		return io.Copy(dst, src)
	}
	rc := http.NewResponseController(w)
	buf := make([]byte, 32<<10)
	var n int64
	for {
		k, err := src.Read(buf)
		if k > 0 {
			if _, werr := dst.Write(buf[:k]); werr != nil {
				return n, werr
			}
			n += int64(k)
			_ = rc.Flush()
		}
		if errors.Is(err, io.EOF) {
			return n, nil
		}
		if err != nil {
			return n, err
		}
	}
}

// record buffers one request's outcome for the statistics.
func (rt *Router) record(d *routeDeployment, rep routeReplica, start time.Time, failed bool) {
	rt.mu.Lock()
	rt.samples = append(rt.samples, sample{deployment: d.ID, version: rep.Version, replica: rep.ID, at: start,
		latency: time.Since(start), failed: failed})
	rt.mu.Unlock()
}

// flush writes buffered outcomes to the statistics in Redis and publishes
// this instance's requests in flight per deployment (the autoscaler adds
// them up).
func (rt *Router) flush(ctx context.Context) {
	rt.mu.Lock()
	samples := rt.samples
	rt.samples = nil
	inflight := map[string]int64{}
	for d, c := range rt.inflight {
		inflight[d] = c.Load()
	}
	rt.mu.Unlock()
	if len(samples) > 0 {
		if err := rt.s.stats.RecordMany(ctx, samples); err != nil {
			rt.s.log.Warn().Err(err).Int("requests", len(samples)).Msg("inference statistics not recorded")
		}
	}
	if len(inflight) > 0 {
		if err := rt.s.publishInflight(ctx, inflight, len(samples)); err != nil {
			rt.s.log.Debug().Err(err).Msg("requests in flight not published")
		}
	}
}

package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/rs/zerolog"

	"github.com/atriumhq/atrium/modules/auth"
	"github.com/atriumhq/atrium/modules/gpu"
	"github.com/atriumhq/atrium/modules/payment"
	"github.com/atriumhq/atrium/modules/payment/channel"
	"github.com/atriumhq/atrium/modules/quota"
	"github.com/atriumhq/atrium/modules/tenant"
	"github.com/atriumhq/atrium/platform/cluster"
	"github.com/atriumhq/atrium/platform/config"
	"github.com/atriumhq/atrium/platform/errs"
	"github.com/atriumhq/atrium/platform/httpx"
	"github.com/atriumhq/atrium/platform/keyring"
	"github.com/atriumhq/atrium/platform/logging"
	"github.com/atriumhq/atrium/platform/metrics"
	"github.com/atriumhq/atrium/platform/postgres"
	"github.com/atriumhq/atrium/platform/principal"
	"github.com/atriumhq/atrium/platform/redisx"
	atriumsql "github.com/atriumhq/atrium/sql"
	"github.com/atriumhq/atrium/web"
)

func cmdServe(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("serve", "serve", "Runs the HTTP server (API, admin UI, /healthz, /readyz, /metrics) and this instance's\nbackground workers until SIGTERM or SIGINT, then shuts down gracefully.", stderr)
	if err := parse(fs, args); err != nil {
		return err
	}
	cfg, err := config.Load()
	if err != nil {
		return err
	}
	log := logging.New(stdout, cfg.Log.Level, cfg.Log.Format, cfg.Development())
	a, err := newApp(ctx, cfg, log)
	if err != nil {
		return err
	}
	return a.serve(ctx)
}

// app is one running Atrium instance: its connections, its router, and its
// background workers. Tests start several in one process.
type app struct {
	cfg      config.Config
	log      zerolog.Logger
	pool     *pgxpool.Pool
	tx       *postgres.Tx
	redis    *redisx.Client
	migrator *postgres.Migrator

	ownerPool *pgxpool.Pool
	metrics   *metrics.Registry
	cluster   *cluster.Registry
	auth      *auth.Service
	tenants   *tenant.Service
	quotas    *quota.Service
	meter     *quota.Meter
	payments  *payment.Service
	gpus      *gpu.Service
	inference *gpu.Router
	gpuDevs   gpu.Backend
	// rateLimits checks every API request against the rate-limit rules.
	rateLimits *quota.RateLimits
	listener   net.Listener
	router     chi.Router
	// draining is set once shutdown begins, so /readyz tells the load
	// balancer to stop sending traffic while in-flight requests finish.
	draining atomic.Bool
}

// appOption adjusts an app before it starts (tests use it to add routes).
type appOption func(*app)

// openApp connects to PostgreSQL and Redis, brings the schema up to date
// (or refuses to start when it is behind and migrating on start is off) and
// starts the modules. One-off commands (atrium admin) use it without a
// listener.
func openApp(ctx context.Context, cfg config.Config, log zerolog.Logger) (_ *app, err error) {
	if cfg.InstanceID == "" {
		cfg.InstanceID = defaultInstanceID()
	}
	log = log.With().Str("instance", cfg.InstanceID).Logger()
	a := &app{cfg: cfg, log: log, metrics: metrics.New()}
	defer func() {
		if err != nil {
			a.close()
		}
	}()

	// Two pools on one URL: a small one as the connecting user, who owns the
	// schema, for migrations; and the application's, whose connections take
	// the application role so that row-level security binds every query.
	a.ownerPool, err = postgres.Open(ctx, postgres.Options{URL: cfg.Database.URL, MaxConns: 2, RetryFor: cfg.Database.ConnectTimeout, Log: log})
	if err != nil {
		return nil, err
	}
	if a.migrator, err = postgres.NewMigrator(a.ownerPool, atriumsql.Migrations()); err != nil {
		return nil, err
	}
	if err := a.ensureSchema(ctx); err != nil {
		return nil, err
	}
	a.pool, err = postgres.Open(ctx, postgres.Options{URL: cfg.Database.URL, MaxConns: cfg.Database.MaxConns,
		RetryFor: cfg.Database.ConnectTimeout, Log: log, Role: postgres.AppRole})
	if err != nil {
		return nil, err
	}
	a.tx = postgres.NewTx(a.pool, log)
	a.metrics.MustRegister(a.tx.Collectors()...)
	if a.redis, err = redisx.Connect(redisx.Options{URL: cfg.Redis.URL, Prefix: cfg.Redis.Prefix, Timeout: cfg.Redis.Timeout, Log: log}); err != nil {
		return nil, err
	}

	ring, err := keyring.Parse(cfg.MasterKey)
	if err != nil {
		return nil, &config.Error{Var: "ATRIUM_MASTER_KEY", Problem: err.Error()}
	}
	if a.quotas, err = quota.New(quota.Deps{Tx: a.tx, Redis: a.redis, Log: logging.Module(log, "quota")}); err != nil {
		return nil, err
	}
	if a.meter, err = quota.NewMeter(quota.MeterConfig{PushInterval: cfg.Usage.PushInterval, FlushInterval: cfg.Usage.FlushInterval},
		quota.MeterDeps{Tx: a.tx, Redis: a.redis, Quotas: a.quotas, Log: logging.Module(log, "usage")}); err != nil {
		return nil, err
	}
	a.metrics.MustRegister(a.meter.Collectors()...)
	// The rate limiter's own Redis pool gives up after 100ms, and then
	// decides locally for a second (each rule's fail mode) before trying
	// Redis again: a Redis outage never hangs a request.
	a.rateLimits, err = quota.NewRateLimits(ctx, quota.RateLimitDeps{Tx: a.tx, Redis: a.redis, Quotas: a.quotas,
		Log: logging.Module(log, "ratelimit"), Limiter: quota.Config{Timeout: 100 * time.Millisecond, HoldOff: time.Second}})
	if err != nil {
		return nil, err
	}
	a.metrics.MustRegister(a.rateLimits.Collectors()...)
	a.tenants, err = tenant.New(ctx, tenant.Deps{Tx: a.tx, Redis: a.redis, Log: logging.Module(log, "tenant"),
		PlanChanged: a.quotas.LimitsChanged})
	if err != nil {
		return nil, err
	}
	a.auth, err = auth.New(ctx, cfg.Auth, auth.Deps{Tx: a.tx, Redis: a.redis, Log: logging.Module(log, "auth"),
		Keyring: ring, Instance: cfg.InstanceID, Secure: !cfg.Development(), Tenants: a.tenants, Quotas: a.quotas})
	if err != nil {
		return nil, err
	}

	cards, err := cfg.CardKeyring()
	if err != nil {
		return nil, &config.Error{Var: "ATRIUM_PAYMENTS_CARD_KEYS", Problem: err.Error()}
	}
	a.payments, err = payment.New(payment.Config{Channels: cfg.Payments.Channels, TestChannels: cfg.Payments.TestChannels, IdempotencyTTL: cfg.Payments.IdempotencyTTL,
		RecoverAfter: cfg.Payments.RecoverAfter, RecoveryInterval: cfg.Payments.RecoveryInterval, CallTimeout: cfg.Payments.CallTimeout,
		Channel: channel.Config{TimeoutFloor: cfg.Payments.TimeoutFloor, TimeoutCeiling: cfg.Payments.TimeoutCeiling,
			MaxConcurrent: cfg.Payments.MaxConcurrent}},
		payment.Deps{Tx: a.tx, Redis: a.redis, Log: logging.Module(log, "payment"), Cards: cards,
			Terminals: terminalProfiles{a.auth}, Usage: a.meter, Instance: cfg.InstanceID})
	if err != nil {
		var ce payment.ChannelsError
		if errors.As(err, &ce) {
			return nil, &config.Error{Var: "ATRIUM_PAYMENTS_CHANNELS or ATRIUM_PAYMENTS_TEST_CHANNELS", Problem: err.Error()}
		}
		return nil, err
	}

	node := cfg.GPU.Node
	if node == "" {
		if node, err = os.Hostname(); err != nil {
			return nil, &config.Error{Var: "ATRIUM_GPU_NODE", Problem: "unset, and the host name is unknown: " + err.Error()}
		}
	}
	if a.gpuDevs, err = gpu.OpenBackend(cfg.GPU.Backend, node, logging.Module(log, "gpu")); err != nil {
		return nil, &config.Error{Var: "ATRIUM_GPU_BACKEND", Problem: err.Error()}
	}
	a.gpus, err = gpu.New(gpu.Config{Node: node, Backend: a.gpuDevs, Policy: gpu.Policy(cfg.GPU.Policy),
		RefreshInterval: cfg.GPU.RefreshInterval, NodeTTL: cfg.GPU.NodeTTL, ScheduleInterval: cfg.GPU.ScheduleInterval,
		LeaseTTL: cfg.GPU.LeaseTTL, MeterInterval: cfg.GPU.MeterInterval, AdvertiseHost: cfg.GPU.AdvertiseHost,
		ReplicaGrace: cfg.GPU.ReplicaGrace, Commands: cfg.GPU.Commands},
		gpu.Deps{Tx: a.tx, Redis: a.redis, Log: logging.Module(log, "gpu"), Quotas: a.quotas, Meter: a.meter, Instance: cfg.InstanceID})
	if err != nil {
		return nil, err
	}
	a.inference = a.gpus.NewRouter(gpu.RouterConfig{Strategy: cfg.GPU.LBStrategy, Timeout: cfg.GPU.InferenceTimeout,
		Hold: cfg.GPU.HoldTimeout})
	return a, nil
}

// terminalProfiles gives the payment module the auth module's terminals.
type terminalProfiles struct{ auth *auth.Service }

func (t terminalProfiles) TerminalProfile(ctx context.Context, id string) (payment.Terminal, error) {
	ref, test, err := t.auth.TerminalProfile(ctx, id)
	return payment.Terminal{MerchantRef: ref, TestMode: test}, err
}

// newApp opens the instance's connections and modules (openApp), then its
// listener, and builds the router.
func newApp(ctx context.Context, cfg config.Config, log zerolog.Logger, opts ...appOption) (_ *app, err error) {
	a, err := openApp(ctx, cfg, log)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			a.close()
		}
	}()
	cfg = a.cfg
	if a.listener, err = net.Listen("tcp", cfg.HTTP.Addr); err != nil {
		return nil, fmt.Errorf("listen on ATRIUM_HTTP_ADDR %s: %w", cfg.HTTP.Addr, err)
	}
	host, _ := os.Hostname()
	a.cluster = cluster.NewRegistry(a.redis, cluster.Instance{
		ID: cfg.InstanceID, Version: version, Host: host, Addr: a.listener.Addr().String(), StartedAt: time.Now().UTC(),
	}, 2*time.Second, a.checks, logging.Module(a.log, "cluster"))

	if err := a.buildRouter(opts...); err != nil {
		return nil, err
	}
	return a, nil
}

func defaultInstanceID() string {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "atrium"
	}
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	return host + "-" + hex.EncodeToString(b)
}

// ensureSchema applies pending migrations when allowed, and otherwise
// refuses to run against a schema older than the binary.
func (a *app) ensureSchema(ctx context.Context) error {
	if a.cfg.ShouldMigrateOnStart() {
		applied, err := a.migrator.Up(ctx)
		if err != nil {
			return fmt.Errorf("migrate on start: %w", err)
		}
		if len(applied) > 0 {
			a.log.Info().Ints64("versions", applied).Msg("migrations applied")
		}
		return nil
	}
	cur, target, err := a.migrator.Versions(ctx)
	if err != nil {
		return fmt.Errorf("read schema version: %w", err)
	}
	if pending, err := a.migrator.Pending(ctx); err != nil {
		return fmt.Errorf("read schema version: %w", err)
	} else if pending {
		return fmt.Errorf("database schema is at version %d but this binary needs %d: run `atrium migrate up` first, or set ATRIUM_MIGRATE_ON_START=true", cur, target)
	}
	return nil
}

// checks reports the health of each dependency, for /readyz and the
// cluster heartbeat: "ok" or a short, client-safe word; the cause is logged.
func (a *app) checks(ctx context.Context) map[string]string {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	res := map[string]string{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	check := func(name, failure string, f func() error) {
		wg.Go(func() {
			v := "ok"
			if err := f(); err != nil {
				v = failure
				a.log.Warn().Ctx(ctx).Err(err).Str("dependency", name).Msg("dependency check failed")
			}
			mu.Lock()
			res[name] = v
			mu.Unlock()
		})
	}
	check("postgres", "unreachable", func() error { return a.pool.Ping(ctx) })
	check("redis", "unreachable", func() error { return a.redis.Ping(ctx) })
	check("schema", "behind", func() error {
		pending, err := a.migrator.Pending(ctx)
		if err == nil && pending {
			err = errors.New("migrations pending")
		}
		return err
	})
	wg.Wait()
	return res
}

func (a *app) buildRouter(opts ...appOption) error {
	trusted, err := httpx.ParsePrefixes(a.cfg.HTTP.TrustedProxies)
	if err != nil {
		return &config.Error{Var: "ATRIUM_HTTP_TRUSTED_PROXIES", Problem: err.Error()}
	}
	ui, err := web.New(web.Deps{Cluster: a.cluster, Auth: a.auth, Tenants: a.tenants, Quotas: a.quotas, Usage: a.meter,
		RateLimits: a.rateLimits, Payments: a.payments, Channels: a.payments.Channels(), GPUs: a.gpus, Log: logging.Module(a.log, "web"),
		Version: version, InstanceID: a.cfg.InstanceID, Env: a.cfg.Env})
	if err != nil {
		return err
	}
	h := httpx.Adapter{Log: a.log}

	r := chi.NewRouter()
	r.Use(
		httpx.Identify(trusted),
		httpx.Observe(httpx.AccessLog(logging.Module(a.log, "http")), a.metrics.Observe),
		httpx.Recover(a.log),
		httpx.SecurityHeaders(!a.cfg.Development()),
		httpx.BodyLimit(a.cfg.HTTP.BodyLimit),
		a.auth.Authenticate(h.Error),
		// Right after authentication, since rules count by caller; before
		// routing, so unknown paths under the API are counted too.
		a.rateLimits.Middleware(h.Error),
		// After the rate limit: refused requests are not billed.
		a.meter.CountAPICalls,
	)
	r.NotFound(h.H(func(w http.ResponseWriter, r *http.Request) error {
		return errs.E(errs.NotFound, "no route for %s %s", r.Method, r.URL.Path)
	}))
	r.MethodNotAllowed(httpx.MethodNotAllowed(a.log))

	r.Get("/healthz", func(w http.ResponseWriter, r *http.Request) {
		httpx.JSON(w, http.StatusOK, healthy)
	})
	r.Get("/readyz", a.readyz) // its checks carry their own 2 s deadline
	r.Method(http.MethodGet, "/metrics", a.metrics.Handler())
	// Inference has its own deadline (ATRIUM_GPU_INFERENCE_TIMEOUT):
	// completions stream for longer than an API call may take.
	a.inference.Register(r)
	// Everything that does I/O on behalf of a caller gets the per-request
	// deadline; the probes above do not need a timer per call.
	r.Group(func(r chi.Router) {
		r.Use(httpx.Timeout(a.cfg.HTTP.RequestTimeout))
		a.auth.RegisterPublic(r)
		r.Route("/api/v1", func(r chi.Router) {
			r.With(principal.Require(h.Error, "cluster:read")).Get("/cluster/instances", h.H(a.listInstances))
			a.tenants.Register(r)
			a.quotas.Register(r)
			a.meter.Register(r)
			a.rateLimits.Register(r)
			a.payments.Register(r)
			a.gpus.Register(r)
			r.Mount("/", a.auth.Routes())
		})
		r.Mount("/", ui.Routes())
	})
	a.router = r
	for _, o := range opts {
		o(a)
	}
	return nil
}

// readiness is the /readyz body. PostgreSQL (and a current schema) gate
// readiness: without the system of record an instance can serve nothing
// safely. Redis does not: every instance shares it, so failing readiness on
// a Redis outage would empty the load balancer; instead the instance reports
// "degraded" and each module applies its documented Redis-down policy.
// healthy is the constant /healthz body.
var healthy = json.RawMessage(`{"status":"ok"}`)

type readiness struct {
	Status string            `json:"status"`
	Checks map[string]string `json:"checks"`
}

func (a *app) readyz(w http.ResponseWriter, r *http.Request) {
	if a.draining.Load() {
		httpx.JSON(w, http.StatusServiceUnavailable, readiness{Status: "draining", Checks: map[string]string{}})
		return
	}
	checks := a.checks(r.Context())
	status, code := "ready", http.StatusOK
	switch {
	case checks["postgres"] != "ok" || checks["schema"] != "ok":
		status, code = "not_ready", http.StatusServiceUnavailable
	case checks["redis"] != "ok":
		status = "degraded"
	}
	httpx.JSON(w, code, readiness{Status: status, Checks: checks})
}

func (a *app) listInstances(w http.ResponseWriter, r *http.Request) error {
	inst, err := a.cluster.List(r.Context())
	if err != nil {
		return errs.Wrap(errs.Unavailable, err, "cannot read the cluster from Redis")
	}
	if inst == nil {
		inst = []cluster.Instance{}
	}
	httpx.JSON(w, http.StatusOK, map[string]any{"instances": inst})
	return nil
}

// addr is the address the instance listens on (useful with port 0).
func (a *app) addr() string { return a.listener.Addr().String() }

// serve runs the HTTP server and the workers until ctx ends, then drains:
// /readyz turns 503, the server stops accepting and gives in-flight
// requests up to the shutdown grace period, workers stop, pools close.
func (a *app) serve(ctx context.Context) error {
	defer a.close()
	srv := &http.Server{
		Handler:           a.router,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       120 * time.Second,
		ErrorLog:          nil,
	}
	workCtx, stopWork := context.WithCancel(context.WithoutCancel(ctx))
	var workers sync.WaitGroup
	workers.Go(func() { _ = a.cluster.Run(workCtx) })
	workers.Go(func() { _ = a.auth.Run(workCtx) })
	workers.Go(func() { _ = a.tenants.Run(workCtx) })
	workers.Go(func() { _ = a.quotas.Run(workCtx) })
	workers.Go(func() { _ = a.meter.Run(workCtx) })
	workers.Go(func() { _ = a.rateLimits.Run(workCtx) })
	workers.Go(func() { _ = a.payments.Run(workCtx) })
	workers.Go(func() { _ = a.gpus.Run(workCtx) })
	workers.Go(func() { _ = a.inference.Run(workCtx) })

	srvErr := make(chan error, 1)
	go func() { srvErr <- srv.Serve(a.listener) }()
	a.log.Info().Str("addr", a.addr()).Str("env", a.cfg.Env).Str("version", version).Msg("atrium serving")

	var err error
	select {
	case err = <-srvErr:
		err = fmt.Errorf("http server: %w", err)
	case <-ctx.Done():
		a.log.Info().Dur("grace", a.cfg.HTTP.ShutdownGrace).Msg("shutting down: draining in-flight requests")
		a.draining.Store(true)
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), a.cfg.HTTP.ShutdownGrace)
		if serr := srv.Shutdown(sctx); serr != nil {
			a.log.Warn().Err(serr).Msg("grace period over; closing remaining connections")
			_ = srv.Close()
		}
		cancel()
	}
	stopWork()
	workers.Wait()
	a.log.Info().Msg("atrium stopped")
	return err
}

func (a *app) close() {
	if a.listener != nil {
		_ = a.listener.Close()
	}
	if a.migrator != nil {
		_ = a.migrator.Close()
	}
	if a.rateLimits != nil {
		_ = a.rateLimits.Close()
	}
	if a.gpuDevs != nil {
		_ = a.gpuDevs.Close()
	}
	if a.redis != nil {
		_ = a.redis.Close()
	}
	if a.ownerPool != nil {
		a.ownerPool.Close()
	}
	if a.pool != nil {
		a.pool.Close()
	}
}

package gpu

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/rs/zerolog"

	"github.com/atriumhq/atrium/platform/postgres"
	"github.com/atriumhq/atrium/platform/principal"
	"github.com/atriumhq/atrium/platform/redisx"
	"github.com/atriumhq/atrium/platform/testenv"
	atriumsql "github.com/atriumhq/atrium/sql"
)

// countingMeter records the GPU time the scheduler meters.
type countingMeter struct{ seconds atomic.Int64 }

func (m *countingMeter) AddGPUSeconds(_ context.Context, _ string, s int64) error {
	m.seconds.Add(s)
	return nil
}

func (m *countingMeter) Add(context.Context, string, string, int64) error { return nil }

// tableQuotas counts allocation quotas in the quota module's table,
// without limits: a module may not import another, and what these tests
// check is that the scheduler's counts match what it holds. The quota
// module's limits are tested in modules/quota and, wired to this module, in
// the root package's gpu_test.go.
type tableQuotas struct{}

func (tableQuotas) Use(ctx context.Context, tx pgx.Tx, tenant, q string, n int64) error {
	_, err := tx.Exec(ctx, `INSERT INTO quota_usage (tenant_id, quota, period, used) VALUES ($1, $2, '', $3)
		ON CONFLICT (tenant_id, quota, period) DO UPDATE SET used = quota_usage.used + $3`, tenant, q, n)
	return err
}

func (tableQuotas) Return(ctx context.Context, tx pgx.Tx, tenant, q string, n int64) error {
	_, err := tx.Exec(ctx, `UPDATE quota_usage SET used = greatest(used - $3, 0) WHERE tenant_id = $1 AND quota = $2 AND period = ''`,
		tenant, q, n)
	return err
}

func (tableQuotas) Check(context.Context, pgx.Tx, string, string) error { return nil }

// schedEnv is a database, a Redis key space and GPU nodes on the mock
// backend, with as many scheduler services as a test builds.
type schedEnv struct {
	t      *testing.T
	url    string
	prefix string
	owner  *pgxpool.Pool
	meter  *countingMeter
	tenant string
}

func newSchedEnv(t *testing.T) *schedEnv {
	t.Helper()
	url := testenv.Database(t, atriumsql.Migrations())
	owner, err := pgxpool.New(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(owner.Close)
	e := &schedEnv{t: t, url: url, prefix: testenv.RedisPrefix(t), owner: owner, meter: &countingMeter{}, tenant: uuid.NewString()}
	if _, err := owner.Exec(context.Background(), `INSERT INTO tenants (id, name) VALUES ($1, 'GPU tenant')`, e.tenant); err != nil {
		t.Fatal(err)
	}
	return e
}

// service builds a GPU service; node != "" gives it that node's mock GPUs.
func (e *schedEnv) service(instance, node string) *Service {
	e.t.Helper()
	tx := postgres.NewTx(testenv.AppPool(e.t, e.url), zerolog.Nop())
	rc := testenv.RedisClient(e.t, e.prefix)
	kind := "none"
	if node != "" {
		kind = "mock"
	}
	b, err := OpenBackend(kind, node, zerolog.Nop())
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { _ = b.Close() })
	s, err := New(Config{Node: node, Backend: b, RefreshInterval: 100 * time.Millisecond, NodeTTL: 10 * time.Second,
		ScheduleInterval: 50 * time.Millisecond, LeaseTTL: time.Second, MeterInterval: time.Second, Commands: []string{"serve"}},
		Deps{Tx: tx, Redis: rc, Log: zerolog.Nop(), Quotas: tableQuotas{}, Meter: e.meter, Instance: instance})
	if err != nil {
		e.t.Fatal(err)
	}
	return s
}

// admin is a context acting as the tenant's administrator.
func (e *schedEnv) admin() context.Context {
	return principal.With(context.Background(), &principal.Principal{Kind: principal.User, ID: uuid.NewString(), TenantID: e.tenant,
		Permissions: []string{"gpu:read", "gpu:deploy", "cluster:read"}})
}

// deploy creates a model with one version of need and a deployment of n
// replicas of it.
func (e *schedEnv) deploy(s *Service, name string, need NewVersion, n int) *Deployment {
	e.t.Helper()
	m, err := s.CreateModel(e.admin(), NewModel{Name: name, Version: &need})
	if err != nil {
		e.t.Fatal(err)
	}
	d, err := s.CreateDeployment(e.admin(), NewDeployment{Name: name, ModelID: m.ID, Replicas: &n, MaxReplicas: &n})
	if err != nil {
		e.t.Fatal(err)
	}
	return d
}

func exclusive(gpus int) NewVersion {
	return NewVersion{Version: "1", ArtifactURI: "s3://m/1", Command: "serve --port {port}", Port: 8000, GPUs: gpus, MemoryMB: 10000, Sharing: "exclusive"}
}

// count returns how many of the tenant's replicas are in state.
func (e *schedEnv) count(state string) int {
	var n int
	if err := e.owner.QueryRow(context.Background(), `SELECT count(*) FROM replicas WHERE state = $1`, state).Scan(&n); err != nil {
		e.t.Fatal(err)
	}
	return n
}

// checkBooks verifies that what the GPUs' rows say is held is exactly what
// the live replicas hold, that no GPU is held twice, and that max_gpus
// counts what is held.
func (e *schedEnv) checkBooks() {
	e.t.Helper()
	ctx := context.Background()
	var bad []string
	rows, err := e.owner.Query(ctx, `
		WITH held AS (
			SELECT g.uuid, r.id, r.sharing, r.memory_mb, r.mig_profile FROM replicas r, unnest(r.gpu_uuids) AS g(uuid)
			WHERE r.state IN ('placed', 'running', 'stopping'))
		SELECT d.uuid, format('exclusive %s shared %s mig %s', d.exclusive_replica, d.shared_mb, d.mig_compute),
			format('exclusive %s shared %s', (SELECT string_agg(id::text, ',') FROM held h WHERE h.uuid = d.uuid AND h.sharing = 'exclusive'),
				(SELECT coalesce(sum(memory_mb), 0) FROM held h WHERE h.uuid = d.uuid AND h.sharing = 'shared'))
		FROM gpu_devices d
		WHERE d.exclusive_replica::text IS DISTINCT FROM (SELECT string_agg(id::text, ',') FROM held h WHERE h.uuid = d.uuid AND h.sharing = 'exclusive')
		   OR d.shared_mb <> (SELECT coalesce(sum(memory_mb), 0) FROM held h WHERE h.uuid = d.uuid AND h.sharing = 'shared')`)
	if err != nil {
		e.t.Fatal(err)
	}
	for rows.Next() {
		var u, books, truth string
		if err := rows.Scan(&u, &books, &truth); err != nil {
			e.t.Fatal(err)
		}
		bad = append(bad, fmt.Sprintf("%s: books say %s, replicas hold %s", u, books, truth))
	}
	if err := rows.Err(); err != nil {
		e.t.Fatal(err)
	}
	var used, held int64
	if err := e.owner.QueryRow(ctx, `SELECT coalesce((SELECT used FROM quota_usage WHERE tenant_id = $1 AND quota = 'max_gpus'), 0),
		(SELECT coalesce(sum(milli_gpus), 0) FROM replicas WHERE tenant_id = $1 AND state IN ('placed', 'running', 'stopping'))::bigint`,
		e.tenant).Scan(&used, &held); err != nil {
		e.t.Fatal(err)
	}
	if used != held {
		bad = append(bad, fmt.Sprintf("max_gpus counts %d milli-GPUs, replicas hold %d", used, held))
	}
	for _, b := range bad {
		e.t.Error(b)
	}
}

// TestTwoSchedulersNeverAllocateTwice: two schedulers that both believe
// they lead (a deposed leader still running its cycle) place the same
// pending replicas at once; every GPU ends up held once, and the books
// match the replicas.
func TestTwoSchedulersNeverAllocateTwice(t *testing.T) {
	e := newSchedEnv(t)
	a, b := e.service("i-a", "node-a"), e.service("i-b", "node-b")
	ctx := context.Background()
	a.publish(ctx)
	b.publish(ctx)
	e.deploy(a, "big", exclusive(1), 20) // 20 replicas for 16 GPUs
	// Both controllers see the deployment at the same token before either
	// places: create the replicas first.
	if err := a.reconcileAll(cross(ctx), 1); err != nil {
		t.Fatal(err)
	}
	for round := range 5 {
		var wg sync.WaitGroup
		var errsSeen [2]error
		for i, s := range []*Service{a, b} {
			wg.Go(func() {
				// The same token: the fence cannot tell them apart, only the
				// GPUs' own rows can.
				live, err := s.readCluster(ctx)
				if err != nil {
					errsSeen[i] = err
					return
				}
				_, _, errsSeen[i] = s.place(cross(ctx), 2, live.util)
			})
		}
		wg.Wait()
		for _, err := range errsSeen {
			if err != nil {
				t.Fatalf("round %d: %v", round, err)
			}
		}
	}
	if placed := e.count("placed"); placed != 16 {
		t.Errorf("%d replicas placed, want 16 (one per GPU)", placed)
	}
	if pending := e.count("pending"); pending != 4 {
		t.Errorf("%d replicas pending, want 4", pending)
	}
	var reason string
	if err := e.owner.QueryRow(ctx, `SELECT reason FROM replicas WHERE state = 'pending' LIMIT 1`).Scan(&reason); err != nil || reason != "insufficient GPUs" {
		t.Errorf("pending reason %q (%v), want insufficient GPUs", reason, err)
	}
	e.checkBooks()

	// A deposed leader (older token) is refused outright.
	if _, err := a.Cycle(ctx, 1); !errors.Is(err, errFenced) {
		t.Errorf("a cycle with an older token: %v, want fenced", err)
	}
}

// TestLeaderKilledMidCycle: a leader whose context ends at random points of
// its cycle leaves nothing half-done; the next leader finishes the work
// and every replica is placed exactly once.
func TestLeaderKilledMidCycle(t *testing.T) {
	e := newSchedEnv(t)
	a, b := e.service("i-a", "node-a"), e.service("i-b", "node-b")
	ctx := context.Background()
	a.publish(ctx)
	b.publish(ctx)
	shared := NewVersion{Version: "1", ArtifactURI: "s3://m/1", Command: "serve", Port: 8000, MemoryMB: 5000, Sharing: "shared"}
	// Whole GPUs first: under least_loaded, shared replicas spread over
	// every GPU and would leave no two free ones.
	e.deploy(a, "big", exclusive(2), 3)
	e.deploy(a, "small", shared, 40)
	token := int64(10)
	for i := range 30 {
		cctx, cancel := context.WithTimeout(ctx, time.Duration(i)*time.Millisecond)
		token++
		_, _ = []*Service{a, b}[i%2].Cycle(cctx, token)
		cancel()
	}
	token++
	if _, err := a.Cycle(ctx, token); err != nil {
		t.Fatal(err)
	}
	if placed := e.count("placed"); placed != 43 {
		t.Errorf("%d replicas placed, want 43", placed)
	}
	e.checkBooks()
}

// TestLeaseFailover: two instances compete for the scheduler lease; when
// the leader dies, the other takes over within seconds and places new
// replicas.
func TestLeaseFailover(t *testing.T) {
	e := newSchedEnv(t)
	a, b := e.service("i-a", "node-a"), e.service("i-b", "")
	actx, killA := context.WithCancel(context.Background())
	bctx, stopB := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { _ = a.Run(actx) })
	wg.Go(func() { _ = b.Run(bctx) })
	defer func() { killA(); stopB(); wg.Wait() }()
	// node-a keeps publishing from a helper loop once a dies.
	nodeCtx, stopNode := context.WithCancel(context.Background())
	defer stopNode()
	node := e.service("i-node", "node-a")
	go func() {
		for nodeCtx.Err() == nil {
			node.publish(nodeCtx)
			time.Sleep(100 * time.Millisecond)
		}
	}()
	e.deploy(a, "one", exclusive(1), 1)
	// Placed is what the scheduler does; running needs the node's runtime
	// (tested end to end in the root package).
	placed := func() int { return e.count("placed") + e.count("running") }
	testenv.Eventually(t, 10*time.Second, "the first replica placed", func() bool { return placed() == 1 })
	lease := redisx.NewLease(testenv.RedisClient(t, e.prefix), "gpu-scheduler", "probe", time.Second)
	holder, _, _ := lease.Holder(context.Background())
	other := b
	if holder == "i-b" {
		stopB() // the leader dies
		other = a
	} else {
		killA()
	}
	e.deploy(other, "two", exclusive(1), 1)
	testenv.Eventually(t, 15*time.Second, "the second replica placed by the new leader", func() bool { return placed() == 2 })
	e.checkBooks()
}

// TestMeteringChargesShareTimesTime: GPU time is the allocated time times
// the replica's GPU share, charged once.
func TestMeteringChargesShareTimesTime(t *testing.T) {
	e := newSchedEnv(t)
	a := e.service("i-a", "node-a")
	ctx := context.Background()
	a.publish(ctx)
	e.deploy(a, "two", exclusive(2), 1)
	if _, err := a.Cycle(ctx, 1); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Cycle(ctx, 1); err != nil {
		t.Fatal(err)
	}
	// Placed 100 s ago.
	if _, err := e.owner.Exec(ctx, `UPDATE replicas SET placed_at = now() - interval '100 seconds', metered_until = now() - interval '100 seconds'
		WHERE state = 'placed'`); err != nil {
		t.Fatal(err)
	}
	if err := a.Meter(ctx, 1); err != nil {
		t.Fatal(err)
	}
	if err := a.Meter(ctx, 1); err != nil {
		t.Fatal(err)
	}
	if got := e.meter.seconds.Load(); got < 200 || got > 202 {
		t.Errorf("metered %d GPU-seconds for 2 GPUs over 100 s, want 200", got)
	}
}

// TestRestartedNodeKeepsFailedGPUsOut: a GPU taken out of service stays
// out when its node restarts (a fresh monitor reads it as healthy) until a
// re-probe returns it, with a recovered event.
func TestRestartedNodeKeepsFailedGPUsOut(t *testing.T) {
	e := newSchedEnv(t)
	ctx := context.Background()
	a := e.service("i-a", "node-a")
	a.publish(ctx)
	var uuid string
	if err := e.owner.QueryRow(ctx, `UPDATE gpu_devices SET healthy = false, unhealthy = 'XID 79' WHERE idx = 3 RETURNING uuid`).Scan(&uuid); err != nil {
		t.Fatal(err)
	}
	restarted := e.service("i-a2", "node-a")
	restarted.publish(ctx)
	healthy := func() (ok bool, why string) {
		if err := e.owner.QueryRow(ctx, `SELECT healthy, unhealthy FROM gpu_devices WHERE uuid = $1`, uuid).Scan(&ok, &why); err != nil {
			t.Fatal(err)
		}
		return ok, why
	}
	if ok, why := healthy(); ok || why != "XID 79" {
		t.Fatalf("after the node restarted the GPU is healthy=%v (%q); want still out for XID 79", ok, why)
	}
	if err := restarted.monitor.Reprobe(ctx, uuid); err != nil {
		t.Fatal(err)
	}
	restarted.recovered(ctx, uuid)
	if ok, _ := healthy(); !ok {
		t.Fatal("a re-probe did not return the GPU")
	}
	var kind string
	if err := e.owner.QueryRow(ctx, `SELECT kind FROM gpu_health_events WHERE uuid = $1 ORDER BY id DESC LIMIT 1`, uuid).Scan(&kind); err != nil || kind != "recovered" {
		t.Fatalf("last health event %q (%v), want recovered", kind, err)
	}
}

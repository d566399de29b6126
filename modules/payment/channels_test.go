package payment

import (
	"context"
	"encoding/json"
	"net/http/httptest"
	"strconv"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/rs/zerolog"

	"github.com/atriumhq/atrium/modules/payment/channel"
	"github.com/atriumhq/atrium/modules/payment/simbank"
	"github.com/atriumhq/atrium/platform/errs"
	"github.com/atriumhq/atrium/platform/postgres"
	"github.com/atriumhq/atrium/platform/principal"
	"github.com/atriumhq/atrium/platform/redisx"
	"github.com/atriumhq/atrium/platform/testenv"
	atriumsql "github.com/atriumhq/atrium/sql"
)

// chanCluster is one simulated bank and what instances of a deployment
// share: a database and a Redis prefix. Each chanInstance is the channel
// set of one instance.
type chanCluster struct {
	bank   *simbank.Bank
	specs  []string
	dbURL  string
	prefix string
	owner  *pgx.Conn
}

func newChanCluster(t *testing.T) *chanCluster {
	t.Helper()
	b, err := simbank.New(simbank.Config{Seed: 7})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(b.Handler())
	t.Cleanup(func() { b.Close(); srv.Close() })
	url := testenv.Database(t, atriumsql.Migrations())
	owner, err := pgx.Connect(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = owner.Close(context.Background()) })
	return &chanCluster{bank: b, specs: []string{"sim=" + srv.URL}, dbURL: url, prefix: testenv.RedisPrefix(t), owner: owner}
}

// chanTemplate is the channel configuration of the tests: one attempt per
// call and a breaker that does not open by itself, so that the figures
// are exactly the calls made.
var chanTemplate = channel.Config{MaxAttempts: 1, BreakerMinCalls: 1000, MaxConcurrent: 8,
	TimeoutFloor: 20 * time.Millisecond, TimeoutCeiling: 2 * time.Second}

// instance builds a connected channel set named id; with run it also runs
// it (mode broadcasts and figures) until the test ends.
func (cl *chanCluster) instance(t *testing.T, id string, run bool) *Channels {
	t.Helper()
	c, err := NewChannels(cl.specs, chanTemplate)
	if err != nil {
		t.Fatal(err)
	}
	err = c.Connect(ChannelsDeps{Tx: postgres.NewTx(testenv.AppPool(t, cl.dbURL), zerolog.Nop()),
		Redis: testenv.RedisClient(t, cl.prefix), Log: zerolog.Nop(), Instance: id})
	if err != nil {
		t.Fatal(err)
	}
	if run {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { defer close(done); _ = c.Run(ctx) }()
		t.Cleanup(func() { cancel(); <-done })
	}
	return c
}

// waitSubscribed waits until n instances listen for mode changes.
func (cl *chanCluster) waitSubscribed(t *testing.T, n int64) {
	t.Helper()
	rc := testenv.RedisClient(t, cl.prefix)
	ch := rc.Key("bc", "payment-channel-modes")
	testenv.Eventually(t, 5*time.Second, "the instances did not subscribe", func() bool {
		m, err := rc.PubSubNumSub(context.Background(), ch).Result()
		return err == nil && m[ch] >= n
	})
}

func chanAdmin() context.Context {
	return principal.With(context.Background(), &principal.Principal{Kind: principal.User, ID: uuid.NewString(),
		Roles: []string{"platform_admin"}, Permissions: []string{"channels:manage"}})
}

// within polls cond every 5 ms and fails unless it holds within d.
func chanWithin(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > d {
			t.Fatalf("%s: not within %s", what, d)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestChannelModeReachesEveryInstance(t *testing.T) {
	cl := newChanCluster(t)
	a, b := cl.instance(t, "a", true), cl.instance(t, "b", true)
	cl.waitSubscribed(t, 2)
	admin := chanAdmin()
	sim := func(c *Channels) *channel.HTTP { nc, _ := c.get("sim"); return nc.ch }

	m, err := a.SetMode(admin, "sim", channel.BreakerForcedOpen)
	if err != nil {
		t.Fatal(err)
	}
	if m.Mode != channel.BreakerForcedOpen || m.UpdatedBy != principal.From(admin).Subject() {
		t.Errorf("SetMode returned %+v", m)
	}
	if !sim(a).Refusing() {
		t.Error("the instance that set forced_open does not refuse at once")
	}
	chanWithin(t, time.Second, "the other instance refusing", sim(b).Refusing)
	if _, err := b.route(nil, true); errs.CodeOf(err) != errs.Unavailable {
		t.Errorf("route on the other instance: %v, want unavailable", err)
	}
	_, err = sim(b).Pay(context.Background(), channel.PayRequest{ID: "p-open", Amount: 100, Currency: "EUR", Source: "tok_visa"})
	if errs.CodeOf(err) != errs.Unavailable || cl.bank.Ledger().Received["charges"] != 0 {
		t.Errorf("pay while forced open: %v; the bank received %d charges", err, cl.bank.Ledger().Received["charges"])
	}
	var audits int
	if err := cl.owner.QueryRow(context.Background(), `SELECT count(*) FROM audit_log WHERE action = 'payment.channel_mode'
		AND object = 'channel:sim' AND tenant_id IS NULL AND detail->>'mode' = 'forced_open' AND detail->>'previous' = 'auto'`).Scan(&audits); err != nil || audits != 1 {
		t.Errorf("%d audit records of the switch (%v), want 1", audits, err)
	}

	if _, err := b.SetMode(admin, "sim", channel.BreakerAuto); err != nil {
		t.Fatal(err)
	}
	chanWithin(t, time.Second, "the first instance accepting calls again", func() bool { return !sim(a).Refusing() })
	if routes, err := a.route(nil, true); err != nil || len(routes) != 1 {
		t.Fatalf("route after auto: %v %v", routes, err)
	}
	r, err := sim(a).Pay(context.Background(), channel.PayRequest{ID: "p-auto", Amount: 100, Currency: "EUR", Source: "tok_visa"})
	if err != nil || r.Status != channel.StatusSucceeded {
		t.Fatalf("pay after auto: %+v %v", r, err)
	}

	// An instance that starts later takes the mode from PostgreSQL.
	if _, err := a.SetMode(admin, "sim", channel.BreakerForcedClosed); err != nil {
		t.Fatal(err)
	}
	late := cl.instance(t, "late", true)
	chanWithin(t, 2*time.Second, "a starting instance to load forced_closed", func() bool { return sim(late).BreakerMode() == channel.BreakerForcedClosed })
	chanWithin(t, time.Second, "forced_closed on b", func() bool { return sim(b).BreakerMode() == channel.BreakerForcedClosed })
}

func TestChannelModeRefusals(t *testing.T) {
	cl := newChanCluster(t)
	a := cl.instance(t, "a", false)
	tenantAdmin := principal.With(context.Background(), &principal.Principal{Kind: principal.User, ID: uuid.NewString(),
		TenantID: uuid.NewString(), Permissions: []string{"channels:manage", "payments:manage"}})
	noPerm := principal.With(context.Background(), &principal.Principal{Kind: principal.User, ID: uuid.NewString(),
		Permissions: []string{"payments:manage"}})
	for _, tc := range []struct {
		name      string
		ctx       context.Context
		channel   string
		mode      channel.BreakerMode
		code      errs.Code
		badField  string
		dashboard bool // Dashboard is refused too
	}{
		{"anonymous", context.Background(), "sim", channel.BreakerForcedOpen, errs.Unauthenticated, "", true},
		{"without channels:manage", noPerm, "sim", channel.BreakerForcedOpen, errs.Forbidden, "", true},
		{"a tenant's user", tenantAdmin, "sim", channel.BreakerForcedOpen, errs.Forbidden, "", true},
		{"unknown channel", chanAdmin(), "nope", channel.BreakerForcedOpen, errs.NotFound, "", false},
		{"unknown mode", chanAdmin(), "sim", "sideways", errs.Invalid, "mode", false},
		{"no mode", chanAdmin(), "sim", "", errs.Invalid, "mode", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := a.SetMode(tc.ctx, tc.channel, tc.mode)
			if errs.CodeOf(err) != tc.code {
				t.Fatalf("SetMode: %v, want %s", err, tc.code)
			}
			if tc.badField != "" {
				if e := errs.As(err); len(e.Fields) != 1 || e.Fields[0].Field != tc.badField {
					t.Errorf("fields %+v, want %s", e.Fields, tc.badField)
				}
			}
			if _, err := a.Dashboard(tc.ctx); tc.dashboard && errs.CodeOf(err) != tc.code {
				t.Errorf("Dashboard: %v, want %s", err, tc.code)
			}
		})
	}
	var rows int
	if err := cl.owner.QueryRow(context.Background(), `SELECT count(*) FROM payment_channel_modes`).Scan(&rows); err != nil || rows != 0 {
		t.Errorf("%d mode rows after refused changes (%v)", rows, err)
	}
}

// TestChannelModeReloadKeepsAnOpenBreaker: the periodic reload of an
// unchanged mode must not close a breaker that opened by itself, and a
// change written while an instance missed the broadcast is applied by the
// next reload.
func TestChannelModeReloadKeepsAnOpenBreaker(t *testing.T) {
	cl := newChanCluster(t)
	c, err := NewChannels(cl.specs, channel.Config{MaxAttempts: 1, BreakerMinCalls: 4, BreakerDelay: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Connect(ChannelsDeps{Tx: postgres.NewTx(testenv.AppPool(t, cl.dbURL), zerolog.Nop()), Log: zerolog.Nop()}); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	nc, _ := c.get("sim")
	if err := cl.bank.SetFaults(simbank.Faults{DownUntil: time.Now().Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 10 && !nc.ch.Refusing(); i++ {
		_, _ = nc.ch.Query(ctx, "x")
	}
	if !nc.ch.Refusing() {
		t.Fatal("the breaker did not open against a bank that is down")
	}
	if err := c.reload(ctx); err != nil {
		t.Fatal(err)
	}
	if !nc.ch.Refusing() || nc.ch.Stats().Breaker != "open" {
		t.Fatal("reloading an unchanged mode closed the breaker")
	}
	// A change this instance did not hear of.
	if _, err := cl.owner.Exec(ctx, `INSERT INTO payment_channel_modes (channel, mode, updated_by) VALUES ('sim', 'forced_closed', 'test')`); err != nil {
		t.Fatal(err)
	}
	if err := c.reload(ctx); err != nil {
		t.Fatal(err)
	}
	if nc.ch.BreakerMode() != channel.BreakerForcedClosed || nc.ch.Refusing() {
		t.Fatalf("after the reload: mode %s, refusing %v", nc.ch.BreakerMode(), nc.ch.Refusing())
	}
}

func TestChannelDashboardAddsUpInstances(t *testing.T) {
	cl := newChanCluster(t)
	a, b := cl.instance(t, "a", true), cl.instance(t, "b", true)
	ctx := context.Background()
	simA, _ := a.get("sim")
	simB, _ := b.get("sim")

	// a: 4 attempts against a bank that is down; b: 12 that succeed, slower.
	if err := cl.bank.SetFaults(simbank.Faults{DownUntil: time.Now().Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	for range 4 {
		if _, err := simA.ch.Query(ctx, "x"); errs.CodeOf(err) != errs.Unavailable {
			t.Fatalf("query against a bank that is down: %v", err)
		}
	}
	if err := cl.bank.SetFaults(simbank.Faults{P50: 5 * time.Millisecond, P99: 15 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	for range 12 {
		if _, err := simB.ch.Query(ctx, "x"); err != nil {
			t.Fatal(err)
		}
	}
	// A report of an instance that stopped long ago.
	rc := testenv.RedisClient(t, cl.prefix)
	key := rc.Key("payment", "channel-stats")
	old, _ := json.Marshal(instanceReport{Instance: "gone", At: time.Now().Add(-time.Minute),
		Channels: []channel.Stats{{Name: "sim", Attempts: 1000, Breaker: "open", InFlight: 50, MaxConcurrent: 64}}})
	if err := rc.HSet(ctx, key, "gone", old).Err(); err != nil {
		t.Fatal(err)
	}

	admin := chanAdmin()
	var v ChannelView
	testenv.Eventually(t, 5*time.Second, "the dashboard does not show both instances' attempts", func() bool {
		views, err := a.Dashboard(admin)
		if err != nil {
			t.Fatal(err)
		}
		if len(views) != 1 {
			t.Fatalf("views %+v, want one channel", views)
		}
		v = views[0]
		return len(v.Instances) == 2 && v.Attempts == 16
	})
	if v.Name != "sim" || v.Partial || v.Mode != channel.BreakerAuto || v.Breaker != "closed" || v.OpenOn != 0 {
		t.Errorf("view %+v", v)
	}
	// Weighted by attempts: 12 of 16, not the mean of 0 and 1.
	if v.SuccessRate == nil || *v.SuccessRate != 0.75 {
		t.Errorf("success rate %s, want 0.75", rateText(v.SuccessRate))
	}
	ia, ib := v.Instances[0], v.Instances[1]
	if ia.Instance != "a" || !ia.Self || ib.Instance != "b" || ib.Self || ia.Attempts != 4 || ib.Attempts != 12 ||
		*ia.SuccessRate != 0 || *ib.SuccessRate != 1 {
		t.Errorf("instances %+v %+v", ia, ib)
	}
	if v.P99MS != max(ia.P99MS, ib.P99MS) || v.P50MS != max(ia.P50MS, ib.P50MS) || v.P99MS < 5 {
		t.Errorf("p50 %v p99 %v, want the larger of the instances' (%+v, %+v)", v.P50MS, v.P99MS, ia, ib)
	}
	if v.TimeoutMinMS != min(ia.TimeoutMS, ib.TimeoutMS) || v.TimeoutMaxMS != max(ia.TimeoutMS, ib.TimeoutMS) ||
		v.TimeoutFloorMS != 20 || v.TimeoutCeilingMS != 2000 {
		t.Errorf("timeouts %+v", v)
	}
	if v.InFlight != 0 || v.MaxConcurrent != 16 || v.Refused != 0 {
		t.Errorf("in flight %d / %d, refused %d; want 0 / 16 (two bulkheads of 8), 0", v.InFlight, v.MaxConcurrent, v.Refused)
	}
	if n, err := rc.HExists(ctx, key, "gone").Result(); err != nil || n {
		t.Errorf("the stale report is still in Redis (%v)", err)
	}

	// Forced open on one instance: the dashboard shows the mode and, once
	// b has applied it, both breakers open.
	if _, err := b.SetMode(admin, "sim", channel.BreakerForcedOpen); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 5*time.Second, "the dashboard does not show both breakers open", func() bool {
		views, err := a.Dashboard(admin)
		if err != nil {
			t.Fatal(err)
		}
		v = views[0]
		return v.OpenOn == 2
	})
	if v.Mode != channel.BreakerForcedOpen || v.Breaker != "open" || v.ModeUpdatedAt == nil || v.ModeUpdatedBy == "" {
		t.Errorf("after forcing open: %+v", v)
	}

	// Without Redis the dashboard shows this instance alone, marked partial.
	dead, err := redisx.Connect(redisx.Options{URL: "redis://127.0.0.1:1/0", Prefix: cl.prefix, Timeout: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = dead.Close() })
	lone, err := NewChannels(cl.specs, chanTemplate)
	if err != nil {
		t.Fatal(err)
	}
	if err := lone.Connect(ChannelsDeps{Tx: postgres.NewTx(testenv.AppPool(t, cl.dbURL), zerolog.Nop()), Redis: dead,
		Log: zerolog.Nop(), Instance: "lone"}); err != nil {
		t.Fatal(err)
	}
	views, err := lone.Dashboard(admin)
	if err != nil {
		t.Fatalf("Dashboard without Redis: %v", err)
	}
	if len(views) != 1 || !views[0].Partial || len(views[0].Instances) != 1 || views[0].Instances[0].Instance != "lone" ||
		views[0].Mode != channel.BreakerForcedOpen {
		t.Errorf("without Redis: %+v", views)
	}
}

func rateText(r *float64) string {
	if r == nil {
		return "null"
	}
	return strconv.FormatFloat(*r, 'f', -1, 64)
}

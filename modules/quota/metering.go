package quota

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"

	"github.com/atriumhq/atrium/platform/errs"
	"github.com/atriumhq/atrium/platform/postgres"
	"github.com/atriumhq/atrium/platform/redisx"
)

// Usage metering counts what each tenant uses per UTC day — API calls,
// payments and their amounts, GPU time — and records it in PostgreSQL
// (usage_daily), the record billing reads, exactly once.
//
// # Path of a count
//
//  1. Add (on the request path) adds to a map in the instance's memory:
//     one mutex, no I/O.
//  2. Every PushInterval (1 s) the instance pushes the map to Redis in one
//     script call: HINCRBY into one hash per tenant and day,
//     "<prefix>:usage:live:<tenant>:<day>" (field: metric), and SADD of
//     "<tenant>:<day>" to the index set "<prefix>:usage:index". The call
//     carries a push id and first does SET NX on "<prefix>:usage:push:<id>"
//     (kept 1 h), so a push whose reply was lost is retried with the same id
//     and applied once. While Redis is unreachable the counts stay in memory
//     (one entry per tenant, day and metric: memory does not grow with
//     traffic) and go out with the next push that succeeds.
//  3. Every FlushInterval (10 s, with ±10% jitter) the instance flushes: a
//     script atomically moves up to maxMoveKeys live hashes into a new batch
//     hash "<prefix>:usage:batch:<id>" (field "<tenant>:<day>|<metric>"),
//     deletes them and records the batch in the sorted set
//     "<prefix>:usage:pending" (score: Redis time in ms). Pushes after the
//     move land in fresh live hashes. Then one PostgreSQL transaction, on
//     the cross-tenant path (a batch job), inserts the batch id into
//     usage_flushes — ON CONFLICT DO NOTHING: a batch already applied adds
//     nothing — adds every row to usage_daily and charges gpu_seconds to
//     the tenant's max_gpu_hours budget (quota_usage) in the same
//     transaction. After the commit the batch hash and its pending entry
//     are deleted.
//  4. Every flush first retries the batches in the pending set (left by a
//     flush that failed or an instance that died, this one or another).
//
// # Why every instance flushes (no lease)
//
// Exactly-once does not depend on a single flusher: moves are atomic
// scripts over disjoint data, and the batch id in usage_flushes (primary
// key, same transaction) decides whether a batch's counts are added. Two
// instances retrying one batch serialise on that key: the second waits for
// the first's commit, then adds nothing. A lease would only save work, and
// a leader that stalls past its lease would flush concurrently anyway, so
// the code must be safe without it; without one, no flush waits for a
// lease to expire after its holder died. Transactions lock rows in one
// order (usage_daily by tenant, day, metric, then quota_usage by tenant),
// so concurrent flushes cannot deadlock.
//
// # What can be lost
//
//   - An instance that dies loses the counts it has not pushed: at most
//     PushInterval (1 s) of its own counts, or everything since Redis
//     became unreachable if it dies during a Redis outage. A graceful stop
//     pushes before it exits.
//   - Losing Redis's data loses what was pushed and not yet flushed: at
//     most FlushInterval plus PushInterval (11 s by default) of counts while
//     PostgreSQL is up; while PostgreSQL is down, everything counted since
//     it went down (batches wait in Redis).
//   - Nothing is ever counted twice: not by a retried push, a retried
//     flush, nor concurrent flushes.
//
// usage_flushes rows are pruned after flushRetention (7 days). A pending
// batch older than staleAfter (6 days) could be one whose id was pruned, so
// it is never applied automatically: it moves to "<prefix>:usage:stale" and
// is logged as an error for an operator (see docs/operations.md).
//
// All keys of a script are declared in KEYS; they must live on one Redis
// node, as for the rate limiter (Atrium uses one Redis, not Redis Cluster).

// Metrics that the platform counts. Modules may count others that fit
// ValidMetric.
const (
	// APICalls counts authenticated tenant requests under /api/v1, /oauth2
	// and /v1.
	APICalls = "api_calls"
	// Payments counts payments; PaymentAmount + ":" + ISO 4217 currency
	// counts their amounts in minor units.
	Payments      = "payments"
	PaymentAmount = "payment_amount"
	// GPUSeconds counts GPU time; flushing it also charges max_gpu_hours.
	GPUSeconds = "gpu_seconds"
)

const (
	defaultPushInterval  = time.Second
	defaultFlushInterval = 10 * time.Second
	// maxMoveKeys bounds the tenant-days one move takes (and so the time
	// Redis spends in the script and the size of one transaction).
	maxMoveKeys = 1000
	// maxMovesPerFlush bounds the batches one flush creates.
	maxMovesPerFlush = 100
	// pushChunk bounds the counters one push script carries.
	pushChunk = 1000
	// pushDedupeTTL is how long a push or batch id is remembered in Redis
	// (against replays of a script whose reply was lost).
	pushDedupeTTL = time.Hour
	// flushRetention is how long usage_flushes keeps a batch id.
	flushRetention = 7 * 24 * time.Hour
	// staleAfter is the age past which a pending batch is set aside instead
	// of being applied: its id might be pruned from usage_flushes.
	staleAfter = flushRetention - 24*time.Hour
	pruneEvery = time.Hour
	// flushTimeout bounds one flush run.
	flushTimeout = 2 * time.Minute
)

// MeterConfig configures a Meter; zero values take the defaults.
type MeterConfig struct {
	// PushInterval is how often counts go from memory to Redis (1 s).
	PushInterval time.Duration
	// FlushInterval is how often Redis is flushed to PostgreSQL (10 s).
	FlushInterval time.Duration
}

// MeterDeps are what a Meter needs.
type MeterDeps struct {
	Tx     *postgres.Tx
	Redis  *redisx.Client
	Quotas *Service
	Log    zerolog.Logger
	Now    func() time.Time
}

// Meter counts usage per tenant and day; see the comment at the top of
// this file.
type Meter struct {
	cfg    MeterConfig
	tx     *postgres.Tx
	rdb    *redisx.Client
	quotas *Service
	log    zerolog.Logger
	now    func() time.Time

	mu     sync.Mutex
	counts map[counter]int64
	dayNum int64 // the day of dayStr, in days since the epoch
	dayStr string

	pushMu  sync.Mutex
	unacked []pushChunkT // pushed with no answer: retried with their ids

	pruneMu   sync.Mutex
	lastPrune time.Time

	// hook, set by tests, is called at each step of a push and a flush; an
	// error stops the step there as a crash would.
	hook func(step string) error

	pushErrors prometheus.Counter
	batches    *prometheus.CounterVec
	dropped    prometheus.Counter
}

type counter struct{ tenant, day, metric string }

type pushChunkT struct {
	id     string
	counts map[counter]int64
}

// NewMeter returns a Meter; run it with Run.
func NewMeter(cfg MeterConfig, d MeterDeps) (*Meter, error) {
	if d.Tx == nil || d.Redis == nil || d.Quotas == nil {
		return nil, errors.New("quota: meter: Tx, Redis and Quotas are required")
	}
	if cfg.PushInterval <= 0 {
		cfg.PushInterval = defaultPushInterval
	}
	if cfg.FlushInterval <= 0 {
		cfg.FlushInterval = defaultFlushInterval
	}
	if d.Now == nil {
		d.Now = time.Now
	}
	return &Meter{cfg: cfg, tx: d.Tx, rdb: d.Redis, quotas: d.Quotas, log: d.Log, now: d.Now,
		counts: map[counter]int64{},
		pushErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "atrium_usage_push_errors_total",
			Help: "Pushes of usage counts to Redis that failed (the counts stay in memory and are retried).",
		}),
		batches: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "atrium_usage_batches_total",
			Help: "Usage batches flushed to PostgreSQL, by result: applied, duplicate (already applied), failed, stale (set aside).",
		}, []string{"result"}),
		dropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "atrium_usage_dropped_rows_total",
			Help: "Usage rows a flush could not record (unknown tenant or malformed), logged as errors.",
		}),
	}, nil
}

// Collectors returns the meter's metrics.
func (m *Meter) Collectors() []prometheus.Collector {
	return []prometheus.Collector{m.pushErrors, m.batches, m.dropped}
}

// Add counts units of metric for tenant today (UTC). It does no I/O: the
// count is pushed to Redis within PushInterval. units must not be
// negative; tenant must be a tenant id and metric fit ValidMetric.
func (m *Meter) Add(_ context.Context, tenant, metric string, units int64) error {
	switch {
	case units < 0:
		return errs.Field("units", "must not be negative")
	case units == 0:
		return nil
	case !ValidMetric(metric):
		return errs.Field("metric", "must be a lower-case name, optionally with :<CUR> (an ISO 4217 code)")
	}
	if !canonicalUUID(tenant) {
		id, err := uuid.Parse(tenant)
		if err != nil {
			return errs.Field("tenant", "must be a tenant id")
		}
		tenant = id.String()
	}
	now := m.now()
	day := now.Unix() / 86400 // the UTC day; a string is formatted once a day
	m.mu.Lock()
	if day != m.dayNum || m.dayStr == "" {
		m.dayNum, m.dayStr = day, now.UTC().Format(time.DateOnly)
	}
	m.counts[counter{tenant, m.dayStr, metric}] += units
	m.mu.Unlock()
	return nil
}

// AddAPICall counts one API call.
func (m *Meter) AddAPICall(ctx context.Context, tenant string) error {
	return m.Add(ctx, tenant, APICalls, 1)
}

// AddPayment counts one payment and its amount in minor units of currency
// (an ISO 4217 code such as EUR).
func (m *Meter) AddPayment(ctx context.Context, tenant, currency string, amountMinor int64) error {
	if len(currency) != 3 || !isUpper(currency) {
		return errs.Field("currency", "must be an ISO 4217 code such as EUR")
	}
	if amountMinor < 0 {
		return errs.Field("amount", "must not be negative")
	}
	if err := m.Add(ctx, tenant, Payments, 1); err != nil {
		return err
	}
	return m.Add(ctx, tenant, PaymentAmount+":"+currency, amountMinor)
}

// AddGPUSeconds counts GPU time (the GPU module calls it as replicas run);
// the flush also charges it to the tenant's max_gpu_hours budget.
func (m *Meter) AddGPUSeconds(ctx context.Context, tenant string, seconds int64) error {
	return m.Add(ctx, tenant, GPUSeconds, seconds)
}

// ValidMetric reports whether name is a metric name: a lower-case word of
// up to 40 letters, digits and underscores, optionally followed by ":"
// and three upper-case letters (a currency).
func ValidMetric(name string) bool {
	switch name {
	case APICalls, Payments, GPUSeconds:
		return true
	}
	base, cur, hasCur := strings.Cut(name, ":")
	if hasCur && (len(cur) != 3 || !isUpper(cur)) {
		return false
	}
	if len(base) == 0 || len(base) > 40 || base[0] < 'a' || base[0] > 'z' {
		return false
	}
	for i := 0; i < len(base); i++ {
		c := base[i]
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '_' {
			return false
		}
	}
	return true
}

func isUpper(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 'A' || s[i] > 'Z' {
			return false
		}
	}
	return true
}

// canonicalUUID reports whether s is a UUID in its canonical lower-case
// form, without allocating.
func canonicalUUID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i := 0; i < 36; i++ {
		c := s[i]
		switch i {
		case 8, 13, 18, 23:
			if c != '-' {
				return false
			}
		default:
			if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
				return false
			}
		}
	}
	return true
}

func (m *Meter) at(step string) error {
	if m.hook == nil {
		return nil
	}
	return m.hook(step)
}

// Run pushes every PushInterval and flushes every FlushInterval (the
// first flush right away, retrying batches a crash left) until ctx ends,
// then pushes what is left.
func (m *Meter) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	wg.Go(func() {
		timer := time.NewTimer(0)
		defer timer.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-timer.C:
			}
			fctx, cancel := context.WithTimeout(ctx, flushTimeout)
			if _, err := m.Flush(fctx); err != nil && ctx.Err() == nil {
				m.log.Warn().Err(err).Msg("usage flush failed; the batch stays in Redis and is retried")
			}
			cancel()
			jitter := time.Duration(float64(m.cfg.FlushInterval) * (0.9 + 0.2*rand.Float64()))
			timer.Reset(jitter)
		}
	})
	t := time.NewTicker(m.cfg.PushInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			wg.Wait()
			pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
			defer cancel()
			if err := m.Push(pctx); err != nil {
				m.log.Error().Err(err).Msg("final usage push failed; this instance's unpushed counts are lost")
			}
			return nil
		case <-t.C:
			if err := m.Push(ctx); err != nil && ctx.Err() == nil {
				m.log.Warn().Err(err).Msg("usage push failed; counts stay in memory and are retried")
			}
		}
	}
}

// pushScript applies one push chunk once: KEYS[1] the push id's dedupe
// key, KEYS[2] the index, KEYS[3..] live hashes; ARGV[1] the dedupe TTL
// (ms), then per counter: the index of its live hash in KEYS, its index
// member, metric, units. It returns 1 when applied, 0 when the id was
// applied already.
var pushScript = redis.NewScript(`
if not redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[1]) then
  return 0
end
for i = 2, #ARGV, 4 do
  redis.call('HINCRBY', KEYS[tonumber(ARGV[i])], ARGV[i + 2], ARGV[i + 3])
  redis.call('SADD', KEYS[2], ARGV[i + 1])
end
return 1
`)

// Push sends the counts in memory to Redis. A chunk that gets no answer is
// kept and retried, with its id, before anything newer, so a lost reply
// never counts twice.
func (m *Meter) Push(ctx context.Context) error {
	m.pushMu.Lock()
	defer m.pushMu.Unlock()
	// Counts are taken from memory only once the earlier chunks are
	// through, so that during a Redis outage they keep adding up in one map
	// (memory bounded by tenants × metrics) rather than in a chunk a second.
	if len(m.unacked) > 0 {
		if err := m.drain(ctx); err != nil {
			return err
		}
	}
	var taken map[counter]int64
	m.mu.Lock()
	if len(m.counts) > 0 {
		taken, m.counts = m.counts, map[counter]int64{}
	}
	m.mu.Unlock()
	m.unacked = chunks(taken)
	return m.drain(ctx)
}

// drain pushes the unacknowledged chunks in order, keeping those that
// fail.
func (m *Meter) drain(ctx context.Context) error {
	for len(m.unacked) > 0 {
		if err := m.pushChunk(ctx, m.unacked[0]); err != nil {
			m.pushErrors.Inc()
			return err
		}
		m.unacked = m.unacked[1:]
	}
	m.unacked = nil
	return nil
}

func chunks(counts map[counter]int64) []pushChunkT {
	if len(counts) == 0 {
		return nil
	}
	var out []pushChunkT
	cur := pushChunkT{id: uuid.Must(uuid.NewV7()).String(), counts: map[counter]int64{}}
	for k, v := range counts {
		if len(cur.counts) == pushChunk {
			out = append(out, cur)
			cur = pushChunkT{id: uuid.Must(uuid.NewV7()).String(), counts: map[counter]int64{}}
		}
		cur.counts[k] = v
	}
	return append(out, cur)
}

func (m *Meter) member(tenant, day string) string { return tenant + ":" + day }

func (m *Meter) liveKey(member string) string { return m.rdb.Key("usage", "live", member) }

func (m *Meter) pushChunk(ctx context.Context, c pushChunkT) error {
	keys := []string{m.rdb.Key("usage", "push", c.id), m.rdb.Key("usage", "index")}
	slot := map[string]int{}
	args := make([]any, 0, 1+4*len(c.counts))
	args = append(args, pushDedupeTTL.Milliseconds())
	for k, v := range c.counts {
		member := m.member(k.tenant, k.day)
		i, ok := slot[member]
		if !ok {
			keys = append(keys, m.liveKey(member))
			i = len(keys)
			slot[member] = i
		}
		args = append(args, i, member, k.metric, v)
	}
	if err := pushScript.Run(ctx, m.rdb, keys, args...).Err(); err != nil {
		return fmt.Errorf("usage push: %w", err)
	}
	return m.at("pushed")
}

// moveScript moves live hashes into a new batch: KEYS[1] the index,
// KEYS[2] the pending set, KEYS[3] the batch hash, KEYS[4] the batch id's
// marker, KEYS[5..] live hashes; ARGV[1] the batch id, ARGV[2] the
// marker's TTL (ms), ARGV[3..] the index members of KEYS[5..]. It returns
// the number of counters moved (0: no batch was made). The marker makes a
// replay of the script (go-redis retries a call whose reply was lost) a
// no-op, so a batch id is filled once, and never again after another
// instance has applied and deleted it.
var moveScript = redis.NewScript(`
if not redis.call('SET', KEYS[4], '1', 'NX', 'PX', ARGV[2]) then
  return 0
end
local n = 0
for i = 5, #KEYS do
  local member = ARGV[i - 2]
  local h = redis.call('HGETALL', KEYS[i])
  for j = 1, #h, 2 do
    redis.call('HINCRBY', KEYS[3], member .. '|' .. h[j], h[j + 1])
    n = n + 1
  end
  redis.call('DEL', KEYS[i])
  redis.call('SREM', KEYS[1], member)
end
if n > 0 then
  local t = redis.call('TIME')
  redis.call('ZADD', KEYS[2], tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000), ARGV[1])
end
return n
`)

// FlushResult says what one flush did.
type FlushResult struct {
	// Applied batches were added to usage_daily; Duplicates had been
	// applied before (a retry after a crash past the commit); Stale were
	// set aside.
	Applied, Duplicates, Stale int
	// Rows is the number of counters the applied batches held.
	Rows int
}

// Flush applies the pending batches, then moves the live counters into
// new batches and applies them. It stops at the first failure: the batch
// stays pending and the next flush, on any instance, retries it. Flushes
// may run at the same time on any number of instances.
func (m *Meter) Flush(ctx context.Context) (FlushResult, error) {
	var res FlushResult
	if err := m.retryPending(ctx, &res); err != nil {
		return res, err
	}
	for range maxMovesPerFlush {
		id, moved, full, err := m.move(ctx)
		if err != nil {
			return res, err
		}
		if moved > 0 {
			if err := m.at("moved"); err != nil {
				return res, err
			}
			if err := m.apply(ctx, id, &res); err != nil {
				return res, err
			}
		}
		if !full {
			break
		}
	}
	m.prune(ctx)
	return res, nil
}

// move takes up to maxMoveKeys live hashes into a new batch. full says
// the index had at least that many, so there may be more.
func (m *Meter) move(ctx context.Context) (id string, moved int, full bool, err error) {
	return m.moveAs(ctx, uuid.Must(uuid.NewV7()).String())
}

func (m *Meter) moveAs(ctx context.Context, id string) (_ string, moved int, full bool, err error) {
	index := m.rdb.Key("usage", "index")
	members, err := m.rdb.SRandMemberN(ctx, index, maxMoveKeys).Result()
	if err != nil {
		return "", 0, false, fmt.Errorf("usage flush: read index: %w", err)
	}
	if len(members) == 0 {
		return "", 0, false, nil
	}
	keys := make([]string, 0, 4+len(members))
	keys = append(keys, index, m.rdb.Key("usage", "pending"), m.batchKey(id), m.rdb.Key("usage", "moved", id))
	args := make([]any, 0, 2+len(members))
	args = append(args, id, pushDedupeTTL.Milliseconds())
	for _, mem := range members {
		keys = append(keys, m.liveKey(mem))
		args = append(args, mem)
	}
	n, err := moveScript.Run(ctx, m.rdb, keys, args...).Int()
	if err != nil {
		// The script ran whole or not at all, but the reply may be lost:
		// a batch it made is in the pending set for the next flush.
		return "", 0, false, fmt.Errorf("usage flush: move: %w", err)
	}
	return id, n, len(members) == maxMoveKeys, nil
}

func (m *Meter) batchKey(id string) string { return m.rdb.Key("usage", "batch", id) }

// retryPending applies the batches left in the pending set, oldest first,
// setting aside those too old to apply safely.
func (m *Meter) retryPending(ctx context.Context, res *FlushResult) error {
	pending := m.rdb.Key("usage", "pending")
	var nowCmd *redis.TimeCmd
	var listCmd *redis.ZSliceCmd
	_, err := m.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		nowCmd = p.Time(ctx)
		listCmd = p.ZRangeWithScores(ctx, pending, 0, -1)
		return nil
	})
	if err != nil {
		return fmt.Errorf("usage flush: read pending batches: %w", err)
	}
	staleBefore := float64(nowCmd.Val().Add(-staleAfter).UnixMilli())
	for _, z := range listCmd.Val() {
		id, _ := z.Member.(string)
		if z.Score < staleBefore {
			if err := m.setAside(ctx, id); err != nil {
				return err
			}
			res.Stale++
			continue
		}
		if err := m.apply(ctx, id, res); err != nil {
			return err
		}
	}
	return nil
}

// setAside moves a batch too old to apply to the stale set.
func (m *Meter) setAside(ctx context.Context, id string) error {
	_, err := m.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.ZRem(ctx, m.rdb.Key("usage", "pending"), id)
		p.SAdd(ctx, m.rdb.Key("usage", "stale"), id)
		return nil
	})
	if err != nil {
		return fmt.Errorf("usage flush: set aside batch %s: %w", id, err)
	}
	m.batches.WithLabelValues("stale").Inc()
	m.log.Error().Str("batch", id).Str("key", m.batchKey(id)).
		Msg("usage batch pending for more than 6 days was set aside, not applied: its id may have been pruned from usage_flushes; reconcile it by hand (docs/operations.md)")
	return nil
}

// usageRow is one counter of a batch.
type usageRow struct {
	tenant, day, metric string
	units               int64
}

// apply records batch id in PostgreSQL exactly once, then deletes it from
// Redis.
func (m *Meter) apply(ctx context.Context, id string, res *FlushResult) error {
	fields, err := m.rdb.HGetAll(ctx, m.batchKey(id)).Result()
	if err != nil {
		return fmt.Errorf("usage flush: read batch %s: %w", id, err)
	}
	if len(fields) == 0 {
		// The batch hash is deleted only after its commit: it was applied
		// (by a concurrent flush) and only its pending entry is left.
		return m.forget(ctx, id)
	}
	rows := m.parseBatch(id, fields)
	duplicate := false
	err = m.tx.Do(postgres.AllTenants(ctx, "usage flush"), "usage.flush", func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `INSERT INTO usage_flushes (batch, rows) VALUES ($1, $2) ON CONFLICT DO NOTHING`, id, len(rows))
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			duplicate = true
			return nil
		}
		return m.record(ctx, tx, id, rows)
	})
	if err != nil {
		m.batches.WithLabelValues("failed").Inc()
		return fmt.Errorf("usage flush: batch %s: %w", id, err)
	}
	if duplicate {
		res.Duplicates++
		m.batches.WithLabelValues("duplicate").Inc()
		m.log.Info().Str("batch", id).Msg("usage batch was applied before; not counted again")
	} else {
		res.Applied++
		res.Rows += len(rows)
		m.batches.WithLabelValues("applied").Inc()
	}
	if err := m.at("committed"); err != nil {
		return err
	}
	return m.forget(ctx, id)
}

// forget deletes an applied batch from Redis.
func (m *Meter) forget(ctx context.Context, id string) error {
	_, err := m.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.Del(ctx, m.batchKey(id))
		p.ZRem(ctx, m.rdb.Key("usage", "pending"), id)
		return nil
	})
	if err != nil {
		return fmt.Errorf("usage flush: delete applied batch %s: %w", id, err)
	}
	return nil
}

// parseBatch turns a batch hash into rows sorted by tenant, day and
// metric (the order the transaction locks them in), dropping fields that
// cannot be recorded.
func (m *Meter) parseBatch(id string, fields map[string]string) []usageRow {
	rows := make([]usageRow, 0, len(fields))
	for f, v := range fields {
		member, metric, _ := strings.Cut(f, "|")
		tenant, day, _ := strings.Cut(member, ":")
		units, err := strconv.ParseInt(v, 10, 64)
		_, derr := time.Parse(time.DateOnly, day)
		if err != nil || derr != nil || units < 0 || !canonicalUUID(tenant) || !ValidMetric(metric) {
			m.dropped.Inc()
			m.log.Error().Str("batch", id).Str("field", f).Str("value", v).Msg("malformed usage counter dropped")
			continue
		}
		if units == 0 {
			continue
		}
		rows = append(rows, usageRow{tenant, day, metric, units})
	}
	slices.SortFunc(rows, func(a, b usageRow) int {
		return cmp.Or(strings.Compare(a.tenant, b.tenant), strings.Compare(a.day, b.day), strings.Compare(a.metric, b.metric))
	})
	return rows
}

// record adds rows to usage_daily and charges GPU time to the budgets,
// inside the flush's transaction. Rows of tenants that do not exist are
// dropped and logged, so one bad row cannot block a batch forever.
func (m *Meter) record(ctx context.Context, tx pgx.Tx, id string, rows []usageRow) error {
	var ids []string
	for _, r := range rows {
		if len(ids) == 0 || ids[len(ids)-1] != r.tenant {
			ids = append(ids, r.tenant)
		}
	}
	known := map[string]bool{}
	trows, err := tx.Query(ctx, `SELECT id::text FROM tenants WHERE id = ANY($1::uuid[])`, ids)
	if err != nil {
		return err
	}
	found, err := pgx.CollectRows(trows, pgx.RowTo[string])
	if err != nil {
		return err
	}
	for _, t := range found {
		known[t] = true
	}
	var tenants, days, metrics []string
	var units []int64
	type gpuKey struct{ tenant, month string }
	var gpu []gpuKey
	gpuUnits := map[gpuKey]int64{}
	for _, r := range rows {
		if !known[r.tenant] {
			m.dropped.Inc()
			m.log.Error().Str("batch", id).Str("tenant", r.tenant).Str("day", r.day).Str("metric", r.metric).
				Int64("units", r.units).Msg("usage of an unknown tenant dropped")
			continue
		}
		tenants, days, metrics, units = append(tenants, r.tenant), append(days, r.day), append(metrics, r.metric), append(units, r.units)
		if r.metric == GPUSeconds {
			k := gpuKey{r.tenant, r.day[:7]}
			if _, ok := gpuUnits[k]; !ok {
				gpu = append(gpu, k)
			}
			gpuUnits[k] += r.units
		}
	}
	if len(tenants) == 0 {
		return nil
	}
	if _, err := tx.Exec(ctx, `INSERT INTO usage_daily (tenant_id, day, metric, units)
		SELECT t, d, m, u FROM unnest($1::uuid[], $2::date[], $3::text[], $4::bigint[]) AS x(t, d, m, u)
		ORDER BY t, d, m
		ON CONFLICT (tenant_id, day, metric) DO UPDATE SET units = usage_daily.units + excluded.units, updated_at = now()`,
		tenants, days, metrics, units); err != nil {
		return err
	}
	if err := m.at("transaction"); err != nil {
		return err
	}
	for _, k := range gpu { // in tenant order: rows were sorted
		month, _ := time.Parse("2006-01", k.month)
		if err := m.quotas.consumeAt(ctx, tx, k.tenant, "max_gpu_hours", gpuUnits[k], month); err != nil {
			return err
		}
	}
	return nil
}

// prune deletes batch ids older than flushRetention, at most hourly per
// instance.
func (m *Meter) prune(ctx context.Context) {
	m.pruneMu.Lock()
	if m.now().Sub(m.lastPrune) < pruneEvery {
		m.pruneMu.Unlock()
		return
	}
	m.lastPrune = m.now()
	m.pruneMu.Unlock()
	err := m.tx.Exec(postgres.AllTenants(ctx, "usage flush"), "usage.prune",
		`DELETE FROM usage_flushes WHERE flushed_at < now() - make_interval(secs => $1)`, flushRetention.Seconds())
	if err != nil && ctx.Err() == nil {
		m.log.Warn().Err(err).Msg("pruning usage_flushes failed")
	}
}

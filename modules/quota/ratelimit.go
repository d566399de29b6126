package quota

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"
	"golang.org/x/time/rate"

	"github.com/atriumhq/atrium/platform/errs"
	"github.com/atriumhq/atrium/platform/redisx"
)

// Mode says whether a rule refuses requests or only reports what it would
// have refused.
type Mode uint8

const (
	// Enforce refuses requests over the limit.
	Enforce Mode = iota
	// Observe never refuses; requests over the limit are reported as
	// would-be refusals (the test mode of seed 001).
	Observe
)

func (m Mode) String() string {
	if m == Observe {
		return "observe"
	}
	return "enforce"
}

// FailMode says how a rule decides while Redis is unreachable.
type FailMode uint8

const (
	// FailOpen decides with a limiter local to this instance at the rule's
	// rate: with k instances the cluster admits up to k times the rate.
	FailOpen FailMode = iota
	// FailClosed refuses every request the rule covers.
	FailClosed
)

func (f FailMode) String() string {
	if f == FailClosed {
		return "closed"
	}
	return "open"
}

// Rule is one rate limit: Rate events per Period for the counter named by
// ID and Key, with bursts of up to Burst events.
type Rule struct {
	// ID names the policy (for example "tenant-rps"); it appears in headers
	// and errors shown to clients. Letters, digits, '-', '_' and '.' only.
	ID string
	// Key is the resolved subject the policy counts, for example
	// "tenant:<id>", "terminal:<id>" or "route:payments". ID and Key
	// together name one counter.
	Key      string
	Rate     int
	Period   time.Duration
	Burst    int
	Mode     Mode
	FailMode FailMode
}

// interval is the GCRA emission interval: the time one event uses up.
func (r Rule) interval() time.Duration {
	return time.Duration(float64(r.Period) / float64(r.Rate))
}

// Validate reports whether the rule can be evaluated. It returns an
// errs.Invalid error naming the first problem.
func (r Rule) Validate() error {
	switch {
	case r.ID == "" || strings.IndexFunc(r.ID, badIDRune) >= 0:
		return errs.E(errs.Invalid, "rate limit rule %q: the id must be letters, digits, '-', '_' or '.'", r.ID)
	case r.Key == "":
		return errs.E(errs.Invalid, "rate limit rule %s: empty key", r.ID)
	case r.Rate < 1:
		return errs.E(errs.Invalid, "rate limit rule %s: rate must be at least 1", r.ID)
	case r.Period < time.Millisecond:
		return errs.E(errs.Invalid, "rate limit rule %s: period must be at least 1ms", r.ID)
	case r.interval() < time.Microsecond:
		return errs.E(errs.Invalid, "rate limit rule %s: at most one event per microsecond", r.ID)
	case r.Burst < 1:
		return errs.E(errs.Invalid, "rate limit rule %s: burst must be at least 1", r.ID)
	case r.Mode > Observe:
		return errs.E(errs.Invalid, "rate limit rule %s: unknown mode %d", r.ID, r.Mode)
	case r.FailMode > FailClosed:
		return errs.E(errs.Invalid, "rate limit rule %s: unknown fail mode %d", r.ID, r.FailMode)
	}
	return nil
}

func badIDRune(c rune) bool {
	return !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.')
}

// Result is one rule's part of a Decision.
type Result struct {
	Rule Rule
	// Allowed says the rule by itself admits the request (for an observe
	// rule: would admit it). False with Skipped false is a refusal.
	Allowed bool
	// Skipped means the rule was not evaluated: another rule refused the
	// request from the denial cache, without asking Redis.
	Skipped bool
	// Local means the rule was decided on this instance alone because Redis
	// was unreachable (FailOpen: the local limiter; FailClosed: refused).
	Local bool
	// Remaining is how many more events the rule admits right now, after
	// this request if it was admitted.
	Remaining int
	// RetryAfter is, for a refusal, how long until the request would fit;
	// zero otherwise.
	RetryAfter time.Duration
	// ResetAfter is how long until the rule is back to its full burst.
	ResetAfter time.Duration
}

// Refused reports whether this rule turned the request down (or, in
// observe mode, would have).
func (r Result) Refused() bool { return !r.Allowed && !r.Skipped }

// Used is the rule's current use: the events it still counts against its
// burst, rounded up.
func (r Result) Used() int {
	iv := r.Rule.interval()
	if iv <= 0 || r.ResetAfter <= 0 {
		return 0
	}
	return min(int((r.ResetAfter+iv-1)/iv), r.Rule.Burst)
}

// Decision is the outcome of Limiter.Allow.
type Decision struct {
	// Allowed is false when at least one enforcing rule refused; then no
	// rule consumed anything.
	Allowed bool
	// Results has one entry per rule, in the order of the rules passed.
	Results []Result
	// Fallback means Redis was not used: the rules were decided locally
	// according to their FailMode.
	Fallback bool
	// Cached means an enforcing rule refused from the denial cache, without
	// a Redis round trip.
	Cached bool
	// RedisErr is why Redis was not used when Fallback is set.
	RedisErr error
}

// Refused returns the enforcing rules that refused the request.
func (d Decision) Refused() []Result { return d.filter(Enforce) }

// WouldRefuse returns the observe rules that would have refused the
// request had they been enforcing.
func (d Decision) WouldRefuse() []Result { return d.filter(Observe) }

func (d Decision) filter(m Mode) []Result {
	var out []Result
	for _, r := range d.Results {
		if r.Rule.Mode == m && r.Refused() {
			out = append(out, r)
		}
	}
	return out
}

// Restrictive returns the result that headers and errors describe: for a
// refusal, the refusing enforcing rule with the longest wait; otherwise the
// enforcing rule with the fewest events remaining (ties: the longest
// reset). Observe rules limit nothing and are never chosen. ok is false
// when no enforcing rule was evaluated.
func (d Decision) Restrictive() (res Result, ok bool) {
	for _, r := range d.Results {
		if r.Rule.Mode != Enforce || r.Skipped {
			continue
		}
		if !ok || better(r, res) {
			res, ok = r, true
		}
	}
	return res, ok
}

func better(a, b Result) bool {
	if a.Allowed != b.Allowed {
		return !a.Allowed
	}
	if !a.Allowed {
		return a.RetryAfter > b.RetryAfter
	}
	if a.Remaining != b.Remaining {
		return a.Remaining < b.Remaining
	}
	return a.ResetAfter > b.ResetAfter
}

// Err returns nil when the request was admitted, and otherwise an
// errs.QuotaExceeded error naming the most restrictive refusing rule, its
// limit and current use. Its Extra members are quota (the rule id), limit,
// window_seconds, burst, used and retry_after_seconds (an int, which the
// HTTP edge turns into Retry-After). A FailClosed rule refusing because
// Redis is unreachable is not over its limit: that is errs.Unavailable,
// with quota and retry_after_seconds.
func (d Decision) Err() error {
	if d.Allowed {
		return nil
	}
	r, ok := d.Restrictive()
	if !ok {
		return errs.E(errs.QuotaExceeded, "rate limit exceeded")
	}
	if r.Local && r.Rule.FailMode == FailClosed {
		return &errs.Error{
			Code:    errs.Unavailable,
			Message: fmt.Sprintf("rate limit %s cannot be checked right now", r.Rule.ID),
			Extra:   map[string]any{"quota": r.Rule.ID, "retry_after_seconds": ceilSeconds(r.RetryAfter)},
			Err:     d.RedisErr,
		}
	}
	return &errs.Error{
		Code: errs.QuotaExceeded,
		Message: fmt.Sprintf("rate limit %s exceeded: %d requests per %s (burst %d), %d in use",
			r.Rule.ID, r.Rule.Rate, r.Rule.Period, r.Rule.Burst, r.Used()),
		Extra: map[string]any{
			"quota":               r.Rule.ID,
			"limit":               r.Rule.Rate,
			"window_seconds":      ceilSeconds(r.Rule.Period),
			"burst":               r.Rule.Burst,
			"used":                r.Used(),
			"retry_after_seconds": ceilSeconds(r.RetryAfter),
		},
	}
}

// ceilSeconds rounds d up to whole seconds, at least 1: a header or
// Retry-After of 0 would invite an immediate retry.
func ceilSeconds(d time.Duration) int {
	return max(int((d+time.Second-1)/time.Second), 1)
}

// WriteHeaders sets the IETF rate-limit headers
// (draft-ietf-httpapi-ratelimit-headers) for the most restrictive enforcing
// rule of d:
//
//	RateLimit-Policy: "<id>";q=<rate>;w=<period in seconds>
//	RateLimit: "<id>";r=<remaining>;t=<seconds until the rule is back to its full burst>
//
// and, when d refused the request, Retry-After in seconds. It writes nothing
// when no enforcing rule was evaluated.
func WriteHeaders(h http.Header, d Decision) {
	r, ok := d.Restrictive()
	if !ok {
		if !d.Allowed {
			h.Set("Retry-After", "1")
		}
		return
	}
	id := `"` + r.Rule.ID + `"` // Validate keeps ids within sf-string's alphabet
	h.Set("RateLimit-Policy", id+";q="+strconv.Itoa(r.Rule.Rate)+";w="+strconv.Itoa(ceilSeconds(r.Rule.Period)))
	reset := 0
	if r.ResetAfter > 0 {
		reset = ceilSeconds(r.ResetAfter)
	}
	h.Set("RateLimit", id+";r="+strconv.Itoa(r.Remaining)+";t="+strconv.Itoa(reset))
	if !d.Allowed {
		h.Set("Retry-After", strconv.Itoa(ceilSeconds(r.RetryAfter)))
	}
}

// Observer is told of every decision Allow makes, so that the caller can
// count refusals (Decision.Refused), would-be refusals
// (Decision.WouldRefuse) and fallbacks (Decision.Fallback, with RedisErr)
// in metrics and logs. It is called on the request's goroutine: it must be
// quick and safe for concurrent use.
type Observer interface {
	Observe(ctx context.Context, d Decision)
}

// ObserverFunc adapts a function to Observer.
type ObserverFunc func(ctx context.Context, d Decision)

// Observe calls f.
func (f ObserverFunc) Observe(ctx context.Context, d Decision) { f(ctx, d) }

// Config tunes a Limiter; the zero value is usable.
type Config struct {
	// Timeout is every timeout of the Limiter's own Redis connections:
	// dial, waiting for a pooled connection, write and read (default
	// 100ms). A decision that runs into it is made locally.
	Timeout time.Duration
	// HoldOff is how long, after Redis failed, decisions are made locally
	// without trying Redis again (default 1s), so that an outage costs one
	// timeout per instance and hold-off, not one per request.
	HoldOff time.Duration
	// Observer, if set, is told of every decision.
	Observer Observer
	// Now is the clock of the local limiter, the denial cache and the
	// hold-off (default time.Now). Redis decisions use Redis's clock.
	Now func() time.Time
}

// Limiter decides requests against sets of rules, exactly across every
// instance that shares the Redis prefix. It is safe for concurrent use.
type Limiter struct {
	rdb      *redis.Client // the Limiter's own pool: short timeouts, no retries
	base     string        // "<prefix>:rl": counters are "<base>:<rule id>:<rule key>"
	cfg      Config
	denials  denialCache
	local    localLimiter
	downTill atomic.Int64 // unix nanoseconds (cfg.Now) until which Redis is not tried
}

// NewLimiter returns a Limiter deciding in the Redis that rdb talks to,
// under rdb's key prefix. It opens its own connection pool there (named
// atrium-ratelimit) with cfg.Timeout as every timeout and no retries: a
// replayed script could count a request twice, and the hold-off takes the
// place of retries. Close releases the pool.
//
// Bounding each decision through the client rather than a context
// deadline per call matters: a fresh timer per request wakes Go's network
// poller and cost 15% of parallel throughput when measured.
func NewLimiter(rdb *redisx.Client, cfg Config) *Limiter {
	if cfg.Timeout <= 0 {
		cfg.Timeout = 100 * time.Millisecond
	}
	if cfg.HoldOff <= 0 {
		cfg.HoldOff = time.Second
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	opt := *rdb.Options()
	opt.ClientName = "atrium-ratelimit"
	opt.DialTimeout, opt.ReadTimeout, opt.WriteTimeout, opt.PoolTimeout = cfg.Timeout, cfg.Timeout, cfg.Timeout, cfg.Timeout
	opt.MaxRetries, opt.DialerRetries = -1, 1
	// Work per command that redis-benchmark does not do. RESP3 makes
	// go-redis look for pending push notifications before each command;
	// RESP2 has none, and the script's reply reads the same. And the pool
	// health-checks every connection it hands out with a socket peek (a
	// syscall, plus clearing the deadlines), but only connections that
	// expose their file descriptor (syscall.Conn): opaqueConn hides it. A
	// connection closed under us (a Redis restart) then shows as a failed
	// command: that one decision is made locally, without a hold-off (see
	// staleConn), and the pool redials.
	opt.Protocol = 2
	dial := opt.Dialer
	if dial == nil {
		dial = redis.NewDialer(&opt)
	}
	opt.Dialer = func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return opaqueConn{c}, nil
	}
	return &Limiter{
		rdb:   redis.NewClient(&opt),
		base:  rdb.Key("rl"),
		cfg:   cfg,
		local: localLimiter{limiters: map[string]*localEntry{}},
	}
}

// opaqueConn hides a connection's file descriptor (it has only net.Conn's
// methods), so go-redis skips its per-command health-check syscall.
type opaqueConn struct{ net.Conn }

// Close releases the Limiter's Redis connections.
func (l *Limiter) Close() error { return l.rdb.Close() }

// Allow decides whether a request costing n events passes every rule, and
// consumes n events from every rule only if it does (all or nothing):
//
//   - an enforcing rule that refuses refuses the request, and then no rule
//     consumes anything;
//   - an observe rule never refuses; it consumes when it would have
//     admitted the request, and otherwise reports a would-be refusal;
//   - an enforcing rule known from an earlier answer to be over its limit
//     refuses from the denial cache until its retry time, without Redis;
//   - while Redis is unreachable each rule follows its FailMode and the
//     decision has Fallback set.
//
// A request costing more than a rule's Burst never passes that rule. The
// error is errs.Invalid for bad arguments, or ctx's error when the caller
// gave up before Redis answered; Redis failures are never returned.
func (l *Limiter) Allow(ctx context.Context, rules []Rule, n int) (Decision, error) {
	if n < 1 {
		return Decision{}, errs.E(errs.Invalid, "rate limit: cost must be at least 1, not %d", n)
	}
	for i, r := range rules {
		if err := r.Validate(); err != nil {
			return Decision{}, err
		}
		for _, o := range rules[:i] {
			if o.ID == r.ID && o.Key == r.Key {
				return Decision{}, errs.E(errs.Invalid, "rate limit rule %s: key %q given twice", r.ID, r.Key)
			}
		}
	}
	d := Decision{Allowed: true, Results: make([]Result, len(rules))}
	if len(rules) == 0 {
		l.observe(ctx, d)
		return d, nil
	}
	keys := make([]string, len(rules))
	for i, r := range rules {
		keys[i] = l.base + ":" + r.ID + ":" + r.Key
		d.Results[i].Rule = r
	}

	now := l.cfg.Now()
	if l.denials.refuse(keys, &d, n, now) {
		l.observe(ctx, d)
		return d, nil
	}
	if until := l.downTill.Load(); now.UnixNano() < until {
		l.decideLocally(&d, keys, n, now, ErrHeldOff, time.Duration(until-now.UnixNano()))
		l.observe(ctx, d)
		return d, nil
	}

	err := l.decideInRedis(ctx, &d, rules, keys, n, now)
	if err != nil {
		if ctx.Err() != nil {
			return Decision{}, fmt.Errorf("rate limit: %w", ctx.Err())
		}
		if !staleConn(err) {
			l.downTill.Store(now.Add(l.cfg.HoldOff).UnixNano())
		}
		l.decideLocally(&d, keys, n, l.cfg.Now(), err, l.cfg.HoldOff)
	}
	l.observe(ctx, d)
	return d, nil
}

func (l *Limiter) observe(ctx context.Context, d Decision) {
	if l.cfg.Observer != nil {
		l.cfg.Observer.Observe(ctx, d)
	}
}

// staleConn reports whether err says a pooled connection had been closed
// (by a Redis restart, say) rather than that Redis is unreachable: it came
// at once, so it starts no hold-off, and the pool redials for the next
// decision. Without the pool's per-command health check (see NewLimiter),
// this is how dead connections leave it: each costs one local decision.
func staleConn(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// ErrHeldOff is Decision.RedisErr for decisions made locally because Redis
// failed less than Config.HoldOff ago; the decision that saw the failure
// carries the failure itself.
var ErrHeldOff = errors.New("rate limit: redis failed recently, not retried until the hold-off ends")

// gcraScript evaluates every rule of a request and commits all or none. It
// is the GCRA of go-redis/redis_rate (a theoretical arrival time, TAT, per
// key; emission interval = period / rate; burst tolerance = interval *
// burst; Redis's clock) extended to several keys and to observe rules,
// with times in microseconds since 2017-01-01.
//
// KEYS[i] is rule i's TAT key. ARGV[1] is the cost n; rule i's arguments
// follow at ARGV[4i-2 .. 4i+1]: rate, period (µs), burst, mode ("e"
// enforce, "o" observe). It returns {admitted, then per rule: allowed,
// remaining, retry after (µs), reset after (µs)}.
var gcraScript = redis.NewScript(`
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = (t[1] - 1483228800) * 1000000 + t[2]
local cost = tonumber(ARGV[1])
local admitted = 1
local iv, tat, new_tat, diff, ok = {}, {}, {}, {}, {}
for i = 1, #KEYS do
  local a = 4 * i - 2
  iv[i] = tonumber(ARGV[a + 1]) / tonumber(ARGV[a])
  tat[i] = math.max(tonumber(redis.call('GET', KEYS[i]) or now), now)
  new_tat[i] = tat[i] + iv[i] * cost
  diff[i] = now - (new_tat[i] - iv[i] * tonumber(ARGV[a + 2]))
  ok[i] = diff[i] >= 0
  if not ok[i] and ARGV[a + 3] == 'e' then admitted = 0 end
end
local out = {admitted}
for i = 1, #KEYS do
  local remaining = math.max(math.floor(diff[i] / iv[i] + cost), 0)
  local retry, reset = 0, tat[i] - now
  if not ok[i] then
    retry = math.ceil(-diff[i])
  elseif admitted == 1 then
    reset = new_tat[i] - now
    remaining = remaining - cost
    redis.call('SET', KEYS[i], new_tat[i], 'PX', math.max(math.ceil(reset / 1000), 1))
  end
  out[#out + 1] = ok[i] and 1 or 0
  out[#out + 1] = remaining
  out[#out + 1] = retry
  out[#out + 1] = math.ceil(reset)
end
return out
`)

// scriptArgs returns gcraScript's ARGV for rules and cost n.
func scriptArgs(rules []Rule, n int) []any {
	args := make([]any, 1, 1+4*len(rules))
	args[0] = n
	for _, r := range rules {
		mode := "e"
		if r.Mode == Observe {
			mode = "o"
		}
		args = append(args, r.Rate, r.Period.Microseconds(), r.Burst, mode)
	}
	return args
}

// decideInRedis decides every rule of d in one run of gcraScript and
// fills d. It returns an error when Redis could not be used.
func (l *Limiter) decideInRedis(ctx context.Context, d *Decision, rules []Rule, keys []string, n int, sent time.Time) error {
	v, err := gcraScript.Run(ctx, l.rdb, keys, scriptArgs(rules, n)...).Int64Slice()
	if err != nil {
		return fmt.Errorf("rate limit: redis: %w", err)
	}
	if len(v) != 1+4*len(rules) {
		return fmt.Errorf("rate limit: redis: %d values from the script, want %d", len(v), 1+4*len(rules))
	}
	d.Allowed = v[0] == 1
	for i := range d.Results {
		res := &d.Results[i]
		o := v[1+4*i:]
		res.Allowed = o[0] == 1
		res.Remaining = int(o[1])
		res.RetryAfter = time.Duration(o[2]) * time.Microsecond
		res.ResetAfter = time.Duration(o[3]) * time.Microsecond
		if res.Allowed || res.Rule.Mode != Enforce {
			continue
		}
		// When one event fits again. The request was sent no later than
		// Redis's "now", so the cached denial never outlasts the real one;
		// a request refused only for its size (n) leaves nothing to cache.
		if freeAt := sent.Add(res.RetryAfter - time.Duration(n-1)*res.Rule.interval()); freeAt.After(sent) {
			l.denials.store(keys[i], res.Rule, freeAt, sent)
		}
	}
	return nil
}

// decideLocally fills d without Redis, each rule following its FailMode.
// Closed rules report retry, the time until Redis is tried again.
func (l *Limiter) decideLocally(d *Decision, keys []string, n int, now time.Time, cause error, retry time.Duration) {
	d.Fallback, d.RedisErr = true, cause
	d.Allowed = l.local.allow(d.Results, keys, n, now, retry)
}

// denialCache remembers, per counter, until when an enforcing rule refuses
// every request, so that those requests need no Redis round trip. An entry
// holds only for the rule parameters it was learned under, so a changed
// rule is asked of Redis again.
type denialCache struct {
	m      sync.Map // Redis key -> *denial
	stores atomic.Uint64
}

type denial struct {
	freeAt time.Time // when one event fits again
	rate   int
	period time.Duration
	burst  int
}

// store records that r's counter key admits nothing before freeAt; every
// 1024th store drops the entries expired at now.
func (c *denialCache) store(key string, r Rule, freeAt, now time.Time) {
	c.m.Store(key, &denial{freeAt: freeAt, rate: r.Rate, period: r.Period, burst: r.Burst})
	if c.stores.Add(1)%1024 == 0 {
		c.m.Range(func(k, v any) bool {
			if !v.(*denial).freeAt.After(now) {
				c.m.CompareAndDelete(k, v)
			}
			return true
		})
	}
}

// refuse fills d and returns true when an enforcing rule of d is known to
// refuse a request costing n at now.
func (c *denialCache) refuse(keys []string, d *Decision, n int, now time.Time) bool {
	hit := false
	for i := range d.Results {
		res := &d.Results[i]
		r := res.Rule
		if r.Mode != Enforce {
			continue
		}
		v, ok := c.m.Load(keys[i])
		if !ok {
			continue
		}
		e := v.(*denial)
		if !e.freeAt.After(now) || e.rate != r.Rate || e.period != r.Period || e.burst != r.Burst {
			c.m.CompareAndDelete(keys[i], v)
			continue
		}
		wait := e.freeAt.Sub(now)
		*res = Result{Rule: r, RetryAfter: wait + time.Duration(n-1)*r.interval(),
			ResetAfter: wait + time.Duration(r.Burst-1)*r.interval()}
		hit = true
	}
	if !hit {
		return false
	}
	d.Allowed, d.Cached = false, true
	for i := range d.Results {
		if res := &d.Results[i]; res.RetryAfter == 0 { // not a hit: left as it was
			res.Skipped = true
		}
	}
	return true
}

// localLimiter is the per-instance fallback for FailOpen rules: a token
// bucket per counter (golang.org/x/time/rate, equivalent to GCRA) at the
// rule's rate and burst. One mutex makes a request's check and consumption
// across its rules all or nothing; it is only taken while Redis is down.
type localLimiter struct {
	mu        sync.Mutex
	limiters  map[string]*localEntry
	lastSweep time.Time
}

type localEntry struct {
	lim  *rate.Limiter
	used time.Time
}

// localSweep is how often idle, full buckets are dropped.
const localSweep = time.Minute

// allow decides results locally and reports whether the request is
// admitted: every enforcing rule is FailOpen and its bucket holds n tokens.
// Only then does it consume n tokens, from every open rule that has them.
// FailClosed rules refuse (or, observing, would refuse) with closedRetry.
func (ll *localLimiter) allow(results []Result, keys []string, n int, now time.Time, closedRetry time.Duration) bool {
	ll.mu.Lock()
	defer ll.mu.Unlock()
	if now.Sub(ll.lastSweep) > localSweep {
		for k, e := range ll.limiters {
			if now.Sub(e.used) > localSweep && e.lim.TokensAt(now) >= float64(e.lim.Burst()) {
				delete(ll.limiters, k)
			}
		}
		ll.lastSweep = now
	}
	admitted := true
	tokens := make([]float64, len(results))
	lims := make([]*rate.Limiter, len(results))
	for i := range results {
		r := results[i].Rule
		if r.FailMode == FailClosed {
			admitted = admitted && r.Mode != Enforce
			continue
		}
		lims[i] = ll.limiter(keys[i], r, now)
		tokens[i] = lims[i].TokensAt(now)
		if tokens[i] < float64(n) && r.Mode == Enforce {
			admitted = false
		}
	}
	for i := range results {
		res := &results[i]
		res.Local = true
		lim := lims[i]
		if lim == nil {
			res.RetryAfter = closedRetry
			continue
		}
		perSec := float64(lim.Limit())
		left := tokens[i]
		res.Allowed = left >= float64(n)
		if res.Allowed && admitted {
			lim.AllowN(now, n)
			left -= float64(n)
		}
		res.Remaining = max(int(math.Floor(left)), 0)
		if !res.Allowed {
			res.RetryAfter = secs((float64(n) - left) / perSec)
		}
		res.ResetAfter = secs((float64(lim.Burst()) - left) / perSec)
	}
	return admitted
}

// limiter returns the bucket for key, adjusted to r's current rate.
func (ll *localLimiter) limiter(key string, r Rule, now time.Time) *rate.Limiter {
	limit := rate.Limit(float64(r.Rate) / r.Period.Seconds())
	e, ok := ll.limiters[key]
	if !ok {
		e = &localEntry{lim: rate.NewLimiter(limit, r.Burst)}
		ll.limiters[key] = e
	}
	if e.lim.Limit() != limit {
		e.lim.SetLimitAt(now, limit)
	}
	if e.lim.Burst() != r.Burst {
		e.lim.SetBurstAt(now, r.Burst)
	}
	e.used = now
	return e.lim
}

func secs(s float64) time.Duration {
	return time.Duration(math.Ceil(s * float64(time.Second)))
}

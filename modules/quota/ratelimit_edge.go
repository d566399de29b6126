package quota

import (
	"context"
	"fmt"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/atriumhq/atrium/platform/errs"
	"github.com/atriumhq/atrium/platform/httpx"
	"github.com/atriumhq/atrium/platform/principal"
)

// ruleSet is the rules in force on this instance, swapped whole on reload:
// for each route class, the enabled rules that cover it, ordered by id.
type ruleSet struct {
	byClass [numClasses][]*compiledRule
	defs    []RuleDef // every stored rule, disabled ones included
}

// compiledRule is a rule ready for requests: the engine Rule without its
// key and, for quota rules, without its rate.
type compiledRule struct {
	keyBy keyKind
	quota string // "" for a fixed rate
	rule  Rule   // Burst 0: the same as the (tenant's) rate
	stats *ruleStats
}

// ruleStats are one rule's counters; they outlive reloads.
type ruleStats struct {
	id                                string
	allowed, refused, would, fallback prometheus.Counter
	pendingRefused, pendingWould      atomic.Int64 // not yet added to the live counts in Redis
	wouldLog                          logGate
}

// logGate lets one log line through per second and counts the rest, so a
// flood of refusals or fallbacks cannot flood the logs.
type logGate struct {
	next       atomic.Int64 // unix nanoseconds before which lines are suppressed
	suppressed atomic.Int64
}

// allow reports whether a line may be logged at now, and how many were
// suppressed since the last one.
func (g *logGate) allow(now time.Time) (bool, int64) {
	n, t := g.next.Load(), now.UnixNano()
	if t < n || !g.next.CompareAndSwap(n, t+int64(time.Second)) {
		g.suppressed.Add(1)
		return false, 0
	}
	return true, g.suppressed.Swap(0)
}

func (s *RateLimits) statsFor(id string) *ruleStats {
	s.statsMu.Lock()
	defer s.statsMu.Unlock()
	st, ok := s.stats[id]
	if !ok {
		st = &ruleStats{id: id,
			allowed: s.decisions.WithLabelValues(id, "allowed"), refused: s.decisions.WithLabelValues(id, "refused"),
			would: s.decisions.WithLabelValues(id, "would_refuse"), fallback: s.decisions.WithLabelValues(id, "fallback")}
		s.stats[id] = st
	}
	return st
}

// compile turns stored rules into a rule set. A rule that fails validation
// (edited by hand in the database, say) is left out and logged.
func (s *RateLimits) compile(defs []RuleDef) *ruleSet {
	set := &ruleSet{defs: defs}
	for _, d := range defs {
		if err := d.validate(); err != nil {
			s.log.Error().Err(err).Str("rule", d.ID).Msg("stored rate-limit rule is invalid; not enforced")
			continue
		}
		if !d.Enabled {
			continue
		}
		c := &compiledRule{stats: s.statsFor(d.ID), rule: Rule{ID: d.ID, Period: time.Duration(d.PeriodMS) * time.Millisecond}}
		switch d.KeyBy {
		case "tenant":
			c.keyBy = keyTenant
		case "principal":
			c.keyBy = keyPrincipal
		case "terminal":
			c.keyBy = keyTerminal
		case "ip":
			c.keyBy = keyIP
		}
		if d.Quota != nil {
			c.quota = *d.Quota
		} else {
			c.rule.Rate = *d.Rate
		}
		if d.Burst != nil {
			c.rule.Burst = *d.Burst
		}
		if d.Mode == Observe.String() {
			c.rule.Mode = Observe
		}
		if d.FailMode == FailClosed.String() {
			c.rule.FailMode = FailClosed
		}
		for cl := classAPI; cl < numClasses; cl++ {
			// Every request with a class is also an API request.
			if d.RouteClass == ClassAll || d.RouteClass == ClassAPI || classByName[d.RouteClass] == cl {
				set.byClass[cl] = append(set.byClass[cl], c)
			}
		}
	}
	return set
}

// Rules returns the rules this instance holds in memory, as last loaded.
func (s *RateLimits) Rules() []RuleDef {
	return append([]RuleDef(nil), s.rules.Load().defs...)
}

// key is the counter subject of a request for the rule, "" when the
// request has none (the rule then does not apply).
func (c *compiledRule) key(ctx context.Context, p *principal.Principal) string {
	switch c.keyBy {
	case keyTenant:
		if p != nil && p.TenantID != "" {
			return "tenant:" + p.TenantID
		}
	case keyPrincipal:
		if p != nil {
			return p.Subject()
		}
	case keyTerminal:
		if p != nil && p.Kind == principal.Terminal {
			return "terminal:" + p.ID
		}
	case keyIP:
		if p == nil {
			if ip := httpx.ClientIP(ctx); ip != "" {
				return "ip:" + ip
			}
		}
	}
	return ""
}

// maxRules is how many rules a request is usually checked against without
// allocating.
const maxRules = 8

// Middleware checks every API request against the rules of its route
// classes in one Limiter.Allow, after authentication (keys need the
// caller). An admitted request carries RateLimit-Policy and RateLimit
// headers of its most restrictive enforcing rule; a refused one gets them
// with Retry-After, and onErr writes the problem: 429 quota_exceeded, 503
// unavailable from a fail-closed rule while Redis is unreachable, or 403
// quota_exceeded when the tenant's quota for the rule is 0. Paths outside
// the API pass untouched, without a Redis round trip.
func (s *RateLimits) Middleware(onErr func(http.ResponseWriter, *http.Request, error)) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if c := classOf(r.URL.Path); c != noClass {
				if cands := s.rules.Load().byClass[c]; len(cands) > 0 {
					if err := s.decide(w, r, cands); err != nil {
						onErr(w, r, err)
						return
					}
				}
			}
			next.ServeHTTP(w, r)
		})
	}
}

// decide checks one request against cands and records the verdicts.
func (s *RateLimits) decide(w http.ResponseWriter, r *http.Request, cands []*compiledRule) error {
	ctx := r.Context()
	p := principal.From(ctx)
	var rbuf [maxRules]Rule
	var cbuf [maxRules]*compiledRule
	rules, used := rbuf[:0], cbuf[:0]
	var limits map[string]int64
	loaded := false
	for _, c := range cands {
		key := c.key(ctx, p)
		if key == "" {
			continue
		}
		rule := c.rule
		rule.Key = key
		if c.quota != "" {
			if p == nil || p.TenantID == "" {
				continue
			}
			if !loaded {
				loaded = true
				var err error
				if limits, err = s.tenantLimits(ctx, p.TenantID); err != nil {
					if ok, n := s.quotaLog.allow(s.now()); ok {
						s.log.Warn().Ctx(ctx).Err(err).Int64("suppressed", n).Msg("tenant limits unavailable: quota rate-limit rules skipped")
					}
				}
			}
			limit, ok := limits[c.quota]
			if !ok {
				continue // unlimited
			}
			if limit < 1 {
				if err := s.zeroLimit(ctx, r, c, key); err != nil {
					return err
				}
				continue
			}
			rule.Rate = int(min(limit, 1_000_000_000))
			if iv := rule.Period / time.Duration(rule.Rate); iv < time.Microsecond {
				rule.Rate = int(rule.Period / time.Microsecond)
			}
		}
		if rule.Burst == 0 {
			rule.Burst = rule.Rate
		}
		rules, used = append(rules, rule), append(used, c)
	}
	if len(rules) == 0 {
		return nil
	}
	d, err := s.limiter.Load().Allow(ctx, rules, 1)
	if err != nil {
		if ctx.Err() != nil {
			return errs.Wrap(errs.Unavailable, err, "the request ended before its rate limits were checked")
		}
		// A rule the engine refuses is a bug here, not the caller's doing:
		// never turn traffic away for it.
		s.log.Error().Ctx(ctx).Err(err).Msg("rate-limit rules not checked")
		return nil
	}
	s.record(r, d, used)
	WriteHeaders(w.Header(), d)
	return d.Err()
}

// tenantLimits returns tenant's effective limits from the quota service's
// cache (a tenant not cached yet waits at most a second for PostgreSQL).
func (s *RateLimits) tenantLimits(ctx context.Context, tenant string) (map[string]int64, error) {
	return s.quotas.Limits(ctx, tenant)
}

// zeroLimit handles a quota rule whose limit is 0 for the caller's tenant:
// nothing is allowed, and waiting does not help, so an enforcing rule
// refuses with quota_exceeded without retry_after_seconds (403), and an
// observing one counts a would-be refusal.
func (s *RateLimits) zeroLimit(ctx context.Context, r *http.Request, c *compiledRule, key string) error {
	st := c.stats
	if c.rule.Mode == Observe {
		st.would.Inc()
		st.pendingWould.Add(1)
		s.logWould(ctx, r, st, key, 0, c.rule.Period)
		return nil
	}
	st.refused.Inc()
	st.pendingRefused.Add(1)
	return &errs.Error{Code: errs.QuotaExceeded,
		Message: fmt.Sprintf("rate limit %s: the tenant's %s quota is 0", c.rule.ID, c.quota),
		Extra:   map[string]any{"quota": c.rule.ID, "limit": 0}}
}

// record counts each rule's verdict in the metrics and live counts and
// logs would-be refusals and fallbacks, sampled.
func (s *RateLimits) record(r *http.Request, d Decision, used []*compiledRule) {
	for i := range d.Results {
		res := &d.Results[i]
		st := used[i].stats
		if res.Skipped {
			continue
		}
		switch {
		case !res.Refused():
			st.allowed.Inc()
		case res.Rule.Mode == Observe:
			st.would.Inc()
			st.pendingWould.Add(1)
			s.logWould(r.Context(), r, st, res.Rule.Key, res.Rule.Rate, res.Rule.Period)
		default:
			st.refused.Inc()
			st.pendingRefused.Add(1)
		}
		if res.Local {
			st.fallback.Inc()
		}
	}
	if d.Fallback {
		if ok, n := s.fallbackLog.allow(s.now()); ok {
			s.log.Warn().Ctx(r.Context()).Err(d.RedisErr).Bool("admitted", d.Allowed).Int64("suppressed", n).
				Msg("rate limits decided without Redis: fail-open rules use this instance's local limiter, fail-closed rules refuse")
		}
	}
}

func (s *RateLimits) logWould(ctx context.Context, r *http.Request, st *ruleStats, key string, rate int, period time.Duration) {
	if ok, n := st.wouldLog.allow(s.now()); ok {
		s.log.Info().Ctx(ctx).Str("rule", st.id).Str("key", key).Int("rate", rate).Dur("period", period).
			Str("method", r.Method).Str("path", r.URL.Path).Int64("suppressed", n).
			Msg("rate limit would refuse (observe mode): admitted")
	}
}

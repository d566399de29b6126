// Package quota holds Atrium's quotas (Service: plans, overrides,
// allocation and budget quotas) and the rate limits of issue 4:
//
//   - Limiter, the engine: it decides a request against several rules at
//     once, exactly across all instances, in one Redis round trip;
//   - RateLimits, the rate limiting of the HTTP edge: the rules, stored in
//     PostgreSQL (rate_limit_rules) and held in memory on every instance,
//     the middleware that checks every API request against them with one
//     Limiter.Allow, their metrics, logs and live counts, and their admin
//     API (the admin UI page is in package web).
//
// # Rules at run time
//
// A rule (RuleDef) covers a route class (RouteClasses maps path prefixes
// to payments, auth, inference and api; every classified request is also
// api; paths outside the API have no class and never reach Redis), counts
// a key (the caller's tenant, the caller, terminals only, or anonymous
// callers by client address) and takes its rate either from a fixed
// number or from the caller's tenant's effective quota (Service.Limits:
// plan plus override, cached and invalidated by broadcast). Each rule is
// enforcing or observe-only and fails open or closed. The rule set is
// swapped whole (an atomic pointer) when it is reloaded: at once on the
// instance that made a change, on every other instance when the change's
// broadcast arrives (within a second), on every (re)subscription and every
// 30 s. A request is checked against every enabled rule of its classes
// whose key it has, in one Allow.
//
// Live counts (refusals and would-be refusals per rule over the last hour,
// cluster-wide) cost requests no Redis call: each instance counts in
// memory and adds its counts to per-minute Redis hashes once a second.
//
// # Algorithm
//
// Each rule is a GCRA (generic cell rate algorithm) limit: Rate events per
// Period, with bursts of up to Burst events. Its state is one Redis key per
// counter, "<prefix>:rl:<rule ID>:<rule Key>", holding the theoretical
// arrival time (TAT) and expiring once the counter is back to full; an event uses up the emission interval Period/Rate, and a request
// of n events fits while TAT + (n-Burst)*interval <= now. Time is
// Redis's (TIME), so instances' clocks never matter. In any window of
// length W a counter admits at most Burst + W/interval events, whichever
// instance asks.
//
// # Why our own script and not go-redis/redis_rate
//
// redis_rate's script is this same GCRA, but it decides one key per call.
// A request checked against several rules (tenant, terminal, route) must
// be admitted by all of them or consume from none: with one call per rule,
// a later rule refusing would leave the earlier ones consumed, and checking
// first and consuming afterwards takes two round trips that race between
// instances. It also has no observe mode. So gcraScript is redis_rate's
// algorithm extended to N keys: it computes every rule's verdict, and only
// if no enforcing rule refuses does it write the new TATs, all within one
// EVALSHA. TestAgreesWithRedisRate holds the script to redis_rate's
// verdicts for single rules.
//
// # Invariants
//
//   - All or nothing: when an enforcing rule refuses, no rule of the
//     request consumes anything, in Redis and in the local fallback alike.
//   - Observe rules never refuse. They are evaluated like enforcing ones
//     and consume when they would have admitted the request, so their
//     would-be refusals are what enforcing would refuse; they do not run
//     up debt while over the limit, and switching one to enforce starts
//     from a true state.
//   - The denial cache never refuses what Redis would admit: an enforcing
//     refusal is remembered until the moment one event fits again, counted
//     from when the request was sent (no later than Redis's now), and only
//     for the rule parameters it was learned under. Observe rules never
//     use it.
//   - Never a hang: the Limiter has its own connection pool whose dial,
//     pool-wait, write and read timeouts are Config.Timeout (100ms by
//     default), with no retries (a replayed script could count a request
//     twice). Its connections skip go-redis's per-command health check
//     (a syscall): a connection found closed (a Redis restart) fails its
//     one decision, which is made locally without a hold-off, and the pool
//     redials.
//   - Redis unreachable (an error or a timeout): each rule follows its
//     FailMode: FailOpen decides with a per-instance token bucket
//     (golang.org/x/time/rate) at the rule's rate, so k instances admit up
//     to k times the rate; FailClosed refuses (Decision.Err is then
//     errs.Unavailable, not QuotaExceeded). The decision says Fallback,
//     and for Config.HoldOff (1s) the instance decides locally without
//     trying Redis, so an outage costs one timeout per instance and
//     hold-off rather than one per request.
//   - Redis errors are never returned: a decision is always made. Allow
//     returns errs.Invalid for bad rules or cost, and the context's error
//     when the caller gave up.
//
// All counter keys of one request go to one script, so they must live on
// one Redis node: Redis Cluster would need a hash tag per request, which
// Atrium (one Redis) does not use.
//
// # Headers and errors
//
// WriteHeaders writes RateLimit-Policy and RateLimit
// (draft-ietf-httpapi-ratelimit-headers) for the most restrictive
// enforcing rule, and Retry-After on refusal; Decision.Err gives the
// errs.QuotaExceeded error (rule, limit, current use,
// retry_after_seconds) that the HTTP edge renders as 429.
package quota

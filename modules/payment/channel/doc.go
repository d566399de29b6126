// Package channel is the bank channel layer: a Channel (pay, refund, query
// status) and an HTTP implementation against the simulated bank
// (modules/payment/simbank), with failsafe-go's bulkhead, retry, circuit
// breaker and timeout around every call.
//
// The payment module routes payments over these channels; its Channels set
// (modules/payment/channels.go) makes SetBreakerMode an operator switch for
// the whole cluster and adds up every instance's Stats for the dashboard.
//
// Policies, outermost first, as failsafe.With(bulkhead, retry, breaker, timeout):
//
//   - Bulkhead: at most MaxConcurrent calls (a call holds its permit through
//     its retries); excess is refused at once, never queued, with an
//     errs.Unavailable error carrying retry_after_seconds.
//   - Retry: at most MaxAttempts attempts, exponential backoff with jitter.
//     Query retries on any transient failure (transport error, timeout, 5xx,
//     in_progress). Refund carries its own id, which the bank deduplicates, so
//     it retries on the same failures, timeouts included. Pay also carries its
//     id, but retries only failures that prove the bank did not process the
//     attempt (connection refused, 503 unavailable, 409 in_progress): after a
//     timeout the payment is in doubt and is resolved by Query, as a POS
//     terminal asks for a transaction's status instead of paying again. This
//     keeps the paying path's worst case to one timeout and does not rest
//     the no-double-charge guarantee on the bank's idempotency alone.
//     An open breaker aborts retrying.
//   - Circuit breaker (per attempt): opens when at least BreakerMinCalls
//     attempts in BreakerPeriod fail at BreakerFailureRate or more. Failures
//     are transport errors, timeouts, 5xx answers and slow calls: an answer
//     that took longer than SlowCall counts as a failure. Business answers
//     (declined, not found, refund too large) are successes. After BreakerDelay
//     it lets probes through and closes after BreakerSuccesses successes.
//     An operator can force it open (every call refused at once, until
//     released) or closed (breaker bypassed); SetBreakerMode.
//   - Timeout (per attempt): p99 × 1.5 of the latencies of recent answered
//     attempts (a ring of Window samples), clamped to [TimeoutFloor,
//     TimeoutCeiling], recomputed every 8 answers; InitialTimeout until
//     MinSamples answers are in.
//     Timed-out attempts do not enter the window (their latency is unknown),
//     so a small rate of hangs cannot ratchet the timeout up to the ceiling;
//     the price is that a bank that becomes slower than the timeout on every
//     call is not learnt: it times out, the breaker opens, an operator acts.
//
// Outcomes: Pay never reports "failed" unless the bank said so. A timeout, a
// transport error after the request may have been sent, or an unexpected
// answer yields StatusInDoubt; the caller resolves it with Query. Errors are
// *errs.Error: Unavailable (breaker open, bulkhead full, bank unavailable and
// nothing sent or processed; retry_after_seconds set), Conflict or Invalid
// (the bank refused the request as such), NotFound (Refund of an unknown charge).
package channel

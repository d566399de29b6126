// Package simbank is a simulated acquiring bank: an HTTP server that charges
// and refunds with its own idempotency and its own record of money moved, so
// that tests and load runs have a witness outside Atrium. `atrium simbank`
// serves it as a separate process.
//
// This is the first slice of the payments issue: no payment API, database
// record or recovery worker uses it yet; only modules/payment/channel (the
// bank channel client) and the tests talk to it.
//
// Endpoints (JSON bodies; errors are {"code": ..., "message": ...}):
//
//	POST /v1/charges        {"id","amount","currency","source","merchant"}
//	POST /v1/refunds        {"id","charge_id","amount"}
//	GET  /v1/charges/{id}   the charge's status, refunded total and refund ids
//	GET  /v1/ledger         every charge and refund that moved money, and request counts
//	GET  /admin/faults      the current fault settings
//	POST /admin/faults      change latency, error rate, timeout rate, hang time or outage
//
// Invariants:
//
//   - The request id is the idempotency key. A charge or refund with an id
//     already completed replays the recorded answer (status and body); the same
//     id with a different body is 422 idempotency_mismatch; the same id while
//     the first request is still being processed is 409 in_progress.
//   - An injected error (error rate) or an outage answers 503 unavailable and
//     processes nothing, records nothing: a retry with the same id is safe and
//     may succeed.
//   - An injected timeout (timeout rate) processes and records the request,
//     then holds the response for the hang time (or until the client goes
//     away): the client's "in doubt" case. A later query or replay shows what
//     happened.
//   - The sum of a charge's refunds never exceeds its amount, whatever the
//     concurrency: refunds are checked and recorded under one mutex.
//   - A charge whose source is "tok_decline" is declined (status failed,
//     nothing charged); any other source succeeds.
//
// Latency is log-normal, fitted to the configured p50 and p99, and drawn from
// a seedable generator so tests are reproducible. State is in memory only.
package simbank

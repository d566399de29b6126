package payment

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/jackc/pgx/v5"

	"github.com/atriumhq/atrium/platform/errs"
	"github.com/atriumhq/atrium/platform/postgres"
	"github.com/atriumhq/atrium/platform/principal"
	"github.com/atriumhq/atrium/platform/testenv"
)

// feedReader pages through the feed as a subscriber does, remembering how
// often it was handed each subject.
type feedReader struct {
	read   func(ctx context.Context, after string, limit int) (*Feed, error)
	ctx    context.Context
	cursor string
	seen   map[string]int
	last   [2]int64 // id and position of the last event, to check the order
}

func newFeedReader(ctx context.Context, read func(context.Context, string, int) (*Feed, error)) *feedReader {
	return &feedReader{read: read, ctx: ctx, seen: map[string]int{}}
}

// poll reads one page and returns how many events it held.
func (r *feedReader) poll(t *testing.T, limit int) (int, bool) {
	t.Helper()
	f, err := r.read(r.ctx, r.cursor, limit)
	if err != nil {
		t.Fatalf("Events: %v", err)
	}
	if f.NextCursor == "" {
		t.Fatal("next_cursor is empty")
	}
	if len(f.Events) == 0 && r.cursor != "" && f.NextCursor != r.cursor {
		t.Fatalf("an empty page moved the cursor from %q to %q", r.cursor, f.NextCursor)
	}
	if len(f.Events) > limit {
		t.Fatalf("%d events for limit %d", len(f.Events), limit)
	}
	for _, e := range f.Events {
		r.seen[e.Subject]++
	}
	r.cursor = f.NextCursor
	return len(f.Events), f.HasMore
}

// feedEvent is an event a writer committed.
type feedEvent struct {
	tenant string
	live   bool
	commit int64 // order of commits, as the writer saw them
}

func TestEventFeedHandsOutEveryCommittedEventExactlyOnce(t *testing.T) {
	e := newOpsEnv(t, testCardKey1)
	tenantA, tenantB := e.tenant(t), e.tenant(t)

	const writers, txsPerWriter = 12, 20
	var (
		mu        sync.Mutex
		committed = map[string]feedEvent{} // by subject
		aborted   = map[string]bool{}
		commits   atomic.Int64
		wg        sync.WaitGroup
		done      atomic.Bool
	)
	errRollback := errors.New("roll back")
	for w := range writers {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w), 7))
			tenant := tenantA
			if w%3 == 2 {
				tenant = tenantB
			}
			for i := range txsPerWriter {
				// One or two events a transaction; now and then test-mode
				// ones, and some transactions roll back.
				var subjects []string
				live := rng.IntN(5) != 0
				rollback := rng.IntN(8) == 0
				err := e.tx.Do(postgres.WithTenant(context.Background(), tenant), "test.event", func(tx pgx.Tx) error {
					b := &pgx.Batch{}
					for k := range 1 + rng.IntN(2) {
						subj := fmt.Sprintf("payment:w%d-t%d-e%d", w, i, k)
						subjects = append(subjects, subj)
						queueEvent(b, tenant, "payment.succeeded", subj, live, map[string]any{"writer": w, "tx": i})
					}
					if err := runBatch(context.Background(), tx, b); err != nil {
						return err
					}
					// Hold the transaction open after the insert took its
					// id, so that commits land out of id order.
					time.Sleep(time.Duration(rng.IntN(15000)) * time.Microsecond)
					if rollback {
						return errRollback
					}
					return nil
				})
				mu.Lock()
				switch {
				case err == nil:
					n := commits.Add(1)
					for _, s := range subjects {
						committed[s] = feedEvent{tenant: tenant, live: live, commit: n}
					}
				case errors.Is(err, errRollback):
					for _, s := range subjects {
						aborted[s] = true
					}
				default:
					t.Errorf("writer %d: %v", w, err)
				}
				mu.Unlock()
			}
		})
	}
	go func() { wg.Wait(); done.Store(true) }()

	// Readers poll while the writers write: tenant A live, tenant B live,
	// and tenant A's test-mode events, each with a small page.
	readers := map[string]*feedReader{
		"A live": newFeedReader(userCtx(tenantA, "payments:read"), e.s.Events),
		"B live": newFeedReader(userCtx(tenantB, "payments:read"), e.s.Events),
		"A test": newFeedReader(userCtx(tenantA, "payments:read"), e.s.TestEvents),
	}
	want := func(name string, ev feedEvent) bool {
		switch name {
		case "A live":
			return ev.tenant == tenantA && ev.live
		case "B live":
			return ev.tenant == tenantB && ev.live
		}
		return ev.tenant == tenantA && !ev.live
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		finished := done.Load()
		quiet := true
		for _, r := range readers {
			if n, more := r.poll(t, 7); n > 0 || more {
				quiet = false
			}
		}
		if finished && quiet {
			// Every writer is done; stop once each reader has all it
			// should (another test's transaction on the server may hold
			// the feed back for a moment).
			mu.Lock()
			complete := true
			for name, r := range readers {
				for s, ev := range committed {
					if want(name, ev) && r.seen[s] == 0 {
						complete = false
					}
				}
			}
			mu.Unlock()
			if complete || time.Now().After(deadline) {
				break
			}
		}
		time.Sleep(time.Duration(rand.IntN(3)) * time.Millisecond)
	}
	// One more page each: nothing may come twice, even late.
	for _, r := range readers {
		r.poll(t, 1000)
	}

	for name, r := range readers {
		var got int
		for s, ev := range committed {
			if want(name, ev) {
				got++
				if r.seen[s] != 1 {
					t.Errorf("%s: committed event %s handed out %d times, want once", name, s, r.seen[s])
				}
			}
		}
		for s, n := range r.seen {
			ev, ok := committed[s]
			switch {
			case aborted[s]:
				t.Errorf("%s: saw %s of a rolled-back transaction", name, s)
			case !ok:
				t.Errorf("%s: saw %s, which no writer committed", name, s)
			case !want(name, ev):
				t.Errorf("%s: saw %s (tenant %s, live %v), which is not in its scope", name, s, ev.tenant, ev.live)
			case n > 1:
				t.Errorf("%s: %s handed out %d times", name, s, n)
			}
		}
		if got == 0 {
			t.Errorf("%s: no events to read: the test is not testing", name)
		}
	}
	if len(aborted) == 0 {
		t.Error("no transaction rolled back: the test is not testing")
	}

	// The writers' commits really did land out of id order (so a reader
	// paging by id > last would have skipped events).
	ids := map[string]int64{}
	rows, _ := e.owner.Query(context.Background(), `SELECT subject, id FROM events`)
	for rows.Next() {
		var s string
		var id int64
		if err := rows.Scan(&s, &id); err != nil {
			t.Fatal(err)
		}
		ids[s] = id
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	type pair struct{ id, commit int64 }
	var order []pair
	for s, ev := range committed {
		order = append(order, pair{ids[s], ev.commit})
	}
	sort.Slice(order, func(i, j int) bool { return order[i].id < order[j].id })
	inversions, maxCommit := 0, int64(0)
	for _, p := range order {
		if p.commit < maxCommit {
			inversions++
		}
		maxCommit = max(maxCommit, p.commit)
	}
	if inversions == 0 {
		t.Error("every transaction committed in id order: the test did not exercise out-of-order commits")
	}
	t.Logf("%d committed events, %d committed after a higher id", len(committed), inversions)

	// A platform administrator reads every tenant's live events.
	admin := newFeedReader(userCtx("", "payments:read"), e.s.Events)
	for {
		if n, more := admin.poll(t, 1000); n == 0 && !more {
			break
		}
	}
	for s, ev := range committed {
		if ev.live && admin.seen[s] != 1 {
			t.Errorf("platform administrator: %s handed out %d times, want once", s, admin.seen[s])
		}
	}
}

// TestEventFeedWaitsForEarlierTransactions: an event committed behind a
// transaction that is still open is held back until that one ends, and
// then both come in transaction order.
func TestEventFeedWaitsForEarlierTransactions(t *testing.T) {
	e := newOpsEnv(t, testCardKey1)
	tenant := e.tenant(t)
	ctx := postgres.WithTenant(context.Background(), tenant)
	insert := func(tx pgx.Tx, subj string) {
		b := &pgx.Batch{}
		queueEvent(b, tenant, "payment.succeeded", subj, true, map[string]string{"s": subj})
		if err := runBatch(ctx, tx, b); err != nil {
			t.Error(err)
		}
	}
	first, second := make(chan struct{}), make(chan struct{})
	released := make(chan error)
	go func() {
		released <- e.tx.Do(ctx, "test.slow", func(tx pgx.Tx) error {
			insert(tx, "payment:first")
			close(first)
			<-second
			return nil
		})
	}()
	<-first
	var once sync.Once
	release := func() { once.Do(func() { close(second) }) }
	defer release() // a failing test must not leave the transaction (and its connection) open
	if err := e.tx.Do(ctx, "test.fast", func(tx pgx.Tx) error { insert(tx, "payment:second"); return nil }); err != nil {
		t.Fatal(err)
	}
	f, err := e.s.Events(ctx, "", 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(f.Events) != 0 {
		t.Fatalf("while the first transaction is open the feed handed out %v", subjects(f.Events))
	}
	cursor := f.NextCursor
	release()
	if err := <-released; err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, "both events in the feed", func() bool {
		f, err = e.s.Events(ctx, cursor, 10)
		return err == nil && len(f.Events) == 2
	})
	if got := subjects(f.Events); got[0] != "payment:first" || got[1] != "payment:second" {
		t.Fatalf("feed order %v, want the first transaction's event first", got)
	}
	if e0 := f.Events[0]; e0.Type != "payment.succeeded" || !e0.Livemode || string(e0.Data) != `{"s": "payment:first"}` || e0.CreatedAt.IsZero() {
		t.Errorf("event %+v", e0)
	}
}

func subjects(es []Event) []string {
	out := make([]string, len(es))
	for i, e := range es {
		out[i] = e.Subject
	}
	return out
}

func TestEventFeedPagesAndRefusesBadInput(t *testing.T) {
	e := newOpsEnv(t, testCardKey1)
	tenant := e.tenant(t)
	for i := range 5 {
		e.exec(t, `INSERT INTO events (tenant_id, type, subject, livemode, data) VALUES ($1, 'payment.failed', $2, true, '{}')`,
			tenant, fmt.Sprintf("payment:%d", i))
	}
	ctx := userCtx(tenant, "payments:read")
	var f *Feed
	testenv.Eventually(t, 10*time.Second, "the events in the feed", func() bool {
		var err error
		f, err = e.s.Events(ctx, "", 2)
		return err == nil && len(f.Events) == 2
	})
	if !f.HasMore || f.Events[0].Subject != "payment:0" {
		t.Fatalf("first page %v has_more %v", subjects(f.Events), f.HasMore)
	}
	if f, _ = e.s.Events(ctx, f.NextCursor, 0); len(f.Events) != 3 || f.HasMore || f.Events[0].Subject != "payment:2" {
		t.Fatalf("second page %v has_more %v", subjects(f.Events), f.HasMore)
	}
	end := f.NextCursor
	if f, _ = e.s.Events(ctx, end, 0); len(f.Events) != 0 || f.NextCursor != end {
		t.Fatalf("at the end: %v, cursor %q (want %q)", subjects(f.Events), f.NextCursor, end)
	}
	// Another tenant's user, and the test-mode feed, see none of them.
	if f, _ = e.s.Events(userCtx(e.tenant(t), "payments:read"), "", 0); len(f.Events) != 0 || f.NextCursor == "" {
		t.Fatalf("other tenant: %v, cursor %q", subjects(f.Events), f.NextCursor)
	}
	if f, _ = e.s.TestEvents(ctx, "", 0); len(f.Events) != 0 {
		t.Fatalf("test mode: %v", subjects(f.Events))
	}

	b64 := func(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }
	for _, tc := range []struct {
		name, after string
		limit       int
		field       string
	}{
		{"not base64", "!!", 0, "after"},
		{"not a cursor", b64("hello"), 0, "after"},
		{"other version", b64("e2.1.1"), 0, "after"},
		{"bad xid", b64("e1.x.1"), 0, "after"},
		{"negative id", b64("e1.1.-1"), 0, "after"},
		{"extra part", b64("e1.1.1.1"), 0, "after"},
		{"negative limit", "", -1, "limit"},
		{"limit too large", "", 1001, "limit"},
	} {
		_, err := e.s.Events(ctx, tc.after, tc.limit)
		if x := errs.As(err); x.Code != errs.Invalid || len(x.Fields) != 1 || x.Fields[0].Field != tc.field {
			t.Errorf("%s: %v, want an invalid %s", tc.name, err, tc.field)
		}
	}
	term := principal.With(context.Background(), &principal.Principal{Kind: principal.Terminal, ID: "t1", TenantID: tenant,
		Permissions: []string{"payments:read"}})
	if _, err := e.s.Events(term, "", 0); errs.CodeOf(err) != errs.Forbidden {
		t.Errorf("terminal: %v, want forbidden", err)
	}
}

func TestEventFeedHTTP(t *testing.T) {
	e := newOpsEnv(t, testCardKey1)
	tenant := e.tenant(t)
	e.exec(t, `INSERT INTO events (tenant_id, type, subject, livemode, data) VALUES
		($1, 'payment.succeeded', 'payment:live', true, '{"amount": 100}'),
		($1, 'payment.succeeded', 'payment:test', false, '{"amount": 200}')`, tenant)
	r := chi.NewRouter()
	r.Use(func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
			p := principal.From(userCtx(tenant, "payments:read"))
			next.ServeHTTP(w, req.WithContext(principal.With(req.Context(), p)))
		})
	})
	e.s.Register(r)
	get := func(query string) (int, map[string]any) {
		rec := httptest.NewRecorder()
		r.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/events"+query, nil))
		var body map[string]any
		if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
			t.Fatalf("%s: %v: %s", query, err, rec.Body.String())
		}
		return rec.Code, body
	}
	for _, tc := range []struct{ query, subject string }{{"", "payment:live"}, {"?mode=test&limit=5", "payment:test"}} {
		var body map[string]any
		testenv.Eventually(t, 10*time.Second, "an event at "+tc.query, func() bool {
			var code int
			code, body = get(tc.query)
			evs, _ := body["events"].([]any)
			return code == http.StatusOK && len(evs) == 1
		})
		ev := body["events"].([]any)[0].(map[string]any)
		if ev["subject"] != tc.subject || ev["data"].(map[string]any)["amount"] == nil || body["next_cursor"] == "" || body["has_more"] != false {
			t.Errorf("%s: %v", tc.query, body)
		}
		for _, k := range []string{"id", "type", "subject", "livemode", "data", "created_at"} {
			if _, ok := ev[k]; !ok {
				t.Errorf("%s: event lacks %s: %v", tc.query, k, ev)
			}
		}
	}
	for _, tc := range []struct{ query, field string }{
		{"?limit=0", "limit"}, {"?limit=abc", "limit"}, {"?limit=1001", "limit"}, {"?mode=sandbox", "mode"}, {"?after=zzz", "after"},
	} {
		code, body := get(tc.query)
		if code != http.StatusBadRequest || !containsField(body, tc.field) {
			t.Errorf("%s: %d %v, want 400 naming %s", tc.query, code, body, tc.field)
		}
	}
}

// containsField reports whether a problem body's errors name field.
func containsField(body map[string]any, field string) bool {
	list, _ := body["errors"].([]any)
	for _, x := range list {
		if m, _ := x.(map[string]any); m["field"] == field {
			return true
		}
	}
	return false
}

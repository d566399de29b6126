package payment

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/atriumhq/atrium/platform/errs"
	"github.com/atriumhq/atrium/platform/httpx"
	"github.com/atriumhq/atrium/platform/postgres"
	"github.com/atriumhq/atrium/platform/principal"
)

// The event feed is the outbox read by pulling: every state change of a
// payment or refund inserts an events row in the transaction of the change
// (queueEvent), and subscribers (points, settlement, merchant views,
// webhooks) page through GET /events with a cursor; the payment path never
// waits for them.
//
// Paging by "id > last" would skip rows: ids come from a sequence when a
// row is inserted, but rows become visible when their transaction commits,
// and transactions commit in any order. A reader that has seen id 11 while
// the transaction holding id 10 is still open moves past 10 for good.
// Instead each event records its transaction id (xid), and the feed hands
// out only events whose xid is below the xmin of the reader's snapshot,
// pg_snapshot_xmin(pg_current_snapshot()): every transaction below that is
// over (committed or rolled back), and every transaction still running or
// yet to start has an xid at or above it. Ordered by (xid, id), the feed
// therefore only ever grows behind the cursor's position, never before it:
// each committed event is handed out exactly once, in the same order to
// every reader.
//
// The cost: xmin is the oldest transaction running anywhere on the
// PostgreSQL server (any database, any client, prepared transactions
// included), so one long transaction holds the whole feed back until it
// ends. Events are delayed, never lost or reordered. Atrium's own
// transactions are short and the long-transaction alarm
// (atrium_db_long_transactions_total) reports any that is not; for other
// clients, watch pg_stat_activity.xact_start (docs/operations.md).

// Event is one event of the feed.
type Event struct {
	ID        int64           `json:"id"`
	Type      string          `json:"type"`    // e.g. payment.succeeded, refund.failed
	Subject   string          `json:"subject"` // e.g. payment:<id>, refund:<id>
	Livemode  bool            `json:"livemode"`
	Data      json.RawMessage `json:"data"` // the payment or refund as the API shows it
	CreatedAt time.Time       `json:"created_at"`
}

// Feed is one page of the event feed.
type Feed struct {
	Events []Event `json:"events"`
	// NextCursor is where the next call continues (its after); always set,
	// and the cursor given when there is nothing new.
	NextCursor string `json:"next_cursor"`
	// HasMore reports more events ready now: call again at once rather
	// than waiting for the next poll.
	HasMore bool `json:"has_more"`
}

// Feed limits.
const (
	defaultFeedLimit = 100
	maxFeedLimit     = 1000
)

// feedPos is a position in the feed: the (xid, id) of the last event
// handed out; the zero value is the start.
type feedPos struct {
	xid uint64
	id  int64
}

// encode is the opaque cursor of p.
func (p feedPos) encode() string {
	return base64.RawURLEncoding.EncodeToString([]byte("e1." + strconv.FormatUint(p.xid, 10) + "." + strconv.FormatInt(p.id, 10)))
}

// decodeCursor reads a cursor made by encode; "" is the start.
func decodeCursor(s string) (feedPos, error) {
	if s == "" {
		return feedPos{}, nil
	}
	bad := errs.Field("after", "is not a cursor from this feed: pass next_cursor of the previous page, or nothing to start from the beginning")
	raw, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil {
		return feedPos{}, bad
	}
	parts := strings.Split(string(raw), ".")
	if len(parts) != 3 || parts[0] != "e1" {
		return feedPos{}, bad
	}
	xid, err1 := strconv.ParseUint(parts[1], 10, 64)
	id, err2 := strconv.ParseInt(parts[2], 10, 64)
	if err1 != nil || err2 != nil || id < 0 {
		return feedPos{}, bad
	}
	return feedPos{xid: xid, id: id}, nil
}

// Events returns the live events of the caller's scope (a tenant's, or
// every tenant's for a platform administrator) after the cursor after
// ("" for the start), at most limit of them (0 for 100; at most 1000), in
// commit-safe order: see the comment at the top of this file. It returns
// invalid (field "after" or "limit") for a bad cursor or limit, and
// forbidden for a terminal, which sees only its own payments.
func (s *Service) Events(ctx context.Context, after string, limit int) (*Feed, error) {
	return s.events(ctx, after, limit, true)
}

// TestEvents is Events for test-mode events (livemode false).
func (s *Service) TestEvents(ctx context.Context, after string, limit int) (*Feed, error) {
	return s.events(ctx, after, limit, false)
}

func (s *Service) events(ctx context.Context, after string, limit int, live bool) (*Feed, error) {
	if p := principal.From(ctx); p != nil && p.Kind == principal.Terminal {
		return nil, errs.E(errs.Forbidden, "the event feed is the tenant's; a terminal reads only its own payments")
	}
	pos, err := decodeCursor(after)
	if err != nil {
		return nil, err
	}
	switch {
	case limit == 0:
		limit = defaultFeedLimit
	case limit < 1 || limit > maxFeedLimit:
		return nil, errs.Field("limit", "must be 1 to %d", maxFeedLimit)
	}
	// Row-level security already limits the rows to the scope; naming the
	// tenant as well lets the planner use events_feed (tenant_id, xid, id)
	// instead of filtering every tenant's events.
	q := `SELECT id, xid::text AS xid_text, type, subject, livemode, data, created_at FROM events
		WHERE (xid, id) > ($1::text::xid8, $2) AND xid < pg_snapshot_xmin(pg_current_snapshot()) AND livemode = $3`
	args := []any{strconv.FormatUint(pos.xid, 10), pos.id, live, limit + 1}
	if tenant, ok := postgres.TenantOf(ctx); ok {
		q += ` AND tenant_id = $5`
		args = append(args, tenant)
	}
	// Qualified: a bare "xid" could name the text output column, and text
	// order is not xid order.
	q += ` ORDER BY events.xid, events.id LIMIT $4`
	feed := &Feed{Events: []Event{}}
	last := pos
	err = s.tx.Do(ctx, "payment.events", func(tx pgx.Tx) error {
		rows, _ := tx.Query(ctx, q, args...)
		defer rows.Close()
		for rows.Next() {
			var e Event
			var xid string
			if err := rows.Scan(&e.ID, &xid, &e.Type, &e.Subject, &e.Livemode, &e.Data, &e.CreatedAt); err != nil {
				return err
			}
			if len(feed.Events) == limit {
				feed.HasMore = true
				break
			}
			x, err := strconv.ParseUint(xid, 10, 64)
			if err != nil {
				return err
			}
			feed.Events = append(feed.Events, e)
			last = feedPos{xid: x, id: e.ID}
		}
		return rows.Err()
	})
	if err != nil {
		return nil, err
	}
	feed.NextCursor = last.encode()
	if len(feed.Events) == 0 && after != "" {
		feed.NextCursor = after
	}
	return feed, nil
}

func (s *Service) handleEvents(w http.ResponseWriter, r *http.Request) error {
	q := r.URL.Query()
	limit := defaultFeedLimit
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > maxFeedLimit {
			return errs.Field("limit", "must be 1 to %d", maxFeedLimit)
		}
		limit = n
	}
	var feed *Feed
	var err error
	switch q.Get("mode") {
	case "", "live":
		feed, err = s.Events(r.Context(), q.Get("after"), limit)
	case "test":
		feed, err = s.TestEvents(r.Context(), q.Get("after"), limit)
	default:
		return errs.Field("mode", "must be live or test")
	}
	if err != nil {
		return err
	}
	httpx.JSON(w, http.StatusOK, feed)
	return nil
}

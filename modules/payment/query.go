package payment

import (
	"context"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/atriumhq/atrium/platform/errs"
	"github.com/atriumhq/atrium/platform/postgres"
	"github.com/atriumhq/atrium/platform/principal"
)

// Get returns a payment with its timeline and refunds. A terminal sees
// only the payments it took: this is how a terminal that timed out learns
// the outcome instead of paying again.
func (s *Service) Get(ctx context.Context, id string) (*Payment, error) {
	if _, err := uuid.Parse(id); err != nil {
		return nil, errs.E(errs.NotFound, "no such payment")
	}
	var p *Payment
	err := s.tx.Do(ctx, "payment.get", func(tx pgx.Tx) error {
		var err error
		if p, err = scanPayment(tx.QueryRow(ctx, `SELECT `+paymentCols+` FROM payments WHERE id = $1`, id)); err != nil {
			return err
		}
		if pr := principal.From(ctx); pr != nil && pr.Kind == principal.Terminal && pr.ID != p.TerminalID {
			return pgx.ErrNoRows
		}
		rows, _ := tx.Query(ctx, `SELECT status, COALESCE(refund_id::text, ''), COALESCE(detail, ''), at
			FROM payment_transitions WHERE payment_id = $1 ORDER BY id`, id)
		if p.Timeline, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (Transition, error) {
			var t Transition
			return t, r.Scan(&t.Status, &t.RefundID, &t.Detail, &t.At)
		}); err != nil {
			return err
		}
		rows, _ = tx.Query(ctx, `SELECT `+refundCols+` FROM refunds WHERE payment_id = $1 ORDER BY id`, id)
		p.Refunds, err = pgx.CollectRows(rows, rowTo(scanRefund))
		return err
	})
	if postgres.IsNoRows(err) {
		return nil, errs.E(errs.NotFound, "no such payment")
	}
	return p, err
}

// Filter selects payments for List. Zero members do not filter.
type Filter struct {
	Status     string
	From, To   time.Time
	TerminalID string
	MerchantID string
	MinAmount  int64
	MaxAmount  int64
	OrderNo    string
	// Test lists test-mode payments instead of live ones.
	Test bool
	// After is the cursor: the last id of the previous page.
	After string
	Limit int
}

// ParseFilter reads a Filter from query parameters, naming the bad one.
func ParseFilter(get func(string) string) (Filter, error) {
	f := Filter{Status: get("status"), TerminalID: get("terminal_id"), MerchantID: get("merchant_id"),
		OrderNo: strings.TrimSpace(get("order_no")), After: get("cursor"), Limit: 50}
	if len(f.OrderNo) > 64 || !cleanText(f.OrderNo) {
		return f, errs.Field("order_no", "must be at most 64 characters, without control characters")
	}
	switch f.Status {
	case "", StatusProcessing, StatusSucceeded, StatusFailed, StatusInDoubt, StatusPartiallyRefunded, StatusRefunded, StatusVoided:
	default:
		return f, errs.Field("status", "unknown status %q", f.Status)
	}
	for _, u := range []struct{ name, v string }{{"terminal_id", f.TerminalID}, {"merchant_id", f.MerchantID}, {"cursor", f.After}} {
		if u.v != "" {
			if _, err := uuid.Parse(u.v); err != nil {
				return f, errs.Field(u.name, "must be an id")
			}
		}
	}
	for _, t := range []struct {
		name string
		dst  *time.Time
	}{{"from", &f.From}, {"to", &f.To}} {
		if v := get(t.name); v != "" {
			ts, err := time.Parse(time.RFC3339, v)
			if err != nil {
				if d, err2 := time.Parse("2006-01-02", v); err2 == nil {
					ts, err = d, nil
				}
			}
			if err != nil {
				return f, errs.Field(t.name, "must be an RFC 3339 time or a date (2006-01-02)")
			}
			*t.dst = ts
		}
	}
	for _, a := range []struct {
		name string
		dst  *int64
	}{{"min_amount", &f.MinAmount}, {"max_amount", &f.MaxAmount}} {
		if v := get(a.name); v != "" {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil || n < 0 {
				return f, errs.Field(a.name, "must be a non-negative integer (minor units)")
			}
			*a.dst = n
		}
	}
	if v := get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 1000 {
			return f, errs.Field("limit", "must be 1 to 1000")
		}
		f.Limit = n
	}
	switch get("mode") {
	case "", "live":
	case "test":
		f.Test = true
	default:
		return f, errs.Field("mode", "must be live or test")
	}
	return f, nil
}

// Page is one page of payments, newest first.
type Page struct {
	Payments []Payment `json:"payments"`
	// NextCursor fetches the next (older) page; empty on the last.
	NextCursor string `json:"next_cursor,omitempty"`
}

// List lists the payments in the caller's scope matching f, newest first,
// by keyset pagination on the time-ordered id.
func (s *Service) List(ctx context.Context, f Filter) (*Page, error) {
	if f.Limit <= 0 {
		f.Limit = 50
	}
	var where []string
	var args []any
	add := func(cond string, v any) {
		args = append(args, v)
		where = append(where, strings.ReplaceAll(cond, "?", "$"+strconv.Itoa(len(args))))
	}
	add("livemode = ?", !f.Test)
	if pr := principal.From(ctx); pr != nil && pr.Kind == principal.Terminal {
		add("terminal_id = ?", pr.ID)
	}
	if f.Status != "" {
		add("status = ?", f.Status)
	}
	if !f.From.IsZero() {
		add("created_at >= ?", f.From)
	}
	if !f.To.IsZero() {
		add("created_at < ?", f.To)
	}
	if f.TerminalID != "" {
		add("terminal_id = ?", f.TerminalID)
	}
	if f.MerchantID != "" {
		add("merchant_id = ?", f.MerchantID)
	}
	if f.MinAmount > 0 {
		add("payable >= ?", f.MinAmount)
	}
	if f.MaxAmount > 0 {
		add("payable <= ?", f.MaxAmount)
	}
	if f.OrderNo != "" {
		add("order_no = ?", f.OrderNo)
	}
	if f.After != "" {
		add("id < ?", f.After)
	}
	args = append(args, f.Limit+1)
	q := `SELECT ` + paymentCols + ` FROM payments WHERE ` + strings.Join(where, " AND ") +
		` ORDER BY id DESC LIMIT $` + strconv.Itoa(len(args))
	ps, err := postgres.Collect(ctx, s.tx, "payment.list", rowTo(scanPayment), q, args...)
	if err != nil {
		return nil, err
	}
	page := &Page{Payments: ps}
	if len(ps) > f.Limit {
		page.Payments = ps[:f.Limit]
		page.NextCursor = ps[f.Limit-1].ID
	}
	return page, nil
}

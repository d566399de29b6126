package quota

import (
	"context"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"

	"github.com/atriumhq/atrium/platform/errs"
	"github.com/atriumhq/atrium/platform/httpx"
	"github.com/atriumhq/atrium/platform/postgres"
	"github.com/atriumhq/atrium/platform/principal"
)

// MaxUsageDays is the longest range one usage query covers.
const MaxUsageDays = 366

// DefaultUsageDays is the range a usage query covers when it names none:
// the last 30 days, today included.
const DefaultUsageDays = 30

// UsageDay is one tenant's use on one UTC day.
type UsageDay struct {
	Day string `json:"day"`
	// Units is what PostgreSQL has recorded, the figure billing uses.
	Units map[string]int64 `json:"units"`
	// Provisional is what Redis has counted and not yet flushed (today and
	// yesterday only): it reaches Units within the flush interval, and is
	// lost if Redis loses its data first.
	Provisional map[string]int64 `json:"provisional,omitempty"`
}

// UsageReport is a tenant's use per day over a range of days.
type UsageReport struct {
	TenantID string `json:"tenant_id"`
	From     string `json:"from"`
	To       string `json:"to"`
	// Days lists the days with any use, oldest first.
	Days []UsageDay `json:"days"`
	// Totals sums Units (recorded use only) over the range.
	Totals map[string]int64 `json:"totals"`
	// ProvisionalUnavailable is set when Redis could not be read: the
	// report then shows recorded use only.
	ProvisionalUnavailable bool `json:"provisional_unavailable,omitempty"`
}

// UsageRange parses the from and to dates (YYYY-MM-DD, UTC, both
// included) of a usage query. Either may be empty: to defaults to today,
// from to DefaultUsageDays days before to.
func UsageRange(from, to string, now time.Time) (time.Time, time.Time, error) {
	end := now.UTC().Truncate(24 * time.Hour)
	if to != "" {
		t, err := time.Parse(time.DateOnly, to)
		if err != nil {
			return time.Time{}, time.Time{}, errs.Field("to", "must be a date such as 2026-11-02")
		}
		end = t
	}
	start := end.AddDate(0, 0, 1-DefaultUsageDays)
	if from != "" {
		t, err := time.Parse(time.DateOnly, from)
		if err != nil {
			return time.Time{}, time.Time{}, errs.Field("from", "must be a date such as 2026-11-02")
		}
		start = t
	}
	switch {
	case start.After(end):
		return time.Time{}, time.Time{}, errs.Field("from", "must not be after to")
	case end.Sub(start) >= MaxUsageDays*24*time.Hour:
		return time.Time{}, time.Time{}, errs.Field("to", "must be at most %d days after from", MaxUsageDays-1)
	}
	return start, end, nil
}

// Usage returns tenant's use per day from from to to (UTC dates, both
// included): what PostgreSQL has recorded, and what Redis has counted for
// today and yesterday and not flushed yet, as provisional. Tenant members
// see their own tenant; platform administrators with quotas:manage any.
//
// PostgreSQL is read before Redis, so a flush in between can hide counts
// for a moment but never shows them twice.
func (m *Meter) Usage(ctx context.Context, tenant string, from, to time.Time) (*UsageReport, error) {
	if err := m.quotas.visible(ctx, tenant); err != nil {
		return nil, err
	}
	from, to = from.UTC().Truncate(24*time.Hour), to.UTC().Truncate(24*time.Hour)
	type row struct {
		day    time.Time
		metric string
		units  int64
	}
	var rows []row
	err := m.tx.Do(postgres.WithTenant(ctx, tenant), "usage.read", func(tx pgx.Tx) error {
		var exists bool
		if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM tenants WHERE id = $1)`, tenant).Scan(&exists); err != nil {
			return err
		}
		if !exists {
			return errs.E(errs.NotFound, "no such tenant")
		}
		rs, err := tx.Query(ctx, `SELECT day, metric, units FROM usage_daily
			WHERE tenant_id = $1 AND day BETWEEN $2 AND $3 ORDER BY day, metric`, tenant, from, to)
		if err != nil {
			return err
		}
		rows, err = pgx.CollectRows(rs, func(r pgx.CollectableRow) (row, error) {
			var x row
			err := r.Scan(&x.day, &x.metric, &x.units)
			return x, err
		})
		return err
	})
	if err != nil {
		return nil, err
	}
	rep := &UsageReport{TenantID: tenant, From: from.Format(time.DateOnly), To: to.Format(time.DateOnly),
		Days: []UsageDay{}, Totals: map[string]int64{}}
	days := map[string]*UsageDay{}
	dayOf := func(d string) *UsageDay {
		if x, ok := days[d]; ok {
			return x
		}
		x := &UsageDay{Day: d, Units: map[string]int64{}}
		days[d] = x
		return x
	}
	for _, r := range rows {
		dayOf(r.day.Format(time.DateOnly)).Units[r.metric] += r.units
		rep.Totals[r.metric] += r.units
	}

	today := m.now().UTC().Truncate(24 * time.Hour)
	var live []string
	for _, d := range []time.Time{today.AddDate(0, 0, -1), today} {
		if !d.Before(from) && !d.After(to) {
			live = append(live, d.Format(time.DateOnly))
		}
	}
	if len(live) > 0 {
		cmds := make([]*redis.MapStringStringCmd, len(live))
		_, err := m.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			for i, d := range live {
				cmds[i] = p.HGetAll(ctx, m.liveKey(m.member(tenant, d)))
			}
			return nil
		})
		if err != nil {
			m.log.Warn().Ctx(ctx).Err(err).Msg("usage: Redis unreadable; showing recorded use only")
			rep.ProvisionalUnavailable = true
		} else {
			for i, d := range live {
				for metric, v := range cmds[i].Val() {
					n, err := strconv.ParseInt(v, 10, 64)
					if err != nil || n <= 0 {
						continue
					}
					x := dayOf(d)
					if x.Provisional == nil {
						x.Provisional = map[string]int64{}
					}
					x.Provisional[metric] += n
				}
			}
		}
	}
	for _, x := range days {
		rep.Days = append(rep.Days, *x)
	}
	sort.Slice(rep.Days, func(i, j int) bool { return rep.Days[i].Day < rep.Days[j].Day })
	return rep, nil
}

// TenantUsage is one tenant's recorded use over a range, summed.
type TenantUsage struct {
	TenantID string           `json:"tenant_id"`
	Name     string           `json:"name"`
	Totals   map[string]int64 `json:"totals"`
}

// Summary sums every tenant's recorded use from from to to, for platform
// administrators (quotas:manage, no tenant): the tenants with any use,
// by name.
func (m *Meter) Summary(ctx context.Context, from, to time.Time) ([]TenantUsage, error) {
	if err := principal.Check(ctx, "quotas:manage"); err != nil {
		return nil, err
	}
	if principal.From(ctx).TenantID != "" {
		return nil, errs.E(errs.Forbidden, "only platform administrators see every tenant's usage")
	}
	type row struct {
		id, name, metric string
		units            int64
	}
	rows, err := postgres.Collect(postgres.AllTenants(ctx, "platform"), m.tx, "usage.summary", func(r pgx.CollectableRow) (row, error) {
		var x row
		err := r.Scan(&x.id, &x.name, &x.metric, &x.units)
		return x, err
	}, `SELECT t.id::text, t.name, u.metric, sum(u.units)::bigint FROM usage_daily u JOIN tenants t ON t.id = u.tenant_id
		WHERE u.day BETWEEN $1 AND $2 GROUP BY t.id, t.name, u.metric ORDER BY lower(t.name), t.id, u.metric`,
		from.UTC().Truncate(24*time.Hour), to.UTC().Truncate(24*time.Hour))
	if err != nil {
		return nil, err
	}
	out := []TenantUsage{}
	for _, r := range rows {
		if len(out) == 0 || out[len(out)-1].TenantID != r.id {
			out = append(out, TenantUsage{TenantID: r.id, Name: r.name, Totals: map[string]int64{}})
		}
		out[len(out)-1].Totals[r.metric] += r.units
	}
	return out, nil
}

// CountAPICalls is middleware, placed after authentication, that counts
// every request under /api/v1, /oauth2 and /v1 made by a tenant's user or
// terminal as one api_calls. Anonymous requests and platform
// administrators (who belong to no tenant) are not counted; neither is
// the client-credentials token request, whose caller is authenticated by
// the token endpoint itself, after this middleware.
func (m *Meter) CountAPICalls(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if p := principal.From(r.Context()); p != nil && p.TenantID != "" && metered(r.URL.Path) {
			_ = m.Add(r.Context(), p.TenantID, APICalls, 1)
		}
		next.ServeHTTP(w, r)
	})
}

func metered(path string) bool {
	for _, prefix := range []string{"/api/v1", "/oauth2", "/v1"} {
		if rest, ok := strings.CutPrefix(path, prefix); ok && (rest == "" || rest[0] == '/') {
			return true
		}
	}
	return false
}

// Register adds the usage API to r (the /api/v1 router).
func (m *Meter) Register(r chi.Router) {
	h := httpx.Adapter{Log: m.log}
	signedIn := principal.Require(h.Error)
	r.With(signedIn).Get("/usage", h.H(m.handleOwnUsage))
	r.With(signedIn).Get("/tenants/{id}/usage", h.H(m.handleUsage))
}

func (m *Meter) handleOwnUsage(w http.ResponseWriter, r *http.Request) error {
	p := principal.From(r.Context())
	if p.TenantID == "" {
		return errs.E(errs.NotFound, "platform administrators belong to no tenant; use /api/v1/tenants/{id}/usage")
	}
	return m.writeUsage(w, r, p.TenantID)
}

func (m *Meter) handleUsage(w http.ResponseWriter, r *http.Request) error {
	return m.writeUsage(w, r, chi.URLParam(r, "id"))
}

func (m *Meter) writeUsage(w http.ResponseWriter, r *http.Request, tenant string) error {
	// Visibility first: a caller who may not see the tenant learns nothing,
	// not even whether its query parameters were valid.
	if err := m.quotas.visible(r.Context(), tenant); err != nil {
		return err
	}
	q := r.URL.Query()
	from, to, err := UsageRange(q.Get("from"), q.Get("to"), m.now())
	if err != nil {
		return err
	}
	rep, err := m.Usage(r.Context(), tenant, from, to)
	if err != nil {
		return err
	}
	httpx.JSON(w, http.StatusOK, rep)
	return nil
}

package payment

import (
	"cmp"
	"context"
	"encoding/json"
	"math"
	"slices"
	"time"

	"github.com/atriumhq/atrium/modules/payment/channel"
)

// The channel dashboard: every instance writes its channels' figures into
// the hash <prefix>:payment:channel-stats every second (field: the
// instance id; value: an instanceReport), and Dashboard adds up the fresh
// ones. The hash expires a minute after the last write, so it goes away
// with the last instance; a stopping instance deletes its own field. A
// report's age is read against the reader's clock, so instances' clocks
// must agree to well within statsMaxAge (NTP does).

// instanceReport is one instance's figures as written to Redis.
type instanceReport struct {
	Instance string          `json:"instance"`
	At       time.Time       `json:"at"`
	Channels []channel.Stats `json:"channels"`
}

func (c *Channels) statsKey() string { return c.redis.Key("payment", "channel-stats") }

// report is this instance's figures now.
func (c *Channels) report() instanceReport {
	r := instanceReport{Instance: c.instance, At: c.now(), Channels: make([]channel.Stats, len(c.list))}
	for i, nc := range c.list {
		r.Channels[i] = nc.ch.Stats()
		r.Channels[i].Name = nc.name
	}
	return r
}

// PublishStats writes this instance's figures to Redis now (Run does it
// every second).
func (c *Channels) PublishStats(ctx context.Context) error {
	if c.redis == nil {
		return nil
	}
	b, err := json.Marshal(c.report())
	if err != nil {
		return err
	}
	pipe := c.redis.Pipeline()
	pipe.HSet(ctx, c.statsKey(), c.instance, b)
	pipe.Expire(ctx, c.statsKey(), time.Minute)
	_, err = pipe.Exec(ctx)
	return err
}

// runStats reports every second until ctx ends, then removes this
// instance's report. A failure is logged when it starts and when it ends,
// not every second.
func (c *Channels) runStats(ctx context.Context) {
	t := time.NewTicker(statsEvery)
	defer t.Stop()
	failing := false
	for {
		err := c.PublishStats(ctx)
		switch {
		case err != nil && ctx.Err() == nil && !failing:
			failing = true
			c.log.Warn().Err(err).Msg("channel figures not written to Redis; other instances' dashboards leave this one out until they are")
		case err == nil && failing:
			failing = false
			c.log.Info().Msg("channel figures written to Redis again")
		}
		select {
		case <-ctx.Done():
			dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
			_ = c.redis.HDel(dctx, c.statsKey(), c.instance).Err()
			cancel()
			return
		case <-t.C:
		}
	}
}

// reports returns the fresh reports of every instance, this one's taken
// live rather than from Redis; partial is true when Redis could not be
// read, so only this instance's are in. Stale and unreadable reports are
// left out and deleted.
func (c *Channels) reports(ctx context.Context) (out []instanceReport, partial bool) {
	own := c.report()
	out = append(out, own)
	if c.redis == nil {
		return out, true
	}
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	all, err := c.redis.HGetAll(ctx, c.statsKey()).Result()
	if err != nil {
		c.log.Warn().Ctx(ctx).Err(err).Msg("channel figures of other instances unavailable; the dashboard shows this instance only")
		return out, true
	}
	var stale []string
	for inst, raw := range all {
		if inst == c.instance {
			continue
		}
		var r instanceReport
		if err := json.Unmarshal([]byte(raw), &r); err != nil || own.At.Sub(r.At) > statsMaxAge {
			stale = append(stale, inst)
			continue
		}
		r.Instance = inst
		out = append(out, r)
	}
	if len(stale) > 0 {
		_ = c.redis.HDel(ctx, c.statsKey(), stale...).Err()
	}
	slices.SortFunc(out, func(a, b instanceReport) int { return cmp.Compare(a.Instance, b.Instance) })
	return out, false
}

// ChannelView is one channel as the dashboard shows it, added up over
// every instance that reported in the last 5 s. Durations are in
// milliseconds.
type ChannelView struct {
	Name string `json:"name"`
	// Mode is the operator's setting for the cluster (PostgreSQL's; this
	// instance's when PostgreSQL does not answer), with who set it and when
	// (absent for a channel never switched).
	Mode          channel.BreakerMode `json:"mode"`
	ModeUpdatedBy string              `json:"mode_updated_by,omitempty"`
	ModeUpdatedAt *time.Time          `json:"mode_updated_at,omitempty"`
	// Breaker is "open" when any instance's breaker is open, else
	// "half-open" when any is, else "closed"; OpenOn counts the instances
	// whose breaker is open.
	Breaker string `json:"breaker"`
	OpenOn  int    `json:"open_on"`
	// Attempts are the attempts in the instances' recent windows;
	// SuccessRate is over all of them (so weighted by each instance's
	// attempts), null when there are none.
	Attempts    int      `json:"attempts"`
	SuccessRate *float64 `json:"success_rate"`
	// P50MS and P99MS are the largest of the instances' own quantiles.
	P50MS float64 `json:"p50_ms"`
	P99MS float64 `json:"p99_ms"`
	// The per-attempt timeout: the lowest and highest in force on the
	// instances, and the floor and ceiling it adapts between.
	TimeoutMinMS     float64 `json:"timeout_min_ms"`
	TimeoutMaxMS     float64 `json:"timeout_max_ms"`
	TimeoutFloorMS   float64 `json:"timeout_floor_ms"`
	TimeoutCeilingMS float64 `json:"timeout_ceiling_ms"`
	// InFlight calls against MaxConcurrent, both summed over the instances
	// (each instance has its own bulkhead).
	InFlight      int `json:"in_flight"`
	MaxConcurrent int `json:"max_concurrent"`
	// Refused counts the calls refused at once (bulkhead full, breaker
	// open, forced open) since each instance started.
	Refused int64 `json:"refused"`
	// Partial is true when Redis could not be read: the figures are this
	// instance's only.
	Partial   bool              `json:"partial"`
	Instances []ChannelInstance `json:"instances"`
}

// ChannelInstance is one instance's figures for a channel.
type ChannelInstance struct {
	Instance string `json:"instance"`
	// Self marks the instance that answered.
	Self          bool                `json:"self"`
	ReportedAt    time.Time           `json:"reported_at"`
	Breaker       string              `json:"breaker"`
	Mode          channel.BreakerMode `json:"mode"`
	Attempts      int                 `json:"attempts"`
	SuccessRate   *float64            `json:"success_rate"`
	P50MS         float64             `json:"p50_ms"`
	P99MS         float64             `json:"p99_ms"`
	TimeoutMS     float64             `json:"timeout_ms"`
	InFlight      int                 `json:"in_flight"`
	MaxConcurrent int                 `json:"max_concurrent"`
	Refused       int64               `json:"refused"`
}

// Dashboard returns every channel's figures across the cluster, in
// priority order (channels only other instances know of come last). It
// does not fail for want of Redis (the figures are then this instance's,
// marked partial) nor of PostgreSQL (the modes are then this instance's).
// Errors: unauthenticated, forbidden (no channels:manage, or a tenant's
// user).
func (c *Channels) Dashboard(ctx context.Context) ([]ChannelView, error) {
	if err := canManage(ctx); err != nil {
		return nil, err
	}
	reports, partial := c.reports(ctx)
	var modes map[string]ChannelMode
	if c.tx != nil {
		var err error
		if modes, err = c.loadModes(ctx); err != nil {
			c.log.Warn().Ctx(ctx).Err(err).Msg("channel modes unavailable; the dashboard shows this instance's")
		}
	}
	names := c.Names()
	var others []string
	for _, r := range reports {
		for _, s := range r.Channels {
			if !slices.Contains(names, s.Name) && !slices.Contains(others, s.Name) {
				others = append(others, s.Name)
			}
		}
	}
	slices.Sort(others)
	names = append(names, others...)

	out := make([]ChannelView, 0, len(names))
	for _, name := range names {
		v := aggregate(name, reports, c.instance)
		v.Partial = partial
		if m, ok := modes[name]; ok {
			at := m.UpdatedAt
			v.Mode, v.ModeUpdatedBy, v.ModeUpdatedAt = m.Mode, m.UpdatedBy, &at
		} else if nc, ok := c.byName[name]; ok && modes == nil {
			v.Mode = nc.ch.BreakerMode()
		} else {
			v.Mode = channel.BreakerAuto
		}
		out = append(out, v)
	}
	return out, nil
}

// aggregate adds up the reports' figures for one channel.
func aggregate(name string, reports []instanceReport, self string) ChannelView {
	v := ChannelView{Name: name, Breaker: "closed", Instances: []ChannelInstance{}}
	var ok float64
	var p50, p99, tmin, tmax, floor, ceiling time.Duration
	first := true
	for _, r := range reports {
		i := slices.IndexFunc(r.Channels, func(s channel.Stats) bool { return s.Name == name })
		if i < 0 {
			continue
		}
		s := r.Channels[i]
		v.Instances = append(v.Instances, ChannelInstance{Instance: r.Instance, Self: r.Instance == self, ReportedAt: r.At,
			Breaker: s.Breaker, Mode: s.BreakerMode, Attempts: s.Attempts, SuccessRate: rate(s.SuccessRate, s.Attempts),
			P50MS: ms(s.P50), P99MS: ms(s.P99), TimeoutMS: ms(s.Timeout),
			InFlight: s.InFlight, MaxConcurrent: s.MaxConcurrent, Refused: s.Refused})

		switch {
		case s.Breaker == "open":
			v.OpenOn++
			v.Breaker = "open"
		case s.Breaker == "half-open" && v.Breaker == "closed":
			v.Breaker = "half-open"
		}
		v.Attempts += s.Attempts
		ok += s.SuccessRate * float64(s.Attempts)
		// Quantiles do not add up: the cluster's p99 needs every sample,
		// and instances send only their own quantiles. The largest of
		// them is an upper bound of the cluster's (every instance has at
		// least 99% of its samples at or below its own p99, so at least
		// 99% of all samples are at or below the largest), and it is the
		// figure an operator needs: one instance with a slow path to the
		// bank must not be averaged away by healthy ones.
		p50, p99 = max(p50, s.P50), max(p99, s.P99)
		if first {
			tmin, tmax, floor, ceiling = s.Timeout, s.Timeout, s.TimeoutFloor, s.TimeoutCeiling
			first = false
		}
		tmin, tmax = min(tmin, s.Timeout), max(tmax, s.Timeout)
		floor, ceiling = min(floor, s.TimeoutFloor), max(ceiling, s.TimeoutCeiling)
		v.InFlight += s.InFlight
		v.MaxConcurrent += s.MaxConcurrent
		v.Refused += s.Refused
	}
	if v.Attempts > 0 {
		v.SuccessRate = rate(ok/float64(v.Attempts), v.Attempts)
	}
	v.P50MS, v.P99MS = ms(p50), ms(p99)
	v.TimeoutMinMS, v.TimeoutMaxMS, v.TimeoutFloorMS, v.TimeoutCeilingMS = ms(tmin), ms(tmax), ms(floor), ms(ceiling)
	return v
}

// ms is d in milliseconds, to the microsecond.
func ms(d time.Duration) float64 { return math.Round(float64(d)/1e3) / 1e3 }

// rate is a success rate rounded to four places, nil without attempts.
func rate(r float64, attempts int) *float64 {
	if attempts == 0 {
		return nil
	}
	r = math.Round(r*1e4) / 1e4
	return &r
}

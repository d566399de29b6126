package payment

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/jackc/pgx/v5"
	"github.com/rs/zerolog"

	"github.com/atriumhq/atrium/modules/payment/channel"
	"github.com/atriumhq/atrium/platform/auditlog"
	"github.com/atriumhq/atrium/platform/errs"
	"github.com/atriumhq/atrium/platform/httpx"
	"github.com/atriumhq/atrium/platform/postgres"
	"github.com/atriumhq/atrium/platform/principal"
	"github.com/atriumhq/atrium/platform/redisx"
)

// Channels is the set of bank channels in priority order.
//
// Once connected (Connect), the set acts for the whole cluster:
//
//   - The operator's breaker mode of each channel (auto, forced_open,
//     forced_closed) lives in payment_channel_modes. SetMode writes it with
//     an audit record and broadcasts the change; every instance rereads the
//     table on the message (within a second) and applies the mode with
//     channel.HTTP.SetBreakerMode. Each instance also rereads the table when
//     it (re)subscribes and every 30 s, so a lost message or a publish that
//     failed heals. A mode is applied only when it differs from the one in
//     force, so a reload never resets a breaker that opened by itself.
//   - Every second each instance writes its channels' figures (channel.Stats)
//     into one Redis hash, a field per instance; Dashboard adds them up. A
//     report older than 5 s is an instance that stopped: it is left out
//     and deleted. Without Redis, Dashboard shows this instance's own figures,
//     marked partial.
type Channels struct {
	list   []*namedChannel
	byName map[string]*namedChannel

	// Set by Connect.
	tx       *postgres.Tx
	redis    *redisx.Client
	log      zerolog.Logger
	instance string
	now      func() time.Time
	modes    *redisx.Broadcast[modeChange]
	// reloadMu serialises reading the modes and applying them, so that an
	// older read is never applied after a newer one.
	reloadMu sync.Mutex
}

type namedChannel struct {
	name string
	ch   *channel.HTTP
	// test channels take test-mode payments only, and only they do.
	test bool
}

var channelName = regexp.MustCompile(`^[a-z][a-z0-9_-]{0,31}$`)

// ChannelsError is a bad channel list (ATRIUM_PAYMENTS_CHANNELS).
type ChannelsError struct{ msg string }

func (e ChannelsError) Error() string { return e.msg }

// ParseChannelSpecs parses "name=base-url" entries.
func ParseChannelSpecs(specs []string) ([][2]string, error) {
	var out [][2]string
	seen := map[string]bool{}
	for _, s := range specs {
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		name, raw, ok := strings.Cut(s, "=")
		if !ok || !channelName.MatchString(name) {
			return nil, ChannelsError{fmt.Sprintf("channel %q: want name=http://host:port with a lower-case name", s)}
		}
		u, err := url.Parse(raw)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, ChannelsError{fmt.Sprintf("channel %q: %q is not an http(s) URL", name, raw)}
		}
		if seen[name] {
			return nil, ChannelsError{fmt.Sprintf("channel %q listed twice", name)}
		}
		seen[name] = true
		out = append(out, [2]string{name, raw})
	}
	return out, nil
}

// NewChannels builds the channels from "name=base-url" specs, in priority
// order; tmpl is the configuration each gets (Name and BaseURL are set).
func NewChannels(specs []string, tmpl channel.Config) (*Channels, error) {
	c := &Channels{byName: map[string]*namedChannel{}}
	if err := c.add(specs, tmpl, false); err != nil {
		return nil, err
	}
	return c, nil
}

// AddTest adds the channels that test-mode payments use ("name=base-url"
// specs in priority order; ATRIUM_PAYMENTS_TEST_CHANNELS). A test-mode
// payment never goes to any other channel, whatever its merchant's rules,
// and no live payment goes to these.
func (c *Channels) AddTest(specs []string, tmpl channel.Config) error {
	return c.add(specs, tmpl, true)
}

func (c *Channels) add(specs []string, tmpl channel.Config, test bool) error {
	parsed, err := ParseChannelSpecs(specs)
	if err != nil {
		return err
	}
	for _, p := range parsed {
		if _, dup := c.byName[p[0]]; dup {
			return ChannelsError{fmt.Sprintf("channel %q is both a live and a test channel: give the test one another name", p[0])}
		}
		cfg := tmpl
		cfg.Name, cfg.BaseURL = p[0], p[1]
		ch, err := channel.NewHTTP(cfg)
		if err != nil {
			return err
		}
		nc := &namedChannel{name: p[0], ch: ch, test: test}
		c.list = append(c.list, nc)
		c.byName[p[0]] = nc
	}
	return nil
}

// allNames lists every channel, live and test.
func (c *Channels) allNames() []string {
	out := make([]string, len(c.list))
	for i, nc := range c.list {
		out[i] = nc.name
	}
	return out
}

// Names lists the live channels in priority order.
func (c *Channels) Names() []string {
	var out []string
	for _, nc := range c.list {
		if !nc.test {
			out = append(out, nc.name)
		}
	}
	return out
}

// get returns the named channel.
func (c *Channels) get(name string) (*namedChannel, bool) {
	nc, ok := c.byName[name]
	return nc, ok
}

// route returns the channels a merchant's payment may use, best first:
// the merchant's preferred channels in its order (all live channels by
// priority when it names none), or for a test-mode payment the test
// channels by priority; those whose breaker is open are left out. It fails
// with Unavailable when none is left.
func (c *Channels) route(prefs []string, live bool) ([]*namedChannel, error) {
	var out []*namedChannel
	configured := 0
	add := func(nc *namedChannel) {
		if nc.test == live {
			return
		}
		configured++
		if !nc.ch.Refusing() && !slices.Contains(out, nc) {
			out = append(out, nc)
		}
	}
	if len(prefs) == 0 || !live {
		for _, nc := range c.list {
			add(nc)
		}
	} else {
		for _, p := range prefs {
			if nc, ok := c.byName[p]; ok {
				add(nc)
			}
		}
	}
	if len(out) == 0 {
		if configured == 0 {
			msg := "no bank channel is configured"
			if !live {
				msg = "no test channel is configured (ATRIUM_PAYMENTS_TEST_CHANNELS): test-mode payments go only to simulated banks"
			}
			return nil, &errs.Error{Code: errs.Unavailable, Message: msg, Extra: map[string]any{"retry_after_seconds": 30}}
		}
		return nil, &errs.Error{Code: errs.Unavailable, Extra: map[string]any{"retry_after_seconds": 5},
			Message: "every bank channel this merchant may use is refusing calls (circuit breaker open); nothing was charged"}
	}
	return out, nil
}

// ChannelsDeps are what the channels need to act as one set across the
// cluster.
type ChannelsDeps struct {
	Tx *postgres.Tx
	// Redis carries the mode broadcasts and the figures of every instance;
	// without it an instance rereads the modes every 30 s and its dashboard
	// shows only itself.
	Redis *redisx.Client
	Log   zerolog.Logger
	// Instance names this instance in the figures (default: a random id).
	Instance string
	Now      func() time.Time
}

// Connect gives the channels the cluster: the table of operator modes,
// the broadcast that announces their changes and the shared figures. Call
// it once, before Run, SetMode or Dashboard.
func (c *Channels) Connect(d ChannelsDeps) error {
	if d.Tx == nil {
		return errors.New("payment: channels need Tx")
	}
	if d.Now == nil {
		d.Now = func() time.Time { return time.Now().UTC() }
	}
	if d.Instance == "" {
		b := make([]byte, 6)
		_, _ = rand.Read(b)
		d.Instance = "instance-" + hex.EncodeToString(b)
	}
	c.tx, c.redis, c.log, c.instance, c.now = d.Tx, d.Redis, d.Log, d.Instance, d.Now
	if d.Redis != nil {
		c.modes = redisx.NewBroadcast[modeChange](d.Redis, "payment-channel-modes")
	}
	return nil
}

// modeChange is the broadcast that a channel's mode changed. Receivers
// reread the table (the message's mode is used only when PostgreSQL does
// not answer), so concurrent changes settle on what committed last.
type modeChange struct {
	Channel string              `json:"channel"`
	Mode    channel.BreakerMode `json:"mode"`
}

const (
	// modesEvery is how often every instance rereads the modes, whatever
	// the broadcasts say.
	modesEvery = 30 * time.Second
	// statsEvery is how often every instance reports its figures.
	statsEvery = time.Second
	// statsMaxAge is the age past which a report is left out of the
	// dashboard (its instance stopped or lost Redis) and deleted.
	statsMaxAge = 5 * time.Second
)

// Run keeps the channels in step with the cluster until ctx ends: it
// applies the operator modes (on each broadcast, on (re)subscription and
// every 30 s) and reports this instance's figures every second. It
// returns nil when ctx ends.
func (c *Channels) Run(ctx context.Context) error {
	if c.tx == nil {
		<-ctx.Done()
		return nil
	}
	// Before anything else, so that a starting instance honours a forced
	// mode even when Redis is down and the subscription fails.
	if err := c.reload(ctx); err != nil && ctx.Err() == nil {
		c.log.Warn().Err(err).Msg("channel modes not loaded; retried within 30 s")
	}
	if c.redis == nil {
		t := time.NewTicker(modesEvery)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return nil
			case <-t.C:
				if err := c.reload(ctx); err != nil && ctx.Err() == nil {
					c.log.Warn().Err(err).Msg("channel modes not reloaded; retried within 30 s")
				}
			}
		}
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() { c.runStats(ctx) })
	return c.modes.Follow(ctx, c.log, modesEvery, c.reload, func(m modeChange) { c.refresh(ctx, m) })
}

// ChannelMode is the operator's setting of one channel's breaker.
type ChannelMode struct {
	Channel   string              `json:"channel"`
	Mode      channel.BreakerMode `json:"mode"`
	UpdatedBy string              `json:"updated_by"`
	UpdatedAt time.Time           `json:"updated_at"`
}

// loadModes reads the operator modes by channel. The table belongs to no
// tenant (no row-level security), so it needs no scope.
func (c *Channels) loadModes(ctx context.Context) (map[string]ChannelMode, error) {
	rows, err := postgres.Collect(ctx, c.tx, "payment.channel_modes", func(r pgx.CollectableRow) (ChannelMode, error) {
		var m ChannelMode
		err := r.Scan(&m.Channel, &m.Mode, &m.UpdatedBy, &m.UpdatedAt)
		m.UpdatedAt = m.UpdatedAt.UTC()
		return m, err
	}, `SELECT channel, mode, updated_by, updated_at FROM payment_channel_modes`)
	if err != nil {
		return nil, err
	}
	out := make(map[string]ChannelMode, len(rows))
	for _, m := range rows {
		out[m.Channel] = m
	}
	return out, nil
}

// reload applies the modes in PostgreSQL to this instance's channels; a
// channel without a row is in auto.
func (c *Channels) reload(ctx context.Context) error {
	c.reloadMu.Lock()
	defer c.reloadMu.Unlock()
	modes, err := c.loadModes(ctx)
	if err != nil {
		return fmt.Errorf("load channel modes: %w", err)
	}
	for _, nc := range c.list {
		m := channel.BreakerAuto
		if x, ok := modes[nc.name]; ok {
			m = x.Mode
		}
		c.apply(nc, m, "reload")
	}
	return nil
}

// refresh follows a change: a reload, or the change itself when PostgreSQL
// does not answer (it has committed it).
func (c *Channels) refresh(ctx context.Context, m modeChange) {
	err := c.reload(ctx)
	if err == nil || ctx.Err() != nil {
		return
	}
	c.log.Warn().Err(err).Str("channel", m.Channel).Msg("channel modes not reloaded after a change; applying the change as announced")
	if nc, ok := c.byName[m.Channel]; ok {
		c.reloadMu.Lock()
		c.apply(nc, m.Mode, "broadcast")
		c.reloadMu.Unlock()
	}
}

// apply sets nc's mode if it differs from the one in force: setting a mode
// resets the breaker, which a reload of an unchanged mode must not do.
// Callers hold reloadMu.
func (c *Channels) apply(nc *namedChannel, m channel.BreakerMode, via string) {
	was := nc.ch.BreakerMode()
	if was == m {
		return
	}
	if err := nc.ch.SetBreakerMode(m); err != nil {
		c.log.Error().Err(err).Str("channel", nc.name).Str("mode", string(m)).Msg("channel mode not applied")
		return
	}
	c.log.Info().Str("channel", nc.name).Str("mode", string(m)).Str("was", string(was)).Str("via", via).Msg("channel breaker mode applied")
}

// canManage allows platform administrators holding channels:manage: the
// channels are shared by every tenant.
func canManage(ctx context.Context) error {
	if err := principal.Check(ctx, "channels:manage"); err != nil {
		return err
	}
	if principal.From(ctx).TenantID != "" {
		return errs.E(errs.Forbidden, "bank channels are shared by every tenant; only platform administrators manage them")
	}
	return nil
}

// SetMode sets a channel's breaker mode for the whole cluster: forced_open
// refuses every call on the channel (payments route to the merchant's next
// channel), forced_closed ignores the breaker, auto lets it act. The change
// is recorded in the audit log and applied here at once and on every other
// instance within a second. Errors: unauthenticated, forbidden (no
// channels:manage, or a tenant's user), not_found (no such channel),
// invalid (field "mode").
func (c *Channels) SetMode(ctx context.Context, name string, mode channel.BreakerMode) (ChannelMode, error) {
	if err := canManage(ctx); err != nil {
		return ChannelMode{}, err
	}
	nc, ok := c.byName[name]
	if !ok {
		return ChannelMode{}, errs.E(errs.NotFound, "no bank channel %q", name)
	}
	switch mode {
	case channel.BreakerAuto, channel.BreakerForcedOpen, channel.BreakerForcedClosed:
	default:
		return ChannelMode{}, errs.Field("mode", "must be auto, forced_open or forced_closed")
	}
	if c.tx == nil {
		return ChannelMode{}, errs.E(errs.Unavailable, "the channels are not connected to the cluster")
	}
	m := ChannelMode{Channel: name, Mode: mode, UpdatedBy: auditlog.Actor(ctx), UpdatedAt: c.now().Truncate(time.Microsecond)}
	err := c.tx.Do(ctx, "payment.channel_mode", func(tx pgx.Tx) error {
		was := channel.BreakerAuto
		err := tx.QueryRow(ctx, `SELECT mode FROM payment_channel_modes WHERE channel = $1 FOR UPDATE`, name).Scan(&was)
		if err != nil && !postgres.IsNoRows(err) {
			return err
		}
		if _, err := tx.Exec(ctx, `INSERT INTO payment_channel_modes (channel, mode, updated_by, updated_at) VALUES ($1, $2, $3, $4)
			ON CONFLICT (channel) DO UPDATE SET mode = excluded.mode, updated_by = excluded.updated_by, updated_at = excluded.updated_at`,
			name, mode, m.UpdatedBy, m.UpdatedAt); err != nil {
			return err
		}
		return auditlog.Record(ctx, tx, m.UpdatedAt, "", m.UpdatedBy, "payment.channel_mode", "channel:"+name,
			map[string]any{"mode": mode, "previous": was})
	})
	if err != nil {
		return ChannelMode{}, err
	}
	c.refresh(ctx, modeChange{Channel: name, Mode: mode})
	if c.modes != nil {
		if err := c.modes.Publish(ctx, modeChange{Channel: name, Mode: mode}); err != nil {
			c.log.Error().Ctx(ctx).Err(err).Str("channel", nc.name).Msg("channel mode broadcast failed; other instances apply it within 30 s")
		}
	}
	return m, nil
}

// Register adds the channel API to r (the /api/v1 router); every route
// needs channels:manage.
func (c *Channels) Register(r chi.Router) {
	h := httpx.Adapter{Log: c.log}
	r = r.With(principal.Require(h.Error, "channels:manage"))
	r.Get("/payment-channels", h.H(c.handleDashboard))
	r.Put("/payment-channels/{name}/breaker", h.H(c.handleSetMode))
}

func (c *Channels) handleDashboard(w http.ResponseWriter, r *http.Request) error {
	views, err := c.Dashboard(r.Context())
	if err != nil {
		return err
	}
	partial := false
	for _, v := range views {
		partial = partial || v.Partial
	}
	httpx.JSON(w, http.StatusOK, map[string]any{"channels": views, "partial": partial})
	return nil
}

func (c *Channels) handleSetMode(w http.ResponseWriter, r *http.Request) error {
	var in struct {
		Mode string `json:"mode"`
	}
	if err := httpx.Decode(r, &in); err != nil {
		return err
	}
	m, err := c.SetMode(r.Context(), chi.URLParam(r, "name"), channel.BreakerMode(in.Mode))
	if err != nil {
		return err
	}
	httpx.JSON(w, http.StatusOK, m)
	return nil
}

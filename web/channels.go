package web

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/atriumhq/atrium/modules/payment"
	"github.com/atriumhq/atrium/modules/payment/channel"
	"github.com/atriumhq/atrium/platform/errs"
)

// The channels page is the bank channels' dashboard: per channel, its
// figures added up over every instance and each instance's own, refreshed
// every second, with the operator's breaker switch (force open, force
// closed, auto) that every instance applies within a second. The payment
// module checks permissions (channels:manage, platform administrators).

// ChannelBoard is the bank channels' dashboard and breaker switch (the
// payment module's Channels).
type ChannelBoard interface {
	Dashboard(ctx context.Context) ([]payment.ChannelView, error)
	SetMode(ctx context.Context, name string, mode channel.BreakerMode) (payment.ChannelMode, error)
}

type channelsData struct {
	page
	Live channelsLive
}

// channelsLive is what the live fragment shows.
type channelsLive struct {
	Channels []channelRow
	Partial  bool
	Now      time.Time
	CSRF     string
}

// channelRow is a channel with its figures as shown.
type channelRow struct {
	Name, Mode, ModeSetBy           string
	Breaker, BreakerNote            string
	Total                           figures
	Floor, Ceiling                  string
	Instances                       []instanceRow
	Forced, ForcedOpen, ForcedClose bool
}

type instanceRow struct {
	Instance string
	Self     bool
	Mode     string
	Breaker  string
	figures
}

// figures are one row of the channel's table.
type figures struct {
	Attempts                                      int
	Success, P50, P99, Timeout, InFlight, Refused string
}

func (u *UI) channelsService() (ChannelBoard, error) {
	if u.d.Channels == nil {
		return nil, errs.E(errs.NotFound, "bank channels are not available")
	}
	return u.d.Channels, nil
}

func (u *UI) channelsLiveData(w http.ResponseWriter, r *http.Request) (channelsLive, error) {
	board, err := u.channelsService()
	if err != nil {
		return channelsLive{}, err
	}
	views, err := board.Dashboard(r.Context())
	if err != nil {
		return channelsLive{}, err
	}
	d := channelsLive{Now: u.d.Now().UTC(), CSRF: u.d.Auth.CSRFToken(w, r)}
	for _, v := range views {
		d.Partial = d.Partial || v.Partial
		d.Channels = append(d.Channels, channelRowOf(v))
	}
	return d, nil
}

func channelRowOf(v payment.ChannelView) channelRow {
	row := channelRow{Name: v.Name, Mode: string(v.Mode), Breaker: v.Breaker,
		Floor: msText(v.TimeoutFloorMS), Ceiling: msText(v.TimeoutCeilingMS),
		Forced: v.Mode != channel.BreakerAuto, ForcedOpen: v.Mode == channel.BreakerForcedOpen, ForcedClose: v.Mode == channel.BreakerForcedClosed}
	if v.ModeUpdatedAt != nil {
		row.ModeSetBy = "set by " + v.ModeUpdatedBy + " at " + v.ModeUpdatedAt.UTC().Format("2006-01-02 15:04:05") + " UTC"
	}
	if n := len(v.Instances); v.OpenOn > 0 && n > 1 {
		row.BreakerNote = fmt.Sprintf("open on %d of %d instances", v.OpenOn, n)
	}
	timeout := msText(v.TimeoutMinMS)
	if v.TimeoutMaxMS != v.TimeoutMinMS {
		timeout += " – " + msText(v.TimeoutMaxMS)
	}
	row.Total = figures{Attempts: v.Attempts, Success: rateText(v.SuccessRate), P50: latencyText(v.P50MS), P99: latencyText(v.P99MS),
		Timeout: timeout, InFlight: fmt.Sprintf("%d / %d", v.InFlight, v.MaxConcurrent), Refused: strconv.FormatInt(v.Refused, 10)}
	for _, i := range v.Instances {
		row.Instances = append(row.Instances, instanceRow{Instance: i.Instance, Self: i.Self, Mode: string(i.Mode), Breaker: i.Breaker,
			figures: figures{Attempts: i.Attempts, Success: rateText(i.SuccessRate), P50: latencyText(i.P50MS), P99: latencyText(i.P99MS),
				Timeout: msText(i.TimeoutMS), InFlight: fmt.Sprintf("%d / %d", i.InFlight, i.MaxConcurrent),
				Refused: strconv.FormatInt(i.Refused, 10)}})
	}
	return row
}

// rateText is a success rate as a percentage, "–" without attempts.
func rateText(r *float64) string {
	if r == nil {
		return "–"
	}
	return strconv.FormatFloat(*r*100, 'f', 1, 64) + "%"
}

// latencyText is a latency quantile, "–" when no call was answered.
func latencyText(ms float64) string {
	if ms == 0 {
		return "–"
	}
	return msText(ms)
}

// msText is a duration in milliseconds as people read it.
func msText(ms float64) string {
	switch {
	case ms >= 1000:
		return strconv.FormatFloat(ms/1000, 'f', 2, 64) + " s"
	case ms >= 10:
		return strconv.FormatFloat(ms, 'f', 0, 64) + " ms"
	}
	return strconv.FormatFloat(ms, 'f', 1, 64) + " ms"
}

func (u *UI) channels(w http.ResponseWriter, r *http.Request) {
	live, err := u.channelsLiveData(w, r)
	if err != nil {
		u.fail(w, r, err)
		return
	}
	d := channelsData{Live: live}
	d.page = u.page(w, r, "Bank channels", "Channels")
	u.render(w, r, http.StatusOK, "channels", "layout", d)
}

func (u *UI) channelsLive(w http.ResponseWriter, r *http.Request) {
	live, err := u.channelsLiveData(w, r)
	if err != nil {
		u.fail(w, r, err)
		return
	}
	u.render(w, r, http.StatusOK, "channels", "channels-live", live)
}

// setChannelMode is the breaker switch: mode is forced_open, forced_closed
// or auto.
func (u *UI) setChannelMode(w http.ResponseWriter, r *http.Request) {
	board, err := u.channelsService()
	if err != nil {
		u.fail(w, r, err)
		return
	}
	m, err := board.SetMode(r.Context(), chi.URLParam(r, "name"), channel.BreakerMode(r.PostFormValue("mode")))
	if err != nil {
		u.formFailed(w, r, "/ui/channels", err)
		return
	}
	var msg string
	switch m.Mode {
	case channel.BreakerForcedOpen:
		msg = m.Channel + " is forced open: it refuses every call, and payments go to the next channel each merchant allows."
	case channel.BreakerForcedClosed:
		msg = m.Channel + " is forced closed: its circuit breaker no longer refuses calls, however the bank answers."
	default:
		msg = m.Channel + " is back to auto: its circuit breaker opens and closes by itself."
	}
	u.done(w, r, "/ui/channels", msg+" Every instance applies it within a second.")
}

package web

import (
	"html/template"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/atriumhq/atrium/modules/quota"
	"github.com/atriumhq/atrium/platform/errs"
	"github.com/atriumhq/atrium/platform/httpx"
)

// The rate-limit page lists the rules with their live counts (refreshed
// every 2 s), switches a rule between enforce and observe, enables,
// disables and deletes rules, and creates new ones. The rate-limit service
// checks permissions (quotas:manage, platform administrators).

type rateLimitsData struct {
	page
	Live                    rateLimitsLive
	Classes, KeyBys, Quotas []string
	Form                    ruleForm
	Error                   string
}

// rateLimitsLive is what the live fragment shows.
type rateLimitsLive struct {
	Rules     []quota.RuleStatus
	LiveError bool
	Now       time.Time
	CSRF      string
}

// ruleForm is the create form as typed, shown again with an error.
type ruleForm struct {
	ID, Description, RouteClass, KeyBy, Quota, Rate, Period, Burst, Mode, FailMode string
}

func (u *UI) rateLimitsService() (*quota.RateLimits, error) {
	if u.d.RateLimits == nil {
		return nil, errs.E(errs.NotFound, "rate limits are not available")
	}
	return u.d.RateLimits, nil
}

func (u *UI) rateLimitsLiveData(w http.ResponseWriter, r *http.Request) (rateLimitsLive, error) {
	rl, err := u.rateLimitsService()
	if err != nil {
		return rateLimitsLive{}, err
	}
	rules, err := rl.List(r.Context())
	if err != nil {
		return rateLimitsLive{}, err
	}
	d := rateLimitsLive{Rules: rules, Now: u.d.Now().UTC(), CSRF: u.d.Auth.CSRFToken(w, r)}
	for _, x := range rules {
		d.LiveError = d.LiveError || x.Live == nil
	}
	return d, nil
}

func (u *UI) rateLimits(w http.ResponseWriter, r *http.Request) {
	u.rateLimitsPage(w, r, http.StatusOK, ruleForm{Mode: "enforce", FailMode: "open", RouteClass: quota.ClassAPI, KeyBy: "tenant", Period: "1s"}, "")
}

func (u *UI) rateLimitsPage(w http.ResponseWriter, r *http.Request, status int, form ruleForm, problem string) {
	live, err := u.rateLimitsLiveData(w, r)
	if err != nil {
		u.fail(w, r, err)
		return
	}
	d := rateLimitsData{Live: live, Classes: quota.RuleClasses, KeyBys: quota.KeyBys, Form: form, Error: problem}
	for _, q := range quota.Defs {
		if q.Kind == quota.Rate {
			d.Quotas = append(d.Quotas, q.Name)
		}
	}
	d.page = u.page(w, r, "Rate limits", "Rate limits")
	u.render(w, r, status, "ratelimits", "layout", d)
}

func (u *UI) rateLimitsLive(w http.ResponseWriter, r *http.Request) {
	live, err := u.rateLimitsLiveData(w, r)
	if err != nil {
		u.fail(w, r, err)
		return
	}
	u.render(w, r, http.StatusOK, "ratelimits", "ratelimits-live", live)
}

// setRuleMode switches a rule between enforce and observe.
func (u *UI) setRuleMode(w http.ResponseWriter, r *http.Request) {
	mode := r.PostFormValue("mode")
	u.changeRule(w, r, quota.RuleChange{Mode: &mode}, func(d *quota.RuleDef) string {
		if d.Mode == "observe" {
			return d.ID + " is observe-only: it counts and reports what it would refuse, and refuses nothing."
		}
		return d.ID + " is enforcing."
	})
}

// setRuleEnabled enables or disables a rule.
func (u *UI) setRuleEnabled(w http.ResponseWriter, r *http.Request) {
	on := r.PostFormValue("enabled") == "true"
	u.changeRule(w, r, quota.RuleChange{Enabled: &on}, func(d *quota.RuleDef) string {
		if d.Enabled {
			return d.ID + " is enabled."
		}
		return d.ID + " is disabled: no request is checked against it."
	})
}

func (u *UI) changeRule(w http.ResponseWriter, r *http.Request, c quota.RuleChange, msg func(*quota.RuleDef) string) {
	rl, err := u.rateLimitsService()
	if err != nil {
		u.fail(w, r, err)
		return
	}
	d, err := rl.Update(r.Context(), chi.URLParam(r, "id"), c)
	if err != nil {
		u.formFailed(w, r, "/ui/rate-limits", err)
		return
	}
	u.done(w, r, "/ui/rate-limits", msg(d)+" Every instance applies it within a second.")
}

func (u *UI) deleteRule(w http.ResponseWriter, r *http.Request) {
	rl, err := u.rateLimitsService()
	if err != nil {
		u.fail(w, r, err)
		return
	}
	id := chi.URLParam(r, "id")
	if err := rl.Delete(r.Context(), id); err != nil {
		u.formFailed(w, r, "/ui/rate-limits", err)
		return
	}
	u.done(w, r, "/ui/rate-limits", id+" is deleted.")
}

// createRule adds a rule from the form: a period such as 1s, 1m or 24h, a
// rate or a quota, an optional burst.
func (u *UI) createRule(w http.ResponseWriter, r *http.Request) {
	rl, err := u.rateLimitsService()
	if err != nil {
		u.fail(w, r, err)
		return
	}
	f := ruleForm{ID: strings.TrimSpace(r.PostFormValue("id")), Description: strings.TrimSpace(r.PostFormValue("description")),
		RouteClass: r.PostFormValue("route_class"), KeyBy: r.PostFormValue("key_by"), Quota: r.PostFormValue("quota"),
		Rate: strings.TrimSpace(r.PostFormValue("rate")), Period: strings.TrimSpace(r.PostFormValue("period")),
		Burst: strings.TrimSpace(r.PostFormValue("burst")), Mode: r.PostFormValue("mode"), FailMode: r.PostFormValue("fail_mode")}
	in, err := f.rule()
	if err == nil {
		_, err = rl.Create(r.Context(), in)
	}
	if err != nil {
		if formProblem(err) {
			u.rateLimitsPage(w, r, httpx.StatusOf(err), f, problemText(err))
			return
		}
		u.fail(w, r, err)
		return
	}
	u.done(w, r, "/ui/rate-limits", in.ID+" is created. Every instance applies it within a second.")
}

func (f ruleForm) rule() (quota.NewRule, error) {
	in := quota.NewRule{ID: f.ID, Description: f.Description, RouteClass: f.RouteClass, KeyBy: f.KeyBy, Mode: f.Mode, FailMode: f.FailMode}
	period, err := time.ParseDuration(f.Period)
	if err != nil || period < time.Millisecond {
		return in, errs.Field("period", "must be a duration such as 1s, 1m or 24h")
	}
	in.PeriodMS = period.Milliseconds()
	if f.Quota != "" {
		q := f.Quota
		in.Quota = &q
	}
	if f.Rate != "" {
		n, err := strconv.Atoi(f.Rate)
		if err != nil {
			return in, errs.Field("rate", "must be a whole number")
		}
		in.Rate = &n
	}
	if f.Burst != "" {
		n, err := strconv.Atoi(f.Burst)
		if err != nil {
			return in, errs.Field("burst", "must be a whole number, or empty for the same as the rate")
		}
		in.Burst = &n
	}
	return in, nil
}

// rateLimitFuncs are the template functions of the rate-limit page.
var rateLimitFuncs = template.FuncMap{"ruleLimit": ruleLimit, "ruleBurst": burstText}

// ruleLimit describes a rule's limit: "30 / 1m" or, for a quota rule,
// "payments_per_second / 1s".
func ruleLimit(d quota.RuleDef) string {
	per := " / " + periodText(d.PeriodMS)
	if d.Quota != nil {
		return *d.Quota + per
	}
	if d.Rate != nil {
		return strconv.Itoa(*d.Rate) + per
	}
	return per
}

func periodText(ms int64) string {
	d := time.Duration(ms) * time.Millisecond
	switch {
	case d%(24*time.Hour) == 0:
		return strconv.FormatInt(int64(d/(24*time.Hour)), 10) + "d"
	case d%time.Hour == 0:
		return strconv.FormatInt(int64(d/time.Hour), 10) + "h"
	case d%time.Minute == 0:
		return strconv.FormatInt(int64(d/time.Minute), 10) + "m"
	case d%time.Second == 0:
		return strconv.FormatInt(int64(d/time.Second), 10) + "s"
	}
	return strconv.FormatInt(ms, 10) + "ms"
}

func burstText(d quota.RuleDef) string {
	if d.Burst == nil {
		return "= rate"
	}
	return strconv.Itoa(*d.Burst)
}

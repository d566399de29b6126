package gpu

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"
)

// The release controller: given a deployment and its replicas, it decides
// which replicas to create and stop, the traffic weights, and the next step
// of a release. plan is pure (no I/O), so that every strategy's walk is
// unit-tested; the scheduler leader applies its decisions.

// repView is one live replica as the controller sees it.
type repView struct {
	ID        string
	Version   string
	State     string // pending, placed, running, stopping
	CreatedAt time.Time
}

// VersionStats are a version's request figures over a window (the
// inference router records them).
type VersionStats struct {
	Requests int64
	Errors   int64
	P99      time.Duration
}

// MarshalJSON writes the figures with the error rate, p99 in milliseconds.
func (v VersionStats) MarshalJSON() ([]byte, error) {
	return json.Marshal(struct {
		Requests  int64   `json:"requests"`
		Errors    int64   `json:"errors"`
		ErrorRate float64 `json:"error_rate"`
		P99MS     float64 `json:"p99_ms"`
	}{v.Requests, v.Errors, v.ErrorRate(), float64(v.P99) / float64(time.Millisecond)})
}

// ErrorRate is Errors / Requests (0 without requests).
func (v VersionStats) ErrorRate() float64 {
	if v.Requests == 0 {
		return 0
	}
	return float64(v.Errors) / float64(v.Requests)
}

// decision is what one controller pass wants done.
type decision struct {
	create []string // a version id per replica to create
	stop   []string // replica ids
	events []depEvent
}

type depEvent struct{ kind, message string }

func (dc *decision) event(kind, format string, args ...any) {
	dc.events = append(dc.events, depEvent{kind, fmt.Sprintf(format, args...)})
}

// counts are a deployment's live replicas by version.
type counts struct {
	live, running map[string]int
	reps          []repView
}

func countReplicas(reps []repView) counts {
	c := counts{live: map[string]int{}, running: map[string]int{}, reps: reps}
	for _, r := range reps {
		if r.State == "stopping" {
			continue
		}
		c.live[r.Version]++
		if r.State == "running" {
			c.running[r.Version]++
		}
	}
	return c
}

// canaryWant is how many replicas the canary version has at step.
func canaryWant(d *Deployment, step int) int {
	pct := d.Params.CanarySteps[min(step, len(d.Params.CanarySteps)-1)]
	if pct >= 100 {
		return d.Replicas
	}
	return max(1, (d.Replicas*pct+99)/100)
}

// stepReady reports whether the current canary step's replicas all run.
func stepReady(d *Deployment, c counts) bool {
	return c.running[*d.TargetVersionID] >= canaryWant(d, d.Step)
}

// scaleTo creates or stops replicas of version v until n are live. Surplus
// goes least useful first: pending, then placed, then running; newest
// first within a state.
func (dc *decision) scaleTo(c *counts, v string, n int) {
	for c.live[v] < n {
		dc.create = append(dc.create, v)
		c.live[v]++
	}
	if c.live[v] <= n {
		return
	}
	var cand []repView
	for _, r := range c.reps {
		if r.Version == v && r.State != "stopping" && !slices.Contains(dc.stop, r.ID) {
			cand = append(cand, r)
		}
	}
	rank := map[string]int{"pending": 0, "placed": 1, "running": 2}
	slices.SortFunc(cand, func(a, b repView) int {
		if rank[a.State] != rank[b.State] {
			return rank[a.State] - rank[b.State]
		}
		return b.CreatedAt.Compare(a.CreatedAt)
	})
	for _, r := range cand[:c.live[v]-n] {
		dc.stop = append(dc.stop, r.ID)
		c.live[v]--
		if r.State == "running" {
			c.running[v]--
		}
	}
}

// stopOthers stops every live replica whose version is not in keep.
func (dc *decision) stopOthers(c *counts, keep ...string) {
	for v := range c.live {
		if !slices.Contains(keep, v) {
			dc.scaleTo(c, v, 0)
		}
	}
}

// plan runs one controller pass over d (changed in place) and its live
// replicas. stats reads the target version's figures since a time.
func plan(d *Deployment, reps []repView, now time.Time, stats func(version string, since time.Time) VersionStats) decision {
	var dc decision
	c := countReplicas(reps)
	if d.State == "deleting" {
		d.Traffic = map[string]int{}
		dc.stopOthers(&c)
		return dc
	}
	if d.TargetVersionID == nil {
		steady(d, &c, &dc, now)
		return dc
	}
	t, s := *d.TargetVersionID, d.StableVersionID
	switch d.Strategy {
	case "rolling":
		rolling(d, &c, &dc, t, s)
	case "blue_green":
		dc.scaleTo(&c, s, d.Replicas)
		dc.scaleTo(&c, t, d.Replicas)
		dc.stopOthers(&c, s, t)
		if c.running[t] >= d.Replicas && d.State != "paused" {
			switchBlueGreen(d, &dc, now, "the new set is ready")
		} else {
			d.Traffic = map[string]int{s: 100}
		}
	case "canary":
		canary(d, &c, &dc, t, s, now, stats)
	}
	return dc
}

// steady keeps the stable version at the desired count, and a blue-green
// release's previous set until its rollback window ends.
func steady(d *Deployment, c *counts, dc *decision, now time.Time) {
	keep := []string{d.StableVersionID}
	if d.PreviousVersionID != nil {
		if d.PreviousUntil != nil && now.Before(*d.PreviousUntil) {
			keep = append(keep, *d.PreviousVersionID)
		} else {
			dc.event("previous_released", "rollback window over: the previous set stops")
			d.PreviousVersionID, d.PreviousUntil = nil, nil
		}
	}
	dc.scaleTo(c, d.StableVersionID, d.Replicas)
	dc.stopOthers(c, keep...)
	d.Traffic = map[string]int{d.StableVersionID: 100}
	if d.State == "paused" || d.State == "progressing" {
		d.State = "steady"
	}
}

// rolling replaces old replicas with new ones: at most max_surge above the
// desired count, at most max_unavailable below it in running replicas.
func rolling(d *Deployment, c *counts, dc *decision, t, s string) {
	all := c.reps // every live replica, as the pass began
	dc.stopOthers(c, s, t)
	n := d.Replicas
	if d.State != "paused" {
		for c.live[t] < n && c.live[t]+c.live[s] < n+d.Params.MaxSurge {
			dc.create = append(dc.create, t)
			c.live[t]++
		}
		// Old replicas that do not serve yet go first: they hold capacity
		// the new ones need.
		for _, r := range all {
			if c.live[t]+c.live[s] <= n || c.live[s] == 0 {
				break
			}
			if r.Version == s && r.State != "running" && r.State != "stopping" {
				dc.stop = append(dc.stop, r.ID)
				c.live[s]--
			}
		}
		for c.live[s] > 0 && c.running[t]+c.running[s]-1 >= n-d.Params.MaxUnavailable {
			before := len(dc.stop)
			dc.scaleTo(c, s, c.live[s]-1)
			if len(dc.stop) == before {
				break
			}
		}
	}
	if c.running[t] >= n && c.live[s] == 0 {
		finish(d, dc, "all %d replicas run version %s", n, d.vname(t))
		return
	}
	d.Traffic = byRunning(c, s, t)
}

// canary walks the target version through the traffic steps, judging each
// step after the watch window.
func canary(d *Deployment, c *counts, dc *decision, t, s string, now time.Time, stats func(string, time.Time) VersionStats) {
	dc.scaleTo(c, t, canaryWant(d, d.Step))
	dc.scaleTo(c, s, d.Replicas)
	dc.stopOthers(c, s, t)
	pct := d.Params.CanarySteps[d.Step]
	if !stepReady(d, *c) {
		// Weights go to serving replicas only.
		if c.running[t] == 0 {
			d.Traffic = map[string]int{s: 100}
		}
		return
	}
	d.Traffic = map[string]int{t: pct, s: 100 - pct}
	if pct >= 100 {
		d.Traffic = map[string]int{t: 100}
	}
	if d.StepStartedAt == nil {
		d.StepStartedAt = &now
		dc.event("canary_step", "step %d: %d%% of traffic to version %s", d.Step+1, pct, d.vname(t))
		return
	}
	st := stats(t, *d.StepStartedAt)
	if bad := verdict(d, st); bad != "" && (st.Requests >= int64(d.Params.MinRequests) || now.Sub(*d.StepStartedAt) >= d.watch()) {
		rollback(d, dc, "canary rolled back automatically: "+bad)
		return
	}
	if d.State == "paused" || now.Sub(*d.StepStartedAt) < d.watch() {
		return
	}
	dc.event("canary_verdict", "step %d passed its %s watch: %d requests, error rate %.2f%%, p99 %s",
		d.Step+1, d.watch(), st.Requests, 100*st.ErrorRate(), st.P99.Round(time.Millisecond))
	advance(d, dc, now)
}

// verdict says why st is out of d's bounds ("" when within them).
func verdict(d *Deployment, st VersionStats) string {
	if st.Requests == 0 {
		return ""
	}
	var out []string
	if r := st.ErrorRate(); r > d.Params.MaxErrorRate {
		out = append(out, fmt.Sprintf("error rate %.2f%% above %.2f%%", 100*r, 100*d.Params.MaxErrorRate))
	}
	if max := time.Duration(d.Params.MaxP99MS) * time.Millisecond; st.P99 > max {
		out = append(out, fmt.Sprintf("p99 %s above %s", st.P99.Round(time.Millisecond), max))
	}
	return strings.Join(out, ", ")
}

// advance moves a canary to its next step, or finishes it after the last.
func advance(d *Deployment, dc *decision, now time.Time) {
	if d.Step+1 >= len(d.Params.CanarySteps) {
		finish(d, dc, "canary promoted: version %s takes all traffic", d.vname(*d.TargetVersionID))
		return
	}
	d.Step++
	d.StepStartedAt = nil
}

// switchBlueGreen sends all traffic to the new set at once and keeps the
// old set for the rollback window.
func switchBlueGreen(d *Deployment, dc *decision, now time.Time, why string) {
	prev, until := d.StableVersionID, now.Add(time.Duration(d.Params.RollbackSeconds)*time.Second)
	finish(d, dc, "traffic switched to version %s (%s); the previous set is kept until %s",
		d.vname(*d.TargetVersionID), why, until.Format(time.RFC3339))
	d.PreviousVersionID, d.PreviousUntil = &prev, &until
}

// finish makes the target the stable version.
func finish(d *Deployment, dc *decision, format string, args ...any) {
	d.StableVersionID = *d.TargetVersionID
	d.TargetVersionID, d.Step, d.StepStartedAt, d.State = nil, 0, nil, "steady"
	d.Traffic = map[string]int{d.StableVersionID: 100}
	dc.event("released", format, args...)
}

// rollback abandons the release: all traffic back to the stable version.
func rollback(d *Deployment, dc *decision, why string) {
	d.TargetVersionID, d.Step, d.StepStartedAt, d.State = nil, 0, nil, "steady"
	d.Traffic = map[string]int{d.StableVersionID: 100}
	dc.event("rolled_back", "%s", why)
}

// byRunning weighs versions by their running replicas.
func byRunning(c *counts, s, t string) map[string]int {
	rs, rt := c.running[s], c.running[t]
	if rs+rt == 0 {
		return map[string]int{s: 100}
	}
	w := map[string]int{t: rt * 100 / (rs + rt)}
	w[s] = 100 - w[t]
	return w
}

package gpu

import (
	"fmt"
	"maps"
	"testing"
	"time"
)

// world simulates a deployment's replicas under the controller: created
// replicas become running after startDelay passes, stopped ones vanish.
type world struct {
	t     *testing.T
	d     *Deployment
	reps  []repView
	now   time.Time
	seq   int
	stats VersionStats
	log   []string
	// invariants seen along the way
	minRunning, maxLive int
}

func newWorld(t *testing.T, strategy string, replicas int) *world {
	d := &Deployment{ID: "d1", StableVersionID: "v1", Strategy: strategy, Params: DefaultParams(), Replicas: replicas,
		MinReplicas: 0, MaxReplicas: 10, State: "steady", Traffic: map[string]int{"v1": 100},
		Versions: map[string]string{"v1": "1.0", "v2": "2.0"}}
	w := &world{t: t, d: d, now: time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC), minRunning: 1 << 30}
	w.until(func() bool { return w.running("v1") == replicas }, 5)
	w.minRunning, w.maxLive = 1<<30, 0
	return w
}

func (w *world) running(v string) int {
	n := 0
	for _, r := range w.reps {
		if r.Version == v && r.State == "running" {
			n++
		}
	}
	return n
}

// step runs one controller pass, then lets time pass: pending replicas
// start running.
func (w *world) step() decision {
	w.t.Helper()
	dc := plan(w.d, w.reps, w.now, func(string, time.Time) VersionStats { return w.stats })
	for _, e := range dc.events {
		w.log = append(w.log, e.kind+": "+e.message)
	}
	stop := map[string]bool{}
	for _, id := range dc.stop {
		if stop[id] {
			w.t.Fatalf("replica %s stopped twice in one pass", id)
		}
		stop[id] = true
	}
	var next []repView
	for _, r := range w.reps {
		if !stop[r.ID] {
			if r.State == "pending" {
				r.State = "running"
			}
			next = append(next, r)
		}
	}
	for _, v := range dc.create {
		w.seq++
		next = append(next, repView{ID: fmt.Sprint("r", w.seq), Version: v, State: "pending", CreatedAt: w.now})
	}
	w.reps = next
	running := w.running("v1") + w.running("v2")
	w.minRunning = min(w.minRunning, running)
	w.maxLive = max(w.maxLive, len(w.reps))
	sum := 0
	for _, p := range w.d.Traffic {
		sum += p
	}
	if w.d.State != "deleting" && sum != 100 {
		w.t.Fatalf("traffic %v does not add up to 100", w.d.Traffic)
	}
	for v, p := range w.d.Traffic {
		if p > 0 && w.running(v) == 0 && len(dc.create) == 0 {
			w.t.Fatalf("traffic %v sends %d%% to version %s, which runs no replica", w.d.Traffic, p, v)
		}
	}
	w.now = w.now.Add(10 * time.Second)
	return dc
}

func (w *world) until(cond func() bool, max int) {
	w.t.Helper()
	for i := 0; i < max; i++ {
		if cond() {
			return
		}
		w.step()
	}
	if !cond() {
		w.t.Fatalf("not reached after %d passes: deployment %+v, replicas %+v, log %q", max, *w.d, w.reps, w.log)
	}
}

func (w *world) release(v string) {
	w.d.TargetVersionID, w.d.State, w.d.Step, w.d.StepStartedAt = &v, "progressing", 0, nil
}

func TestCanaryWalksToFullTrafficWhenHealthy(t *testing.T) {
	w := newWorld(t, "canary", 4)
	w.d.Params.WatchSeconds = 30
	w.stats = VersionStats{Requests: 100, Errors: 1, P99: 100 * time.Millisecond}
	w.release("v2")
	var seen []map[string]int
	w.until(func() bool {
		if len(seen) == 0 || !maps.Equal(seen[len(seen)-1], w.d.Traffic) {
			seen = append(seen, maps.Clone(w.d.Traffic))
		}
		return w.d.TargetVersionID == nil
	}, 50)
	want := []map[string]int{{"v1": 100}, {"v2": 10, "v1": 90}, {"v2": 50, "v1": 50}, {"v2": 100}}
	if len(seen) != len(want) {
		t.Fatalf("traffic went %v, want %v", seen, want)
	}
	for i := range want {
		if !maps.Equal(seen[i], want[i]) {
			t.Fatalf("traffic went %v, want %v", seen, want)
		}
	}
	if w.d.StableVersionID != "v2" || w.d.State != "steady" {
		t.Fatalf("after the walk: stable %s, state %s", w.d.StableVersionID, w.d.State)
	}
	w.until(func() bool { return w.running("v1") == 0 && w.running("v2") == 4 && len(w.reps) == 4 }, 5)
	if w.minRunning < 4 {
		t.Errorf("only %d replicas ran at one point; a canary never takes the stable set below its size", w.minRunning)
	}
}

func TestCanaryRollsBackOnErrors(t *testing.T) {
	w := newWorld(t, "canary", 2)
	w.d.Params.MinRequests = 50
	w.release("v2")
	w.until(func() bool { return w.d.Traffic["v2"] == 10 }, 5)
	// Few requests, out of bounds: judged only at the end of the window.
	w.stats = VersionStats{Requests: 10, Errors: 5}
	w.step()
	if w.d.TargetVersionID == nil {
		t.Fatal("rolled back on 10 requests before the window ended")
	}
	w.stats = VersionStats{Requests: 200, Errors: 30, P99: 50 * time.Millisecond}
	w.step()
	if w.d.TargetVersionID != nil || !maps.Equal(w.d.Traffic, map[string]int{"v1": 100}) {
		t.Fatalf("15%% errors did not roll back: %+v", *w.d)
	}
	if last := w.log[len(w.log)-1]; last != "rolled_back: canary rolled back automatically: error rate 15.00% above 5.00%" {
		t.Errorf("event %q", last)
	}
	w.until(func() bool { return w.running("v2") == 0 && w.running("v1") == 2 && len(w.reps) == 2 }, 3)
}

func TestCanaryRollsBackOnLatency(t *testing.T) {
	w := newWorld(t, "canary", 1)
	w.release("v2")
	w.until(func() bool { return w.d.Traffic["v2"] == 10 }, 5)
	w.stats = VersionStats{Requests: 500, P99: 3 * time.Second}
	w.step()
	if w.d.TargetVersionID != nil {
		t.Fatal("a p99 of 3s above 2s did not roll back")
	}
}

func TestCanaryPauseHoldsTheStep(t *testing.T) {
	w := newWorld(t, "canary", 2)
	w.d.Params.WatchSeconds = 10
	w.release("v2")
	w.until(func() bool { return w.d.StepStartedAt != nil }, 5)
	w.d.State = "paused"
	for range 10 {
		w.step()
	}
	if w.d.Step != 0 || w.d.Traffic["v2"] != 10 {
		t.Fatalf("a paused canary moved: step %d, traffic %v", w.d.Step, w.d.Traffic)
	}
	w.d.State = "progressing"
	w.until(func() bool { return w.d.Step == 1 }, 3)
}

func TestRollingKeepsCapacity(t *testing.T) {
	for _, tc := range []struct{ surge, unavail, n int }{{1, 0, 3}, {2, 0, 4}, {0, 1, 3}, {1, 1, 5}} {
		t.Run(fmt.Sprintf("surge%d-unavailable%d", tc.surge, tc.unavail), func(t *testing.T) {
			w := newWorld(t, "rolling", tc.n)
			w.d.Params.MaxSurge, w.d.Params.MaxUnavailable = tc.surge, tc.unavail
			w.release("v2")
			w.until(func() bool { return w.d.TargetVersionID == nil }, 40)
			w.until(func() bool { return w.running("v2") == tc.n && len(w.reps) == tc.n }, 3)
			if w.minRunning < tc.n-tc.unavail {
				t.Errorf("running replicas fell to %d; max_unavailable %d allows %d", w.minRunning, tc.unavail, tc.n-tc.unavail)
			}
			if w.maxLive > tc.n+tc.surge {
				t.Errorf("%d replicas at once; max_surge %d allows %d", w.maxLive, tc.surge, tc.n+tc.surge)
			}
		})
	}
}

func TestBlueGreenSwitchesAtOnceAndKeepsThePreviousSet(t *testing.T) {
	w := newWorld(t, "blue_green", 3)
	w.d.Params.RollbackSeconds = 60
	w.release("v2")
	w.until(func() bool {
		if w.d.Traffic["v2"] != 0 && w.d.Traffic["v2"] != 100 {
			t.Fatalf("blue-green split traffic: %v", w.d.Traffic)
		}
		return w.d.Traffic["v2"] == 100
	}, 10)
	if w.running("v2") != 3 || w.running("v1") != 3 || w.d.PreviousVersionID == nil {
		t.Fatalf("at the switch: %d new, %d old running, previous %v", w.running("v2"), w.running("v1"), w.d.PreviousVersionID)
	}
	// The previous set stays for the window (60 s = 6 passes), then goes.
	for range 4 {
		w.step()
	}
	if w.running("v1") != 3 {
		t.Fatal("the previous set stopped inside the rollback window")
	}
	w.until(func() bool { return w.running("v1") == 0 && w.d.PreviousVersionID == nil }, 5)
}

func TestSteadyReplacesLostReplicasAndScales(t *testing.T) {
	w := newWorld(t, "rolling", 3)
	w.reps = w.reps[1:] // one lost
	w.until(func() bool { return w.running("v1") == 3 }, 3)
	w.d.Replicas = 1
	w.until(func() bool { return len(w.reps) == 1 }, 2)
	w.d.State = "deleting"
	w.until(func() bool { return len(w.reps) == 0 }, 2)
}

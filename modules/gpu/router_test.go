package gpu

import (
	"testing"
	"time"
)

// TestSplitFollowsWeights: the split gives each version its weight's share
// exactly over every hundred requests, interleaved, and nothing to versions
// without ready replicas.
func TestSplitFollowsWeights(t *testing.T) {
	ready := map[string][]routeReplica{"v1": {{ID: "a"}}, "v2": {{ID: "b"}}}
	var sp splitter
	got := map[string]int{}
	run := 0
	for i := range 2000 {
		v := sp.next(map[string]int{"v1": 90, "v2": 10}, ready)
		got[v]++
		if v == "v2" {
			run = 0
		} else if run++; run > 9 {
			t.Fatalf("request %d: %d in a row to v1; a 90/10 split interleaves", i, run)
		}
		if (i+1)%100 == 0 && got["v2"] != (i+1)/10 {
			t.Fatalf("after %d requests v2 had %d, want %d", i+1, got["v2"], (i+1)/10)
		}
	}
	delete(ready, "v2")
	for range 100 {
		if v := sp.next(map[string]int{"v1": 90, "v2": 10}, ready); v != "v1" {
			t.Fatalf("drew %q, which has no ready replica", v)
		}
	}
	if v := sp.next(map[string]int{"v1": 100}, map[string][]routeReplica{}); v != "" {
		t.Errorf("with no replica at all: %q", v)
	}
	// Weighted versions that cannot serve: any that can.
	if v := sp.next(map[string]int{"v1": 100}, map[string][]routeReplica{"v3": {{ID: "c"}}}); v != "v3" {
		t.Errorf("with only an unweighted version ready: %q", v)
	}
}

// TestPickStrategies: round robin cycles, least outstanding avoids the busy
// replica, open breakers and tried replicas are skipped.
func TestPickStrategies(t *testing.T) {
	s := &Service{}
	reps := []routeReplica{{ID: "a"}, {ID: "b"}, {ID: "c"}}
	rr := s.NewRouter(RouterConfig{Strategy: RoundRobin})
	seen := map[string]int{}
	for range 30 {
		r, _ := rr.pick(reps, nil)
		seen[r.ID]++
	}
	if seen["a"] != 10 || seen["b"] != 10 || seen["c"] != 10 {
		t.Errorf("round robin spread %v", seen)
	}
	lo := s.NewRouter(RouterConfig{})
	lo.live("a").outstanding.Store(5)
	lo.live("b").outstanding.Store(1)
	lo.live("c").outstanding.Store(3)
	for range 20 {
		if r, _ := lo.pick(reps, nil); r.ID != "b" {
			t.Fatalf("least outstanding picked %s", r.ID)
		}
	}
	lo.live("b").breaker.Open()
	if r, _ := lo.pick(reps, []string{"c"}); r.ID != "a" {
		t.Errorf("with b's breaker open and c tried: %s, want a", r.ID)
	}
	if _, ok := lo.pick(reps, []string{"a", "c"}); ok {
		t.Error("picked a replica although every one is tried or open")
	}
	wrt := s.NewRouter(RouterConfig{Strategy: WeightedResponseTime})
	wrt.live("a").ewma.Store(int64(100 * time.Millisecond))
	wrt.live("b").ewma.Store(int64(10 * time.Millisecond))
	wrt.live("c").ewma.Store(int64(100 * time.Millisecond))
	seen = map[string]int{}
	for range 12000 {
		r, _ := wrt.pick(reps, nil)
		seen[r.ID]++
	}
	if seen["b"] < 4*seen["a"] {
		t.Errorf("weighted response time spread %v; b is ten times faster", seen)
	}
}

// TestDesiredReplicas: concurrency and utilization targets, bounds, and
// scale to zero only after the idle window.
func TestDesiredReplicas(t *testing.T) {
	now := time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)
	d := &Deployment{MinReplicas: 0, MaxReplicas: 5, Replicas: 2, Params: DefaultParams()}
	d.Params.AutoscaleMetric, d.Params.AutoscaleTarget, d.Params.ScaleToZeroSeconds = "concurrency", 4, 60
	for _, tc := range []struct {
		inflight int64
		last     time.Time
		want     int
	}{
		{9, now, 3}, {100, now, 5}, {0, now.Add(-10 * time.Second), 1}, {0, now.Add(-2 * time.Minute), 0}, {1, now.Add(-time.Hour), 1},
	} {
		if got, why := desiredReplicas(d, tc.inflight, 0, tc.last, now); got != tc.want {
			t.Errorf("in flight %d, last request %s ago: %d (%s), want %d", tc.inflight, now.Sub(tc.last), got, why, tc.want)
		}
	}
	d.Params.AutoscaleMetric, d.Params.AutoscaleTarget, d.MinReplicas = "gpu_utilization", 50, 1
	if got, _ := desiredReplicas(d, 0, 90, now, now); got != 4 {
		t.Errorf("90%% utilization over 2 replicas at a 50%% target: %d, want 4", got)
	}
	if got, _ := desiredReplicas(d, 0, 10, now, now); got != 1 {
		t.Errorf("10%% utilization: %d, want min_replicas 1", got)
	}
}

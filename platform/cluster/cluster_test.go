package cluster_test

import (
	"context"
	"maps"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/atriumhq/atrium/platform/cluster"
	"github.com/atriumhq/atrium/platform/testenv"
)

// checks is a settable health report, as an instance's dependency checks.
type checks struct {
	mu sync.Mutex
	m  map[string]string
}

func newChecks(m map[string]string) *checks { return &checks{m: m} }

func (c *checks) set(dep, state string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.m[dep] = state
}

func (c *checks) check(context.Context) map[string]string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return maps.Clone(c.m)
}

// registry returns a registry for instance id, through its own client as a
// separate instance would, under prefix.
func registry(t testing.TB, prefix, id string, interval time.Duration, ch *checks) *cluster.Registry {
	t.Helper()
	self := cluster.Instance{ID: id, Version: "v1.2.3", Host: "host-" + id, Addr: "10.0.0.1:8080", StartedAt: time.Now().UTC().Truncate(time.Second)}
	return cluster.NewRegistry(testenv.RedisClient(t, prefix), self, interval, ch.check, zerolog.Nop())
}

func list(t testing.TB, r *cluster.Registry) []cluster.Instance {
	t.Helper()
	insts, err := r.List(context.Background())
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	return insts
}

func ids(insts []cluster.Instance) []string {
	out := make([]string, len(insts))
	for i, in := range insts {
		out[i] = in.ID
	}
	return out
}

// run starts r.Run in the background and returns a function that stops it
// and waits for it to return; the test stops it if it is still running.
func run(t testing.TB, r *cluster.Registry) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Run returned %v, want nil", err)
				}
			case <-time.After(5 * time.Second):
				t.Error("Run still running 5s after its context was cancelled")
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

func TestBeatAndList(t *testing.T) {
	ctx := context.Background()
	prefix := testenv.RedisPrefix(t)
	// Registered out of order: List sorts by id.
	web2 := registry(t, prefix, "web-2", time.Minute, newChecks(map[string]string{"postgres": "ok", "redis": "ok"}))
	web1 := registry(t, prefix, "web-1", time.Minute, newChecks(map[string]string{"postgres": "connection refused", "redis": "ok"}))
	// Another deployment on the same Redis is not listed.
	other := registry(t, testenv.RedisPrefix(t), "web-0", time.Minute, newChecks(map[string]string{}))

	before := time.Now().UTC()
	for _, r := range []*cluster.Registry{web2, web1, other} {
		if err := r.Beat(ctx); err != nil {
			t.Fatalf("Beat %s: %v", r.Self().ID, err)
		}
	}

	for _, viewer := range []*cluster.Registry{web1, web2} {
		got := list(t, viewer)
		if !slices.Equal(ids(got), []string{"web-1", "web-2"}) {
			t.Fatalf("%s lists %v, want [web-1 web-2]", viewer.Self().ID, ids(got))
		}
		want := map[string]struct {
			checks  map[string]string
			healthy bool
		}{
			"web-1": {map[string]string{"postgres": "connection refused", "redis": "ok"}, false},
			"web-2": {map[string]string{"postgres": "ok", "redis": "ok"}, true},
		}
		for _, in := range got {
			w := want[in.ID]
			if !maps.Equal(in.Checks, w.checks) {
				t.Errorf("%s: checks %v, want %v", in.ID, in.Checks, w.checks)
			}
			if in.Healthy() != w.healthy {
				t.Errorf("%s: Healthy() = %v, want %v", in.ID, in.Healthy(), w.healthy)
			}
			if in.Version != "v1.2.3" || in.Host != "host-"+in.ID || in.Addr != "10.0.0.1:8080" || in.StartedAt.IsZero() {
				t.Errorf("%s: description not carried: %+v", in.ID, in)
			}
			if in.SeenAt.Before(before.Add(-time.Second)) {
				t.Errorf("%s: SeenAt %s is older than the beat (%s)", in.ID, in.SeenAt, before)
			}
		}
	}
	if got := list(t, other); !slices.Equal(ids(got), []string{"web-0"}) {
		t.Errorf("other deployment lists %v, want [web-0]", ids(got))
	}
}

// TestBeatReportsCurrentChecks checks that each heartbeat carries the
// checks as they are at that moment.
func TestBeatReportsCurrentChecks(t *testing.T) {
	ctx := context.Background()
	ch := newChecks(map[string]string{"postgres": "ok"})
	r := registry(t, testenv.RedisPrefix(t), "web-1", time.Minute, ch)

	for _, state := range []string{"ok", "timeout after 2s", "ok"} {
		ch.set("postgres", state)
		if err := r.Beat(ctx); err != nil {
			t.Fatal(err)
		}
		got := list(t, r)
		if len(got) != 1 || got[0].Checks["postgres"] != state || got[0].Healthy() != (state == "ok") {
			t.Errorf("after a beat with postgres %q: listed %+v", state, got)
		}
	}
}

func TestStoppedInstanceDropsOutAfterTTL(t *testing.T) {
	const interval = 100 * time.Millisecond // TTL 300ms
	prefix := testenv.RedisPrefix(t)
	live := registry(t, prefix, "live", interval, newChecks(map[string]string{"postgres": "ok"}))
	crashed := registry(t, prefix, "crashed", interval, newChecks(map[string]string{"postgres": "ok"}))
	run(t, live)

	// One heartbeat and then nothing, as from a process that was killed.
	if err := crashed.Beat(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := ids(list(t, live)); !slices.Contains(got, "crashed") {
		t.Fatalf("listed %v right after crashed's heartbeat, want it included", got)
	}
	testenv.Eventually(t, 30*interval, "the crashed instance is still listed", func() bool {
		return !slices.Contains(ids(list(t, live)), "crashed")
	})
	// The instance that keeps beating stays, well past its own TTL.
	time.Sleep(6 * interval)
	if got := ids(list(t, live)); !slices.Equal(got, []string{"live"}) {
		t.Errorf("listed %v, want [live]", got)
	}
}

func TestRunRemovesInstanceOnStop(t *testing.T) {
	// A long interval: only Run's clean-up, not expiry, can remove it
	// while the test runs.
	const interval = time.Minute
	prefix := testenv.RedisPrefix(t)
	r := registry(t, prefix, "web-1", interval, newChecks(map[string]string{"postgres": "ok"}))
	viewer := registry(t, prefix, "viewer", interval, newChecks(map[string]string{}))
	stop := run(t, r)

	testenv.Eventually(t, 5*time.Second, "web-1 never listed", func() bool {
		return slices.Equal(ids(list(t, viewer)), []string{"web-1"})
	})
	stop()
	if got := list(t, viewer); len(got) != 0 {
		t.Errorf("listed %v right after web-1 stopped, want nobody", ids(got))
	}
}

func TestHealthy(t *testing.T) {
	cases := []struct {
		name   string
		checks map[string]string
		want   bool
	}{
		{"no checks", nil, true},
		{"all ok", map[string]string{"postgres": "ok", "redis": "ok"}, true},
		{"one failing", map[string]string{"postgres": "ok", "redis": "dial tcp: connection refused"}, false},
		{"empty state", map[string]string{"postgres": ""}, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := (cluster.Instance{ID: "x", Checks: tc.checks}).Healthy(); got != tc.want {
				t.Errorf("Healthy() with %v = %v, want %v", tc.checks, got, tc.want)
			}
		})
	}
}

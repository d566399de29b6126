package redisx_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/atriumhq/atrium/platform/redisx"
	"github.com/atriumhq/atrium/platform/testenv"
)

// leases returns the lease name for each holder, each through its own client
// as separate instances would, all in one test deployment.
func leases(t testing.TB, name string, ttl time.Duration, holders ...string) []*redisx.Lease {
	t.Helper()
	prefix := testenv.RedisPrefix(t)
	out := make([]*redisx.Lease, len(holders))
	for i, h := range holders {
		out[i] = redisx.NewLease(connect(t, prefix), name, h, ttl)
	}
	return out
}

func acquire(t testing.TB, l *redisx.Lease) int64 {
	t.Helper()
	tok, err := l.Acquire(context.Background())
	if err != nil {
		t.Fatalf("Acquire: %v", err)
	}
	if tok <= 0 {
		t.Fatalf("Acquire returned token %d, want > 0", tok)
	}
	return tok
}

func checkHolder(t testing.TB, l *redisx.Lease, wantHolder string, wantToken int64) {
	t.Helper()
	h, tok, err := l.Holder(context.Background())
	if err != nil {
		t.Fatalf("Holder: %v", err)
	}
	if h != wantHolder || tok != wantToken {
		t.Errorf("Holder = (%q, %d), want (%q, %d)", h, tok, wantHolder, wantToken)
	}
}

func TestLeaseOneHolder(t *testing.T) {
	ctx := context.Background()
	ls := leases(t, "scheduler", time.Minute, "inst-a", "inst-b")
	a, b := ls[0], ls[1]

	checkHolder(t, a, "", 0)
	tok := acquire(t, a)
	if _, err := b.Acquire(ctx); !errors.Is(err, redisx.ErrNotHeld) {
		t.Fatalf("second holder: Acquire = %v, want ErrNotHeld", err)
	}
	checkHolder(t, b, "inst-a", tok)

	// Acquiring again as the same holder (a restart that kept its id)
	// keeps the lease and its token.
	if again := acquire(t, a); again != tok {
		t.Errorf("re-Acquire by the holder = %d, want the same token %d", again, tok)
	}

	renewals := []struct {
		name    string
		lease   *redisx.Lease
		token   int64
		wantErr error
	}{
		{"holder with its token", a, tok, nil},
		{"holder with another token", a, tok + 1, redisx.ErrNotHeld},
		{"non-holder with the holder's token", b, tok, redisx.ErrNotHeld},
	}
	for _, r := range renewals {
		if err := r.lease.Renew(ctx, r.token); !errors.Is(err, r.wantErr) {
			t.Errorf("Renew by %s = %v, want %v", r.name, err, r.wantErr)
		}
	}

	// The non-holder cannot release it either.
	if err := b.Release(ctx, tok); err != nil {
		t.Fatalf("Release: %v", err)
	}
	checkHolder(t, a, "inst-a", tok)
	if err := a.Release(ctx, tok); err != nil {
		t.Fatalf("Release: %v", err)
	}
	checkHolder(t, a, "", 0)
}

func TestLeaseFencingTokensIncrease(t *testing.T) {
	ctx := context.Background()
	ls := leases(t, "scheduler", time.Minute, "inst-a", "inst-b", "inst-c")
	var last int64
	for i := range 9 {
		l := ls[i%len(ls)]
		tok := acquire(t, l)
		if tok <= last {
			t.Fatalf("acquisition %d: token %d, want > %d", i, tok, last)
		}
		last = tok
		if err := l.Release(ctx, tok); err != nil {
			t.Fatalf("Release: %v", err)
		}
	}
}

// TestLeaseExpiry checks that a lease whose holder stops renewing passes to
// another holder after the TTL, and that the old holder can then neither
// renew nor release it.
func TestLeaseExpiry(t *testing.T) {
	ctx := context.Background()
	const ttl = 300 * time.Millisecond
	ls := leases(t, "scheduler", ttl, "inst-a", "inst-b")
	a, b := ls[0], ls[1]

	old := acquire(t, a)
	var tok int64
	testenv.Eventually(t, 20*ttl, "the lease never expired for another holder", func() bool {
		var err error
		tok, err = b.Acquire(ctx)
		if err != nil && !errors.Is(err, redisx.ErrNotHeld) {
			t.Fatalf("Acquire: %v", err)
		}
		return err == nil
	})
	if tok <= old {
		t.Errorf("token after expiry %d, want > %d", tok, old)
	}

	if err := a.Renew(ctx, old); !errors.Is(err, redisx.ErrNotHeld) {
		t.Errorf("Renew by the expired holder = %v, want ErrNotHeld", err)
	}
	if err := a.Release(ctx, old); err != nil {
		t.Fatalf("Release: %v", err)
	}
	checkHolder(t, b, "inst-b", tok)
}

// leadership records Lease.Run's calls of lead across competing instances.
type leadership struct {
	current atomic.Int32 // instances leading right now
	events  chan leadEvent

	mu  sync.Mutex
	max int32 // the most instances ever leading at once
	all []leadEvent
}

type leadEvent struct {
	holder string
	token  int64
	ctx    context.Context
}

func newLeadership() *leadership { return &leadership{events: make(chan leadEvent, 100)} }

func (l *leadership) lead(holder string) func(context.Context, int64) {
	return func(ctx context.Context, token int64) {
		n := l.current.Add(1)
		ev := leadEvent{holder, token, ctx}
		l.mu.Lock()
		l.max = max(l.max, n)
		l.all = append(l.all, ev)
		l.mu.Unlock()
		l.events <- ev
		<-ctx.Done()
		l.current.Add(-1)
	}
}

// next waits up to d for an instance to start leading.
func (l *leadership) next(t testing.TB, d time.Duration) leadEvent {
	t.Helper()
	select {
	case ev := <-l.events:
		return ev
	case <-time.After(d):
		t.Fatalf("nobody started leading within %s", d)
		return leadEvent{}
	}
}

func (l *leadership) maxLeaders() int32 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.max
}

func (l *leadership) leads() []leadEvent {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]leadEvent(nil), l.all...)
}

// run starts l.Run in the background and returns a function that stops it
// and waits for it to return; the test stops it if it is still running.
func run(t testing.TB, l *redisx.Lease, lead func(context.Context, int64)) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		l.Run(ctx, zerolog.Nop(), lead)
	}()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case <-done:
			case <-time.After(5 * time.Second):
				t.Error("Lease.Run still running 5s after its context was cancelled")
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

func TestLeaseRunOneLeaderAtATime(t *testing.T) {
	const ttl = 300 * time.Millisecond
	ls := leases(t, "scheduler", ttl, "inst-a", "inst-b")
	tr := newLeadership()
	stop := map[string]func(){
		"inst-a": run(t, ls[0], tr.lead("inst-a")),
		"inst-b": run(t, ls[1], tr.lead("inst-b")),
	}

	first := tr.next(t, 5*time.Second)
	// The leader renews its lease: over several TTLs nobody else leads and
	// its own lead context stays open.
	select {
	case ev := <-tr.events:
		t.Fatalf("%s started leading (token %d) while %s held the lease", ev.holder, ev.token, first.holder)
	case <-first.ctx.Done():
		t.Fatalf("%s stopped leading while nobody else could take the lease", first.holder)
	case <-time.After(4 * ttl):
	}
	checkHolder(t, ls[0], first.holder, first.token)

	stop[first.holder]()
	if first.ctx.Err() == nil {
		t.Error("Run returned without cancelling its lead context")
	}
	second := tr.next(t, 10*ttl)
	if second.holder == first.holder {
		t.Fatalf("%s led again after it was stopped", second.holder)
	}
	if second.token <= first.token {
		t.Errorf("new leader's token %d, want > %d", second.token, first.token)
	}
	if m := tr.maxLeaders(); m != 1 {
		t.Errorf("%d instances led at once, want at most 1", m)
	}

	stop[second.holder]()
	checkHolder(t, ls[0], "", 0) // released on the way out
	if m := tr.maxLeaders(); m != 1 {
		t.Errorf("%d instances led at once, want at most 1", m)
	}
}

// TestLeaseRunStopsLeadingWhenLeaseLost simulates the lease vanishing from
// under its holder (a Redis failover that lost the key) and another
// instance taking it: the old leader's lead context must be cancelled.
func TestLeaseRunStopsLeadingWhenLeaseLost(t *testing.T) {
	ctx := context.Background()
	const ttl = 300 * time.Millisecond
	prefix := testenv.RedisPrefix(t)
	ca, cb := connect(t, prefix), connect(t, prefix)
	a := redisx.NewLease(ca, "scheduler", "inst-a", ttl)
	b := redisx.NewLease(cb, "scheduler", "inst-b", ttl)
	tr := newLeadership()
	stop := run(t, a, tr.lead("inst-a"))

	first := tr.next(t, 5*time.Second)
	var tokB int64
	testenv.Eventually(t, 5*time.Second, "inst-b never took the lost lease", func() bool {
		// a may renew between DEL and Acquire and so take the lease
		// back; try again until b wins.
		if err := ca.Del(ctx, ca.Key("lease", "scheduler")).Err(); err != nil {
			t.Fatal(err)
		}
		var err error
		tokB, err = b.Acquire(ctx)
		if err != nil && !errors.Is(err, redisx.ErrNotHeld) {
			t.Fatalf("Acquire: %v", err)
		}
		return err == nil
	})
	if tokB <= first.token {
		t.Errorf("inst-b's token %d, want > %d", tokB, first.token)
	}

	select {
	case <-first.ctx.Done():
	case <-time.After(10 * ttl):
		t.Fatal("the old leader's lead context was not cancelled after it lost the lease")
	}
	testenv.Eventually(t, 10*ttl, "inst-a still leads with a token older than inst-b's", func() bool {
		for _, ev := range tr.leads() {
			if ev.token < tokB && ev.ctx.Err() == nil {
				return false
			}
		}
		return true
	})

	// inst-b never renews, so its lease expires and inst-a leads again
	// with a newer token.
	for {
		ev := tr.next(t, 20*ttl)
		if ev.token > tokB {
			break
		}
	}
	stop()
	checkHolder(t, a, "", 0)
}

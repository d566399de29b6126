package redisx_test

import (
	"context"
	"io"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/atriumhq/atrium/platform/logging"
	"github.com/atriumhq/atrium/platform/redisx"
	"github.com/atriumhq/atrium/platform/testenv"
)

type invalidation struct {
	Tenant  string `json:"tenant"`
	Version int    `json:"version"`
}

// subscriber runs Broadcast.Subscribe in the background and records what it
// delivers.
type subscriber struct {
	ready   chan struct{} // closed on the first onReady
	readies atomic.Int32
	cancel  context.CancelFunc
	done    chan struct{} // closed when Subscribe returns
	err     error         // Subscribe's result, set before done is closed

	mu  sync.Mutex
	got []invalidation
}

func (s *subscriber) received() []invalidation {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.got)
}

// stop cancels the subscription and waits up to 5s for Subscribe to return.
func (s *subscriber) stop(t testing.TB) error {
	t.Helper()
	s.cancel()
	select {
	case <-s.done:
		return s.err
	case <-time.After(5 * time.Second):
		t.Fatal("Subscribe still running 5s after its context was cancelled")
		return nil
	}
}

// subscribe starts a subscriber on bc and waits until it is subscribed; the
// test stops it if it is still running.
func subscribe(t testing.TB, bc *redisx.Broadcast[invalidation], log zerolog.Logger) *subscriber {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	s := &subscriber{ready: make(chan struct{}), cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(s.done)
		s.err = bc.Subscribe(ctx, log, func() {
			if s.readies.Add(1) == 1 {
				close(s.ready)
			}
		}, func(v invalidation) {
			s.mu.Lock()
			defer s.mu.Unlock()
			s.got = append(s.got, v)
		})
	}()
	t.Cleanup(func() { _ = s.stop(t) })
	select {
	case <-s.ready:
	case <-s.done:
		t.Fatalf("Subscribe returned before it was ready: %v", s.err)
	case <-time.After(5 * time.Second):
		t.Fatal("onReady not called within 5s")
	}
	return s
}

func TestBroadcastRoundTrip(t *testing.T) {
	ctx := context.Background()
	prefix := testenv.RedisPrefix(t)
	// Two clients stand for two instances of one deployment.
	subClient, pubClient := connect(t, prefix), connect(t, prefix)
	sink := &testenv.LogBuffer{}
	s := subscribe(t, redisx.NewBroadcast[invalidation](subClient, "tenant-cache"), logging.New(sink, "debug", "json", false))
	pub := redisx.NewBroadcast[invalidation](pubClient, "tenant-cache")

	want := []invalidation{{"t1", 1}, {"t2", 2}, {"t1", 3}}
	for _, v := range want[:2] {
		if err := pub.Publish(ctx, v); err != nil {
			t.Fatalf("Publish: %v", err)
		}
	}
	// A payload that is not JSON for the type, published by something
	// else on the same channel, is skipped.
	if err := pubClient.Publish(ctx, pubClient.Key("bc", "tenant-cache"), "{not json").Err(); err != nil {
		t.Fatal(err)
	}
	if err := pub.Publish(ctx, want[2]); err != nil {
		t.Fatalf("Publish: %v", err)
	}

	testenv.Eventually(t, 5*time.Second, "not every message was delivered", func() bool { return len(s.received()) >= len(want) })
	if got := s.received(); !slices.Equal(got, want) {
		t.Errorf("received %v, want %v in order", got, want)
	}
	if n := s.readies.Load(); n != 1 {
		t.Errorf("onReady called %d times, want 1", n)
	}
	if logs := sink.String(); !strings.Contains(logs, `"level":"error"`) || !strings.Contains(logs, pubClient.Key("bc", "tenant-cache")) {
		t.Errorf("the malformed message was not logged as an error naming the channel; logs:\n%s", logs)
	}

	if err := s.stop(t); err != nil {
		t.Errorf("Subscribe returned %v after its context was cancelled, want nil", err)
	}
}

// TestBroadcastNamesAreSeparate checks that a broadcast only delivers its
// own messages: a different name, or the same name in another deployment,
// is another channel.
func TestBroadcastNamesAreSeparate(t *testing.T) {
	ctx := context.Background()
	prefix := testenv.RedisPrefix(t)
	c := connect(t, prefix)
	other := connect(t, testenv.RedisPrefix(t))
	s := subscribe(t, redisx.NewBroadcast[invalidation](c, "tenant-cache"), zerolog.Nop())

	if err := redisx.NewBroadcast[invalidation](c, "settings").Publish(ctx, invalidation{"wrong-name", 1}); err != nil {
		t.Fatal(err)
	}
	if err := redisx.NewBroadcast[invalidation](other, "tenant-cache").Publish(ctx, invalidation{"wrong-prefix", 1}); err != nil {
		t.Fatal(err)
	}
	// Redis runs commands one at a time and each PUBLISH above returned
	// before this one was sent, so once the marker arrives the two above
	// would have too.
	marker := invalidation{"marker", 1}
	if err := redisx.NewBroadcast[invalidation](c, "tenant-cache").Publish(ctx, marker); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 5*time.Second, "marker not delivered", func() bool { return len(s.received()) > 0 })
	if got := s.received(); !slices.Equal(got, []invalidation{marker}) {
		t.Errorf("received %v, want only %v", got, marker)
	}
}

// TestBroadcastFollow: Follow reloads when subscribed and then every
// period, applies messages, and returns once its context ends.
func TestBroadcastFollow(t *testing.T) {
	prefix := testenv.RedisPrefix(t)
	sub, pub := connect(t, prefix), connect(t, prefix)
	var reloads atomic.Int32
	var mu sync.Mutex
	var got []invalidation
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- redisx.NewBroadcast[invalidation](sub, "follow").Follow(ctx, zerolog.Nop(), 50*time.Millisecond,
			func(context.Context) error { reloads.Add(1); return nil },
			func(v invalidation) { mu.Lock(); got = append(got, v); mu.Unlock() })
	}()
	testenv.Eventually(t, 5*time.Second, "no reload on subscribe", func() bool { return reloads.Load() >= 1 })
	if err := redisx.NewBroadcast[invalidation](pub, "follow").Publish(context.Background(), invalidation{"t1", 1}); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 5*time.Second, "the message was not applied", func() bool { mu.Lock(); defer mu.Unlock(); return len(got) == 1 })
	testenv.Eventually(t, 5*time.Second, "no periodic reload", func() bool { return reloads.Load() >= 3 })
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Follow returned %v after its context ended", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Follow did not return after its context ended")
	}
}

// TestSubscribeOutlivesRedisDownAtStart: a subscriber started while Redis
// cannot be reached keeps trying, and delivers once Redis answers.
func TestSubscribeOutlivesRedisDownAtStart(t *testing.T) {
	prefix := testenv.RedisPrefix(t)
	real := testenv.RedisClient(t, prefix)
	// A proxy that refuses every connection until up is set, then forwards
	// to the real Redis.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	var up atomic.Bool
	target := strings.SplitN(testenv.RedisURL(), "/", 4)[2] // host:port of redis://host:port/db
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			if !up.Load() {
				_ = c.Close()
				continue
			}
			go func() {
				r, err := net.Dial("tcp", target)
				if err != nil {
					_ = c.Close()
					return
				}
				go func() { _, _ = io.Copy(r, c); _ = r.Close() }()
				_, _ = io.Copy(c, r)
				_ = c.Close()
			}()
		}
	}()
	viaProxy, err := redisx.Connect(redisx.Options{URL: "redis://" + ln.Addr().String() + "/0", Prefix: prefix, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = viaProxy.Close() })

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	got := make(chan invalidation, 1)
	ready := make(chan struct{}, 1)
	go func() {
		_ = redisx.NewBroadcast[invalidation](viaProxy, "late").Subscribe(ctx, zerolog.Nop(),
			func() { ready <- struct{}{} }, func(v invalidation) { got <- v })
	}()
	time.Sleep(700 * time.Millisecond) // the first subscribe fails
	up.Store(true)
	select {
	case <-ready:
	case <-time.After(10 * time.Second):
		t.Fatal("never subscribed after Redis came up")
	}
	if err := redisx.NewBroadcast[invalidation](real, "late").Publish(ctx, invalidation{Tenant: "t", Version: 1}); err != nil {
		t.Fatal(err)
	}
	select {
	case v := <-got:
		if v.Version != 1 {
			t.Errorf("got %+v", v)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no message after Redis came up")
	}
}

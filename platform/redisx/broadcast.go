package redisx

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/rs/zerolog"
)

// Broadcast is a typed publish/subscribe channel that reaches every
// instance: cache invalidations, run-time settings, revocations. Delivery is
// at most once and only to instances subscribed at the time, so a
// subscriber must also load the current state from PostgreSQL at start and
// after a reconnect (see Subscribe's onReady).
type Broadcast[T any] struct {
	c       *Client
	channel string
}

// NewBroadcast returns the broadcast named name.
func NewBroadcast[T any](c *Client, name string) *Broadcast[T] {
	return &Broadcast[T]{c: c, channel: c.Key("bc", name)}
}

// Publish sends v to every subscribed instance.
func (b *Broadcast[T]) Publish(ctx context.Context, v T) error {
	payload, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("broadcast %s: encode: %w", b.channel, err)
	}
	if err := b.c.Publish(ctx, b.channel, payload).Err(); err != nil {
		return fmt.Errorf("broadcast %s: publish: %w", b.channel, err)
	}
	return nil
}

// Subscribe calls fn for every message until ctx ends. onReady, if not nil,
// is called each time the subscription is (re)established, after which no
// message is missed until the next disconnect: reload state there. A
// message that does not decode is logged and skipped. Redis being down, at
// start or later, is retried until ctx ends; Subscribe returns nil then.
func (b *Broadcast[T]) Subscribe(ctx context.Context, log zerolog.Logger, onReady func(), fn func(T)) error {
	ps := b.c.Subscribe(ctx)
	defer ps.Close()
	// go-redis ends a blocked Receive at a deadline but not on cancellation:
	// close the subscription when ctx ends so that Receive returns.
	stop := context.AfterFunc(ctx, func() { _ = ps.Close() })
	defer stop()
	// A failed first subscribe (Redis down at start) still records the
	// channel: the Receive loop below redials and subscribes until Redis
	// answers, so the subscription is never given up.
	if err := ps.Subscribe(ctx, b.channel); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		log.Warn().Err(err).Str("channel", b.channel).Msg("broadcast subscribe failed; retrying until Redis answers")
	}
	for {
		msg, err := ps.Receive(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			// go-redis redials and resubscribes on the next Receive; the
			// confirmation arrives as a *redis.Subscription below.
			log.Warn().Err(err).Str("channel", b.channel).Msg("broadcast connection lost; resubscribing")
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(500 * time.Millisecond):
			}
			continue
		}
		switch m := msg.(type) {
		case *redis.Subscription:
			if m.Kind == "subscribe" && onReady != nil {
				onReady()
			}
		case *redis.Message:
			var v T
			if err := json.Unmarshal([]byte(m.Payload), &v); err != nil {
				log.Error().Err(err).Str("channel", b.channel).Msg("broadcast message does not decode; skipped")
				continue
			}
			fn(v)
		}
	}
}

// Follow keeps state that every instance holds in memory current: fn
// applies each message, and reload rereads the state from the system of
// record on every (re)subscription (messages sent while unsubscribed are
// lost) and every `every` (a publish that failed elsewhere is caught up).
// A failed reload is logged and retried at the next of those. Follow
// returns when ctx ends.
func (b *Broadcast[T]) Follow(ctx context.Context, log zerolog.Logger, every time.Duration, reload func(context.Context) error, fn func(T)) error {
	load := func(when string) {
		if err := reload(ctx); err != nil && ctx.Err() == nil {
			log.Warn().Err(err).Str("channel", b.channel).Str("when", when).Msg("reload failed; retried at the next resubscription or period")
		}
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() {
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				load("periodic")
			}
		}
	})
	return b.Subscribe(ctx, log, func() { load("subscribed") }, fn)
}

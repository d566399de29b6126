package redisx

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"
)

// Lease is a leader lease: at most one holder at a time among all
// instances, for as long as it keeps renewing. Each acquisition gets a
// fencing token larger than every earlier one, so that work done by a holder
// that lost its lease (a long GC pause, a partition) can be rejected by
// comparing tokens where the work lands (for example a column in PostgreSQL).
type Lease struct {
	c      *Client
	key    string
	fence  string
	holder string
	ttl    time.Duration
}

// NewLease returns the lease named name for holder (an instance id).
func NewLease(c *Client, name, holder string, ttl time.Duration) *Lease {
	return &Lease{c: c, key: c.Key("lease", name), fence: c.Key("lease", name, "fence"), holder: holder, ttl: ttl}
}

// acquireScript takes the lease if it is free (or already ours) and returns
// the fencing token; 0 when another holder has it.
var acquireScript = redis.NewScript(`
local cur = redis.call('GET', KEYS[1])
if cur then
  local sep = string.find(cur, '|', 1, true)
  if string.sub(cur, sep + 1) == ARGV[1] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return tonumber(string.sub(cur, 1, sep - 1))
  end
  return 0
end
local token = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], token .. '|' .. ARGV[1], 'PX', ARGV[2])
return token
`)

// renewScript extends the lease only if it is still held with this token.
var renewScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
`)

// releaseScript deletes the lease only if it is still held with this token.
var releaseScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
`)

// ErrNotHeld means the lease is held by someone else (or was lost).
var ErrNotHeld = errors.New("lease not held")

// Acquire takes the lease and returns its fencing token, or ErrNotHeld when
// another instance holds it.
func (l *Lease) Acquire(ctx context.Context) (int64, error) {
	tok, err := acquireScript.Run(ctx, l.c, []string{l.key, l.fence}, l.holder, l.ttl.Milliseconds()).Int64()
	if err != nil {
		return 0, fmt.Errorf("lease %s: acquire: %w", l.key, err)
	}
	if tok == 0 {
		return 0, ErrNotHeld
	}
	return tok, nil
}

// Renew extends a lease held with token; ErrNotHeld when it was lost.
func (l *Lease) Renew(ctx context.Context, token int64) error {
	ok, err := renewScript.Run(ctx, l.c, []string{l.key}, l.value(token), l.ttl.Milliseconds()).Int64()
	if err != nil {
		return fmt.Errorf("lease %s: renew: %w", l.key, err)
	}
	if ok == 0 {
		return ErrNotHeld
	}
	return nil
}

// Release gives the lease up if it is still held with token.
func (l *Lease) Release(ctx context.Context, token int64) error {
	return releaseScript.Run(ctx, l.c, []string{l.key}, l.value(token)).Err()
}

// Holder returns the current holder and token, or "" when free.
func (l *Lease) Holder(ctx context.Context) (string, int64, error) {
	v, err := l.c.Get(ctx, l.key).Result()
	if errors.Is(err, redis.Nil) {
		return "", 0, nil
	}
	if err != nil {
		return "", 0, err
	}
	tok, holder, _ := strings.Cut(v, "|")
	n, _ := strconv.ParseInt(tok, 10, 64)
	return holder, n, nil
}

func (l *Lease) value(token int64) string { return strconv.FormatInt(token, 10) + "|" + l.holder }

// Run competes for the lease until ctx ends and calls lead while it is held,
// with a context that is cancelled as soon as the lease is lost (a renewal
// fails or is refused). Renewals happen every ttl/3; a holder that cannot
// renew stops leading before its lease can expire anywhere else.
func (l *Lease) Run(ctx context.Context, log zerolog.Logger, lead func(ctx context.Context, token int64)) {
	retry := l.ttl / 3
	for ctx.Err() == nil {
		token, err := l.Acquire(ctx)
		if err != nil {
			if !errors.Is(err, ErrNotHeld) {
				log.Warn().Err(err).Str("lease", l.key).Msg("lease acquire failed")
			}
			sleep(ctx, retry)
			continue
		}
		log.Info().Str("lease", l.key).Int64("token", token).Msg("became leader")
		lctx, cancel := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() {
			defer close(done)
			lead(lctx, token)
		}()
		l.keep(lctx, cancel, log, token, done)
		cancel()
		<-done
		_ = l.Release(context.WithoutCancel(ctx), token)
		log.Info().Str("lease", l.key).Int64("token", token).Msg("stopped leading")
	}
}

// keep renews the lease until ctx ends, lead returns, or a renewal fails.
func (l *Lease) keep(ctx context.Context, cancel context.CancelFunc, log zerolog.Logger, token int64, done <-chan struct{}) {
	t := time.NewTicker(l.ttl / 3)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-done:
			return
		case <-t.C:
			rctx, rcancel := context.WithTimeout(ctx, l.ttl/3)
			err := l.Renew(rctx, token)
			rcancel()
			if err != nil {
				log.Warn().Err(err).Str("lease", l.key).Msg("lease lost")
				cancel()
				return
			}
		}
	}
}

func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

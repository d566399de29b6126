// Package redisx holds Atrium's use of Redis, the only run-time state that
// instances share: the client, a typed publish/subscribe broadcast, and
// leader leases with fencing tokens. Every key and channel is prefixed so
// that several deployments (or test runs) can share one Redis.
package redisx

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"
)

// Options configure Connect.
type Options struct {
	URL     string
	Prefix  string
	Timeout time.Duration
	// Log receives go-redis's own messages.
	Log zerolog.Logger
}

// Client is a go-redis client plus the key prefix of this deployment.
type Client struct {
	*redis.Client
	prefix string
}

// logger sends go-redis's own messages (dial failures while Redis is
// down) to zerolog instead of the standard logger's stderr.
type logger struct{ log zerolog.Logger }

func (l logger) Printf(ctx context.Context, format string, v ...any) {
	l.log.Warn().Ctx(ctx).Str("module", "redis").Msgf(format, v...)
}

var setLogger sync.Once

// Connect parses the URL and returns a client with short timeouts: a slow
// Redis must degrade a request, never hang it. It does not wait for Redis to
// answer; use Ping for readiness.
func Connect(o Options) (*Client, error) {
	opt, err := redis.ParseURL(o.URL)
	if err != nil {
		return nil, fmt.Errorf("redis: parse ATRIUM_REDIS_URL: %w", err)
	}
	if o.Timeout > 0 {
		opt.ReadTimeout = o.Timeout
		opt.WriteTimeout = o.Timeout
		opt.DialTimeout = 2 * o.Timeout
	}
	opt.ClientName = "atrium"
	// go-redis has one process-wide logger: the first client's log wins.
	setLogger.Do(func() { redis.SetLogger(logger{o.Log}) })
	return &Client{Client: redis.NewClient(opt), prefix: o.Prefix}, nil
}

// Key returns the deployment-prefixed name for a key or channel:
// Key("instance", id) is "<prefix>:instance:<id>".
func (c *Client) Key(parts ...string) string {
	k := c.prefix
	for _, p := range parts {
		k += ":" + p
	}
	return k
}

// Ping checks that Redis answers within ctx.
func (c *Client) Ping(ctx context.Context) error { return c.Client.Ping(ctx).Err() }

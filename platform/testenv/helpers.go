package testenv

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/atriumhq/atrium/platform/redisx"
)

// RedisClient returns a client on the test Redis under prefix (usually
// from RedisPrefix), closed when the test ends.
func RedisClient(t testing.TB, prefix string) *redisx.Client {
	t.Helper()
	c, err := redisx.Connect(redisx.Options{URL: RedisURL(), Prefix: prefix, Timeout: time.Second})
	if err != nil {
		t.Fatalf("testenv: redis: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// LogBuffer is a goroutine-safe log destination for tests: loggers write
// from timers, workers and request goroutines at once. Everything written
// to any LogBuffer is scanned for the strings given to ForbidInLogs.
type LogBuffer struct {
	mu   sync.Mutex
	buf  bytes.Buffer
	tail []byte // the end of the last write, so a string split across writes is still found
}

func (b *LogBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	scan := append(b.tail, p...)
	forbidden.check(scan)
	b.tail = append(b.tail[:0], scan[max(0, len(scan)-64):]...)
	return b.buf.Write(p)
}

// forbidden are the strings no log line may carry (card numbers), and the
// ones found.
var forbidden forbiddenWords

type forbiddenWords struct {
	mu    sync.Mutex
	words [][]byte
	found map[string]int
}

// ForbidInLogs declares strings (such as the card numbers tests pay with)
// that no log written to a LogBuffer may contain; LogLeaks reports them.
func ForbidInLogs(words ...string) {
	forbidden.mu.Lock()
	defer forbidden.mu.Unlock()
	for _, w := range words {
		forbidden.words = append(forbidden.words, []byte(w))
	}
}

func (f *forbiddenWords) check(p []byte) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, w := range f.words {
		if bytes.Contains(p, w) {
			if f.found == nil {
				f.found = map[string]int{}
			}
			f.found[string(w)]++
		}
	}
}

// LogLeaks returns how often each forbidden string was written to a log.
func LogLeaks() map[string]int {
	forbidden.mu.Lock()
	defer forbidden.mu.Unlock()
	out := map[string]int{}
	for k, v := range forbidden.found {
		out[k] = v
	}
	return out
}

// String returns everything written so far.
func (b *LogBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// Lines returns every JSON log line written so far, decoded.
func (b *LogBuffer) Lines(t testing.TB) []map[string]any {
	t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []map[string]any
	for _, l := range bytes.Split(b.buf.Bytes(), []byte("\n")) {
		if len(bytes.TrimSpace(l)) == 0 {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal(l, &m); err != nil {
			t.Fatalf("log line is not JSON: %q: %v", l, err)
		}
		out = append(out, m)
	}
	return out
}

// RedisCounter is a go-redis hook that counts the commands a client sends
// (pipelined ones each) and the connections it dials, so tests can prove a
// path makes no Redis round trip.
type RedisCounter struct{ Commands, Dials atomic.Int64 }

var _ redis.Hook = (*RedisCounter)(nil)

func (c *RedisCounter) DialHook(next redis.DialHook) redis.DialHook {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		c.Dials.Add(1)
		return next(ctx, network, addr)
	}
}

func (c *RedisCounter) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		c.Commands.Add(1)
		return next(ctx, cmd)
	}
}

func (c *RedisCounter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		c.Commands.Add(int64(len(cmds)))
		return next(ctx, cmds)
	}
}

// Eventually polls cond every 10 ms until it holds, failing the test with
// msg if it does not within d.
func Eventually(t testing.TB, d time.Duration, msg string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %s: %s", d, msg)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

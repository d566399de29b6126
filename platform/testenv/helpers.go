package testenv

import (
	"bytes"
	"encoding/json"
	"sync"
	"testing"
	"time"

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
// from timers, workers and request goroutines at once.
type LogBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *LogBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
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

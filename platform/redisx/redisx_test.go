package redisx_test

import (
	"context"
	"testing"
	"time"

	"github.com/atriumhq/atrium/platform/redisx"
	"github.com/atriumhq/atrium/platform/testenv"
)

// connect returns a client on the test Redis under prefix that answers.
func connect(t testing.TB, prefix string) *redisx.Client {
	t.Helper()
	c := testenv.RedisClient(t, prefix)
	if err := c.Ping(context.Background()); err != nil {
		t.Fatalf("ping: %v", err)
	}
	return c
}

func TestConnectRejectsBadURL(t *testing.T) {
	if _, err := redisx.Connect(redisx.Options{URL: "http://127.0.0.1:6379"}); err == nil {
		t.Fatal("Connect accepted an http:// URL")
	}
}

func TestKey(t *testing.T) {
	c, err := redisx.Connect(redisx.Options{URL: "redis://127.0.0.1:6379/0", Prefix: "atrium-prod"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	cases := []struct {
		parts []string
		want  string
	}{
		{nil, "atrium-prod"},
		{[]string{"instances"}, "atrium-prod:instances"},
		{[]string{"instance", "web-1"}, "atrium-prod:instance:web-1"},
		{[]string{"lease", "jobs", "fence"}, "atrium-prod:lease:jobs:fence"},
	}
	for _, tc := range cases {
		if got := c.Key(tc.parts...); got != tc.want {
			t.Errorf("Key(%q) = %q, want %q", tc.parts, got, tc.want)
		}
	}
}

// TestPrefixesIsolateDeployments checks that two deployments sharing one
// Redis under different prefixes do not see each other's keys.
func TestPrefixesIsolateDeployments(t *testing.T) {
	ctx := context.Background()
	a := connect(t, testenv.RedisPrefix(t))
	b := connect(t, testenv.RedisPrefix(t))

	if err := a.Set(ctx, a.Key("setting", "mode"), "a", time.Minute).Err(); err != nil {
		t.Fatal(err)
	}
	if n, err := b.Exists(ctx, b.Key("setting", "mode")).Result(); err != nil || n != 0 {
		t.Errorf("deployment b sees deployment a's key: exists = %d, %v", n, err)
	}

	la := redisx.NewLease(a, "jobs", "inst-a", time.Minute)
	lb := redisx.NewLease(b, "jobs", "inst-b", time.Minute)
	if _, err := la.Acquire(ctx); err != nil {
		t.Fatalf("a: Acquire: %v", err)
	}
	if _, err := lb.Acquire(ctx); err != nil {
		t.Errorf("b: Acquire of the same lease name in another deployment: %v, want success", err)
	}
}

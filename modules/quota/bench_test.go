package quota

import (
	"context"
	"encoding/csv"
	"fmt"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/go-redis/redis_rate/v10"

	"github.com/atriumhq/atrium/platform/redisx"
	"github.com/atriumhq/atrium/platform/testenv"
)

// The target: rate-limit decisions per second through Limiter.Allow
// on one key at >= 0.8x what redis-benchmark gets running the same script
// on the same Redis, non-pipelined. Compare, from one run:
//
//	BenchmarkAllow          vs BenchmarkRedisBenchmark/c1 (one connection)
//	BenchmarkAllowParallel  vs BenchmarkRedisBenchmark/cN (GOMAXPROCS connections)
//
// BenchmarkRawEvalsha is go-redis running the script with no Go logic
// around it, separating the client's cost from the Limiter's.

// benchRule never refuses during a benchmark, so every decision is a
// Redis round trip (a refused key would be answered from the denial cache).
var benchRule = Rule{ID: "bench", Key: "route:bench", Rate: 1_000_000, Period: time.Second, Burst: 1_000_000_000}

func benchClient(b *testing.B) *redisx.Client {
	b.Helper()
	return testenv.RedisClient(b, testenv.RedisPrefix(b))
}

func benchLimiter(b *testing.B) *Limiter {
	b.Helper()
	l := NewLimiter(benchClient(b), Config{})
	b.Cleanup(func() { _ = l.Close() })
	return l
}

func reportRate(b *testing.B) {
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "decisions/s")
}

// cpuTime is the CPU time (user + system) this process has used so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// reportCPU reports the client's CPU time per decision since start. Wall
// time per decision moves with whatever else runs on the machine; the CPU
// the client spends on each decision hardly does, so it is the steadier
// figure to compare with redis-benchmark's.
func reportCPU(b *testing.B, start time.Duration) {
	b.ReportMetric(float64((cpuTime()-start).Microseconds())/float64(b.N), "cpu-µs/op")
}

func BenchmarkAllow(b *testing.B) {
	l := benchLimiter(b)
	rules := []Rule{benchRule}
	ctx := context.Background()
	cpu := cpuTime()
	for b.Loop() {
		if d, err := l.Allow(ctx, rules, 1); err != nil || !d.Allowed || d.Fallback {
			b.Fatalf("Allow: %v %+v", err, d)
		}
	}
	reportRate(b)
	reportCPU(b, cpu)
}

func BenchmarkAllowParallel(b *testing.B) {
	l := benchLimiter(b)
	rules := []Rule{benchRule}
	cpu := cpuTime()
	b.RunParallel(func(pb *testing.PB) {
		ctx := context.Background()
		for pb.Next() {
			if d, err := l.Allow(ctx, rules, 1); err != nil || !d.Allowed || d.Fallback {
				b.Errorf("Allow: %v %+v", err, d)
				return
			}
		}
	})
	reportRate(b)
	reportCPU(b, cpu)
}

// BenchmarkAllowThreeRules is a request checked against a tenant, a
// terminal and a route rule: still one round trip.
func BenchmarkAllowThreeRules(b *testing.B) {
	l := benchLimiter(b)
	rules := []Rule{benchRule, benchRule, benchRule}
	rules[1].ID, rules[2].ID = "bench-terminal", "bench-route"
	ctx := context.Background()
	for b.Loop() {
		if d, err := l.Allow(ctx, rules, 1); err != nil || !d.Allowed || d.Fallback {
			b.Fatalf("Allow: %v %+v", err, d)
		}
	}
	reportRate(b)
}

// BenchmarkAllowDenied is a key over its limit, answered from the denial
// cache without Redis.
func BenchmarkAllowDenied(b *testing.B) {
	l := benchLimiter(b)
	rules := []Rule{{ID: "denied", Key: "route:bench", Rate: 1, Period: time.Hour, Burst: 1}}
	ctx := context.Background()
	l.Allow(ctx, rules, 1) //nolint:errcheck
	l.Allow(ctx, rules, 1) //nolint:errcheck
	for b.Loop() {
		if d, _ := l.Allow(ctx, rules, 1); d.Allowed || !d.Cached {
			b.Fatalf("not refused from the cache: %+v", d)
		}
	}
	reportRate(b)
}

// rawEvalsha loads gcraScript and returns what EvalSha needs to run it as
// Allow would for benchRule.
func rawEvalsha(b *testing.B, c *redisx.Client) (sha string, keys []string, args []any) {
	b.Helper()
	sha, err := gcraScript.Load(context.Background(), c).Result()
	if err != nil {
		b.Fatal(err)
	}
	return sha, []string{c.Key("rl", benchRule.ID, benchRule.Key)}, scriptArgs([]Rule{benchRule}, 1)
}

func BenchmarkRawEvalsha(b *testing.B) {
	c := benchClient(b)
	sha, keys, args := rawEvalsha(b, c)
	ctx := context.Background()
	cpu := cpuTime()
	for b.Loop() {
		if err := c.EvalSha(ctx, sha, keys, args...).Err(); err != nil {
			b.Fatal(err)
		}
	}
	reportRate(b)
	reportCPU(b, cpu)
}

func BenchmarkRawEvalshaParallel(b *testing.B) {
	c := benchClient(b)
	sha, keys, args := rawEvalsha(b, c)
	b.RunParallel(func(pb *testing.PB) {
		ctx := context.Background()
		for pb.Next() {
			if err := c.EvalSha(ctx, sha, keys, args...).Err(); err != nil {
				b.Error(err)
				return
			}
		}
	})
	reportRate(b)
}

// BenchmarkRedisRate is go-redis/redis_rate deciding one key, for
// comparison with BenchmarkAllow.
func BenchmarkRedisRate(b *testing.B) {
	c := benchClient(b)
	rr := redis_rate.NewLimiter(c.Client)
	key := c.Key("redis_rate")
	b.Cleanup(func() { _ = rr.Reset(context.Background(), key) })
	limit := redis_rate.Limit{Rate: benchRule.Rate, Period: benchRule.Period, Burst: benchRule.Burst}
	ctx := context.Background()
	for b.Loop() {
		if res, err := rr.Allow(ctx, key, limit); err != nil || res.Allowed == 0 {
			b.Fatalf("redis_rate: %v %+v", err, res)
		}
	}
	reportRate(b)
}

// BenchmarkRedisBenchmark runs redis-benchmark with the same EVALSHA
// against the same Redis: c1 on one connection and cN on GOMAXPROCS
// connections, not pipelined (the baselines), and cN-P16 pipelined 16 deep
// (what pipelining or batching decisions could add). ns/op is
// redis-benchmark's own figure.
func BenchmarkRedisBenchmark(b *testing.B) {
	tool, err := exec.LookPath("redis-benchmark")
	if err != nil {
		b.Skip("redis-benchmark not installed")
	}
	c := benchClient(b)
	sha, keys, args := rawEvalsha(b, c)
	opt := c.Options()
	host, port, _ := strings.Cut(opt.Addr, ":")
	base := []string{"-h", host, "-p", port, "--dbnum", strconv.Itoa(opt.DB), "--csv"}
	if opt.Password != "" {
		base = append(base, "-a", opt.Password)
		if opt.Username != "" {
			base = append(base, "--user", opt.Username)
		}
	}
	command := []string{"EVALSHA", sha, strconv.Itoa(len(keys))}
	command = append(command, keys...)
	for _, a := range args {
		command = append(command, fmt.Sprint(a))
	}
	procs := runtime.GOMAXPROCS(0)
	for _, run := range []struct {
		name            string
		conns, pipeline int
	}{{"c1", 1, 1}, {"cN", procs, 1}, {"cN-P16", procs, 16}} {
		b.Run(run.name, func(b *testing.B) {
			n := max(b.N, run.conns*run.pipeline)
			cmdArgs := slices.Concat(base, []string{"-c", strconv.Itoa(run.conns), "-P", strconv.Itoa(run.pipeline),
				"-n", strconv.Itoa(n)}, command)
			cmd := exec.Command(tool, cmdArgs...)
			out, err := cmd.CombinedOutput()
			if err != nil {
				b.Fatalf("redis-benchmark: %v: %s", err, out)
			}
			rps, err := csvRate(out)
			if err != nil {
				b.Fatalf("redis-benchmark output: %v: %s", err, out)
			}
			b.ReportMetric(1e9/rps, "ns/op")
			b.ReportMetric(rps, "decisions/s")
			if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
				b.ReportMetric(float64((ru.Utime.Nano()+ru.Stime.Nano())/1000)/float64(n), "cpu-µs/op")
			}
		})
	}
}

// csvRate returns the requests per second of redis-benchmark --csv output:
// a header line, then one line per test whose second field is the rate.
func csvRate(out []byte) (float64, error) {
	recs, err := csv.NewReader(strings.NewReader(string(out))).ReadAll()
	if err != nil {
		return 0, err
	}
	for _, r := range recs {
		if len(r) > 1 && r[0] != "test" {
			return strconv.ParseFloat(r[1], 64)
		}
	}
	return 0, fmt.Errorf("no result line")
}

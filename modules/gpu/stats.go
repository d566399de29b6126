package gpu

import (
	"context"
	"math"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/atriumhq/atrium/platform/redisx"
)

// Stats keeps per-version request figures in Redis, in 5-second buckets
// that every instance adds to, so a canary's verdict counts the requests
// of the whole cluster. Latencies go into a histogram whose buckets grow
// by 25 % from 1 ms (p99 is reported as its bucket's upper bound, within
// 25 % of the truth).
type Stats struct {
	redis *redisx.Client
}

const (
	statsBucket = 5 * time.Second
	statsTTL    = 2 * time.Hour
	histBuckets = 64
)

// NewStats returns the statistics store.
func NewStats(c *redisx.Client) *Stats { return &Stats{redis: c} }

func (st *Stats) key(deployment, version string, bucket int64) string {
	return st.redis.Key("gpu", "stats", deployment, version, strconv.FormatInt(bucket, 10))
}

// histIndex is the histogram bucket of a latency.
func histIndex(d time.Duration) int {
	ms := float64(d) / float64(time.Millisecond)
	if ms <= 1 {
		return 0
	}
	return min(histBuckets-1, int(math.Ceil(math.Log(ms)/math.Log(1.25))))
}

// histUpper is the upper bound of histogram bucket i.
func histUpper(i int) time.Duration {
	return time.Duration(math.Pow(1.25, float64(i)) * float64(time.Millisecond))
}

// Record adds one request of a deployment's version, at t.
func (st *Stats) Record(ctx context.Context, deployment, version string, t time.Time, latency time.Duration, failed bool) error {
	return st.RecordMany(ctx, []sample{{deployment: deployment, version: version, at: t, latency: latency, failed: failed}})
}

// RecordMany adds requests in one round trip: each to its version's
// figures and, when it names one, to its replica's ("replica:<id>").
func (st *Stats) RecordMany(ctx context.Context, samples []sample) error {
	type field struct{ key, f string }
	counts := map[field]int64{}
	keys := map[string]bool{}
	for _, s := range samples {
		b := s.at.UnixNano() / int64(statsBucket)
		ks := []string{st.key(s.deployment, s.version, b)}
		if s.replica != "" {
			ks = append(ks, st.key(s.deployment, "replica:"+s.replica, b))
		}
		for _, k := range ks {
			keys[k] = true
			counts[field{k, "n"}]++
			if s.failed {
				counts[field{k, "e"}]++
			}
			counts[field{k, "h" + strconv.Itoa(histIndex(s.latency))}]++
		}
	}
	pipe := st.redis.Pipeline()
	for f, n := range counts {
		pipe.HIncrBy(ctx, f.key, f.f, n)
	}
	for k := range keys {
		pipe.Expire(ctx, k, statsTTL)
	}
	_, err := pipe.Exec(ctx)
	return err
}

// Window adds up a version's figures from since to now (at most the last
// hour).
func (st *Stats) Window(ctx context.Context, deployment, version string, since, now time.Time) (VersionStats, error) {
	m, err := st.Windows(ctx, deployment, []string{version}, since, now)
	return m[version], err
}

// Windows is Window for several versions (or "replica:<id>" subjects) of a
// deployment, in one round trip.
func (st *Stats) Windows(ctx context.Context, deployment string, subjects []string, since, now time.Time) (map[string]VersionStats, error) {
	out := map[string]VersionStats{}
	if since.Before(now.Add(-time.Hour)) {
		since = now.Add(-time.Hour)
	}
	from, to := since.UnixNano()/int64(statsBucket), now.UnixNano()/int64(statsBucket)
	if to < from || len(subjects) == 0 {
		return out, nil
	}
	pipe := st.redis.Pipeline()
	cmds := map[string][]*redis.MapStringStringCmd{}
	for _, sub := range subjects {
		for b := from; b <= to; b++ {
			cmds[sub] = append(cmds[sub], pipe.HGetAll(ctx, st.key(deployment, sub, b)))
		}
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return out, err
	}
	for sub, cs := range cmds {
		var vs VersionStats
		var hist [histBuckets]int64
		for _, c := range cs {
			for f, v := range c.Val() {
				n, _ := strconv.ParseInt(v, 10, 64)
				switch {
				case f == "n":
					vs.Requests += n
				case f == "e":
					vs.Errors += n
				case len(f) > 1 && f[0] == 'h':
					if i, err := strconv.Atoi(f[1:]); err == nil && i >= 0 && i < histBuckets {
						hist[i] += n
					}
				}
			}
		}
		if vs.Requests > 0 {
			need := int64(math.Ceil(0.99 * float64(vs.Requests)))
			var seen int64
			for i, n := range hist {
				if seen += n; seen >= need {
					vs.P99 = histUpper(i)
					break
				}
			}
		}
		out[sub] = vs
	}
	return out, nil
}

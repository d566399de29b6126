package quota

import (
	"context"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// Live counts: how many requests each rule refused, and would have refused
// in observe mode, over the last hour, across the cluster. Requests never
// talk to Redis for them: each instance adds to per-rule counters in
// memory, and once a second writes what it gathered into the current
// minute's hash, <prefix>:rlstats:<unix minute>, one HINCRBY per rule and
// outcome in one pipeline. Reading sums the last 60 minutes' hashes, which
// expire after two hours.

const (
	liveWindow  = 60 // one-minute buckets summed for the live counts
	liveExpiry  = 2 * time.Hour
	liveRefused = "|refused"
	liveWould   = "|would_refuse"
)

// LiveCounts are a rule's refusals over the last hour, cluster-wide (up to
// a second behind).
type LiveCounts struct {
	Refused       int64 `json:"refused"`
	WouldRefuse   int64 `json:"would_refuse"`
	WindowSeconds int   `json:"window_seconds"`
}

func (s *RateLimits) liveKey(minute int64) string {
	return s.redis.Key("rlstats", strconv.FormatInt(minute, 10))
}

// runFlush writes the live counts every second until ctx ends, and once
// more then.
func (s *RateLimits) runFlush(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
			_ = s.flush(fctx)
			cancel()
			return
		case <-t.C:
			if err := s.flush(ctx); err != nil && ctx.Err() == nil {
				if ok, n := s.flushLog.allow(s.now()); ok {
					s.log.Warn().Err(err).Int64("suppressed", n).Msg("rate-limit live counts not written; kept for the next try")
				}
			}
		}
	}
}

// Flush writes this instance's pending live counts to Redis now (Run does
// it every second). Counts that could not be written are kept for the next
// flush; if Redis applied them but the answer was lost they count twice,
// which a display can afford.
func (s *RateLimits) Flush(ctx context.Context) error { return s.flush(ctx) }

func (s *RateLimits) flush(ctx context.Context) error {
	type pending struct {
		st              *ruleStats
		refused, wouldR int64
	}
	var taken []pending
	s.statsMu.Lock()
	for _, st := range s.stats {
		p := pending{st: st, refused: st.pendingRefused.Swap(0), wouldR: st.pendingWould.Swap(0)}
		if p.refused != 0 || p.wouldR != 0 {
			taken = append(taken, p)
		}
	}
	s.statsMu.Unlock()
	if len(taken) == 0 {
		return nil
	}
	key := s.liveKey(s.now().Unix() / 60)
	pipe := s.redis.Pipeline()
	for _, p := range taken {
		if p.refused != 0 {
			pipe.HIncrBy(ctx, key, p.st.id+liveRefused, p.refused)
		}
		if p.wouldR != 0 {
			pipe.HIncrBy(ctx, key, p.st.id+liveWould, p.wouldR)
		}
	}
	pipe.Expire(ctx, key, liveExpiry)
	if _, err := pipe.Exec(ctx); err != nil {
		for _, p := range taken {
			p.st.pendingRefused.Add(p.refused)
			p.st.pendingWould.Add(p.wouldR)
		}
		return err
	}
	return nil
}

// LiveCounts returns every rule's refusals and would-be refusals over the
// last hour, by rule id, in one pipelined read of the minute hashes.
func (s *RateLimits) LiveCounts(ctx context.Context) (map[string]LiveCounts, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	now := s.now().Unix() / 60
	pipe := s.redis.Pipeline()
	cmds := make([]*redis.MapStringStringCmd, liveWindow)
	for i := range cmds {
		cmds[i] = pipe.HGetAll(ctx, s.liveKey(now-int64(i)))
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return nil, err
	}
	out := map[string]LiveCounts{}
	for _, c := range cmds {
		for field, v := range c.Val() {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				continue
			}
			id, what, ok := strings.Cut(field, "|")
			if !ok {
				continue
			}
			lc := out[id]
			switch "|" + what {
			case liveRefused:
				lc.Refused += n
			case liveWould:
				lc.WouldRefuse += n
			}
			out[id] = lc
		}
	}
	for id, lc := range out {
		lc.WindowSeconds = liveWindow * 60
		out[id] = lc
	}
	return out, nil
}

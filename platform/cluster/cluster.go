// Package cluster lets every instance announce itself in Redis with a
// heartbeat and lets any instance list the live cluster. An instance whose
// heartbeat lapses drops out of the list after the TTL.
package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"

	"github.com/atriumhq/atrium/platform/redisx"
)

// Instance is what one instance says of itself in its heartbeat.
type Instance struct {
	ID        string            `json:"id"`
	Version   string            `json:"version"`
	Host      string            `json:"host"`
	Addr      string            `json:"addr"`
	StartedAt time.Time         `json:"started_at"`
	SeenAt    time.Time         `json:"seen_at"`
	Checks    map[string]string `json:"checks"` // dependency -> "ok" or what is wrong
}

// Healthy reports whether every check of the instance passed.
func (i Instance) Healthy() bool {
	for _, v := range i.Checks {
		if v != "ok" {
			return false
		}
	}
	return true
}

// Registry writes this instance's heartbeat and lists the cluster.
type Registry struct {
	c        *redisx.Client
	self     Instance
	interval time.Duration
	ttl      time.Duration
	check    func(context.Context) map[string]string
	log      zerolog.Logger
}

// NewRegistry returns a registry announcing self every interval, with a
// TTL of three intervals. check reports the instance's dependency health.
func NewRegistry(c *redisx.Client, self Instance, interval time.Duration, check func(context.Context) map[string]string, log zerolog.Logger) *Registry {
	return &Registry{c: c, self: self, interval: interval, ttl: 3 * interval, check: check, log: log}
}

func (r *Registry) setKey() string           { return r.c.Key("instances") }
func (r *Registry) instKey(id string) string { return r.c.Key("instance", id) }

// Beat writes one heartbeat now.
func (r *Registry) Beat(ctx context.Context) error {
	inst := r.self
	inst.SeenAt = time.Now().UTC()
	inst.Checks = r.check(ctx)
	b, err := json.Marshal(inst)
	if err != nil {
		return err
	}
	_, err = r.c.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.Set(ctx, r.instKey(inst.ID), b, r.ttl)
		p.ZAdd(ctx, r.setKey(), redis.Z{Score: float64(inst.SeenAt.UnixMilli()), Member: inst.ID})
		return nil
	})
	if err != nil {
		return fmt.Errorf("cluster: heartbeat: %w", err)
	}
	return nil
}

// Run beats every interval until ctx ends, then removes the instance from
// the list so that a clean shutdown is seen at once.
func (r *Registry) Run(ctx context.Context) error {
	t := time.NewTicker(r.interval)
	defer t.Stop()
	for {
		if err := r.Beat(ctx); err != nil && ctx.Err() == nil {
			r.log.Warn().Err(err).Msg("heartbeat failed")
		}
		select {
		case <-ctx.Done():
			dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
			defer cancel()
			r.c.Del(dctx, r.instKey(r.self.ID))
			r.c.ZRem(dctx, r.setKey(), r.self.ID)
			return nil
		case <-t.C:
		}
	}
}

// List returns every instance whose heartbeat is current, ordered by id.
func (r *Registry) List(ctx context.Context) ([]Instance, error) {
	cutoff := time.Now().Add(-r.ttl).UnixMilli()
	if err := r.c.ZRemRangeByScore(ctx, r.setKey(), "-inf", fmt.Sprint(cutoff)).Err(); err != nil {
		return nil, fmt.Errorf("cluster: list: %w", err)
	}
	ids, err := r.c.ZRange(ctx, r.setKey(), 0, -1).Result()
	if err != nil || len(ids) == 0 {
		return nil, err
	}
	keys := make([]string, len(ids))
	for i, id := range ids {
		keys[i] = r.instKey(id)
	}
	vals, err := r.c.MGet(ctx, keys...).Result()
	if err != nil {
		return nil, fmt.Errorf("cluster: list: %w", err)
	}
	out := make([]Instance, 0, len(vals))
	for _, v := range vals {
		s, ok := v.(string)
		if !ok {
			continue // expired between ZRANGE and MGET
		}
		var inst Instance
		if err := json.Unmarshal([]byte(s), &inst); err == nil {
			out = append(out, inst)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

// Self returns this instance's static description.
func (r *Registry) Self() Instance { return r.self }

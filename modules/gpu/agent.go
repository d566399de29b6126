package gpu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"

	"github.com/atriumhq/atrium/platform/postgres"
)

// The node agent runs on every instance with GPUs. Every RefreshInterval
// it reads its GPUs (health applied), publishes them in Redis with a TTL of
// NodeTTL (any instance sees the whole cluster; a node whose key lapses is
// lost), and upserts them in PostgreSQL when they change. Every second it
// acknowledges its replicas: placed ones start running, stopping ones stop
// and free their GPUs. (The replica runtime that starts and stops real
// processes takes over those two transitions.)

// NodeInventory is one node's GPUs as published in Redis.
type NodeInventory struct {
	Node     string    `json:"node"`
	Instance string    `json:"instance"`
	Backend  string    `json:"backend"`
	At       time.Time `json:"at"`
	Devices  []Device  `json:"devices"`
}

func (s *Service) nodeKey(node string) string { return s.redis.Key("gpu", "node", node) }
func (s *Service) nodesKey() string           { return s.redis.Key("gpu", "nodes") }

func newID() string { return uuid.Must(uuid.NewV7()).String() }

func (s *Service) runAgent(ctx context.Context) {
	refresh := time.NewTicker(s.cfg.RefreshInterval)
	defer refresh.Stop()
	ack := time.NewTicker(min(time.Second, s.cfg.RefreshInterval))
	defer ack.Stop()
	go func() {
		_ = s.reprobe.Subscribe(ctx, s.log, nil, func(r reprobe) {
			if r.Node != s.cfg.Node {
				return
			}
			if err := s.monitor.Reprobe(ctx, r.UUID); err != nil {
				s.log.Warn().Err(err).Str("gpu", r.UUID).Msg("re-probe failed")
				s.recordHealth(HealthEvent{UUID: r.UUID, At: s.now(), Kind: "reprobe_failed", Detail: err.Error()})
			} else {
				s.recovered(ctx, r.UUID)
			}
			s.publish(ctx)
		})
	}()
	s.publish(ctx)
	if err := s.adoptLeftovers(ctx); err != nil {
		s.log.Warn().Err(err).Msg("GPU agent: replicas left from an earlier run not checked")
	}
	defer func() {
		// Stopping Atrium stops its replicas: none is left without a
		// supervisor. Their GPUs stay allocated; they start again when the
		// node returns, or move when it is lost.
		sctx, cancel := context.WithTimeout(context.Background(), s.cfg.ReplicaGrace+5*time.Second)
		defer cancel()
		s.sup.StopAll(sctx)
		_ = s.tx.Exec(postgres.AllTenants(sctx, "gpu.agent"), "gpu.agent_stop",
			`UPDATE replicas SET state = 'placed', endpoint = '', pid = NULL, runtime = '' WHERE node_id = $1 AND state = 'running'`, s.cfg.Node)
	}()
	for {
		select {
		case <-ctx.Done():
			return
		case <-refresh.C:
			s.publish(ctx)
		case <-ack.C:
			if err := s.acknowledge(ctx); err != nil && ctx.Err() == nil {
				s.log.Warn().Err(err).Msg("GPU agent: replica acknowledgement failed")
			}
		}
	}
}

// lastSaved is what the agent last wrote to PostgreSQL, to write only
// changes (and a heartbeat now and then).
type lastSaved struct {
	sig string
	at  time.Time
}

// publish reads this node's GPUs and publishes them.
func (s *Service) publish(ctx context.Context) {
	devs, err := s.monitor.Snapshot(ctx)
	if err != nil {
		s.log.Warn().Err(err).Msg("GPU agent: reading the GPUs failed")
		return
	}
	inv := NodeInventory{Node: s.cfg.Node, Instance: s.instance, Backend: s.cfg.Backend.Name(), At: s.now(), Devices: devs}
	b, _ := json.Marshal(inv)
	pipe := s.redis.TxPipeline()
	pipe.Set(ctx, s.nodeKey(s.cfg.Node), b, s.cfg.NodeTTL)
	pipe.SAdd(ctx, s.nodesKey(), s.cfg.Node)
	if _, err := pipe.Exec(ctx); err != nil {
		s.log.Warn().Err(err).Msg("GPU agent: publishing the inventory failed")
	}
	sig := signature(devs)
	s.mu.Lock()
	s.devices = devs
	due := sig != s.saved.sig || s.now().Sub(s.saved.at) >= s.cfg.NodeTTL/2
	s.mu.Unlock()
	if !due {
		return
	}
	if err := s.saveNode(ctx, devs); err != nil {
		s.log.Warn().Err(err).Msg("GPU agent: recording the GPUs failed")
		return
	}
	s.mu.Lock()
	s.saved = lastSaved{sig, s.now()}
	s.mu.Unlock()
}

// signature is what of a reading PostgreSQL keeps.
func signature(devs []Device) string {
	var b strings.Builder
	for _, d := range devs {
		fmt.Fprintf(&b, "%s/%d/%t/%t/%s/%s;", d.UUID, d.MemoryTotalMB, d.MIGMode, d.Healthy, d.Unhealthy, domainOf(d, devs))
	}
	return b.String()
}

// domainOf groups a node's GPUs for multi-GPU replicas: GPUs joined by
// NVLink (directly or through each other) share a domain, named after
// the lowest PCI bus id among them; lacking NVLink, GPUs on the same NUMA
// node share one.
func domainOf(d Device, devs []Device) string {
	byBus := map[string]Device{}
	for _, x := range devs {
		byBus[x.PCIBusID] = x
	}
	seen := map[string]bool{d.PCIBusID: true}
	queue := []string{d.PCIBusID}
	for len(queue) > 0 {
		x := byBus[queue[0]]
		queue = queue[1:]
		for _, p := range x.NVLinkPeers {
			if _, ok := byBus[p]; ok && !seen[p] {
				seen[p] = true
				queue = append(queue, p)
			}
		}
	}
	if len(seen) > 1 {
		buses := make([]string, 0, len(seen))
		for b := range seen {
			buses = append(buses, b)
		}
		sort.Strings(buses)
		return "nvlink:" + buses[0]
	}
	if d.NUMANode >= 0 {
		return fmt.Sprintf("numa:%d", d.NUMANode)
	}
	return ""
}

// saveNode upserts this node and its GPUs; GPUs gone from the reading are
// marked absent (they take no new replicas).
func (s *Service) saveNode(ctx context.Context, devs []Device) error {
	return s.tx.Do(ctx, "gpu.save_node", func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `INSERT INTO gpu_nodes (id, backend) VALUES ($1, $2)
			ON CONFLICT (id) DO UPDATE SET backend = $2, state = 'up', lost_at = NULL, last_seen = now()`,
			s.cfg.Node, s.cfg.Backend.Name()); err != nil {
			return err
		}
		// One round trip for every GPU.
		var b pgx.Batch
		uuids := make([]string, 0, len(devs))
		for _, d := range devs {
			uuids = append(uuids, d.UUID)
			b.Queue(`INSERT INTO gpu_devices (uuid, node_id, idx, name, memory_total_mb, mig_mode, domain, healthy, unhealthy)
				VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
				ON CONFLICT (uuid) DO UPDATE SET node_id = $2, idx = $3, name = $4, memory_total_mb = $5, mig_mode = $6, domain = $7,
					-- A reading takes a GPU out, never back: only a re-probe
					-- does (recordHealth), also after this node restarted.
					healthy = gpu_devices.healthy AND $8,
					unhealthy = CASE WHEN gpu_devices.healthy AND NOT $8 THEN $9 ELSE gpu_devices.unhealthy END,
					present = true, updated_at = now()`,
				d.UUID, s.cfg.Node, d.Index, d.Name, d.MemoryTotalMB, d.MIGMode, domainOf(d, devs), d.Healthy, d.Unhealthy)
		}
		if err := tx.SendBatch(ctx, &b).Close(); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `UPDATE gpu_devices SET present = false, updated_at = now() WHERE node_id = $1 AND NOT uuid = ANY ($2) AND present`,
			s.cfg.Node, uuids)
		return err
	})
}

// recordHealth keeps a health event in PostgreSQL and applies a GPU's
// health at once, so the scheduler stops using it in its next cycle.
func (s *Service) recordHealth(e HealthEvent) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := s.tx.Do(ctx, "gpu.health_event", func(tx pgx.Tx) error {
		var xid *int64
		if e.Kind == "xid" {
			v := int64(e.XID)
			xid = &v
		}
		if _, err := tx.Exec(ctx, `INSERT INTO gpu_health_events (uuid, node_id, at, kind, xid, critical, detail) VALUES ($1, $2, $3, $4, $5, $6, $7)`,
			e.UUID, s.cfg.Node, e.At, e.Kind, xid, e.Critical, e.Detail); err != nil {
			return err
		}
		switch {
		case e.Critical:
			_, err := tx.Exec(ctx, `UPDATE gpu_devices SET healthy = false, unhealthy = $2, updated_at = now() WHERE uuid = $1`, e.UUID, e.Detail)
			return err
		case e.Kind == "recovered":
			_, err := tx.Exec(ctx, `UPDATE gpu_devices SET healthy = true, unhealthy = '', updated_at = now() WHERE uuid = $1`, e.UUID)
			return err
		}
		return nil
	})
	if err != nil {
		s.log.Error().Err(err).Str("gpu", e.UUID).Str("kind", e.Kind).Msg("GPU health event not recorded")
	}
	lvl := s.log.Info()
	if e.Critical {
		lvl = s.log.Warn()
	}
	lvl.Str("gpu", e.UUID).Str("kind", e.Kind).Uint64("xid", e.XID).Bool("critical", e.Critical).Str("detail", e.Detail).Msg("GPU health event")
}

// recovered returns a GPU that answered its re-probe to service when
// PostgreSQL still has it out (marked before this node restarted, so the
// monitor did not know it); otherwise the monitor's own event did.
func (s *Service) recovered(ctx context.Context, uuid string) {
	var was string
	err := s.tx.QueryRow(ctx, "gpu.recovered", `UPDATE gpu_devices g SET healthy = true, unhealthy = '', updated_at = now()
		FROM (SELECT uuid, unhealthy FROM gpu_devices WHERE uuid = $1 AND NOT healthy FOR UPDATE) old
		WHERE g.uuid = old.uuid RETURNING old.unhealthy`, []any{uuid}, &was)
	if postgres.IsNoRows(err) {
		return
	}
	if err != nil {
		s.log.Warn().Err(err).Str("gpu", uuid).Msg("re-probed GPU not returned to service")
		return
	}
	s.recordHealth(HealthEvent{UUID: uuid, At: s.now(), Kind: "recovered", Detail: "re-probe answered; was out of service for: " + was})
}

// acknowledge runs this node's replicas (reconcileRuntime), publishes
// their output, and tells a simulated backend the load.
func (s *Service) acknowledge(ctx context.Context) error {
	if err := s.reconcileRuntime(ctx); err != nil {
		return err
	}
	s.publishLogs(ctx)
	sim, ok := s.cfg.Backend.(Simulator)
	if !ok {
		return nil
	}
	var running []Replica
	err := s.tx.Do(postgres.AllTenants(ctx, "gpu.agent"), "gpu.node_load", func(tx pgx.Tx) error {
		rows, _ := tx.Query(ctx, `SELECT `+replicaCols+` FROM replicas WHERE node_id = $1 AND state = 'running'`, s.cfg.Node)
		var err error
		running, err = pgx.CollectRows(rows, scanReplica)
		return err
	})
	if err != nil {
		return err
	}
	simulateLoad(sim, running, s.lastDevices())
	return nil
}

// lastDevices is this node's last reading.
func (s *Service) lastDevices() []Device {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.devices
}

// simulateLoad makes a simulated node's readings follow its replicas:
// memory by what each replica holds, utilization by a busy share.
func simulateLoad(sim Simulator, running []Replica, devs []Device) {
	used := map[string]int64{}
	util := map[string]int{}
	total := map[string]int64{}
	for _, d := range devs {
		total[d.UUID] = d.MemoryTotalMB
	}
	for _, r := range running {
		for _, g := range r.GPUs {
			mem := r.Need.MemoryMB
			if r.Need.Sharing == Exclusive && mem == 0 {
				mem = total[g] * 9 / 10
			}
			if r.Need.Sharing == MIG {
				_, mem, _ = ParseMIGProfile(r.Need.MIGProfile)
			}
			used[g] += mem
			util[g] += max(5, r.MilliGPUs*60/1000/max(1, len(r.GPUs)))
		}
	}
	for _, d := range devs {
		sim.SetLoad(d.UUID, min(used[d.UUID], d.MemoryTotalMB), min(util[d.UUID], 100))
	}
}

// nodeInventory reads one node's published inventory (nil when lapsed).
func (s *Service) nodeInventory(ctx context.Context, node string) (*NodeInventory, error) {
	b, err := s.redis.Get(ctx, s.nodeKey(node)).Bytes()
	if errors.Is(err, redis.Nil) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var inv NodeInventory
	return &inv, json.Unmarshal(b, &inv)
}

// inventory reads every node's published inventory, forgetting nodes
// whose key lapsed long ago from the set.
func (s *Service) inventory(ctx context.Context) ([]NodeInventory, error) {
	nodes, err := s.redis.SMembers(ctx, s.nodesKey()).Result()
	if err != nil {
		return nil, err
	}
	slices.Sort(nodes)
	if len(nodes) == 0 {
		return nil, nil
	}
	keys := make([]string, len(nodes))
	for i, n := range nodes {
		keys[i] = s.nodeKey(n)
	}
	vals, err := s.redis.MGet(ctx, keys...).Result()
	if err != nil {
		return nil, err
	}
	var out []NodeInventory
	for _, v := range vals {
		str, ok := v.(string)
		if !ok {
			continue
		}
		var inv NodeInventory
		if err := json.Unmarshal([]byte(str), &inv); err != nil {
			s.log.Warn().Err(err).Msg("a node's published GPU inventory does not decode; skipped")
			continue
		}
		out = append(out, inv)
	}
	return out, nil
}

// readings is the cluster's live inventory as a scheduler cycle uses it:
// the nodes whose inventory has not lapsed, and each GPU's utilization.
type readings struct {
	alive map[string]bool
	util  map[string]int // by GPU UUID; a GPU missing is on a lapsed node
}

// readCluster reads every node's published inventory once for a cycle.
func (s *Service) readCluster(ctx context.Context) (readings, error) {
	inv, err := s.inventory(ctx)
	if err != nil {
		return readings{}, err
	}
	r := readings{alive: map[string]bool{}, util: map[string]int{}}
	for _, n := range inv {
		r.alive[n.Node] = true
		for _, d := range n.Devices {
			r.util[d.UUID] = d.Utilization
		}
	}
	return r, nil
}

package gpu

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/atriumhq/atrium/platform/errs"
	"github.com/atriumhq/atrium/platform/postgres"
	"github.com/atriumhq/atrium/platform/principal"
)

// NodeView is one GPU node as the cluster page shows it: its record, its
// live reading when the node is alive, and what replicas hold on its GPUs.
type NodeView struct {
	ID       string     `json:"id"`
	Backend  string     `json:"backend"`
	State    string     `json:"state"` // up or lost
	Live     bool       `json:"live"`  // its inventory is current in Redis
	Instance string     `json:"instance,omitempty"`
	ReadAt   *time.Time `json:"read_at,omitempty"`
	LastSeen time.Time  `json:"last_seen"`
	LostAt   *time.Time `json:"lost_at,omitempty"`
	GPUs     []GPUView  `json:"gpus"`
}

// GPUView is one GPU with what is held on it.
type GPUView struct {
	Device
	Domain  string `json:"domain"`
	Present bool   `json:"present"`
	// Held by replicas: whole (exclusive), memory (shared), MIG slices.
	Exclusive   bool  `json:"held_exclusive"`
	SharedMB    int64 `json:"held_shared_mb"`
	MIGCompute  int   `json:"held_mig_compute"`
	MIGMemoryMB int64 `json:"held_mig_memory_mb"`
}

// Cluster lists every GPU node with its GPUs.
func (s *Service) Cluster(ctx context.Context) ([]NodeView, error) {
	if err := principal.Check(ctx, "cluster:read"); err != nil {
		return nil, err
	}
	ctx = postgres.AllTenants(ctx, "gpu.cluster")
	var nodes []NodeView
	var gpus []struct {
		node string
		v    GPUView
	}
	err := s.tx.Do(ctx, "gpu.cluster", func(tx pgx.Tx) error {
		rows, _ := tx.Query(ctx, `SELECT id, backend, state, last_seen, lost_at FROM gpu_nodes ORDER BY id`)
		var err error
		nodes, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (NodeView, error) {
			n := NodeView{GPUs: []GPUView{}}
			return n, r.Scan(&n.ID, &n.Backend, &n.State, &n.LastSeen, &n.LostAt)
		})
		if err != nil {
			return err
		}
		rows, _ = tx.Query(ctx, `SELECT node_id, uuid, idx, name, memory_total_mb, mig_mode, domain, healthy, unhealthy, present,
			exclusive_replica IS NOT NULL, shared_mb, mig_compute, mig_memory_mb FROM gpu_devices ORDER BY node_id, idx`)
		for rows.Next() {
			var g struct {
				node string
				v    GPUView
			}
			if err := rows.Scan(&g.node, &g.v.UUID, &g.v.Index, &g.v.Name, &g.v.MemoryTotalMB, &g.v.MIGMode, &g.v.Domain,
				&g.v.Healthy, &g.v.Unhealthy, &g.v.Present, &g.v.Exclusive, &g.v.SharedMB, &g.v.MIGCompute, &g.v.MIGMemoryMB); err != nil {
				return err
			}
			g.v.NUMANode = -1
			gpus = append(gpus, g)
		}
		return rows.Err()
	})
	if err != nil {
		return nil, err
	}
	inv, err := s.inventory(ctx)
	if err != nil {
		return nil, err
	}
	live := map[string]Device{}
	for i := range nodes {
		for _, in := range inv {
			if in.Node == nodes[i].ID {
				nodes[i].Live, nodes[i].Instance, nodes[i].ReadAt = true, in.Instance, &in.At
				for _, d := range in.Devices {
					live[d.UUID] = d
				}
			}
		}
	}
	for _, g := range gpus {
		if d, ok := live[g.v.UUID]; ok {
			// The live reading, with the health PostgreSQL knows.
			healthy, why := g.v.Healthy, g.v.Unhealthy
			g.v.Device = d
			g.v.Healthy, g.v.Unhealthy = healthy, why
		}
		for i := range nodes {
			if nodes[i].ID == g.node {
				nodes[i].GPUs = append(nodes[i].GPUs, g.v)
			}
		}
	}
	return nodes, nil
}

// NodeHealthEvent is a health event with its node.
type NodeHealthEvent struct {
	HealthEvent
	Node string `json:"node"`
}

// HealthEvents lists the latest health events, of one GPU when uuid is
// given.
func (s *Service) HealthEvents(ctx context.Context, uuid string, limit int) ([]NodeHealthEvent, error) {
	if err := principal.Check(ctx, "cluster:read"); err != nil {
		return nil, err
	}
	if limit <= 0 || limit > 500 {
		limit = 100
	}
	return postgres.Collect(ctx, s.tx, "gpu.health_events", func(r pgx.CollectableRow) (NodeHealthEvent, error) {
		var e NodeHealthEvent
		var xid *int64
		err := r.Scan(&e.UUID, &e.Node, &e.At, &e.Kind, &xid, &e.Critical, &e.Detail)
		if xid != nil {
			e.XID = uint64(*xid)
		}
		return e, err
	}, `SELECT uuid, node_id, at, kind, xid, critical, detail FROM gpu_health_events WHERE $1 = '' OR uuid = $1
		ORDER BY id DESC LIMIT $2`, uuid, limit)
}

// Reprobe asks the GPU's node to probe it again: a GPU that reads well
// (and whose ECC counters have not risen) returns to service.
func (s *Service) Reprobe(ctx context.Context, uuid string) error {
	if err := principal.Check(ctx, "cluster:manage"); err != nil {
		return err
	}
	var node string
	err := s.tx.QueryRow(postgres.AllTenants(ctx, "gpu.cluster"), "gpu.reprobe", `SELECT node_id FROM gpu_devices WHERE uuid = $1`,
		[]any{uuid}, &node)
	if postgres.IsNoRows(err) {
		return errs.E(errs.NotFound, "no such GPU")
	}
	if err != nil {
		return err
	}
	return s.reprobe.Publish(ctx, reprobe{Node: node, UUID: uuid})
}

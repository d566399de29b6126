package gpu

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/rs/zerolog"

	"github.com/atriumhq/atrium/platform/postgres"
	"github.com/atriumhq/atrium/platform/redisx"
)

// Quotas is what the GPU module needs of the quota module: allocation
// quotas counted inside its own transactions, and the GPU-hour budget.
type Quotas interface {
	Use(ctx context.Context, tx pgx.Tx, tenant, quota string, n int64) error
	Return(ctx context.Context, tx pgx.Tx, tenant, quota string, n int64) error
	Check(ctx context.Context, tx pgx.Tx, tenant, quota string) error
}

// Meter counts usage (the quota module's meter): GPU time lands in the
// tenant's usage and is charged to its max_gpu_hours budget; inference
// requests and tokens are counted by name.
type Meter interface {
	AddGPUSeconds(ctx context.Context, tenant string, seconds int64) error
	Add(ctx context.Context, tenant, metric string, units int64) error
}

// Config configures the GPU module.
type Config struct {
	// Node is this instance's GPU node name; Backend reads its GPUs (nil or
	// "none": this instance hosts no GPUs and runs no node agent).
	Node    string
	Backend Backend
	// Policy is the placement policy of the scheduler.
	Policy Policy
	// RefreshInterval is how often the node agent reads and publishes its
	// GPUs; NodeTTL is how old a node's inventory may be before the node is
	// lost.
	RefreshInterval time.Duration
	NodeTTL         time.Duration
	// ScheduleInterval is the scheduler leader's cycle; LeaseTTL its lease.
	ScheduleInterval time.Duration
	LeaseTTL         time.Duration
	// MeterInterval is how often GPU time is metered.
	MeterInterval time.Duration
	// AdvertiseHost is the address this node's replicas listen on and
	// routers reach them at; ReplicaGrace is their SIGTERM → SIGKILL time.
	AdvertiseHost string
	ReplicaGrace  time.Duration
	// Commands are the programs a version's command may start (default
	// atrium and vllm).
	Commands []string
}

// Deps are what the GPU module needs from the process.
type Deps struct {
	Tx       *postgres.Tx
	Redis    *redisx.Client
	Log      zerolog.Logger
	Quotas   Quotas
	Meter    Meter
	Instance string
	Now      func() time.Time
}

// Service is the GPU module.
type Service struct {
	cfg      Config
	tx       *postgres.Tx
	redis    *redisx.Client
	log      zerolog.Logger
	quotas   Quotas
	meter    Meter
	instance string
	now      func() time.Time

	stats   *Stats
	traffic *redisx.Broadcast[string]  // deployment ids whose weights changed
	reprobe *redisx.Broadcast[reprobe] // re-probe requests for a node's GPU
	monitor *Monitor                   // nil without GPUs

	recs recommendations // the autoscaler's recent recommendations

	sup *Supervisor // this node's replica processes (nil without GPUs)

	mu      sync.Mutex
	devices []Device          // this node's last reading
	saved   lastSaved         // what the agent last wrote to PostgreSQL
	ports   map[string]int    // replica → the port its process listens on
	deps    map[string]string // replica → its deployment
	stops   map[string]bool   // replicas this agent is stopping
}

// reprobe asks node's agent to probe one of its GPUs again.
type reprobe struct {
	Node string `json:"node"`
	UUID string `json:"uuid"`
}

// New builds the GPU module.
func New(cfg Config, deps Deps) (*Service, error) {
	if deps.Tx == nil || deps.Redis == nil || deps.Quotas == nil || deps.Meter == nil {
		return nil, errors.New("gpu: Tx, Redis, Quotas and Meter are required")
	}
	if cfg.Policy == "" {
		cfg.Policy = LeastLoaded
	}
	if cfg.RefreshInterval <= 0 {
		cfg.RefreshInterval = 2 * time.Second
	}
	if cfg.NodeTTL < 3*cfg.RefreshInterval {
		cfg.NodeTTL = 5 * cfg.RefreshInterval
	}
	if cfg.ScheduleInterval <= 0 {
		cfg.ScheduleInterval = time.Second
	}
	if cfg.LeaseTTL <= 0 {
		cfg.LeaseTTL = 6 * time.Second
	}
	if cfg.MeterInterval <= 0 {
		cfg.MeterInterval = 15 * time.Second
	}
	if cfg.AdvertiseHost == "" {
		cfg.AdvertiseHost = "127.0.0.1"
	}
	if len(cfg.Commands) == 0 {
		cfg.Commands = []string{"atrium", "vllm"}
	}
	if deps.Now == nil {
		deps.Now = time.Now
	}
	s := &Service{cfg: cfg, tx: deps.Tx, redis: deps.Redis, log: deps.Log,
		quotas: deps.Quotas, meter: deps.Meter, instance: deps.Instance, now: func() time.Time { return deps.Now().UTC() },
		stats:   NewStats(deps.Redis),
		traffic: redisx.NewBroadcast[string](deps.Redis, "gpu-traffic"),
		reprobe: redisx.NewBroadcast[reprobe](deps.Redis, "gpu-reprobe")}
	s.ports, s.deps, s.stops = map[string]int{}, map[string]string{}, map[string]bool{}
	if cfg.Backend != nil && cfg.Backend.Name() != "none" {
		s.monitor = NewMonitor(cfg.Backend, s.log, s.recordHealth)
		s.sup = NewSupervisor(SupervisorConfig{Grace: cfg.ReplicaGrace}, s.log, s.procChanged)
	}
	return s, nil
}

// Run runs the module's background work until ctx ends: the node agent on
// an instance with GPUs, and the scheduler while this instance leads.
func (s *Service) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	if s.monitor != nil {
		wg.Go(func() { _ = s.monitor.Run(ctx) })
		wg.Go(func() { s.runAgent(ctx) })
	}
	wg.Go(func() { s.runScheduler(ctx) })
	wg.Wait()
	return nil
}

// Stats is the per-version request statistics store the canary's verdicts
// read (the inference router records into it).
func (s *Service) Stats() *Stats { return s.stats }

// TrafficChanges delivers the id of every deployment whose traffic weights
// change, on every instance, until ctx ends (the router reloads them).
func (s *Service) TrafficChanges(ctx context.Context, fn func(deployment string)) error {
	return s.traffic.Subscribe(ctx, s.log, nil, fn)
}

// Node is this instance's GPU node name ("" without GPUs).
func (s *Service) Node() string {
	if s.monitor == nil {
		return ""
	}
	return s.cfg.Node
}

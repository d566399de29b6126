package main

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/atriumhq/atrium/modules/gpu"
	"github.com/atriumhq/atrium/platform/config"
	"github.com/atriumhq/atrium/platform/testenv"
	atriumsql "github.com/atriumhq/atrium/sql"
)

// gpuConfig makes cfg a GPU node named node on the mock backend (NVIDIA's
// simulated DGX A100), with intervals short enough for tests.
func gpuConfig(cfg *config.Config, node string) {
	cfg.GPU = config.GPU{Backend: "mock", Node: node, Policy: "least_loaded", RefreshInterval: 200 * time.Millisecond,
		NodeTTL: 2 * time.Second, ScheduleInterval: 100 * time.Millisecond, LeaseTTL: 2 * time.Second, MeterInterval: time.Second,
		Commands: []string{testBinary()}}
	cfg.Usage = config.Usage{PushInterval: 200 * time.Millisecond, FlushInterval: 500 * time.Millisecond}
}

// fakeModelCommand is a version's command template that runs `atrium
// fake-model` as a replica: this test binary, which TestMain runs as atrium
// when AS_ATRIUM=1 (set here for the replicas the test's instances start).
func fakeModelCommand(t testing.TB, flags ...string) string {
	t.Helper()
	t.Setenv("AS_ATRIUM", "1")
	return strings.Join(append([]string{testBinary(), "fake-model --port {port} --model {deployment} --version {version}"}, flags...), " ")
}

// testBinary is this test binary's absolute path: the one program test
// instances allow replicas to start.
func testBinary() string {
	bin, err := filepath.Abs(os.Args[0])
	if err != nil {
		panic(err)
	}
	return bin
}

// startGPUCluster starts n instances, each a GPU node ("node-0" ...) with
// eight mock GPUs.
func startGPUCluster(t testing.TB, n int) []*instance {
	t.Helper()
	t.Setenv("AS_ATRIUM", "1")
	dbURL := testenv.Database(t, atriumsql.Migrations())
	prefix := testenv.RedisPrefix(t)
	out := make([]*instance, n)
	for i := range out {
		cfg := testConfig(dbURL, prefix, fmt.Sprintf("gpu-%d", i))
		gpuConfig(&cfg, fmt.Sprintf("node-%d", i))
		if _, bench := t.(*testing.B); bench {
			cfg.Log.Level = "info" // as in production: debug logs every request
		}
		out[i] = startInstance(t, cfg)
	}
	return out
}

// gpuEnv is a GPU cluster with a tenant whose administrator deploys.
type gpuEnv struct {
	in     []*instance
	admin  string // platform administrator
	tenant string
	api    func(method, path string, body any) (*http.Response, []byte)
}

func startGPUs(t testing.TB, n int) *gpuEnv {
	t.Helper()
	e := &gpuEnv{in: startGPUCluster(t, n), tenant: uuid.NewString()}
	e.admin = loginAdmin(t, e.in[0])
	ensureTenant(t, e.in[0], e.tenant)
	e.api = apiAs(t, e.in[0], e.admin)
	return e
}

// createModel registers a model with versions "1" and "2" of need and
// returns it.
func (e *gpuEnv) createModel(t testing.TB, name string, version map[string]any) gpu.Model {
	t.Helper()
	v1 := map[string]any{"version": "1", "artifact_uri": "s3://models/" + name + "/1", "command": fakeModelCommand(t), "port": 8000}
	// version may set the command (and anything else).
	for k, v := range version {
		v1[k] = v
	}
	resp, body := e.api(http.MethodPost, "/api/v1/models", map[string]any{"tenant_id": e.tenant, "name": name, "version": v1})
	wantStatus(t, resp, body, http.StatusCreated)
	m := decodeJSON[gpu.Model](t, body)
	v1["version"], v1["artifact_uri"] = "2", "s3://models/"+name+"/2"
	resp, body = e.api(http.MethodPost, "/api/v1/models/"+m.ID+"/versions", v1)
	wantStatus(t, resp, body, http.StatusCreated)
	m.Versions = append(m.Versions, decodeJSON[gpu.Version](t, body))
	return m
}

func (e *gpuEnv) deployment(t testing.TB, id string) gpu.DeploymentDetail {
	t.Helper()
	resp, body := e.api(http.MethodGet, "/api/v1/deployments/"+id, nil)
	wantStatus(t, resp, body, http.StatusOK)
	return decodeJSON[gpu.DeploymentDetail](t, body)
}

// liveGPUs waits until the cluster lists want GPUs on live nodes.
func (e *gpuEnv) liveGPUs(t testing.TB, want int) []gpu.NodeView {
	t.Helper()
	var nodes []gpu.NodeView
	testenv.Eventually(t, 10*time.Second, "the nodes' GPUs in the cluster", func() bool {
		nodes = e.nodes(t)
		n := 0
		for _, node := range nodes {
			if node.Live {
				n += len(node.GPUs)
			}
		}
		return n == want
	})
	return nodes
}

// running are a deployment's running replicas of version (any when "").
func running(d gpu.DeploymentDetail, version string) []gpu.Replica {
	var out []gpu.Replica
	for _, r := range d.ReplicaList {
		if r.State == "running" && (version == "" || r.VersionID == version) {
			out = append(out, r)
		}
	}
	return out
}

func (e *gpuEnv) nodes(t testing.TB) []gpu.NodeView {
	t.Helper()
	resp, body := e.api(http.MethodGet, "/api/v1/gpu/nodes", nil)
	wantStatus(t, resp, body, http.StatusOK)
	return decodeJSON[struct{ Nodes []gpu.NodeView }](t, body).Nodes
}

// TestGPUDeployEndToEnd: two instances as two GPU nodes on mock GPUs. A
// tenant deploys a model; its replicas land on disjoint GPUs; a canary
// walks to 100 %; a bad canary rolls back by itself; a GPU that raises a
// critical XID loses its replica to a healthy one and comes back after a
// re-probe; a lost node's replicas move; quotas leave replicas pending
// with the reason; GPU time is metered; deleting frees everything.
func TestGPUDeployEndToEnd(t *testing.T) {
	e := startGPUs(t, 2)
	ctx := context.Background()
	e.liveGPUs(t, 16) // both nodes'

	m := e.createModel(t, "llama", map[string]any{"gpus": 1, "memory_mb": 20000, "sharing": "exclusive"})
	v1, v2 := m.Versions[0].ID, m.Versions[1].ID
	resp, body := e.api(http.MethodPost, "/api/v1/deployments", map[string]any{"tenant_id": e.tenant, "name": "chat", "model_id": m.ID,
		"version_id": v1, "replicas": 4, "max_replicas": 8, "strategy": "canary",
		"params": map[string]any{"watch_seconds": 1, "canary_steps": []int{10, 50, 100}, "min_requests": 10}})
	wantStatus(t, resp, body, http.StatusCreated)
	dep := decodeJSON[gpu.Deployment](t, body)
	var d gpu.DeploymentDetail
	testenv.Eventually(t, 15*time.Second, "4 replicas running", func() bool {
		d = e.deployment(t, dep.ID)
		return len(running(d, v1)) == 4
	})
	seen := map[string]bool{}
	for _, r := range running(d, "") {
		if len(r.GPUs) != 1 || r.MilliGPUs != 1000 {
			t.Fatalf("replica %s holds %v (%d milli-GPUs), want one whole GPU", r.ID, r.GPUs, r.MilliGPUs)
		}
		if seen[r.GPUs[0]] {
			t.Fatalf("GPU %s given to two exclusive replicas", r.GPUs[0])
		}
		seen[r.GPUs[0]] = true
	}

	// Canary: 10 % → 50 % → 100 % with healthy figures, recorded as the
	// router will.
	stats := e.in[1].app.gpus.Stats()
	record := func(version string, n int, failEvery int) {
		for i := range n {
			if err := stats.Record(ctx, dep.ID, version, time.Now(), 20*time.Millisecond, failEvery > 0 && i%failEvery == 0); err != nil {
				t.Fatal(err)
			}
		}
	}
	resp, body = e.api(http.MethodPatch, "/api/v1/deployments/"+dep.ID, map[string]any{"version_id": v2})
	wantStatus(t, resp, body, http.StatusOK)
	var weights []int
	testenv.Eventually(t, 30*time.Second, "the canary promoted to 100 %", func() bool {
		record(v2, 20, 0)
		d = e.deployment(t, dep.ID)
		if w := d.Traffic[v2]; len(weights) == 0 || weights[len(weights)-1] != w {
			weights = append(weights, w)
		}
		return d.TargetVersionID == nil && d.StableVersionID == v2
	})
	// Each step lasts at least its 1 s watch, far longer than a poll.
	if steps := slices.DeleteFunc(slices.Clone(weights), func(w int) bool { return w == 0 }); !slices.Equal(steps, []int{10, 50, 100}) {
		t.Errorf("the canary's weights went %v; want steps through 10 and 50 to 100", weights)
	}
	testenv.Eventually(t, 15*time.Second, "the old version's replicas stopped", func() bool {
		d = e.deployment(t, dep.ID)
		return len(running(d, v2)) == 4 && len(running(d, v1)) == 0
	})

	// A canary that fails rolls back by itself.
	resp, body = e.api(http.MethodPatch, "/api/v1/deployments/"+dep.ID, map[string]any{"version_id": v1})
	wantStatus(t, resp, body, http.StatusOK)
	testenv.Eventually(t, 20*time.Second, "the failing canary rolled back", func() bool {
		record(v1, 20, 2)
		d = e.deployment(t, dep.ID)
		return d.TargetVersionID == nil && d.StableVersionID == v2
	})
	if d.Events[0].Kind != "rolled_back" {
		t.Errorf("latest event %+v, want an automatic rollback", d.Events[0])
	}

	// A critical XID on a replica's GPU: the replica moves, the GPU shows
	// unhealthy with its history, a re-probe returns it.
	victim := running(d, v2)[0]
	var sim gpu.Simulator
	for _, in := range e.in {
		if in.app.gpus.Node() == *victim.Node {
			sim = in.app.gpuDevs.(gpu.Simulator)
		}
	}
	sim.InjectXID(victim.GPUs[0], 79)
	testenv.Eventually(t, 15*time.Second, "the replica moved off the failed GPU", func() bool {
		d = e.deployment(t, dep.ID)
		rs := running(d, v2)
		return len(rs) == 4 && !slices.ContainsFunc(rs, func(r gpu.Replica) bool { return r.GPUs[0] == victim.GPUs[0] })
	})
	resp, body = e.api(http.MethodGet, "/api/v1/gpu/health-events?uuid="+victim.GPUs[0], nil)
	wantStatus(t, resp, body, http.StatusOK)
	evs := decodeJSON[struct{ Events []gpu.NodeHealthEvent }](t, body).Events
	if len(evs) == 0 || evs[0].XID != 79 || !evs[0].Critical {
		t.Fatalf("health events of the failed GPU: %+v", evs)
	}
	resp, body = e.api(http.MethodPost, "/api/v1/gpu/devices/"+victim.GPUs[0]+"/reprobe", nil)
	wantStatus(t, resp, body, http.StatusAccepted)
	testenv.Eventually(t, 10*time.Second, "the GPU back in service", func() bool {
		for _, n := range e.nodes(t) {
			for _, g := range n.GPUs {
				if g.UUID == victim.GPUs[0] {
					return g.Healthy
				}
			}
		}
		return false
	})

	// Quota: at most 5 GPUs; scaling to 7 leaves 2 pending with the reason.
	resp, body = call(t, http.MethodPut, e.in[0].URL+"/api/v1/tenants/"+e.tenant+"/quotas/max_gpus", jsonBody(map[string]int{"value": 5}),
		withJSON(bearer(e.admin)))
	wantStatus(t, resp, body, http.StatusOK)
	resp, body = e.api(http.MethodPatch, "/api/v1/deployments/"+dep.ID, map[string]any{"replicas": 7})
	wantStatus(t, resp, body, http.StatusOK)
	testenv.Eventually(t, 15*time.Second, "5 running, 2 pending on max_gpus", func() bool {
		d = e.deployment(t, dep.ID)
		pending := 0
		for _, r := range d.ReplicaList {
			if r.State == "pending" && strings.Contains(r.Reason, "max_gpus") {
				pending++
			}
		}
		return len(running(d, "")) == 5 && pending == 2
	})

	// The node of some replicas dies: they move to the other node.
	lostNode := *running(d, "")[0].Node
	for _, in := range e.in {
		if in.app.gpus.Node() == lostNode {
			if err := in.Stop(); err != nil {
				t.Fatal(err)
			}
			if in == e.in[0] {
				e.api = apiAs(t, e.in[1], e.admin)
			}
		}
	}
	testenv.Eventually(t, 20*time.Second, "the lost node's replicas running elsewhere", func() bool {
		d = e.deployment(t, dep.ID)
		rs := running(d, "")
		return len(rs) == 5 && !slices.ContainsFunc(rs, func(r gpu.Replica) bool { return *r.Node == lostNode })
	})

	// GPU time is metered into the tenant's budget.
	testenv.Eventually(t, 15*time.Second, "GPU time in max_gpu_hours", func() bool {
		resp, body := e.api(http.MethodGet, "/api/v1/tenants/"+e.tenant+"/quotas", nil)
		wantStatus(t, resp, body, http.StatusOK)
		return decodeJSON[quotaReport](t, body).get(t, "max_gpu_hours").Used > 0
	})

	// Deleting stops everything and gives the GPUs back.
	resp, body = e.api(http.MethodDelete, "/api/v1/deployments/"+dep.ID, nil)
	wantStatus(t, resp, body, http.StatusAccepted)
	testenv.Eventually(t, 20*time.Second, "the deployment gone and its GPUs free", func() bool {
		resp, _ := e.api(http.MethodGet, "/api/v1/deployments/"+dep.ID, nil)
		if resp.StatusCode != http.StatusNotFound {
			return false
		}
		for _, n := range e.nodes(t) {
			for _, g := range n.GPUs {
				if g.Exclusive || g.SharedMB != 0 {
					return false
				}
			}
		}
		return true
	})
}

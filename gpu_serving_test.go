package main

import (
	"bytes"
	"encoding/json"
	"io"
	"math"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/atriumhq/atrium/modules/gpu"
	"github.com/atriumhq/atrium/platform/testenv"
)

// infer sends one chat completion for model through in as token and
// returns the status, the version that served it and the body.
func infer(t testing.TB, in *instance, token, model string, stream bool) (int, string, []byte) {
	t.Helper()
	body, _ := json.Marshal(map[string]any{"model": model, "stream": stream, "max_tokens": 4,
		"messages": []map[string]string{{"role": "user", "content": "hello there"}}})
	req, _ := http.NewRequest(http.MethodPost, in.URL+"/v1/chat/completions", bytes.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header.Get("X-Atrium-Version"), b
}

// faults sets a fake-model replica's injected faults.
func faults(t testing.TB, endpoint string, patch map[string]any) {
	t.Helper()
	resp, body := call(t, http.MethodPost, "http://"+endpoint+"/admin/faults", jsonBody(patch), http.Header{"Content-Type": {"application/json"}})
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("faults on %s: %d %s", endpoint, resp.StatusCode, body)
	}
}

// TestServingEndToEnd: two instances as two GPU nodes on mock GPUs run a
// fake model as real replica processes. Requests through either instance
// reach them; a canary at 10 % gets 10 % ± 2 % of 2 000 requests; promoted,
// it serves everything; a canary whose replicas fail is rolled back by
// itself; a killed replica is restarted; load scales the deployment up and
// its end scales it down.
func TestServingEndToEnd(t *testing.T) {
	e := startGPUs(t, 2)
	user := loginAs(t, e.in[0], "ml@serving.test", adminPassword, "tenant_admin", e.tenant)
	m := e.createModel(t, "llama", map[string]any{"gpus": 1, "memory_mb": 4000, "sharing": "shared"})
	v1, v2 := m.Versions[0].ID, m.Versions[1].ID
	resp, body := e.api(http.MethodPost, "/api/v1/deployments", map[string]any{"tenant_id": e.tenant, "name": "chat", "model_id": m.ID,
		"version_id": v1, "replicas": 2, "max_replicas": 6, "strategy": "canary",
		"params": map[string]any{"watch_seconds": 3600, "min_requests": 20, "max_error_rate": 0.05}})
	wantStatus(t, resp, body, http.StatusCreated)
	dep := decodeJSON[gpu.Deployment](t, body)
	var d gpu.DeploymentDetail
	testenv.Eventually(t, 30*time.Second, "2 replicas ready", func() bool {
		d = e.deployment(t, dep.ID)
		return len(running(d, v1)) == 2
	})
	for _, r := range running(d, "") {
		if r.Endpoint == "" || r.PID == nil || r.Runtime != "ready" {
			t.Fatalf("running replica without endpoint or process: %+v", r)
		}
	}
	// Its output, as its node published it.
	testenv.Eventually(t, 10*time.Second, "the replica's output", func() bool {
		resp, body := e.api(http.MethodGet, "/api/v1/deployments/"+dep.ID+"/replicas/"+running(d, "")[0].ID+"/logs", nil)
		return resp.StatusCode == http.StatusOK && bytes.Contains(body, []byte("fake-model listening"))
	})

	// Through either instance, streamed or not.
	for i, in := range e.in {
		code, version, b := infer(t, in, user, "chat", i == 1)
		if code != http.StatusOK || version != v1 {
			t.Fatalf("via instance %d: %d from version %q: %s", i, code, version, b)
		}
		if i == 1 && !bytes.Contains(b, []byte("data: [DONE]")) {
			t.Fatalf("the stream did not pass through: %s", b)
		}
	}
	if code, _, b := infer(t, e.in[0], user, "nope", false); code != http.StatusNotFound || !bytes.Contains(b, []byte("model_not_found")) {
		t.Fatalf("unknown model: %d %s", code, b)
	}
	if code, _, _ := infer(t, e.in[0], e.admin, "chat", false); code != http.StatusForbidden {
		t.Fatalf("a platform administrator (no tenant) invoked a model: %d", code)
	}
	// Another tenant's user, even its administrator, does not see "chat";
	// a viewer may not invoke models at all.
	other := loginAs(t, e.in[0], "ml@other.test", adminPassword, "tenant_admin", uuid.NewString())
	if code, _, b := infer(t, e.in[1], other, "chat", false); code != http.StatusNotFound {
		t.Fatalf("another tenant reached this tenant's deployment: %d %s", code, b)
	}
	viewer := loginAs(t, e.in[0], "viewer@serving.test", adminPassword, "viewer", e.tenant)
	if code, _, b := infer(t, e.in[0], viewer, "chat", false); code != http.StatusForbidden {
		t.Fatalf("a viewer invoked a model: %d %s", code, b)
	}

	// Canary at 10 %: the split over 2 000 requests.
	resp, body = e.api(http.MethodPatch, "/api/v1/deployments/"+dep.ID, map[string]any{"version_id": v2})
	wantStatus(t, resp, body, http.StatusOK)
	testenv.Eventually(t, 30*time.Second, "the canary at 10 %", func() bool {
		d = e.deployment(t, dep.ID)
		return d.Traffic[v2] == 10 && d.StepStartedAt != nil
	})
	// Every instance's router has the weights.
	time.Sleep(1500 * time.Millisecond)
	const total = 2000
	var canary, failed atomic.Int64
	var wg sync.WaitGroup
	next := atomic.Int64{}
	for w := range 16 {
		wg.Go(func() {
			for next.Add(1) <= total {
				code, version, _ := infer(t, e.in[w%2], user, "chat", false)
				switch {
				case code != http.StatusOK:
					failed.Add(1)
				case version == v2:
					canary.Add(1)
				}
			}
		})
	}
	wg.Wait()
	share := float64(canary.Load()) / total
	t.Logf("canary share over %d requests: %.2f%% (%d failed)", total, 100*share, failed.Load())
	// The routers' figures of the last minute, per version and replica,
	// add up across both instances.
	testenv.Eventually(t, 10*time.Second, "the routers' figures per version and replica", func() bool {
		d = e.deployment(t, dep.ID)
		var perReplica int64
		for _, r := range running(d, v1) {
			if r.Figures != nil {
				perReplica += r.Figures.Requests
			}
		}
		return d.VersionFigures[v2].Requests >= canary.Load() && perReplica >= total-canary.Load()
	})
	if failed.Load() > 0 || math.Abs(share-0.10) > 0.02 {
		t.Fatalf("canary share %.4f with %d failures; want 0.10 ± 0.02 and none", share, failed.Load())
	}

	// Promote it to 100 %.
	testenv.Eventually(t, 60*time.Second, "the canary promoted to 100 %", func() bool {
		d = e.deployment(t, dep.ID)
		if d.TargetVersionID == nil {
			return d.StableVersionID == v2
		}
		// Promote each step once its replicas run (409 until then).
		e.api(http.MethodPost, "/api/v1/deployments/"+dep.ID+"/promote", nil)
		return false
	})
	testenv.Eventually(t, 30*time.Second, "only version 2 serves", func() bool {
		code, version, _ := infer(t, e.in[1], user, "chat", false)
		d = e.deployment(t, dep.ID)
		return code == http.StatusOK && version == v2 && len(running(d, v1)) == 0
	})

	// A failing canary rolls back by itself.
	resp, body = e.api(http.MethodPatch, "/api/v1/deployments/"+dep.ID, map[string]any{"version_id": v1})
	wantStatus(t, resp, body, http.StatusOK)
	testenv.Eventually(t, 30*time.Second, "the canary's replica ready", func() bool {
		d = e.deployment(t, dep.ID)
		return len(running(d, v1)) == 1 && d.Traffic[v1] == 10
	})
	faults(t, running(d, v1)[0].Endpoint, map[string]any{"error_rate": 1})
	testenv.Eventually(t, 60*time.Second, "the failing canary rolled back", func() bool {
		for range 20 {
			infer(t, e.in[0], user, "chat", false)
		}
		d = e.deployment(t, dep.ID)
		return d.TargetVersionID == nil && d.StableVersionID == v2
	})
	if d.Events[0].Kind != "rolled_back" || !strings.Contains(d.Events[0].Message, "automatically") {
		t.Errorf("latest event %+v, want an automatic rollback", d.Events[0])
	}

	// A killed replica is restarted by its node.
	victim := running(d, v2)[0]
	if err := syscall.Kill(*victim.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 30*time.Second, "the killed replica restarted", func() bool {
		d = e.deployment(t, dep.ID)
		for _, r := range running(d, v2) {
			if r.ID == victim.ID && r.Restarts >= 1 && *r.PID != *victim.PID {
				return true
			}
		}
		return false
	})

	// Load scales up; its end scales down.
	resp, body = e.api(http.MethodPatch, "/api/v1/deployments/"+dep.ID, map[string]any{"min_replicas": 1,
		"params": map[string]any{"autoscale_metric": "concurrency", "autoscale_target": 2, "scale_down_seconds": 2}})
	wantStatus(t, resp, body, http.StatusOK)
	for _, r := range running(d, v2) {
		faults(t, r.Endpoint, map[string]any{"latency": "300ms"})
	}
	stop := make(chan struct{})
	var load sync.WaitGroup
	for w := range 10 {
		load.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
					infer(t, e.in[w%2], user, "chat", false)
				}
			}
		})
	}
	testenv.Eventually(t, 60*time.Second, "scaled up under load", func() bool {
		d = e.deployment(t, dep.ID)
		return d.Replicas >= 4 && len(running(d, "")) >= 4
	})
	close(stop)
	load.Wait()
	testenv.Eventually(t, 60*time.Second, "scaled down after the load", func() bool {
		d = e.deployment(t, dep.ID)
		return d.Replicas == 1
	})
	var reasons []string
	for _, ev := range d.Events {
		if ev.Kind == "autoscaled" {
			reasons = append(reasons, ev.Message)
		}
	}
	if len(reasons) < 2 {
		t.Errorf("autoscaling decisions recorded: %q; want the scale-up and the scale-down with their reasons", reasons)
	}
	t.Logf("autoscaling decisions: %s", strings.Join(reasons, " | "))

	// Usage: inference requests metered for the tenant.
	testenv.Eventually(t, 15*time.Second, "inference requests in the tenant's usage", func() bool {
		resp, body := apiAs(t, e.in[0], user)(http.MethodGet, "/api/v1/usage", nil)
		return resp.StatusCode == http.StatusOK && bytes.Contains(body, []byte("inference_requests"))
	})
}

// TestServingScaleFromZero: a deployment scaled to zero holds a request
// while its first replica starts, answers it, and goes back to zero once
// idle.
func TestServingScaleFromZero(t *testing.T) {
	e := startGPUs(t, 1)
	user := loginAs(t, e.in[0], "ml@zero.test", adminPassword, "tenant_admin", e.tenant)
	m := e.createModel(t, "tiny", map[string]any{"gpus": 1, "memory_mb": 2000, "sharing": "shared"})
	resp, body := e.api(http.MethodPost, "/api/v1/deployments", map[string]any{"tenant_id": e.tenant, "name": "tiny", "model_id": m.ID,
		"replicas": 0, "min_replicas": 0, "max_replicas": 2,
		"params": map[string]any{"autoscale_metric": "concurrency", "autoscale_target": 4, "scale_down_seconds": 1, "scale_to_zero_seconds": 2}})
	wantStatus(t, resp, body, http.StatusCreated)
	dep := decodeJSON[gpu.Deployment](t, body)
	if d := e.deployment(t, dep.ID); len(d.ReplicaList) != 0 {
		t.Fatalf("a deployment at zero has replicas: %+v", d.ReplicaList)
	}
	start := time.Now()
	code, _, b := infer(t, e.in[0], user, "tiny", false)
	if code != http.StatusOK {
		t.Fatalf("the held request: %d %s", code, b)
	}
	t.Logf("first request answered after %s (replica start included)", time.Since(start).Round(time.Millisecond))
	testenv.Eventually(t, 30*time.Second, "back to zero replicas once idle", func() bool {
		d := e.deployment(t, dep.ID)
		return d.Replicas == 0 && len(running(d, "")) == 0
	})
	d := e.deployment(t, dep.ID)
	var msgs []string
	for _, ev := range d.Events {
		if ev.Kind == "autoscaled" {
			msgs = append(msgs, ev.Message)
		}
	}
	if len(msgs) < 2 || !strings.Contains(strings.Join(msgs, "|"), "scaled to zero") {
		t.Errorf("autoscaling decisions %q; want 0 → 1 for the waiting request and back to zero", msgs)
	}
}

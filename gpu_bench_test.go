package main

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/atriumhq/atrium/modules/gpu"
	"github.com/atriumhq/atrium/platform/testenv"
)

// BenchmarkInferenceRouter measures the router's overhead (make bench,
// "Inference router"): the same chat completions, 16 at a time, sent to a
// fake-model replica directly and through the router (authentication, rate
// limits, metering, weighted version choice, replica choice, proxying), in
// the same run, one at a time (c1: the latency the router adds) and 16 at a
// time (c16: throughput). Each op is a batch of 2 000 requests; p50_ms and
// p99_ms are their latencies, req/s the batch's throughput.
func BenchmarkInferenceRouter(b *testing.B) {
	e := startGPUs(b, 1)
	user := loginAs(b, e.in[0], "bench@serving.test", adminPassword, "tenant_admin", e.tenant)
	liftLimits := func(q string) {
		resp, body := call(b, http.MethodPut, e.in[0].URL+"/api/v1/tenants/"+e.tenant+"/quotas/"+q, jsonBody(map[string]int{"value": 1_000_000_000}),
			withJSON(bearer(e.admin)))
		wantStatus(b, resp, body, http.StatusOK)
	}
	liftLimits("max_api_calls_per_day")
	// Two one-replica deployments of the fake model: "bench" answers at
	// once (the router's own cost dominates), "bench-10ms" takes 10 ms like
	// a small real model.
	deploy := func(name string, flags ...string) string {
		m := e.createModel(b, name, map[string]any{"gpus": 1, "memory_mb": 4000, "sharing": "shared", "command": fakeModelCommand(b, flags...)})
		resp, body := e.api(http.MethodPost, "/api/v1/deployments", map[string]any{"tenant_id": e.tenant, "name": name, "model_id": m.ID,
			"version_id": m.Versions[0].ID, "replicas": 1})
		wantStatus(b, resp, body, http.StatusCreated)
		dep := decodeJSON[gpu.Deployment](b, body)
		var endpoint string
		testenv.Eventually(b, 30*time.Second, "the replica ready", func() bool {
			rs := running(e.deployment(b, dep.ID), "")
			if len(rs) == 1 {
				endpoint = rs[0].Endpoint
			}
			return endpoint != ""
		})
		return endpoint
	}
	endpoint, slow := deploy("bench"), deploy("bench-10ms", "--latency", "10ms")
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	run := func(b *testing.B, url string, auth bool, conc int, model string) {
		const total = 2000
		payload := []byte(`{"model":"` + model + `","max_tokens":8,"messages":[{"role":"user","content":"how fast is the router"}]}`)
		var lat []time.Duration
		var mu sync.Mutex
		var elapsed time.Duration
		for b.Loop() {
			lat = lat[:0]
			start := time.Now()
			var wg sync.WaitGroup
			next := make(chan struct{}, total)
			for range total {
				next <- struct{}{}
			}
			close(next)
			for range conc {
				wg.Go(func() {
					var mine []time.Duration
					for range next {
						req, _ := http.NewRequest(http.MethodPost, url, bytes.NewReader(payload))
						req.Header.Set("Content-Type", "application/json")
						if auth {
							req.Header.Set("Authorization", "Bearer "+user)
						}
						t0 := time.Now()
						resp, err := client.Do(req)
						if err != nil {
							b.Error(err)
							return
						}
						_, _ = io.Copy(io.Discard, resp.Body)
						resp.Body.Close()
						if resp.StatusCode != http.StatusOK {
							b.Errorf("status %d", resp.StatusCode)
							return
						}
						mine = append(mine, time.Since(t0))
					}
					mu.Lock()
					lat = append(lat, mine...)
					mu.Unlock()
				})
			}
			wg.Wait()
			elapsed += time.Since(start)
		}
		slices.Sort(lat)
		if len(lat) == 0 {
			return
		}
		b.ReportMetric(float64(lat[len(lat)/2])/1e6, "p50_ms")
		b.ReportMetric(float64(lat[len(lat)*99/100])/1e6, "p99_ms")
		b.ReportMetric(float64(total*b.N)/elapsed.Seconds(), "req/s")
	}
	// The floor of any proxy on this machine: a bare httputil.ReverseProxy
	// hop, in-process, nothing else.
	target, _ := url.Parse("http://" + endpoint)
	bare := httptest.NewServer(httputil.NewSingleHostReverseProxy(target))
	b.Cleanup(bare.Close)
	for _, conc := range []int{1, 16} {
		b.Run(fmt.Sprintf("c%d/direct", conc), func(b *testing.B) { run(b, "http://"+endpoint+"/v1/chat/completions", false, conc, "bench") })
		b.Run(fmt.Sprintf("c%d/bare_proxy", conc), func(b *testing.B) { run(b, bare.URL+"/v1/chat/completions", false, conc, "bench") })
		b.Run(fmt.Sprintf("c%d/router", conc), func(b *testing.B) { run(b, e.in[0].URL+"/v1/chat/completions", true, conc, "bench") })
	}
	b.Run("model10ms/c16/direct", func(b *testing.B) { run(b, "http://"+slow+"/v1/chat/completions", false, 16, "bench-10ms") })
	b.Run("model10ms/c16/router", func(b *testing.B) { run(b, e.in[0].URL+"/v1/chat/completions", true, 16, "bench-10ms") })
}

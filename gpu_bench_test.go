package main

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
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
	m := e.createModel(b, "bench", map[string]any{"gpus": 1, "memory_mb": 4000, "sharing": "shared"})
	resp, body := e.api(http.MethodPost, "/api/v1/deployments", map[string]any{"tenant_id": e.tenant, "name": "bench", "model_id": m.ID,
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
	payload := []byte(`{"model":"bench","max_tokens":8,"messages":[{"role":"user","content":"how fast is the router"}]}`)
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	run := func(b *testing.B, url string, auth bool, conc int) {
		const total = 2000
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
	for _, conc := range []int{1, 16} {
		b.Run(fmt.Sprintf("c%d/direct", conc), func(b *testing.B) { run(b, "http://"+endpoint+"/v1/chat/completions", false, conc) })
		b.Run(fmt.Sprintf("c%d/router", conc), func(b *testing.B) { run(b, e.in[0].URL+"/v1/chat/completions", true, conc) })
	}
}

//go:build nvml

// These tests need an NVIDIA driver and at least one GPU:
//
//	go test -tags nvml -run Real -v ./modules/gpu/

package gpu

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

// openRealNVML opens the real backend, closing it when the test ends.
func openRealNVML(t *testing.T) Backend {
	t.Helper()
	log := zerolog.New(zerolog.NewTestWriter(t))
	b, err := OpenBackend(BackendNVML, "real-test", log)
	if err != nil {
		t.Fatalf("OpenBackend(nvml): %v", err)
	}
	t.Cleanup(func() {
		if err := b.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return b
}

func TestRealNVMLReadings(t *testing.T) {
	b := openRealNVML(t)
	devs := readGPUs(t, b)
	if len(devs) == 0 {
		t.Fatal("the driver loads but reports no GPUs")
	}
	seen := make(map[string]bool)
	for i, d := range devs {
		t.Logf("GPU %d: %+v", d.Index, d)
		if !strings.HasPrefix(d.UUID, "GPU-") || seen[d.UUID] {
			t.Errorf("GPU %d: UUID %q is not a distinct GPU- UUID", i, d.UUID)
		}
		seen[d.UUID] = true
		if d.Index != i {
			t.Errorf("reading %d has index %d", i, d.Index)
		}
		if d.Name == "" || d.PCIBusID == "" {
			t.Errorf("GPU %d: name %q, PCI bus ID %q", i, d.Name, d.PCIBusID)
		}
		if d.MemoryTotalMB <= 0 || d.MemoryUsedMB+d.MemoryFreeMB > d.MemoryTotalMB+1 {
			t.Errorf("GPU %d: memory total %d used %d free %d", i, d.MemoryTotalMB, d.MemoryUsedMB, d.MemoryFreeMB)
		}
		if d.Utilization < 0 || d.Utilization > 100 {
			t.Errorf("GPU %d: utilization %d%%", i, d.Utilization)
		}
		// Zero is a field the GPU does not report (a vGPU, say).
		if d.TemperatureC < 0 || d.TemperatureC > 120 {
			t.Errorf("GPU %d: temperature %d °C", i, d.TemperatureC)
		}
		if d.PowerW < 0 || d.PowerW > 2000 {
			t.Errorf("GPU %d: power %.1f W", i, d.PowerW)
		}
		if d.NUMANode < -1 {
			t.Errorf("GPU %d: NUMA node %d", i, d.NUMANode)
		}
		c, u, err := b.ECC(context.Background(), d.UUID)
		if err != nil {
			t.Errorf("GPU %d: ECC: %v", i, err)
		}
		t.Logf("GPU %d: ECC corrected %d uncorrected %d", d.Index, c, u)
	}
}

// TestRealNVMLMonitor runs a Monitor for a few seconds (longer than one
// event wait) and checks that it stops when asked and that the GPUs are
// healthy.
func TestRealNVMLMonitor(t *testing.T) {
	b := openRealNVML(t)
	m := NewMonitor(b, zerolog.New(zerolog.NewTestWriter(t)), func(e HealthEvent) { t.Logf("health event: %+v", e) })
	ctx, cancel := context.WithTimeout(context.Background(), 7*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	for ctx.Err() == nil {
		devs, err := m.Snapshot(ctx)
		if err != nil && ctx.Err() == nil {
			t.Fatalf("Snapshot: %v", err)
		}
		for _, d := range devs {
			if !d.Healthy {
				t.Errorf("GPU %d (%s) is unhealthy: %s", d.Index, d.UUID, d.Unhealthy)
			}
		}
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
	if err := <-done; err != nil {
		t.Errorf("Run: %v", err)
	}
}

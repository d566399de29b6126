package gpu

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

// monitored is a Monitor over the mock backend, with its events.
type monitored struct {
	m      *Monitor
	sim    *dgxSimBackend
	events chan HealthEvent
	gpus   []Device // the first reading
}

// watchDGXSim starts a Monitor over a fresh mock backend, runs it until
// the test ends, and waits until it watches XID events on every GPU.
func watchDGXSim(t *testing.T) *monitored {
	t.Helper()
	sim := openDGXSim(t, "node-a")
	mt := &monitored{sim: sim, events: make(chan HealthEvent, 256)}
	mt.m = NewMonitor(sim, zerolog.Nop(), func(e HealthEvent) {
		select {
		case mt.events <- e:
		default: // a test that lets this many pile up does not read them
		}
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- mt.m.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	select {
	case <-sim.sim.watched:
	case err := <-done:
		t.Fatalf("Run returned before watching XID events: %v", err)
	}
	mt.gpus = mt.snapshot(t)
	mt.noEvent(t)
	return mt
}

func (mt *monitored) snapshot(t *testing.T) []Device {
	t.Helper()
	devs, err := mt.m.Snapshot(context.Background())
	if err != nil {
		t.Fatalf("Snapshot: %v", err)
	}
	return devs
}

// next returns the next health event. The timeout only keeps a broken
// test from hanging; it asserts nothing about speed.
func (mt *monitored) next(t *testing.T) HealthEvent {
	t.Helper()
	select {
	case e := <-mt.events:
		return e
	case <-time.After(30 * time.Second):
		t.Fatal("no health event came")
		return HealthEvent{}
	}
}

// delivered returns the event that the call just made delivered: events
// of Snapshot and Reprobe reach onEvent before they return.
func (mt *monitored) delivered(t *testing.T) HealthEvent {
	t.Helper()
	select {
	case e := <-mt.events:
		return e
	default:
		t.Fatal("no health event was delivered")
		return HealthEvent{}
	}
}

// noEvent fails the test if an event is waiting. Events are delivered
// before the call that caused them returns, except XIDs (see next).
func (mt *monitored) noEvent(t *testing.T) {
	t.Helper()
	select {
	case e := <-mt.events:
		t.Errorf("unexpected health event %+v", e)
	default:
	}
}

// health returns, per GPU index, "" for a healthy GPU or why it is not.
func health(devs []Device) []string {
	out := make([]string, len(devs))
	for i, d := range devs {
		if d.Healthy != (d.Unhealthy == "") {
			out[i] = fmt.Sprintf("inconsistent: healthy=%v unhealthy=%q", d.Healthy, d.Unhealthy)
			continue
		}
		out[i] = d.Unhealthy
	}
	return out
}

func allHealthyBut(n int, i int, why string) []string {
	out := make([]string, n)
	if i >= 0 {
		out[i] = why
	}
	return out
}

func TestMonitorXID(t *testing.T) {
	tests := []struct {
		xid      uint64
		critical bool
	}{
		{79, true},  // GPU has fallen off the bus
		{48, true},  // double-bit ECC error
		{13, false}, // graphics engine exception: the application's
		{31, false}, // page fault: the application's
		{43, false},
		{45, false},
		{68, false},
		{109, false},
	}
	for _, tt := range tests {
		t.Run("XID "+strconv.FormatUint(tt.xid, 10), func(t *testing.T) {
			mt := watchDGXSim(t)
			gpu := mt.gpus[3]
			mt.sim.InjectXID(gpu.UUID, tt.xid)
			e := mt.next(t)
			if e.UUID != gpu.UUID || e.Kind != HealthKindXID || e.XID != tt.xid || e.Critical != tt.critical || e.At.IsZero() {
				t.Errorf("event %+v, want an xid event for %s, XID %d, critical %v", e, gpu.UUID, tt.xid, tt.critical)
			}
			want := allHealthyBut(8, -1, "")
			if tt.critical {
				want[3] = "XID " + strconv.FormatUint(tt.xid, 10)
			}
			if got := health(mt.snapshot(t)); !slices.Equal(got, want) {
				t.Errorf("health %q, want %q", got, want)
			}
			mt.noEvent(t)
		})
	}
}

func TestMonitorECCRise(t *testing.T) {
	mt := watchDGXSim(t)
	gpu := mt.gpus[5].UUID

	mt.sim.SetECC(gpu, 40, 0) // corrected errors alone do not matter
	if got := health(mt.snapshot(t)); !slices.Equal(got, allHealthyBut(8, -1, "")) {
		t.Errorf("corrected ECC errors took a GPU out: %q", got)
	}
	mt.noEvent(t)

	mt.sim.SetECC(gpu, 40, 2)
	got := health(mt.snapshot(t))
	if !strings.HasPrefix(got[5], "ECC") || !slices.Equal(got[:5], allHealthyBut(5, -1, "")) {
		t.Errorf("after uncorrected errors rose: %q", got)
	}
	e := mt.delivered(t)
	if e.UUID != gpu || e.Kind != HealthKindECC || !e.Critical || !strings.Contains(e.Detail, "from 0 to 2") {
		t.Errorf("event %+v, want a critical ecc event for %s from 0 to 2", e, gpu)
	}

	// Unchanged counters raise nothing new, and the GPU stays out.
	if got := health(mt.snapshot(t)); !strings.HasPrefix(got[5], "ECC") {
		t.Errorf("GPU returned to service by itself: %q", got)
	}
	mt.noEvent(t)
}

func TestMonitorECCBaselineOnFirstReading(t *testing.T) {
	sim := openDGXSim(t, "node-a")
	gpu := readGPUs(t, sim)[0].UUID
	sim.SetECC(gpu, 0, 7) // errors from before this node started
	var events []HealthEvent
	m := NewMonitor(sim, zerolog.Nop(), func(e HealthEvent) { events = append(events, e) })
	devs, err := m.Snapshot(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if !devs[0].Healthy || len(events) != 0 {
		t.Errorf("first reading with old ECC errors: healthy %v, events %+v", devs[0].Healthy, events)
	}
}

func TestMonitorReprobe(t *testing.T) {
	mt := watchDGXSim(t)
	gpu := mt.gpus[2].UUID
	ctx := context.Background()

	if err := mt.m.Reprobe(ctx, gpu); err != nil { // a healthy GPU: nothing happens
		t.Fatalf("Reprobe of a healthy GPU: %v", err)
	}
	mt.noEvent(t)

	mt.sim.InjectXID(gpu, 79)
	mt.next(t)
	mt.sim.SetECC(gpu, 0, 1) // and its memory failed meanwhile
	err := mt.m.Reprobe(ctx, gpu)
	if err == nil || !strings.Contains(err.Error(), "ECC") {
		t.Errorf("Reprobe after ECC rose: %v, want an ECC error", err)
	}
	if e := mt.delivered(t); e.Kind != HealthKindECC || e.UUID != gpu {
		t.Errorf("event %+v, want ecc for %s", e, gpu)
	}
	if got := health(mt.snapshot(t)); got[2] == "" {
		t.Error("GPU returned to service although its ECC errors rose")
	}

	if err := mt.m.Reprobe(ctx, gpu); err != nil {
		t.Fatalf("Reprobe: %v", err)
	}
	e := mt.delivered(t)
	if e.Kind != HealthKindRecovered || e.UUID != gpu || e.Critical {
		t.Errorf("event %+v, want recovered for %s", e, gpu)
	}
	if got := health(mt.snapshot(t)); !slices.Equal(got, allHealthyBut(8, -1, "")) {
		t.Errorf("after Reprobe: %q", got)
	}
	mt.noEvent(t)

	if err := mt.m.Reprobe(ctx, "GPU-not-here"); !errors.Is(err, ErrGPUNotOnNode) {
		t.Errorf("Reprobe of an unknown GPU: %v, want ErrGPUNotOnNode", err)
	}
}

func TestMonitorUnidentifiedXID(t *testing.T) {
	mt := watchDGXSim(t)
	mt.m.xid("", 79) // the driver could not say which GPU
	for range 8 {
		if e := mt.delivered(t); e.Kind != HealthKindXID || !e.Critical || e.UUID == "" {
			t.Errorf("event %+v, want a critical xid for one GPU", e)
		}
	}
	for i, why := range health(mt.snapshot(t)) {
		if why != "XID 79" {
			t.Errorf("GPU %d: %q, want XID 79", i, why)
		}
	}
	mt.m.xid("", 13) // an application's error: recorded once, nobody taken out
	if e := mt.delivered(t); e.Critical || e.UUID != "" {
		t.Errorf("event %+v, want one non-critical xid", e)
	}
	mt.noEvent(t)
}

// dropping hides some GPUs of a backend, as if they fell off the bus.
type dropping struct {
	Backend
	mu   sync.Mutex
	gone map[string]bool
}

func (d *dropping) Devices(ctx context.Context) ([]Device, error) {
	devs, err := d.Backend.Devices(ctx)
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.DeleteFunc(devs, func(x Device) bool { return d.gone[x.UUID] }), err
}

func (d *dropping) drop(uuid string, gone bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.gone[uuid] = gone
}

func TestMonitorLostGPU(t *testing.T) {
	b := &dropping{Backend: openDGXSim(t, "node-a"), gone: make(map[string]bool)}
	var events []HealthEvent
	m := NewMonitor(b, zerolog.Nop(), func(e HealthEvent) { events = append(events, e) })
	ctx := context.Background()
	first, err := m.Snapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	gpu := first[4]
	b.drop(gpu.UUID, true)
	for range 2 { // the second snapshot reports nothing new
		devs, err := m.Snapshot(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(devs) != 8 || devs[4].UUID != gpu.UUID || devs[4].Healthy || devs[4].MemoryTotalMB != gpu.MemoryTotalMB {
			t.Fatalf("lost GPU not listed with its last reading as unhealthy: %+v", devs[4])
		}
	}
	if len(events) != 1 || events[0].Kind != HealthKindLost || events[0].UUID != gpu.UUID {
		t.Fatalf("events %+v, want one lost event for %s", events, gpu.UUID)
	}
	if err := m.Reprobe(ctx, gpu.UUID); !errors.Is(err, ErrGPUNotOnNode) {
		t.Errorf("Reprobe of a lost GPU: %v, want ErrGPUNotOnNode", err)
	}

	b.drop(gpu.UUID, false) // it answers again, but stays out until re-probed
	devs, _ := m.Snapshot(ctx)
	if devs[4].Healthy {
		t.Error("a GPU that came back returned to service without a re-probe")
	}
	if err := m.Reprobe(ctx, gpu.UUID); err != nil {
		t.Fatal(err)
	}
	if devs, _ := m.Snapshot(ctx); !devs[4].Healthy || events[len(events)-1].Kind != HealthKindRecovered {
		t.Errorf("after Reprobe: healthy %v, last event %+v", devs[4].Healthy, events[len(events)-1])
	}
}

func TestMonitorWithoutEvents(t *testing.T) {
	b, err := OpenBackend(BackendNone, "node-a", zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	m := NewMonitor(b, zerolog.Nop(), nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	devs, err := m.Snapshot(ctx)
	if err != nil || len(devs) != 0 {
		t.Errorf("Snapshot = %v, %v; want no GPUs", devs, err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run: %v", err)
	}
}

// TestMonitorHandlerCallsBack checks that onEvent may call the Monitor.
func TestMonitorHandlerCallsBack(t *testing.T) {
	sim := openDGXSim(t, "node-a")
	var m *Monitor
	var seen []bool // health of GPU 0 as the handler saw it
	m = NewMonitor(sim, zerolog.Nop(), func(e HealthEvent) {
		devs, err := m.Snapshot(context.Background())
		if err != nil {
			t.Errorf("Snapshot from onEvent: %v", err)
			return
		}
		seen = append(seen, devs[0].Healthy)
	})
	devs, err := m.Snapshot(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	m.xid(devs[0].UUID, 79)
	if err := m.Reprobe(context.Background(), devs[0].UUID); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(seen, []bool{false, true}) {
		t.Errorf("handler saw GPU 0 healthy = %v, want [false true]", seen)
	}
}

// TestMonitorConcurrent reads, loads and breaks GPUs from several
// goroutines at once; run with -race.
func TestMonitorConcurrent(t *testing.T) {
	mt := watchDGXSim(t)
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for i := range 20 {
				gpu := mt.gpus[(w+i)%8].UUID
				mt.sim.SetLoad(gpu, int64(i*100), i)
				mt.sim.InjectXID(gpu, 79)
				mt.sim.SetECC(gpu, 0, uint64(i))
				if _, err := mt.m.Snapshot(context.Background()); err != nil {
					t.Error(err)
				}
				_ = mt.m.Reprobe(context.Background(), gpu)
			}
		})
	}
	wg.Wait()
}

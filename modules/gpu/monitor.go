package gpu

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/rs/zerolog"
)

// IgnoredXIDs are the XID errors caused by the application running on a
// GPU rather than by the GPU, with what each means. They are recorded
// (a HealthEvent with Critical false) but leave the GPU in service.
// NVIDIA's Kubernetes device plugin skips the same XIDs by default when
// it decides a GPU's health (internal/rm/health.go), and NVIDIA's XID
// catalogue (https://docs.nvidia.com/deploy/xid-errors/) attributes them
// to user applications: a faulting kernel or an illegal memory access
// kills the process's context, not the GPU. The map is read without a
// lock: change it only before any Monitor runs.
var IgnoredXIDs = map[uint64]string{
	13:  "graphics engine exception",
	31:  "GPU memory page fault",
	43:  "GPU stopped processing",
	45:  "preemptive cleanup, due to previous errors",
	68:  "video processor exception",
	109: "context switch timeout",
}

// The kinds of HealthEvent the Monitor reports.
const (
	// HealthKindXID is an XID error event from the driver.
	HealthKindXID = "xid"
	// HealthKindECC is an uncorrected ECC error counter that rose.
	HealthKindECC = "ecc"
	// HealthKindLost is a GPU that the node read before and cannot read now.
	HealthKindLost = "lost"
	// HealthKindRecovered is a GPU that a re-probe returned to service.
	HealthKindRecovered = "recovered"
)

// Monitor applies health to a Backend's readings: it watches XID events,
// compares ECC counters between snapshots, remembers which GPUs are out of
// service and why, and reports every change to onEvent. A GPU taken out of
// service stays out until Reprobe returns it. Its methods are safe for
// concurrent use.
type Monitor struct {
	b       Backend
	log     zerolog.Logger
	onEvent func(HealthEvent)
	now     func() time.Time

	mu sync.Mutex
	// unhealthy holds why each GPU out of service is out (by UUID).
	unhealthy map[string]string
	// uncorrected holds each GPU's uncorrected ECC counter at the last
	// reading.
	uncorrected map[string]uint64
	// last holds the last reading of every GPU seen, and lost the GPUs
	// that were seen but no longer answer.
	last map[string]Device
	lost map[string]bool
	// pending are events not yet handed to onEvent; delivering says that
	// some call is handing them over (in order).
	pending    []HealthEvent
	delivering bool
}

// NewMonitor returns a Monitor over b. onEvent (which may be nil) is
// called for every health change, in the order the changes happened, from
// the goroutine that made the change; it may call the Monitor's methods.
func NewMonitor(b Backend, log zerolog.Logger, onEvent func(HealthEvent)) *Monitor {
	if onEvent == nil {
		onEvent = func(HealthEvent) {}
	}
	return &Monitor{
		b:           b,
		log:         log,
		onEvent:     onEvent,
		now:         time.Now,
		unhealthy:   make(map[string]string),
		uncorrected: make(map[string]uint64),
		last:        make(map[string]Device),
		lost:        make(map[string]bool),
	}
}

// Run watches XID events until ctx ends, then returns nil. A backend
// without events (no GPUs, or GPUs that do not deliver them) is watched
// for nothing; when waiting for events fails, Run logs it and watches
// again after a pause that grows to 30 seconds.
func (m *Monitor) Run(ctx context.Context) error {
	const maxPause = 30 * time.Second
	pause := time.Second
	for {
		err := m.b.WatchXID(ctx, m.xid)
		if ctx.Err() != nil {
			return nil
		}
		if errors.Is(err, errors.ErrUnsupported) {
			m.log.Info().Err(err).Str("gpu_backend", m.b.Name()).Msg("gpu: no XID events to watch")
			<-ctx.Done()
			return nil
		}
		m.log.Warn().Err(err).Dur("retry_in", pause).Msg("gpu: watching XID events failed")
		t := time.NewTimer(pause)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
		pause = min(2*pause, maxPause)
	}
}

// xid applies one XID event. An empty uuid (the driver could not say which
// GPU) takes every known GPU out of service when the XID is critical, as
// NVIDIA's device plugin does.
func (m *Monitor) xid(uuid string, xid uint64) {
	why, ignored := IgnoredXIDs[xid]
	detail := fmt.Sprintf("XID %d", xid)
	if ignored {
		detail += " (" + why + "; caused by the application, GPU left in service)"
	}
	m.mu.Lock()
	at := m.now().UTC()
	targets := []string{uuid}
	if uuid == "" {
		detail += " on a GPU the driver did not identify"
		if !ignored {
			targets = targets[:0]
			for u := range m.last {
				targets = append(targets, u)
			}
			slices.Sort(targets)
		}
	}
	if len(targets) == 0 { // no GPU known yet: still record the event
		targets = []string{""}
	}
	for _, u := range targets {
		if !ignored && u != "" {
			m.unhealthy[u] = fmt.Sprintf("XID %d", xid)
		}
		m.pending = append(m.pending, HealthEvent{UUID: u, At: at, Kind: HealthKindXID, XID: xid, Critical: !ignored, Detail: detail})
	}
	m.mu.Unlock()
	ev := m.log.Warn()
	if ignored {
		ev = m.log.Info()
	}
	ev.Str("uuid", uuid).Uint64("xid", xid).Bool("critical", !ignored).Msg("gpu: XID error")
	m.deliver()
}

// Snapshot reads every GPU and applies health: a GPU is unhealthy after a
// critical XID, after its uncorrected ECC counter rose since the previous
// reading (NVIDIA's device plugin does not act on ECC; we do), or when a
// GPU read before no longer answers (it is then listed with its last
// reading). It returns the backend's error when the GPUs cannot be read.
func (m *Monitor) Snapshot(ctx context.Context) ([]Device, error) {
	devs, err := m.b.Devices(ctx)
	if err != nil {
		return nil, err
	}
	m.mu.Lock()
	at := m.now().UTC()
	seen := make(map[string]bool, len(devs))
	for i := range devs {
		d := &devs[i]
		seen[d.UUID] = true
		m.checkECCLocked(d, at)
		delete(m.lost, d.UUID)
		m.last[d.UUID] = cloneDeviceReading(*d)
		m.applyLocked(d)
	}
	for u, d := range m.last {
		if seen[u] {
			continue
		}
		if !m.lost[u] {
			m.lost[u] = true
			if _, out := m.unhealthy[u]; !out {
				m.unhealthy[u] = "not readable"
			}
			m.pending = append(m.pending, HealthEvent{UUID: u, At: at, Kind: HealthKindLost, Critical: true,
				Detail: fmt.Sprintf("GPU %d (%s) no longer answers", d.Index, d.PCIBusID)})
			m.log.Warn().Str("uuid", u).Msg("gpu: GPU no longer answers")
		}
		d = cloneDeviceReading(d)
		m.applyLocked(&d)
		devs = append(devs, d)
	}
	m.mu.Unlock()
	m.deliver()
	slices.SortFunc(devs, func(a, b Device) int { return a.Index - b.Index })
	return devs, nil
}

// Reprobe reads a GPU again and, if it answers and its uncorrected ECC
// counter did not rise, returns it to service (a "recovered" event when it
// was out). A GPU whose counter rose stays out (an "ecc" event) and
// Reprobe returns an error. A GPU that does not answer gives an error
// wrapping ErrGPUNotOnNode; the backend's error is returned when the GPUs
// cannot be read.
func (m *Monitor) Reprobe(ctx context.Context, uuid string) error {
	devs, err := m.b.Devices(ctx)
	if err != nil {
		return fmt.Errorf("gpu: re-probing %s: %w", uuid, err)
	}
	i := slices.IndexFunc(devs, func(d Device) bool { return d.UUID == uuid })
	if i < 0 {
		return fmt.Errorf("gpu: re-probing %s: it does not answer: %w", uuid, ErrGPUNotOnNode)
	}
	d := devs[i]
	m.mu.Lock()
	at := m.now().UTC()
	rose := m.checkECCLocked(&d, at)
	m.last[uuid] = cloneDeviceReading(d)
	delete(m.lost, uuid)
	was, out := m.unhealthy[uuid]
	if !rose && out {
		delete(m.unhealthy, uuid)
		m.pending = append(m.pending, HealthEvent{UUID: uuid, At: at, Kind: HealthKindRecovered,
			Detail: "re-probe answered; was out of service for: " + was})
	}
	m.mu.Unlock()
	m.deliver()
	if rose {
		return fmt.Errorf("gpu: re-probing %s: uncorrected ECC errors rose to %d, left out of service", uuid, d.ECCUncorrected)
	}
	if out {
		m.log.Info().Str("uuid", uuid).Str("was", was).Msg("gpu: GPU returned to service")
	}
	return nil
}

// checkECCLocked compares a reading's uncorrected ECC counter with the
// previous one and takes the GPU out of service when it rose; it reports
// whether it rose. The first reading of a GPU only sets the baseline, and
// a counter that fell (the driver reloaded) resets it.
func (m *Monitor) checkECCLocked(d *Device, at time.Time) bool {
	prev, seen := m.uncorrected[d.UUID]
	m.uncorrected[d.UUID] = d.ECCUncorrected
	if !seen || d.ECCUncorrected <= prev {
		return false
	}
	detail := fmt.Sprintf("uncorrected ECC errors rose from %d to %d", prev, d.ECCUncorrected)
	m.unhealthy[d.UUID] = "ECC: " + detail
	m.pending = append(m.pending, HealthEvent{UUID: d.UUID, At: at, Kind: HealthKindECC, Critical: true, Detail: detail})
	m.log.Warn().Str("uuid", d.UUID).Uint64("from", prev).Uint64("to", d.ECCUncorrected).Msg("gpu: uncorrected ECC errors")
	return true
}

// applyLocked sets Healthy and Unhealthy on a reading.
func (m *Monitor) applyLocked(d *Device) {
	why, out := m.unhealthy[d.UUID]
	d.Healthy = !out
	d.Unhealthy = why
}

// deliver hands pending events to onEvent, in order, outside the lock. A
// call made while another call is delivering leaves its events to that
// one, so onEvent may call back into the Monitor.
func (m *Monitor) deliver() {
	m.mu.Lock()
	if m.delivering {
		m.mu.Unlock()
		return
	}
	m.delivering = true
	for len(m.pending) > 0 {
		evs := m.pending
		m.pending = nil
		m.mu.Unlock()
		m.hand(evs)
		m.mu.Lock()
	}
	m.delivering = false
	m.mu.Unlock()
}

// hand calls onEvent for each event; a panicking onEvent is logged and
// does not stop delivery.
func (m *Monitor) hand(evs []HealthEvent) {
	for _, e := range evs {
		func() {
			defer func() {
				if r := recover(); r != nil {
					m.log.Error().Interface("panic", r).Str("kind", e.Kind).Msg("gpu: health event handler panicked")
				}
			}()
			m.onEvent(e)
		}()
	}
}

// cloneDeviceReading copies a Device, its slices included.
func cloneDeviceReading(d Device) Device {
	d.MIGInstances = slices.Clone(d.MIGInstances)
	d.NVLinkPeers = slices.Clone(d.NVLinkPeers)
	return d
}

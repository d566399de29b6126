package gpu

import (
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/dgxa100"
	"github.com/google/uuid"
	"github.com/rs/zerolog"
)

// Simulator is implemented by the mock backend: the node agent tells it
// what is placed on each GPU so that readings move as they would on real
// GPUs. Methods given an unknown UUID do nothing (or fail, where they
// return an error).
type Simulator interface {
	// SetLoad sets the memory used and the utilization (percent, 0–100)
	// reported for a GPU from now on; temperature and power follow the
	// utilization.
	SetLoad(uuid string, usedMB int64, utilization int)
	// InjectXID delivers an XID error event for a GPU through the NVML
	// event sets registered on it, as the driver would. With no event set
	// registered the event is lost, as with the driver.
	InjectXID(uuid string, xid uint64)
	// SetECC sets a GPU's volatile ECC error counters.
	SetECC(uuid string, corrected, uncorrected uint64)
	// SetMIGMode turns MIG mode on or off; turning it off destroys the
	// GPU's MIG instances, as the GPU reset that applies it would.
	SetMIGMode(uuid string, on bool)
	// CreateMIGInstance creates a MIG GPU instance of a profile ("1g.5gb")
	// on a GPU in MIG mode. Unlike NVIDIA's mock it checks capacity: the
	// profile's instance count and the GPU's seven compute slices. It
	// fails with ErrGPUNotOnNode for an unknown UUID and with another
	// error when MIG mode is off, the profile is unknown or it does not
	// fit.
	CreateMIGInstance(uuid, profile string) (MIGInstance, error)
	// DestroyMIGInstance destroys a MIG GPU instance by ID. It fails with
	// ErrGPUNotOnNode for an unknown UUID and when no such instance exists.
	DestroyMIGInstance(uuid string, id uint32) error
}

// The mock's simulated physics.
const (
	dgxSimGPUCount      = 8
	dgxSimNVLinks       = 12 // NVLinks per A100
	dgxSimIdleC         = 30 // temperature at 0% utilization
	dgxSimCPerPct       = 0.5
	dgxSimIdleMW        = 55000 // power at 0% utilization
	dgxSimMWPerPct      = 3450  // up to 400 W, the A100-SXM4's limit
	dgxSimComputeSlices = 7
	dgxSimQueueLen      = 64
)

// dgxSimUUIDSpace is the UUID v5 namespace of mock GPU UUIDs.
var dgxSimUUIDSpace = uuid.NewSHA1(uuid.NameSpaceURL, []byte("urn:atrium:gpu:mock"))

// dgxSimBusIDs are the PCI bus IDs of the GPUs of a real DGX A100.
var dgxSimBusIDs = [dgxSimGPUCount]string{
	"00000000:07:00.0", "00000000:0F:00.0", "00000000:47:00.0", "00000000:4E:00.0",
	"00000000:87:00.0", "00000000:90:00.0", "00000000:B7:00.0", "00000000:BD:00.0",
}

// dgxSimBackend is the nvml backend over NVIDIA's dgxa100 mock, extended by
// dgxSim; it also implements Simulator.
type dgxSimBackend struct {
	*nvmlBackend
	sim *dgxSim
}

var (
	_ Backend   = (*dgxSimBackend)(nil)
	_ Simulator = (*dgxSimBackend)(nil)
)

func newDGXSimBackend(node string, log zerolog.Logger) (*dgxSimBackend, error) {
	sim := newDGXSim(node)
	b, err := openNVMLBackend(BackendMock, sim.srv, log, sim.wake)
	if err != nil {
		return nil, fmt.Errorf("gpu: mock backend: %w", err)
	}
	return &dgxSimBackend{nvmlBackend: b, sim: sim}, nil
}

func (b *dgxSimBackend) SetLoad(uuid string, usedMB int64, utilization int) {
	b.sim.setLoad(uuid, usedMB, utilization)
}

func (b *dgxSimBackend) InjectXID(uuid string, xid uint64) { b.sim.injectXID(uuid, xid) }

func (b *dgxSimBackend) SetECC(uuid string, corrected, uncorrected uint64) {
	b.sim.setECC(uuid, corrected, uncorrected)
}

func (b *dgxSimBackend) SetMIGMode(uuid string, on bool) { b.sim.setMIGMode(uuid, on) }

func (b *dgxSimBackend) CreateMIGInstance(uuid, profile string) (MIGInstance, error) {
	return b.sim.createMIGInstance(uuid, profile)
}

func (b *dgxSimBackend) DestroyMIGInstance(uuid string, id uint32) error {
	return b.sim.destroyMIGInstance(uuid, id)
}

// dgxSim is NVIDIA's dgxa100 mock server with every method the backend
// calls set, and a simulated state behind them. NVIDIA's mock records
// every call with its arguments and never forgets them, so a long-running
// mock grows slowly (a few hundred bytes per reading of the node).
type dgxSim struct {
	srv *dgxa100.Server

	mu     sync.Mutex
	gpus   []*dgxSimGPU
	byUUID map[string]*dgxSimGPU
	sets   map[nvml.EventSet]*dgxSimEvents
	// watched is closed once every GPU has an event set registered for
	// XID events: tests wait on it before injecting one.
	watched     chan struct{}
	watchedOnce sync.Once
}

// dgxSimGPU is the simulated state of one GPU.
type dgxSimGPU struct {
	dev   *dgxa100.Device
	index int
	numa  int
	peers []*dgxSimGPU // NVLink domain: link l reaches peers[l*len(peers)/dgxSimNVLinks]

	// Guarded by dgxSim.mu.
	migMode     int
	usedMB      int64
	utilization int
	corrected   uint64
	uncorrected uint64
	sets        map[*dgxSimEvents]uint64 // registered event types
}

// dgxSimEvents is an NVML event set: a channel of events.
type dgxSimEvents struct {
	set      *mock.EventSet
	ch       chan nvml.EventData
	freed    chan struct{}
	freeOnce sync.Once
}

// newDGXSim builds the extended mock for a node.
func newDGXSim(node string) *dgxSim {
	m := &dgxSim{
		srv:     dgxa100.New(),
		byUUID:  make(map[string]*dgxSimGPU),
		sets:    make(map[nvml.EventSet]*dgxSimEvents),
		watched: make(chan struct{}),
	}
	for i, h := range m.srv.Devices {
		dev := h.(*dgxa100.Device)
		dev.UUID = "GPU-" + uuid.NewSHA1(dgxSimUUIDSpace, []byte(node+"/"+strconv.Itoa(i))).String()
		dev.PciBusID = dgxSimBusIDs[i]
		g := &dgxSimGPU{dev: dev, index: i, numa: i / 4, sets: make(map[*dgxSimEvents]uint64)}
		m.gpus = append(m.gpus, g)
		m.byUUID[dev.UUID] = g
	}
	for _, g := range m.gpus {
		domain := g.index / 4 // GPUs 0–3 and 4–7
		for _, p := range m.gpus[domain*4 : domain*4+4] {
			if p != g {
				g.peers = append(g.peers, p)
			}
		}
		m.setDeviceFuncs(g)
	}
	m.srv.EventSetCreateFunc = m.eventSetCreate
	return m
}

// pciInfo is the PCI information NVML would report for a mock GPU.
func (g *dgxSimGPU) pciInfo() nvml.PciInfo {
	var p nvml.PciInfo
	copy(p.BusId[:], g.dev.PciBusID)
	copy(p.BusIdLegacy[:], g.dev.PciBusID[4:]) // "0000:07:00.0"
	bus, _ := strconv.ParseUint(g.dev.PciBusID[9:11], 16, 32)
	p.Bus = uint32(bus)
	p.PciDeviceId = 0x20B010DE // A100-SXM4-40GB
	return p
}

// setDeviceFuncs sets the methods dgxa100 leaves unset (or reports as
// zero) for one GPU.
func (m *dgxSim) setDeviceFuncs(g *dgxSimGPU) {
	d := g.dev
	d.GetPciInfoFunc = func() (nvml.PciInfo, nvml.Return) {
		return g.pciInfo(), nvml.SUCCESS
	}
	d.GetNumaNodeIdFunc = func() (int, nvml.Return) {
		return g.numa, nvml.SUCCESS
	}
	d.GetMemoryInfoFunc = func() (nvml.Memory, nvml.Return) {
		m.mu.Lock()
		defer m.mu.Unlock()
		total := d.MemoryInfo.Total
		used := uint64(g.usedMB) << 20
		return nvml.Memory{Total: total, Used: used, Free: total - used}, nvml.SUCCESS
	}
	d.GetUtilizationRatesFunc = func() (nvml.Utilization, nvml.Return) {
		m.mu.Lock()
		defer m.mu.Unlock()
		u := uint32(g.utilization)
		return nvml.Utilization{Gpu: u, Memory: u / 2}, nvml.SUCCESS
	}
	d.GetTemperatureFunc = func(sensor nvml.TemperatureSensors) (uint32, nvml.Return) {
		if sensor != nvml.TEMPERATURE_GPU {
			return 0, nvml.ERROR_INVALID_ARGUMENT
		}
		m.mu.Lock()
		defer m.mu.Unlock()
		return uint32(dgxSimIdleC + dgxSimCPerPct*float64(g.utilization)), nvml.SUCCESS
	}
	d.GetPowerUsageFunc = func() (uint32, nvml.Return) {
		m.mu.Lock()
		defer m.mu.Unlock()
		return uint32(dgxSimIdleMW + dgxSimMWPerPct*g.utilization), nvml.SUCCESS
	}
	d.GetMigModeFunc = func() (int, int, nvml.Return) {
		m.mu.Lock()
		defer m.mu.Unlock()
		return g.migMode, g.migMode, nvml.SUCCESS
	}
	d.SetMigModeFunc = func(mode int) (nvml.Return, nvml.Return) {
		m.setMIGMode(d.UUID, mode == nvml.DEVICE_MIG_ENABLE)
		return nvml.SUCCESS, nvml.SUCCESS
	}
	d.GetTotalEccErrorsFunc = func(kind nvml.MemoryErrorType, _ nvml.EccCounterType) (uint64, nvml.Return) {
		m.mu.Lock()
		defer m.mu.Unlock()
		switch kind {
		case nvml.MEMORY_ERROR_TYPE_CORRECTED:
			return g.corrected, nvml.SUCCESS
		case nvml.MEMORY_ERROR_TYPE_UNCORRECTED:
			return g.uncorrected, nvml.SUCCESS
		}
		return 0, nvml.ERROR_INVALID_ARGUMENT
	}
	d.GetNvLinkStateFunc = func(link int) (nvml.EnableState, nvml.Return) {
		if link < 0 || link >= dgxSimNVLinks {
			return nvml.FEATURE_DISABLED, nvml.ERROR_INVALID_ARGUMENT
		}
		return nvml.FEATURE_ENABLED, nvml.SUCCESS
	}
	d.GetNvLinkRemotePciInfoFunc = func(link int) (nvml.PciInfo, nvml.Return) {
		if link < 0 || link >= dgxSimNVLinks {
			return nvml.PciInfo{}, nvml.ERROR_INVALID_ARGUMENT
		}
		return g.peers[link*len(g.peers)/dgxSimNVLinks].pciInfo(), nvml.SUCCESS
	}
	d.GetNvLinkRemoteDeviceTypeFunc = func(link int) (nvml.IntNvLinkDeviceType, nvml.Return) {
		if link < 0 || link >= dgxSimNVLinks {
			return nvml.NVLINK_DEVICE_TYPE_UNKNOWN, nvml.ERROR_INVALID_ARGUMENT
		}
		return nvml.NVLINK_DEVICE_TYPE_GPU, nvml.SUCCESS
	}
	d.GetSupportedEventTypesFunc = func() (uint64, nvml.Return) {
		return nvml.EventTypeXidCriticalError | nvml.EventTypeSingleBitEccError | nvml.EventTypeDoubleBitEccError, nvml.SUCCESS
	}
	d.RegisterEventsFunc = func(types uint64, set nvml.EventSet) nvml.Return {
		return m.registerEvents(g, types, set)
	}
}

// eventSetCreate makes an event set backed by a channel.
func (m *dgxSim) eventSetCreate() (nvml.EventSet, nvml.Return) {
	q := &dgxSimEvents{
		set:   &mock.EventSet{},
		ch:    make(chan nvml.EventData, dgxSimQueueLen),
		freed: make(chan struct{}),
	}
	q.set.WaitFunc = func(timeoutMS uint32) (nvml.EventData, nvml.Return) {
		t := time.NewTimer(time.Duration(timeoutMS) * time.Millisecond)
		defer t.Stop()
		select {
		case e := <-q.ch:
			return e, nvml.SUCCESS
		case <-t.C:
			return nvml.EventData{}, nvml.ERROR_TIMEOUT
		case <-q.freed:
			return nvml.EventData{}, nvml.ERROR_UNINITIALIZED
		}
	}
	q.set.FreeFunc = func() nvml.Return {
		m.mu.Lock()
		defer m.mu.Unlock()
		delete(m.sets, q.set)
		for _, g := range m.gpus {
			delete(g.sets, q)
		}
		q.freeOnce.Do(func() { close(q.freed) })
		return nvml.SUCCESS
	}
	m.mu.Lock()
	m.sets[q.set] = q
	m.mu.Unlock()
	return q.set, nvml.SUCCESS
}

// registerEvents registers a GPU's events of the given types on a set.
func (m *dgxSim) registerEvents(g *dgxSimGPU, types uint64, set nvml.EventSet) nvml.Return {
	m.mu.Lock()
	defer m.mu.Unlock()
	q, ok := m.sets[set]
	if !ok {
		return nvml.ERROR_INVALID_ARGUMENT
	}
	g.sets[q] |= types
	for _, o := range m.gpus {
		if !o.watchesXID() {
			return nvml.SUCCESS
		}
	}
	m.watchedOnce.Do(func() { close(m.watched) })
	return nvml.SUCCESS
}

// watchesXID says whether an event set takes this GPU's XID events. The
// caller holds dgxSim.mu.
func (g *dgxSimGPU) watchesXID() bool {
	for _, types := range g.sets {
		if types&nvml.EventTypeXidCriticalError != 0 {
			return true
		}
	}
	return false
}

// wake makes a pending Wait on set return (with an event of no type), so
// that WatchXID notices its context ended without waiting out the timeout.
func (m *dgxSim) wake(set nvml.EventSet) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if q, ok := m.sets[set]; ok {
		select {
		case q.ch <- nvml.EventData{}:
		default:
		}
	}
}

func (m *dgxSim) setLoad(uuid string, usedMB int64, utilization int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	g, ok := m.byUUID[uuid]
	if !ok {
		return
	}
	totalMB := int64(g.dev.MemoryInfo.Total >> 20)
	g.usedMB = min(max(usedMB, 0), totalMB)
	g.utilization = min(max(utilization, 0), 100)
}

func (m *dgxSim) injectXID(uuid string, xid uint64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	g, ok := m.byUUID[uuid]
	if !ok {
		return
	}
	e := nvml.EventData{
		Device:            g.dev,
		EventType:         nvml.EventTypeXidCriticalError,
		EventData:         xid,
		GpuInstanceId:     0xFFFFFFFF, // the whole GPU, not one MIG instance
		ComputeInstanceId: 0xFFFFFFFF,
	}
	for q, types := range g.sets {
		if types&nvml.EventTypeXidCriticalError == 0 {
			continue
		}
		select {
		case q.ch <- e:
		default: // a full queue drops the event, as a driver's would overflow
		}
	}
}

func (m *dgxSim) setECC(uuid string, corrected, uncorrected uint64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if g, ok := m.byUUID[uuid]; ok {
		g.corrected, g.uncorrected = corrected, uncorrected
	}
}

func (m *dgxSim) setMIGMode(uuid string, on bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	g, ok := m.byUUID[uuid]
	if !ok {
		return
	}
	if on {
		g.migMode = nvml.DEVICE_MIG_ENABLE
		return
	}
	g.migMode = nvml.DEVICE_MIG_DISABLE
	g.dev.Lock()
	clear(g.dev.GpuInstances)
	g.dev.Unlock()
}

// dgxSimProfile finds a dgxa100 GPU-instance profile by name.
func dgxSimProfile(name string) (nvml.GpuInstanceProfileInfo, bool) {
	for _, p := range dgxa100.MIGProfiles.GpuInstanceProfiles {
		if nvmlMIGProfileName(p) == name {
			return p, true
		}
	}
	return nvml.GpuInstanceProfileInfo{}, false
}

func (m *dgxSim) createMIGInstance(uuid, profile string) (MIGInstance, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	g, ok := m.byUUID[uuid]
	if !ok {
		return MIGInstance{}, fmt.Errorf("gpu: creating a MIG instance on %s: %w", uuid, ErrGPUNotOnNode)
	}
	if g.migMode != nvml.DEVICE_MIG_ENABLE {
		return MIGInstance{}, fmt.Errorf("gpu: creating a MIG instance on %s: MIG mode is off", uuid)
	}
	p, ok := dgxSimProfile(profile)
	if !ok {
		return MIGInstance{}, fmt.Errorf("gpu: creating a MIG instance on %s: unknown MIG profile %q", uuid, profile)
	}
	used, same := uint32(0), uint32(0)
	g.dev.RLock()
	for gi := range g.dev.GpuInstances {
		q := dgxa100.MIGProfiles.GpuInstanceProfiles[int(gi.Info.ProfileId)]
		used += q.SliceCount
		if gi.Info.ProfileId == p.Id {
			same++
		}
	}
	g.dev.RUnlock()
	if same >= p.InstanceCount || used+p.SliceCount > dgxSimComputeSlices {
		return MIGInstance{}, fmt.Errorf("gpu: creating a MIG instance on %s: %s does not fit (%d of %d compute slices used)", uuid, profile, used, dgxSimComputeSlices)
	}
	gi, ret := g.dev.CreateGpuInstance(&p)
	if ret != nvml.SUCCESS {
		return MIGInstance{}, fmt.Errorf("gpu: creating a MIG instance on %s: %w", uuid, ret)
	}
	info, ret := gi.GetInfo()
	if ret != nvml.SUCCESS {
		return MIGInstance{}, fmt.Errorf("gpu: creating a MIG instance on %s: %w", uuid, ret)
	}
	return MIGInstance{ID: info.Id, Profile: profile}, nil
}

func (m *dgxSim) destroyMIGInstance(uuid string, id uint32) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	g, ok := m.byUUID[uuid]
	if !ok {
		return fmt.Errorf("gpu: destroying MIG instance %d on %s: %w", id, uuid, ErrGPUNotOnNode)
	}
	var found *dgxa100.GpuInstance
	g.dev.RLock()
	for gi := range g.dev.GpuInstances {
		if gi.Info.Id == id {
			found = gi
		}
	}
	g.dev.RUnlock()
	if found == nil {
		return fmt.Errorf("gpu: destroying MIG instance %d on %s: no such instance", id, uuid)
	}
	if ret := found.Destroy(); ret != nvml.SUCCESS {
		return fmt.Errorf("gpu: destroying MIG instance %d on %s: %w", id, uuid, ret)
	}
	return nil
}

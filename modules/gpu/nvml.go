package gpu

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"sync"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/rs/zerolog"
)

// Backend reads the GPUs of this node. Implementations are safe for
// concurrent use.
type Backend interface {
	// Name says which backend this is: "nvml", "mock" or "none".
	Name() string
	// Devices returns a fresh reading of every GPU of the node, ordered by
	// index. Healthy is left true: the Monitor applies health. A GPU that
	// cannot be read at all (it fell off the bus, say) is left out and
	// logged; a field a GPU does not support is left at its zero value
	// (NUMANode at -1). It fails only when the GPUs cannot be counted or
	// ctx ends.
	Devices(ctx context.Context) ([]Device, error)
	// WatchXID delivers XID error events until ctx ends, then returns nil.
	// It registers an NVML event set for critical XID errors on every GPU
	// that supports them and waits on it with a five-second timeout in a
	// loop, as NVIDIA's Kubernetes device plugin does; it returns within
	// about that timeout of ctx ending. fn receives the GPU's UUID, or ""
	// when the driver reported an event whose GPU could not be identified.
	// It returns an error wrapping errors.ErrUnsupported when no GPU of
	// this backend delivers XID events, and another error when waiting on
	// the event set fails; the caller may call it again.
	WatchXID(ctx context.Context, fn func(uuid string, xid uint64)) error
	// ECC returns the volatile (since the driver loaded) corrected and
	// uncorrected ECC error counters of one GPU, 0 and 0 where the GPU does
	// not support ECC. It returns an error wrapping ErrGPUNotOnNode for a
	// UUID that is not one of this node's GPUs.
	ECC(ctx context.Context, uuid string) (corrected, uncorrected uint64, err error)
	// Close releases the backend (NVML's Shutdown for the real driver).
	// Calling it again does nothing.
	Close() error
}

// The values of ATRIUM_GPU_BACKEND that OpenBackend accepts.
const (
	// BackendNVML reads the real GPUs through the NVIDIA driver.
	BackendNVML = "nvml"
	// BackendMock simulates a DGX A100 (eight A100-SXM4-40GB) in memory.
	BackendMock = "mock"
	// BackendNone is a node without GPUs.
	BackendNone = "none"
	// BackendAuto is BackendNVML where the NVIDIA driver loads, otherwise
	// BackendNone.
	BackendAuto = "auto"
)

// ErrGPUNotOnNode is returned (wrapped) for a GPU UUID that is not one of
// this node's GPUs, or that no longer answers.
var ErrGPUNotOnNode = errors.New("gpu: no such GPU on this node")

// nvmlEventWaitMS is how long one wait on an NVML event set lasts, as in
// NVIDIA's device plugin: the longest WatchXID takes to notice ctx ended.
const nvmlEventWaitMS = 5000

// OpenBackend picks the backend for ATRIUM_GPU_BACKEND (kind):
//
//   - "nvml": the real driver; an error if libnvidia-ml.so.1 does not load
//     or NVML does not initialise.
//   - "mock": NVIDIA's dgxa100 mock, extended to report load, temperature,
//     power, ECC, NVLink, NUMA and XID events (see Simulator).
//   - "none": no GPUs.
//   - "auto" (or ""): "nvml" when the driver loads, otherwise "none"; the
//     log says which and why.
//
// node is this node's ID: the mock derives its GPU UUIDs from it (UUID v5
// of node and index), so a restarted node keeps its UUIDs and two nodes
// never share one; the mock refuses an empty node. Any other kind is an
// error naming ATRIUM_GPU_BACKEND. The caller closes the backend.
func OpenBackend(kind, node string, log zerolog.Logger) (Backend, error) {
	log = log.With().Str("gpu_backend", kind).Logger()
	switch kind {
	case BackendNVML:
		b, err := openNVMLBackend(BackendNVML, nvml.New(), log, nil)
		if err != nil {
			if errors.Is(err, nvml.ERROR_LIBRARY_NOT_FOUND) {
				return nil, fmt.Errorf("gpu: ATRIUM_GPU_BACKEND=nvml but the NVIDIA driver library libnvidia-ml.so.1 does not load (is the driver installed and visible to this container?): %w", err)
			}
			return nil, fmt.Errorf("gpu: ATRIUM_GPU_BACKEND=nvml: %w", err)
		}
		return b, nil
	case BackendAuto, "":
		b, err := openNVMLBackend(BackendNVML, nvml.New(), log, nil)
		switch {
		case err == nil:
			log.Info().Msg("gpu: NVIDIA driver found, reading GPUs through NVML")
			return b, nil
		case errors.Is(err, nvml.ERROR_LIBRARY_NOT_FOUND):
			log.Info().Msg("gpu: no NVIDIA driver (libnvidia-ml.so.1 does not load), running without GPUs")
		default:
			log.Warn().Err(err).Msg("gpu: the NVIDIA driver library loads but NVML does not initialise, running without GPUs")
		}
		return noGPUBackend{}, nil
	case BackendMock:
		if node == "" {
			return nil, errors.New("gpu: the mock GPU backend needs this node's ID to derive GPU UUIDs")
		}
		return newDGXSimBackend(node, log)
	case BackendNone:
		return noGPUBackend{}, nil
	default:
		return nil, fmt.Errorf("gpu: ATRIUM_GPU_BACKEND=%q is not one of nvml, mock, none, auto", kind)
	}
}

// noGPUBackend is a node without GPUs.
type noGPUBackend struct{}

var _ Backend = noGPUBackend{}

func (noGPUBackend) Name() string { return BackendNone }

func (noGPUBackend) Devices(ctx context.Context) ([]Device, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return []Device{}, nil
}

func (noGPUBackend) WatchXID(context.Context, func(string, uint64)) error {
	return fmt.Errorf("gpu: a node without GPUs has no XID events: %w", errors.ErrUnsupported)
}

func (noGPUBackend) ECC(_ context.Context, uuid string) (uint64, uint64, error) {
	return 0, 0, fmt.Errorf("gpu: ECC of %s: %w", uuid, ErrGPUNotOnNode)
}

func (noGPUBackend) Close() error { return nil }

// nvmlBackend reads GPUs through any nvml.Interface: the real library
// (nvml.New) or the extended dgxa100 mock.
type nvmlBackend struct {
	name string
	lib  nvml.Interface
	log  zerolog.Logger
	// hasNUMA and hasRemoteType say whether the loaded library has these
	// newer entry points; calling a symbol the library lacks would crash.
	hasNUMA       bool
	hasRemoteType bool
	// wakeWait, when set, makes a pending event-set Wait return at once; the
	// real driver has no such thing and WatchXID relies on the timeout.
	wakeWait func(nvml.EventSet)

	mu sync.Mutex
	// profiles caches each GPU's supported MIG GPU-instance profiles (by
	// UUID); they do not change while the driver is loaded.
	profiles map[string][]nvml.GpuInstanceProfileInfo
	// links caches what each GPU's NVLinks reach (by UUID), once a reading
	// found any: the wiring does not change while the node runs, and a
	// failing link raises XID 74, which takes the GPU out of service
	// anyway. Caching also spares the 37 calls per A100 that NVIDIA's mock
	// would otherwise record for ever.
	links map[string]nvlinkEnds

	closeOnce sync.Once
	closeErr  error
}

var _ Backend = (*nvmlBackend)(nil)

// openNVMLBackend initialises lib and returns a backend over it. The error
// wraps the nvml.Return of a failed Init.
func openNVMLBackend(name string, lib nvml.Interface, log zerolog.Logger, wakeWait func(nvml.EventSet)) (*nvmlBackend, error) {
	if ret := lib.Init(); ret != nvml.SUCCESS {
		return nil, fmt.Errorf("nvml init: %w", ret)
	}
	b := &nvmlBackend{
		name:     name,
		lib:      lib,
		log:      log,
		wakeWait: wakeWait,
		profiles: make(map[string][]nvml.GpuInstanceProfileInfo),
		links:    make(map[string]nvlinkEnds),
	}
	ext := lib.Extensions()
	b.hasNUMA = ext.LookupSymbol("nvmlDeviceGetNumaNodeId") == nil
	b.hasRemoteType = ext.LookupSymbol("nvmlDeviceGetNvLinkRemoteDeviceType") == nil
	driver, ret := lib.SystemGetDriverVersion()
	if ret != nvml.SUCCESS {
		driver = "unknown"
	}
	log.Info().Str("driver", driver).Bool("numa", b.hasNUMA).Msg("gpu: NVML initialised")
	return b, nil
}

func (b *nvmlBackend) Name() string { return b.name }

func (b *nvmlBackend) Close() error {
	b.closeOnce.Do(func() {
		if ret := b.lib.Shutdown(); ret != nvml.SUCCESS {
			b.closeErr = fmt.Errorf("gpu: nvml shutdown: %w", ret)
		}
	})
	return b.closeErr
}

// nvlinkEnds is what a GPU's NVLinks reach: other GPUs directly, and
// NVSwitches through which every GPU on the same switch is reachable.
type nvlinkEnds struct {
	gpus     []string // PCI bus IDs of GPUs at the other end
	switches []string // PCI bus IDs of NVSwitches at the other end
	// unknown are ends of a kind the library could not tell: a GPU of
	// this node's reading, otherwise taken for a switch.
	unknown []string
}

func (b *nvmlBackend) Devices(ctx context.Context) ([]Device, error) {
	n, ret := b.lib.DeviceGetCount()
	if ret != nvml.SUCCESS {
		return nil, fmt.Errorf("gpu: counting GPUs: %w", ret)
	}
	devs := make([]Device, 0, n)
	ends := make([]nvlinkEnds, 0, n)
	for i := range n {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		h, ret := b.lib.DeviceGetHandleByIndex(i)
		if ret != nvml.SUCCESS {
			b.log.Warn().Int("index", i).Str("nvml", ret.Error()).Msg("gpu: GPU does not answer, left out of the reading")
			continue
		}
		d, e, err := b.readDevice(h, i)
		if err != nil {
			b.log.Warn().Int("index", i).Err(err).Msg("gpu: GPU does not answer, left out of the reading")
			continue
		}
		devs = append(devs, d)
		ends = append(ends, e)
	}
	nvlinkPeers(devs, ends)
	slices.SortFunc(devs, func(a, b Device) int { return a.Index - b.Index })
	return devs, nil
}

// nvlinkPeers fills NVLinkPeers: the GPUs at the other end of a GPU's links,
// and every other GPU that shares an NVSwitch with it.
func nvlinkPeers(devs []Device, ends []nvlinkEnds) {
	isGPU := make(map[string]bool, len(devs))
	for _, d := range devs {
		isGPU[d.PCIBusID] = true
	}
	for i := range ends {
		for _, u := range ends[i].unknown {
			if isGPU[u] {
				ends[i].gpus = append(ends[i].gpus, u)
			} else {
				ends[i].switches = append(ends[i].switches, u)
			}
		}
	}
	onSwitch := make(map[string][]string) // switch bus ID → GPU bus IDs
	for i, e := range ends {
		for _, sw := range e.switches {
			onSwitch[sw] = append(onSwitch[sw], devs[i].PCIBusID)
		}
	}
	for i, e := range ends {
		peers := slices.Clone(e.gpus)
		for _, sw := range e.switches {
			peers = append(peers, onSwitch[sw]...)
		}
		slices.Sort(peers)
		peers = slices.Compact(peers)
		peers = slices.DeleteFunc(peers, func(p string) bool { return p == devs[i].PCIBusID })
		if len(peers) > 0 {
			devs[i].NVLinkPeers = peers
		}
	}
}

// nvmlFieldReader reads the fields of one GPU: a field the GPU does not
// support stays empty; a GPU that is lost makes the whole reading fail.
type nvmlFieldReader struct {
	b    *nvmlBackend
	uuid string
	lost error
}

// ok says whether a call succeeded, noting a lost GPU and logging failures
// other than "not supported".
func (r *nvmlFieldReader) ok(field string, ret nvml.Return) bool {
	switch ret {
	case nvml.SUCCESS:
		return true
	case nvml.ERROR_NOT_SUPPORTED:
	case nvml.ERROR_GPU_IS_LOST:
		if r.lost == nil {
			r.lost = fmt.Errorf("gpu %s: reading %s: %w", r.uuid, field, ret)
		}
	default:
		r.b.log.Debug().Str("uuid", r.uuid).Str("field", field).Str("nvml", ret.Error()).Msg("gpu: field not read")
	}
	return false
}

// readDevice reads one GPU. It fails when the GPU has no UUID or is lost.
func (b *nvmlBackend) readDevice(h nvml.Device, index int) (Device, nvlinkEnds, error) {
	uuid, ret := h.GetUUID()
	if ret != nvml.SUCCESS {
		return Device{}, nvlinkEnds{}, fmt.Errorf("gpu %d: reading UUID: %w", index, ret)
	}
	r := &nvmlFieldReader{b: b, uuid: uuid}
	d := Device{UUID: uuid, Index: index, NUMANode: -1, Healthy: true}
	if i, ret := h.GetIndex(); r.ok("index", ret) {
		d.Index = i
	}
	if name, ret := h.GetName(); r.ok("name", ret) {
		d.Name = name
	}
	if pci, ret := h.GetPciInfo(); r.ok("pci", ret) {
		d.PCIBusID = nvmlBusID(pci)
	}
	if b.hasNUMA {
		if node, ret := h.GetNumaNodeId(); r.ok("numa", ret) {
			d.NUMANode = node
		}
	}
	if mem, ret := h.GetMemoryInfo(); r.ok("memory", ret) {
		d.MemoryTotalMB = int64(mem.Total >> 20)
		d.MemoryUsedMB = int64(mem.Used >> 20)
		d.MemoryFreeMB = int64(mem.Free >> 20)
	}
	if u, ret := h.GetUtilizationRates(); r.ok("utilization", ret) {
		d.Utilization = int(u.Gpu)
	}
	if t, ret := h.GetTemperature(nvml.TEMPERATURE_GPU); r.ok("temperature", ret) {
		d.TemperatureC = int(t)
	}
	if mw, ret := h.GetPowerUsage(); r.ok("power", ret) {
		d.PowerW = float64(mw) / 1000
	}
	if current, _, ret := h.GetMigMode(); r.ok("mig mode", ret) {
		d.MIGMode = current == nvml.DEVICE_MIG_ENABLE
	}
	if d.MIGMode {
		d.MIGInstances = b.migInstances(r, h)
	}
	if c, ret := h.GetTotalEccErrors(nvml.MEMORY_ERROR_TYPE_CORRECTED, nvml.VOLATILE_ECC); r.ok("ecc corrected", ret) {
		d.ECCCorrected = c
	}
	if u, ret := h.GetTotalEccErrors(nvml.MEMORY_ERROR_TYPE_UNCORRECTED, nvml.VOLATILE_ECC); r.ok("ecc uncorrected", ret) {
		d.ECCUncorrected = u
	}
	ends := b.cachedNVLinks(r, h)
	if r.lost != nil {
		return Device{}, nvlinkEnds{}, r.lost
	}
	return d, ends, nil
}

// cachedNVLinks returns what a GPU's NVLinks reach, read once a reading
// finds any. The result is the caller's to change.
func (b *nvmlBackend) cachedNVLinks(r *nvmlFieldReader, h nvml.Device) nvlinkEnds {
	b.mu.Lock()
	e, ok := b.links[r.uuid]
	b.mu.Unlock()
	if !ok {
		e = b.nvlinks(r, h)
		if r.lost != nil || len(e.gpus)+len(e.switches)+len(e.unknown) == 0 {
			return e
		}
		b.mu.Lock()
		b.links[r.uuid] = e
		b.mu.Unlock()
	}
	return nvlinkEnds{gpus: slices.Clone(e.gpus), switches: slices.Clone(e.switches), unknown: slices.Clone(e.unknown)}
}

// nvlinks reads what each active NVLink of a GPU reaches.
func (b *nvmlBackend) nvlinks(r *nvmlFieldReader, h nvml.Device) nvlinkEnds {
	var e nvlinkEnds
	for link := range nvml.NVLINK_MAX_LINKS {
		state, ret := h.GetNvLinkState(link)
		if ret == nvml.ERROR_INVALID_ARGUMENT || ret == nvml.ERROR_NOT_SUPPORTED {
			break // past the GPU's last link, or no NVLink at all
		}
		if !r.ok("nvlink state", ret) || state != nvml.FEATURE_ENABLED {
			continue
		}
		pci, ret := h.GetNvLinkRemotePciInfo(link)
		if !r.ok("nvlink remote", ret) {
			continue
		}
		remote := nvmlBusID(pci)
		if remote == "" {
			continue
		}
		kind := nvml.NVLINK_DEVICE_TYPE_UNKNOWN
		if b.hasRemoteType {
			if t, ret := h.GetNvLinkRemoteDeviceType(link); r.ok("nvlink remote type", ret) {
				kind = t
			}
		}
		switch kind {
		case nvml.NVLINK_DEVICE_TYPE_GPU:
			e.gpus = append(e.gpus, remote)
		case nvml.NVLINK_DEVICE_TYPE_SWITCH:
			e.switches = append(e.switches, remote)
		case nvml.NVLINK_DEVICE_TYPE_UNKNOWN:
			e.unknown = append(e.unknown, remote)
		}
		// Other kinds (an IBM NPU: a CPU) are not GPU peers.
	}
	return e
}

// gpuInstanceProfiles returns the MIG GPU-instance profiles a GPU supports,
// read once per GPU.
func (b *nvmlBackend) gpuInstanceProfiles(r *nvmlFieldReader, h nvml.Device) []nvml.GpuInstanceProfileInfo {
	b.mu.Lock()
	cached, ok := b.profiles[r.uuid]
	b.mu.Unlock()
	if ok {
		return cached
	}
	var profiles []nvml.GpuInstanceProfileInfo
	for id := range nvml.GPU_INSTANCE_PROFILE_COUNT {
		info, ret := h.GetGpuInstanceProfileInfo(id)
		if ret == nvml.ERROR_INVALID_ARGUMENT || !r.ok("mig profile", ret) {
			continue
		}
		profiles = append(profiles, info)
	}
	if len(profiles) > 0 {
		b.mu.Lock()
		b.profiles[r.uuid] = profiles
		b.mu.Unlock()
	}
	return profiles
}

// migInstances lists the MIG GPU instances that exist on a GPU in MIG mode.
func (b *nvmlBackend) migInstances(r *nvmlFieldReader, h nvml.Device) []MIGInstance {
	var out []MIGInstance
	for _, p := range b.gpuInstanceProfiles(r, h) {
		gis, ret := h.GetGpuInstances(&p)
		if !r.ok("mig instances", ret) {
			continue
		}
		for _, gi := range gis {
			info, ret := gi.GetInfo()
			if !r.ok("mig instance", ret) {
				continue
			}
			out = append(out, MIGInstance{ID: info.Id, Profile: nvmlMIGProfileName(p)})
		}
	}
	slices.SortFunc(out, func(a, b MIGInstance) int { return int(a.ID) - int(b.ID) })
	return out
}

// nvmlMIGProfileName names a MIG GPU-instance profile as nvidia-smi does:
// compute slices, "g.", memory in GB rounded up, "gb", and a suffix for
// the media-engine and graphics variants, e.g. "1g.5gb", "3g.20gb",
// "1g.5gb+me".
func nvmlMIGProfileName(p nvml.GpuInstanceProfileInfo) string {
	gb := int(math.Ceil(float64(p.MemorySizeMB) / 1024))
	name := fmt.Sprintf("%dg.%dgb", p.SliceCount, gb)
	switch p.Id {
	case nvml.GPU_INSTANCE_PROFILE_1_SLICE_REV1, nvml.GPU_INSTANCE_PROFILE_2_SLICE_REV1:
		name += "+me"
	case nvml.GPU_INSTANCE_PROFILE_1_SLICE_NO_ME, nvml.GPU_INSTANCE_PROFILE_2_SLICE_NO_ME:
		name += "-me"
	case nvml.GPU_INSTANCE_PROFILE_1_SLICE_ALL_ME, nvml.GPU_INSTANCE_PROFILE_2_SLICE_ALL_ME:
		name += "+me.all"
	case nvml.GPU_INSTANCE_PROFILE_1_SLICE_GFX, nvml.GPU_INSTANCE_PROFILE_2_SLICE_GFX, nvml.GPU_INSTANCE_PROFILE_4_SLICE_GFX:
		name += "+gfx"
	}
	return name
}

// nvmlBusID returns NVML's PCI bus ID string ("00000000:07:00.0"), falling
// back to the legacy field and then to the numeric fields.
func nvmlBusID(p nvml.PciInfo) string {
	if s := nvmlString(p.BusId[:]); s != "" {
		return s
	}
	if s := nvmlString(p.BusIdLegacy[:]); s != "" {
		return s
	}
	if p.Domain == 0 && p.Bus == 0 && p.Device == 0 {
		return ""
	}
	return fmt.Sprintf("%08X:%02X:%02X.0", p.Domain, p.Bus, p.Device)
}

// nvmlString returns the bytes of b up to its first NUL.
func nvmlString(b []uint8) string {
	if i := slices.Index(b, 0); i >= 0 {
		b = b[:i]
	}
	return strings.TrimSpace(string(b))
}

func (b *nvmlBackend) ECC(ctx context.Context, uuid string) (uint64, uint64, error) {
	if err := ctx.Err(); err != nil {
		return 0, 0, err
	}
	h, ret := b.lib.DeviceGetHandleByUUID(uuid)
	switch ret {
	case nvml.SUCCESS:
	case nvml.ERROR_NOT_FOUND, nvml.ERROR_INVALID_ARGUMENT, nvml.ERROR_GPU_IS_LOST:
		return 0, 0, fmt.Errorf("gpu: ECC of %s (%s): %w", uuid, ret.Error(), ErrGPUNotOnNode)
	default:
		return 0, 0, fmt.Errorf("gpu: ECC of %s: %w", uuid, ret)
	}
	r := &nvmlFieldReader{b: b, uuid: uuid}
	var corrected, uncorrected uint64
	if c, ret := h.GetTotalEccErrors(nvml.MEMORY_ERROR_TYPE_CORRECTED, nvml.VOLATILE_ECC); r.ok("ecc corrected", ret) {
		corrected = c
	}
	if u, ret := h.GetTotalEccErrors(nvml.MEMORY_ERROR_TYPE_UNCORRECTED, nvml.VOLATILE_ECC); r.ok("ecc uncorrected", ret) {
		uncorrected = u
	}
	if r.lost != nil {
		return 0, 0, fmt.Errorf("gpu: %w: %w", ErrGPUNotOnNode, r.lost)
	}
	return corrected, uncorrected, nil
}

func (b *nvmlBackend) WatchXID(ctx context.Context, fn func(uuid string, xid uint64)) error {
	set, ret := b.lib.EventSetCreate()
	if ret == nvml.ERROR_NOT_SUPPORTED {
		return fmt.Errorf("gpu: NVML event sets: %w", errors.ErrUnsupported)
	}
	if ret != nvml.SUCCESS {
		return fmt.Errorf("gpu: creating an NVML event set: %w", ret)
	}
	defer set.Free()

	n, ret := b.lib.DeviceGetCount()
	if ret != nvml.SUCCESS {
		return fmt.Errorf("gpu: counting GPUs: %w", ret)
	}
	registered := 0
	for i := range n {
		h, ret := b.lib.DeviceGetHandleByIndex(i)
		if ret != nvml.SUCCESS {
			b.log.Warn().Int("index", i).Str("nvml", ret.Error()).Msg("gpu: XID events not watched on a GPU that does not answer")
			continue
		}
		supported, ret := h.GetSupportedEventTypes()
		if ret != nvml.SUCCESS || supported&nvml.EventTypeXidCriticalError == 0 {
			b.log.Info().Int("index", i).Msg("gpu: GPU does not deliver XID events")
			continue
		}
		if ret := h.RegisterEvents(nvml.EventTypeXidCriticalError, set); ret != nvml.SUCCESS {
			b.log.Warn().Int("index", i).Str("nvml", ret.Error()).Msg("gpu: registering for XID events failed")
			continue
		}
		registered++
	}
	if registered == 0 {
		return fmt.Errorf("gpu: no GPU delivers XID events: %w", errors.ErrUnsupported)
	}

	if b.wakeWait != nil {
		stop := context.AfterFunc(ctx, func() { b.wakeWait(set) })
		defer stop()
	}
	for ctx.Err() == nil {
		e, ret := set.Wait(nvmlEventWaitMS)
		switch ret {
		case nvml.SUCCESS:
		case nvml.ERROR_TIMEOUT:
			continue
		default:
			return fmt.Errorf("gpu: waiting for NVML events: %w", ret)
		}
		if e.EventType&nvml.EventTypeXidCriticalError == 0 {
			continue
		}
		uuid := ""
		if e.Device != nil {
			if u, ret := e.Device.GetUUID(); ret == nvml.SUCCESS {
				uuid = u
			}
		}
		fn(uuid, e.EventData)
	}
	return nil
}

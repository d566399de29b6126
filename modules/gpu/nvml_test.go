package gpu

import (
	"context"
	"errors"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/dgxa100"
	"github.com/rs/zerolog"
)

// openDGXSim opens the mock backend for a node and closes it when the test
// ends.
func openDGXSim(t testing.TB, node string) *dgxSimBackend {
	t.Helper()
	b, err := OpenBackend(BackendMock, node, zerolog.Nop())
	if err != nil {
		t.Fatalf("OpenBackend(mock): %v", err)
	}
	t.Cleanup(func() {
		if err := b.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	if b.Name() != BackendMock {
		t.Fatalf("Name() = %q, want %q", b.Name(), BackendMock)
	}
	return b.(*dgxSimBackend)
}

// readGPUs reads every GPU of a backend.
func readGPUs(t testing.TB, b Backend) []Device {
	t.Helper()
	devs, err := b.Devices(context.Background())
	if err != nil {
		t.Fatalf("Devices: %v", err)
	}
	return devs
}

func uuidsOf(devs []Device) []string {
	var out []string
	for _, d := range devs {
		out = append(out, d.UUID)
	}
	return out
}

func TestMockReadsEightA100s(t *testing.T) {
	b := openDGXSim(t, "node-a")
	devs := readGPUs(t, b)
	if len(devs) != 8 {
		t.Fatalf("got %d GPUs, want 8", len(devs))
	}
	for i, d := range devs {
		if !strings.HasPrefix(d.UUID, "GPU-") {
			t.Errorf("GPU %d: UUID %q lacks the GPU- prefix", i, d.UUID)
		}
		want := Device{
			UUID: d.UUID, Index: i, Name: "Mock NVIDIA A100-SXM4-40GB", PCIBusID: dgxSimBusIDs[i],
			NUMANode: i / 4, MemoryTotalMB: 40960, MemoryFreeMB: 40960,
			TemperatureC: 30, PowerW: 55, NVLinkPeers: d.NVLinkPeers, Healthy: true,
		}
		if !reflect.DeepEqual(d, want) {
			t.Errorf("GPU %d:\n got %+v\nwant %+v", i, d, want)
		}
	}
}

func TestMockUUIDsStablePerNodeAndDistinctAcrossNodes(t *testing.T) {
	a1 := uuidsOf(readGPUs(t, openDGXSim(t, "node-a")))
	a2 := uuidsOf(readGPUs(t, openDGXSim(t, "node-a"))) // the node restarted
	b := uuidsOf(readGPUs(t, openDGXSim(t, "node-b")))
	if !slices.Equal(a1, a2) {
		t.Errorf("the same node got different UUIDs after a restart:\n%v\n%v", a1, a2)
	}
	seen := make(map[string]bool)
	for _, u := range append(slices.Clone(a1), b...) {
		if seen[u] {
			t.Errorf("UUID %s appears twice across two nodes", u)
		}
		seen[u] = true
	}
}

func TestMockSetLoadMovesReadings(t *testing.T) {
	tests := []struct {
		name              string
		usedMB            int64
		utilization       int
		wantUsed, wantUtl int
	}{
		{"idle", 0, 0, 0, 0},
		{"one replica", 10000, 80, 10000, 80},
		{"clamped to the GPU", 1 << 30, 150, 40960, 100},
		{"negative is zero", -5, -1, 0, 0},
	}
	b := openDGXSim(t, "node-a")
	gpu := readGPUs(t, b)[2].UUID
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b.SetLoad(gpu, tt.usedMB, tt.utilization)
			devs := readGPUs(t, b)
			d := devs[2]
			if d.MemoryUsedMB != int64(tt.wantUsed) || d.MemoryFreeMB != 40960-int64(tt.wantUsed) || d.Utilization != tt.wantUtl {
				t.Errorf("used %d free %d util %d, want used %d free %d util %d",
					d.MemoryUsedMB, d.MemoryFreeMB, d.Utilization, tt.wantUsed, 40960-tt.wantUsed, tt.wantUtl)
			}
			if wantC := 30 + tt.wantUtl/2; d.TemperatureC != wantC {
				t.Errorf("temperature %d °C, want %d", d.TemperatureC, wantC)
			}
			if wantW := float64(55000+3450*tt.wantUtl) / 1000; d.PowerW != wantW {
				t.Errorf("power %.2f W, want %.2f", d.PowerW, wantW)
			}
			for _, o := range devs {
				if o.Index != 2 && (o.MemoryUsedMB != 0 || o.Utilization != 0) {
					t.Errorf("GPU %d moved with GPU 2's load: used %d util %d", o.Index, o.MemoryUsedMB, o.Utilization)
				}
			}
		})
	}
	b.SetLoad("GPU-not-here", 100, 100) // ignored, must not panic
}

func TestMockNVLinkDomains(t *testing.T) {
	b := openDGXSim(t, "node-a")
	devs := readGPUs(t, b)
	bus := func(idx ...int) []string {
		var out []string
		for _, i := range idx {
			out = append(out, devs[i].PCIBusID)
		}
		slices.Sort(out)
		return out
	}
	want := map[int][]string{
		0: bus(1, 2, 3), 1: bus(0, 2, 3), 2: bus(0, 1, 3), 3: bus(0, 1, 2),
		4: bus(5, 6, 7), 5: bus(4, 6, 7), 6: bus(4, 5, 7), 7: bus(4, 5, 6),
	}
	for reading := range 2 { // the second comes from the topology cache
		for i, d := range readGPUs(t, b) {
			if !slices.Equal(d.NVLinkPeers, want[i]) {
				t.Errorf("reading %d: GPU %d peers %v, want %v", reading, i, d.NVLinkPeers, want[i])
			}
		}
	}
}

func TestMockMIGInstances(t *testing.T) {
	b := openDGXSim(t, "node-a")
	gpu := readGPUs(t, b)[1].UUID

	if _, err := b.CreateMIGInstance(gpu, "1g.5gb"); err == nil {
		t.Fatal("created a MIG instance with MIG mode off")
	}
	b.SetMIGMode(gpu, true)
	if _, err := b.CreateMIGInstance(gpu, "5g.33gb"); err == nil {
		t.Error("created a MIG instance of an unknown profile")
	}
	if _, err := b.CreateMIGInstance("GPU-not-here", "1g.5gb"); !errors.Is(err, ErrGPUNotOnNode) {
		t.Errorf("unknown GPU: err = %v, want ErrGPUNotOnNode", err)
	}
	var made []MIGInstance
	for _, p := range []string{"3g.20gb", "1g.5gb", "2g.10gb"} {
		inst, err := b.CreateMIGInstance(gpu, p)
		if err != nil {
			t.Fatalf("CreateMIGInstance(%s): %v", p, err)
		}
		made = append(made, inst)
	}
	if _, err := b.CreateMIGInstance(gpu, "2g.10gb"); err == nil {
		t.Error("created 2g.10gb with only one of seven compute slices left")
	}

	d := readGPUs(t, b)[1]
	if !d.MIGMode || !slices.Equal(d.MIGInstances, made) {
		t.Errorf("MIG mode %v instances %v, want on with %v", d.MIGMode, d.MIGInstances, made)
	}
	if other := readGPUs(t, b)[0]; other.MIGMode || len(other.MIGInstances) != 0 {
		t.Errorf("GPU 0 has MIG mode %v instances %v", other.MIGMode, other.MIGInstances)
	}

	if err := b.DestroyMIGInstance(gpu, made[1].ID); err != nil {
		t.Fatalf("DestroyMIGInstance: %v", err)
	}
	if err := b.DestroyMIGInstance(gpu, made[1].ID); err == nil {
		t.Error("destroyed the same MIG instance twice")
	}
	if got := readGPUs(t, b)[1].MIGInstances; !slices.Equal(got, []MIGInstance{made[0], made[2]}) {
		t.Errorf("after destroying %v: %v", made[1], got)
	}

	b.SetMIGMode(gpu, false)
	if d := readGPUs(t, b)[1]; d.MIGMode || len(d.MIGInstances) != 0 {
		t.Errorf("MIG off: mode %v instances %v", d.MIGMode, d.MIGInstances)
	}
}

func TestMIGProfileNames(t *testing.T) {
	want := map[int]string{
		nvml.GPU_INSTANCE_PROFILE_1_SLICE:      "1g.5gb",
		nvml.GPU_INSTANCE_PROFILE_1_SLICE_REV1: "1g.5gb+me",
		nvml.GPU_INSTANCE_PROFILE_1_SLICE_REV2: "1g.10gb",
		nvml.GPU_INSTANCE_PROFILE_2_SLICE:      "2g.10gb",
		nvml.GPU_INSTANCE_PROFILE_3_SLICE:      "3g.20gb",
		nvml.GPU_INSTANCE_PROFILE_4_SLICE:      "4g.20gb",
		nvml.GPU_INSTANCE_PROFILE_7_SLICE:      "7g.40gb",
	}
	for id, p := range dgxa100.MIGProfiles.GpuInstanceProfiles {
		if got := nvmlMIGProfileName(p); got != want[id] {
			t.Errorf("profile %d: %q, want %q", id, got, want[id])
		}
	}
}

func TestMockECC(t *testing.T) {
	b := openDGXSim(t, "node-a")
	gpu := readGPUs(t, b)[6].UUID
	b.SetECC(gpu, 12, 3)
	c, u, err := b.ECC(context.Background(), gpu)
	if err != nil || c != 12 || u != 3 {
		t.Errorf("ECC = %d, %d, %v; want 12, 3, nil", c, u, err)
	}
	if d := readGPUs(t, b)[6]; d.ECCCorrected != 12 || d.ECCUncorrected != 3 {
		t.Errorf("reading has ECC %d/%d, want 12/3", d.ECCCorrected, d.ECCUncorrected)
	}
	if _, _, err := b.ECC(context.Background(), "GPU-not-here"); !errors.Is(err, ErrGPUNotOnNode) {
		t.Errorf("unknown GPU: err = %v, want ErrGPUNotOnNode", err)
	}
}

func TestBackendNone(t *testing.T) {
	b, err := OpenBackend(BackendNone, "node-a", zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if devs := readGPUs(t, b); len(devs) != 0 {
		t.Errorf("none backend has %d GPUs", len(devs))
	}
	if err := b.WatchXID(context.Background(), func(string, uint64) {}); !errors.Is(err, errors.ErrUnsupported) {
		t.Errorf("WatchXID: %v, want ErrUnsupported", err)
	}
	if _, _, err := b.ECC(context.Background(), "GPU-x"); !errors.Is(err, ErrGPUNotOnNode) {
		t.Errorf("ECC: %v, want ErrGPUNotOnNode", err)
	}
}

// driverPresent says whether this machine has a working NVIDIA driver.
func driverPresent() bool {
	lib := nvml.New()
	if lib.Init() != nvml.SUCCESS {
		return false
	}
	lib.Shutdown()
	return true
}

func TestBackendAuto(t *testing.T) {
	want := BackendNone
	if driverPresent() {
		want = BackendNVML
	}
	for _, kind := range []string{BackendAuto, ""} {
		b, err := OpenBackend(kind, "node-a", zerolog.Nop())
		if err != nil {
			t.Fatalf("OpenBackend(%q): %v", kind, err)
		}
		if b.Name() != want {
			t.Errorf("OpenBackend(%q) picked %q, want %q", kind, b.Name(), want)
		}
		if err := b.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	}
}

func TestBackendNVMLWithoutDriver(t *testing.T) {
	if driverPresent() {
		t.Skip("this machine has an NVIDIA driver")
	}
	b, err := OpenBackend(BackendNVML, "node-a", zerolog.Nop())
	if err == nil {
		b.Close()
		t.Fatal("opened the nvml backend without a driver")
	}
	for _, want := range []string{"ATRIUM_GPU_BACKEND=nvml", "libnvidia-ml.so.1", "ERROR_LIBRARY_NOT_FOUND"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
}

func TestOpenBackendRefuses(t *testing.T) {
	tests := []struct{ kind, node, want string }{
		{"cuda", "node-a", "ATRIUM_GPU_BACKEND"},
		{BackendMock, "", "node"},
	}
	for _, tt := range tests {
		if _, err := OpenBackend(tt.kind, tt.node, zerolog.Nop()); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("OpenBackend(%q, %q): err = %v, want one mentioning %q", tt.kind, tt.node, err, tt.want)
		}
	}
}

// answering is a GPU that answers its UUID and, for every other field,
// ret.
func answering(uuid string, ret nvml.Return) *mock.Device {
	return &mock.Device{
		GetUUIDFunc:             func() (string, nvml.Return) { return uuid, nvml.SUCCESS },
		GetIndexFunc:            func() (int, nvml.Return) { return 0, ret },
		GetNameFunc:             func() (string, nvml.Return) { return "", ret },
		GetPciInfoFunc:          func() (nvml.PciInfo, nvml.Return) { return nvml.PciInfo{}, ret },
		GetMemoryInfoFunc:       func() (nvml.Memory, nvml.Return) { return nvml.Memory{}, ret },
		GetUtilizationRatesFunc: func() (nvml.Utilization, nvml.Return) { return nvml.Utilization{}, ret },
		GetTemperatureFunc:      func(nvml.TemperatureSensors) (uint32, nvml.Return) { return 0, ret },
		GetPowerUsageFunc:       func() (uint32, nvml.Return) { return 0, ret },
		GetMigModeFunc:          func() (int, int, nvml.Return) { return 0, 0, ret },
		GetTotalEccErrorsFunc: func(nvml.MemoryErrorType, nvml.EccCounterType) (uint64, nvml.Return) {
			return 0, ret
		},
		GetNvLinkStateFunc: func(int) (nvml.EnableState, nvml.Return) { return 0, ret },
		// GetNumaNodeIdFunc is left unset: calling it panics, as calling a
		// symbol the real library lacks would crash.
	}
}

// TestUnsupportedFieldsStayEmpty reads, from a library that lacks the NUMA
// entry point, a GPU that supports nothing but its UUID and a GPU that is
// lost: the first is listed with empty fields, the second left out.
func TestUnsupportedFieldsStayEmpty(t *testing.T) {
	handles := []nvml.Device{answering("GPU-bare", nvml.ERROR_NOT_SUPPORTED), answering("GPU-lost", nvml.ERROR_GPU_IS_LOST)}
	lib := &mock.Interface{
		InitFunc:     func() nvml.Return { return nvml.SUCCESS },
		ShutdownFunc: func() nvml.Return { return nvml.SUCCESS },
		ExtensionsFunc: func() nvml.ExtendedInterface {
			return &mock.ExtendedInterface{LookupSymbolFunc: func(string) error { return errors.New("no such symbol") }}
		},
		SystemGetDriverVersionFunc: func() (string, nvml.Return) { return "", nvml.ERROR_NOT_SUPPORTED },
		DeviceGetCountFunc:         func() (int, nvml.Return) { return len(handles), nvml.SUCCESS },
		DeviceGetHandleByIndexFunc: func(i int) (nvml.Device, nvml.Return) { return handles[i], nvml.SUCCESS },
	}
	b, err := openNVMLBackend(BackendNVML, lib, zerolog.Nop(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	devs := readGPUs(t, b)
	want := Device{UUID: "GPU-bare", NUMANode: -1, Healthy: true}
	if len(devs) != 1 || !reflect.DeepEqual(devs[0], want) {
		t.Errorf("got %+v, want only %+v", devs, want)
	}
}

func TestNVLinkPeersThroughSwitches(t *testing.T) {
	devs := []Device{{PCIBusID: "A"}, {PCIBusID: "B"}, {PCIBusID: "C"}, {PCIBusID: "D"}, {PCIBusID: "E"}}
	ends := []nvlinkEnds{
		{switches: []string{"S1", "S2"}},  // A: on both switches
		{switches: []string{"S1"}},        // B: on S1
		{unknown: []string{"S2", "D"}},    // C: on S2, and a GPU of unknown kind (D)
		{gpus: []string{"C"}},             // D: direct link to C
		{unknown: []string{"X-not-here"}}, // E: alone on an unknown end
	}
	nvlinkPeers(devs, ends)
	want := [][]string{{"B", "C"}, {"A"}, {"A", "D"}, {"C"}, nil}
	for i, d := range devs {
		if !slices.Equal(d.NVLinkPeers, want[i]) {
			t.Errorf("%s: peers %v, want %v", d.PCIBusID, d.NVLinkPeers, want[i])
		}
	}
}

func TestNVMLBusID(t *testing.T) {
	var full, legacy nvml.PciInfo
	copy(full.BusId[:], "00000000:07:00.0\x00junk")
	copy(legacy.BusIdLegacy[:], "0000:07:00.0")
	numeric := nvml.PciInfo{Domain: 1, Bus: 0xbd, Device: 2}
	tests := []struct {
		in   nvml.PciInfo
		want string
	}{
		{full, "00000000:07:00.0"}, {legacy, "0000:07:00.0"}, {numeric, "00000001:BD:02.0"}, {nvml.PciInfo{}, ""},
	}
	for _, tt := range tests {
		if got := nvmlBusID(tt.in); got != tt.want {
			t.Errorf("nvmlBusID = %q, want %q", got, tt.want)
		}
	}
}

// BenchmarkDevicesDGXSim reads the eight GPUs of the mock: the baseline of
// BenchmarkSnapshotDGXSim.
func BenchmarkDevicesDGXSim(b *testing.B) {
	sim := openDGXSim(b, "node-a")
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := sim.Devices(ctx); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkSnapshotDGXSim is a Monitor's snapshot of the mock's eight GPUs:
// the reading plus health and ECC bookkeeping.
func BenchmarkSnapshotDGXSim(b *testing.B) {
	m := NewMonitor(openDGXSim(b, "node-a"), zerolog.Nop(), nil)
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := m.Snapshot(ctx); err != nil {
			b.Fatal(err)
		}
	}
}

// Package gpu is the GPU scheduler: each node's GPUs read through NVML
// (real, NVIDIA's mock, or none), their health, the cluster inventory in
// Redis, models and their versions, deployments with rolling, blue-green
// and canary releases, placement of replicas on GPUs by one leader at a
// time, GPU quotas and GPU-hour metering.
package gpu

import (
	"time"
)

// Sharing is how a replica uses its GPUs.
type Sharing string

// The sharing modes.
const (
	// Exclusive replicas own whole GPUs: no other replica shares them.
	Exclusive Sharing = "exclusive"
	// Shared replicas slice a GPU's memory with others (MPS where available).
	Shared Sharing = "shared"
	// MIG replicas take one MIG instance of a given profile on a GPU in
	// MIG mode.
	MIG Sharing = "mig"
)

// Need is what one replica asks for.
type Need struct {
	// GPUs is how many GPUs the replica needs (1 for shared and MIG).
	GPUs int `json:"gpus"`
	// MemoryMB is the GPU memory the replica needs on each of its GPUs;
	// shared replicas are accounted by it.
	MemoryMB int64   `json:"memory_mb"`
	Sharing  Sharing `json:"sharing"`
	// MIGProfile is the MIG profile of a MIG replica, e.g. "1g.5gb".
	MIGProfile string `json:"mig_profile,omitempty"`
}

// Device is one GPU as its node reads it through NVML.
type Device struct {
	UUID          string  `json:"uuid"`
	Index         int     `json:"index"`
	Name          string  `json:"name"`
	PCIBusID      string  `json:"pci_bus_id"`
	NUMANode      int     `json:"numa_node"` // -1: unknown
	MemoryTotalMB int64   `json:"memory_total_mb"`
	MemoryUsedMB  int64   `json:"memory_used_mb"`
	MemoryFreeMB  int64   `json:"memory_free_mb"`
	Utilization   int     `json:"utilization_pct"`
	TemperatureC  int     `json:"temperature_c"`
	PowerW        float64 `json:"power_w"`
	MIGMode       bool    `json:"mig_mode"`
	// MIGInstances are the MIG GPU instances that exist on the device.
	MIGInstances []MIGInstance `json:"mig_instances,omitempty"`
	// NVLinkPeers are the PCI bus ids of the GPUs this one reaches over
	// NVLink, where NVML reports them.
	NVLinkPeers []string `json:"nvlink_peers,omitempty"`
	// ECC error counters (volatile, since the driver loaded).
	ECCCorrected   uint64 `json:"ecc_corrected"`
	ECCUncorrected uint64 `json:"ecc_uncorrected"`
	Healthy        bool   `json:"healthy"`
	// Unhealthy says why a device is not healthy ("XID 79", "ECC ...").
	Unhealthy string `json:"unhealthy,omitempty"`
}

// MIGInstance is one MIG GPU instance on a device.
type MIGInstance struct {
	ID      uint32 `json:"id"`
	Profile string `json:"profile"` // e.g. "3g.20gb"
}

// HealthEvent is something that changed a GPU's health: an XID error, an
// ECC counter that rose, or a re-probe that returned it to service.
type HealthEvent struct {
	UUID string    `json:"uuid"`
	At   time.Time `json:"at"`
	// Kind is "xid", "ecc" or "recovered".
	Kind string `json:"kind"`
	XID  uint64 `json:"xid,omitempty"`
	// Critical events mark the GPU unhealthy; others are only recorded.
	Critical bool   `json:"critical"`
	Detail   string `json:"detail"`
}

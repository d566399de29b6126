package gpu

import (
	"cmp"
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// This file is the placement engine: given what every GPU can hold and what
// is held on it already, it chooses GPUs for replicas. It is pure (no
// database, no Redis, no clock): the scheduler leader builds a Placer from
// its inventory every cycle and calls it in memory.
//
// Invariants a Placer keeps:
//   - an exclusive replica gets GPUs with nothing else held on them, none in
//     MIG mode, so two exclusive replicas never share a GPU;
//   - shared replicas are accounted by memory: the shared memory held on a
//     GPU never exceeds its MemoryMB;
//   - MIG replicas go to GPUs in MIG mode only, whose held compute slices
//     never exceed MIGComputeSlices and held memory never exceeds MemoryMB;
//   - all GPUs of one replica are on one node;
//   - the same slots, policy and calls give the same answers (ties are broken
//     on node name, then GPU UUID).

// Policy picks among the GPUs that fit.
type Policy string

// The placement policies.
const (
	// Binpack fills the fullest node and GPU first and keeps empty GPUs
	// empty, leaving room for large replicas.
	Binpack Policy = "binpack"
	// Spread puts each replica on the emptiest node that fits, and there on
	// the emptiest GPU.
	Spread Policy = "spread"
	// LeastLoaded puts each replica on the node, then the GPU, with the
	// lowest load, where a GPU's load is the larger of its measured
	// utilization and the share of it already held.
	LeastLoaded Policy = "least_loaded"
)

// ParsePolicy reads a policy name ("binpack", "spread", "least_loaded"). It
// returns an error naming the accepted values for anything else, the empty
// string included.
func ParsePolicy(s string) (Policy, error) {
	switch p := Policy(s); p {
	case Binpack, Spread, LeastLoaded:
		return p, nil
	}
	return "", fmt.Errorf("unknown placement policy %q (want binpack, spread or least_loaded)", s)
}

// MIGComputeSlices is how many compute slices a GPU in MIG mode has; a MIG
// profile "Ng.Mgb" takes N of them.
const MIGComputeSlices = 7

// The reasons Place gives when nothing fits, for the operator.
const (
	// ReasonInsufficientGPUs means GPUs that could hold the replica exist,
	// but not enough of them are free now.
	ReasonInsufficientGPUs = "insufficient GPUs"
	// ReasonNoCompatibleNode means no node could ever hold the replica, even
	// with nothing else on it: it needs more GPUs than any node has, more
	// memory than any GPU has, or a MIG profile where no GPU is in MIG mode
	// (or none has the profile's memory).
	ReasonNoCompatibleNode = "no compatible node"
	// ReasonInvalidNeed means the Need itself is invalid (see Need.Validate).
	ReasonInvalidNeed = "invalid need"
)

// Slot is one GPU as the placer sees it: its capacity and what is already
// held on it. Callers leave unhealthy GPUs out.
type Slot struct {
	UUID, Node string
	// Domain groups the GPUs of a node that share NVLink (or, lacking
	// NVLink, a NUMA node); "" = its own. Domain names are scoped to their
	// node.
	Domain      string
	MemoryMB    int64 // total GPU memory
	MIGMode     bool
	Utilization int // 0..100, measured (least_loaded uses it together with what is held)
	// What is held already.
	Exclusive   bool  // held whole by an exclusive replica
	SharedMB    int64 // memory held by shared replicas
	MIGCompute  int   // compute slices (of MIGComputeSlices) held by MIG instances
	MIGMemoryMB int64 // memory held by MIG instances
}

// idle reports whether nothing at all is held on the GPU.
func (s *Slot) idle() bool {
	return !s.Exclusive && s.SharedMB <= 0 && s.MIGCompute <= 0 && s.MIGMemoryMB <= 0
}

// takesExclusive reports whether an exclusive replica needing memMB (0 =
// any) could have this GPU now.
func (s *Slot) takesExclusive(memMB int64) bool {
	return !s.MIGMode && s.idle() && s.MemoryMB >= memMB
}

// sharedFree is the memory shared replicas could still take on the GPU, or
// -1 when shared replicas cannot go there at all (MIG mode, exclusive).
func (s *Slot) sharedFree() int64 {
	if s.MIGMode || s.Exclusive {
		return -1
	}
	return s.MemoryMB - s.SharedMB
}

// migFree is the compute slices and memory MIG instances could still take
// on the GPU; compute is -1 when the GPU is not in MIG mode.
func (s *Slot) migFree() (int, int64) {
	if !s.MIGMode || s.Exclusive {
		return -1, -1
	}
	return MIGComputeSlices - s.MIGCompute, s.MemoryMB - s.MIGMemoryMB
}

// held is the share of the GPU (0..1) already taken: 1 when exclusive,
// shared memory over total memory, or for MIG the larger of the compute and
// memory shares.
func (s *Slot) held() float64 {
	if s.Exclusive {
		return 1
	}
	var h float64
	switch {
	case s.MemoryMB <= 0:
		if !s.idle() {
			h = 1
		}
	case s.MIGMode:
		h = max(float64(s.MIGCompute)/MIGComputeSlices, float64(s.MIGMemoryMB)/float64(s.MemoryMB))
	default:
		h = float64(s.SharedMB) / float64(s.MemoryMB)
	}
	return min(max(h, 0), 1)
}

// load is the larger of the measured utilization and the held share: a
// replica just placed shows in the held share before it shows in the
// utilization, and a running one in both, so the larger counts it once.
func (s *Slot) load() float64 {
	return max(float64(min(max(s.Utilization, 0), 100))/100, s.held())
}

// full reports whether nothing more can be placed on the GPU.
func (s *Slot) full() bool {
	if s.Exclusive {
		return true
	}
	if s.MIGMode {
		c, m := s.migFree()
		return c <= 0 || m <= 0
	}
	return s.sharedFree() <= 0
}

// ParseMIGProfile reads a MIG profile "Ng.Mgb" (e.g. "1g.5gb", "3g.20gb",
// "7g.80gb") into its compute slices N (1..MIGComputeSlices) and its memory
// in MB (M*1024). Anything else is an error.
func ParseMIGProfile(p string) (compute int, memoryMB int64, err error) {
	g, rest, ok := strings.Cut(p, "g.")
	mem, ok2 := strings.CutSuffix(rest, "gb")
	if !ok || !ok2 || !placeDigits(g) || !placeDigits(mem) {
		return 0, 0, fmt.Errorf("MIG profile %q is not of the form Ng.Mgb (e.g. 1g.5gb)", p)
	}
	n, err := strconv.Atoi(g)
	if err != nil || n < 1 || n > MIGComputeSlices {
		return 0, 0, fmt.Errorf("MIG profile %q: compute slices must be 1..%d", p, MIGComputeSlices)
	}
	gb, err := strconv.ParseInt(mem, 10, 32)
	if err != nil || gb < 1 {
		return 0, 0, fmt.Errorf("MIG profile %q: memory must be 1 GB or more", p)
	}
	return n, gb * 1024, nil
}

// placeDigits reports whether s is one or more ASCII digits.
func placeDigits(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range []byte(s) {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

// NeedFieldError says which field of a Need is invalid and why. Field is the
// field's JSON name: "gpus", "memory_mb", "sharing" or "mig_profile".
type NeedFieldError struct {
	Field   string
	Problem string
}

// Error returns "field: problem".
func (e *NeedFieldError) Error() string { return e.Field + ": " + e.Problem }

// Validate checks a Need and returns a *NeedFieldError naming the first
// invalid field, or nil:
//   - "sharing": one of exclusive, shared, mig;
//   - "gpus": at least 1, and exactly 1 for shared and MIG replicas;
//   - "memory_mb": not negative; positive for shared and MIG replicas (0
//     means "any GPU" for exclusive ones); for MIG, no more than the
//     profile's memory;
//   - "mig_profile": a valid profile (see ParseMIGProfile) for MIG replicas,
//     empty for the others.
func (n Need) Validate() error {
	bad := func(field, format string, args ...any) error {
		return &NeedFieldError{Field: field, Problem: fmt.Sprintf(format, args...)}
	}
	switch n.Sharing {
	case Exclusive, Shared, MIG:
	default:
		return bad("sharing", "unknown sharing mode %q (want exclusive, shared or mig)", n.Sharing)
	}
	if n.GPUs < 1 {
		return bad("gpus", "must be at least 1")
	}
	if n.Sharing != Exclusive && n.GPUs != 1 {
		return bad("gpus", "%s replicas take exactly one GPU", n.Sharing)
	}
	if n.MemoryMB < 0 {
		return bad("memory_mb", "must not be negative")
	}
	if n.Sharing != Exclusive && n.MemoryMB == 0 {
		return bad("memory_mb", "must be positive for %s replicas", n.Sharing)
	}
	if n.Sharing != MIG {
		if n.MIGProfile != "" {
			return bad("mig_profile", "only MIG replicas take a MIG profile")
		}
		return nil
	}
	_, mem, err := ParseMIGProfile(n.MIGProfile)
	if err != nil {
		return bad("mig_profile", "%v", err)
	}
	if n.MemoryMB > mem {
		return bad("memory_mb", "%d MB is more than MIG profile %s holds (%d MB)", n.MemoryMB, n.MIGProfile, mem)
	}
	return nil
}

// placeShape is a validated Need as the placer uses it.
type placeShape struct {
	err      error
	sharing  Sharing
	gpus     int
	memoryMB int64 // per GPU; for MIG the profile's memory
	compute  int   // MIG compute slices
}

// placeNode is one node: its GPUs, its domains, and a summary of what is
// free on it, recomputed whenever something on the node changes, so that
// Place rejects most nodes without looking at their GPUs.
type placeNode struct {
	name       string
	first, end int // p.slots[first:end] are the node's GPUs, by UUID
	domains    []placeDomain
	// minExclusiveMB and maxExclusiveMB are the smallest and largest memory
	// of the node's GPUs not in MIG mode: an exclusive replica needing no
	// more than the smallest can count free GPUs without looking at their
	// memory, and when both are equal all those GPUs are alike.
	minExclusiveMB, maxExclusiveMB int64

	// Summary of what is free, by recompute.
	free          int   // GPUs not in MIG mode with nothing held
	maxSharedFree int64 // most memory a shared replica can take on one GPU; -1: none
	maxMIGCompute int   // most compute slices free on one MIG GPU; -1: none
	maxMIGMemory  int64 // most MIG memory free on one MIG GPU; -1: none
	held          float64
	load          float64
	// sharedRoom and migRoom are the GPUs with room for a shared or a MIG
	// replica, partly used ones first, then by least room: the first that
	// fits is binpack's choice on the node.
	sharedRoom, migRoom []placeRoom
}

// placeRoom is a GPU with room for shared or MIG replicas.
type placeRoom struct {
	slot    int
	idle    bool
	compute int   // free compute slices (MIG); 0 for shared
	memMB   int64 // free memory
}

// placeRoomCmp orders partly used GPUs first, then by least room (compute,
// then memory), then by slot.
func placeRoomCmp(a, b placeRoom) int {
	if a.idle != b.idle {
		if b.idle {
			return -1
		}
		return 1
	}
	if c := cmp.Compare(a.compute, b.compute); c != 0 {
		return c
	}
	if c := cmp.Compare(a.memMB, b.memMB); c != 0 {
		return c
	}
	return a.slot - b.slot
}

// placeDomain is an NVLink (or NUMA) domain of a node.
type placeDomain struct {
	gpus []int // slot indexes, by UUID
	free int   // GPUs not in MIG mode with nothing held
}

// Placer places replicas on GPUs. It is not safe for concurrent use: the
// scheduler leader builds one per cycle and calls it from one goroutine.
type Placer struct {
	policy    Policy
	slots     []Slot // by node name, then UUID
	slotDom   []int  // slot index -> domain index within its node
	slotNd    []int  // slot index -> node index
	nodes     []placeNode
	byUUID    map[string]int
	shapes    map[Need]placeShape
	compat    map[Need]bool
	scratch   []int
	scratchMB []int64
}

// NewPlacer builds a placer over the given GPUs with a policy; an unknown
// policy acts as Binpack. The slots are copied; a later slot with the UUID
// of an earlier one is ignored.
func NewPlacer(slots []Slot, policy Policy) *Placer {
	if _, err := ParsePolicy(string(policy)); err != nil {
		policy = Binpack
	}
	p := &Placer{
		policy: policy,
		byUUID: make(map[string]int, len(slots)),
		shapes: make(map[Need]placeShape),
		compat: make(map[Need]bool),
	}
	p.slots = make([]Slot, 0, len(slots))
	seen := make(map[string]bool, len(slots))
	for _, s := range slots {
		if seen[s.UUID] {
			continue
		}
		seen[s.UUID] = true
		p.slots = append(p.slots, s)
	}
	slices.SortFunc(p.slots, func(a, b Slot) int {
		if c := strings.Compare(a.Node, b.Node); c != 0 {
			return c
		}
		return strings.Compare(a.UUID, b.UUID)
	})
	p.slotDom = make([]int, len(p.slots))
	p.slotNd = make([]int, len(p.slots))
	for i := 0; i < len(p.slots); {
		j := i
		for j < len(p.slots) && p.slots[j].Node == p.slots[i].Node {
			j++
		}
		nd := placeNode{name: p.slots[i].Node, first: i, end: j, minExclusiveMB: -1}
		domIndex := map[string]int{}
		for k := i; k < j; k++ {
			s := &p.slots[k]
			p.byUUID[s.UUID] = k
			p.slotNd[k] = len(p.nodes)
			d, ok := domIndex[s.Domain]
			if !ok || s.Domain == "" {
				d = len(nd.domains)
				nd.domains = append(nd.domains, placeDomain{})
				if s.Domain != "" {
					domIndex[s.Domain] = d
				}
			}
			nd.domains[d].gpus = append(nd.domains[d].gpus, k)
			p.slotDom[k] = d
			if !s.MIGMode && (nd.minExclusiveMB < 0 || s.MemoryMB < nd.minExclusiveMB) {
				nd.minExclusiveMB = s.MemoryMB
			}
			if !s.MIGMode {
				nd.maxExclusiveMB = max(nd.maxExclusiveMB, s.MemoryMB)
			}
		}
		if len(nd.domains) > len(p.scratch) {
			p.scratch = make([]int, len(nd.domains))
		}
		p.nodes = append(p.nodes, nd)
		p.refresh(len(p.nodes) - 1)
		i = j
	}
	return p
}

// Slots returns a copy of the GPUs with what is held on them now (what the
// placer was built with plus what Place took, less what Unplace gave back),
// ordered by node name, then UUID.
func (p *Placer) Slots() []Slot { return slices.Clone(p.slots) }

// refresh recomputes node ni's summary from its GPUs.
func (p *Placer) refresh(ni int) {
	nd := &p.nodes[ni]
	nd.free, nd.maxSharedFree, nd.maxMIGCompute, nd.maxMIGMemory = 0, -1, -1, -1
	nd.sharedRoom, nd.migRoom = nd.sharedRoom[:0], nd.migRoom[:0]
	var held, load float64
	for d := range nd.domains {
		nd.domains[d].free = 0
	}
	for k := nd.first; k < nd.end; k++ {
		s := &p.slots[k]
		if s.takesExclusive(0) {
			nd.free++
			nd.domains[p.slotDom[k]].free++
		}
		if f := s.sharedFree(); f > 0 {
			nd.maxSharedFree = max(nd.maxSharedFree, f)
			nd.sharedRoom = append(nd.sharedRoom, placeRoom{slot: k, idle: s.idle(), memMB: f})
		}
		if c, m := s.migFree(); c > 0 && m > 0 {
			nd.maxMIGCompute = max(nd.maxMIGCompute, c)
			nd.maxMIGMemory = max(nd.maxMIGMemory, m)
			nd.migRoom = append(nd.migRoom, placeRoom{slot: k, idle: s.idle(), compute: c, memMB: m})
		}
		held += s.held()
		load += s.load()
	}
	slices.SortFunc(nd.sharedRoom, placeRoomCmp)
	slices.SortFunc(nd.migRoom, placeRoomCmp)
	n := float64(nd.end - nd.first)
	nd.held, nd.load = held/n, load/n
}

// shape validates n once per distinct Need.
func (p *Placer) shape(n Need) placeShape {
	if sh, ok := p.shapes[n]; ok {
		return sh
	}
	sh := placeShape{err: n.Validate(), sharing: n.Sharing, gpus: n.GPUs, memoryMB: n.MemoryMB}
	if sh.err == nil && n.Sharing == MIG {
		sh.compute, sh.memoryMB, _ = ParseMIGProfile(n.MIGProfile)
	}
	p.shapes[n] = sh
	return sh
}

// Place finds GPUs for one replica by the placer's policy, records them as
// held, and returns their UUIDs (sorted) and their node. When nothing fits
// it returns ok=false and ReasonInsufficientGPUs, ReasonNoCompatibleNode or
// ReasonInvalidNeed.
//
// Exclusive replicas take GPUs with nothing held, not in MIG mode, with at
// least n.MemoryMB each, all on one node: inside one domain where any node
// has such a domain (over every policy's preference), else across a node's
// domains, as few as possible. Shared replicas take n.MemoryMB on one GPU
// not in MIG mode and not held exclusively. MIG replicas take the profile's
// compute slices and memory on one GPU in MIG mode.
func (p *Placer) Place(n Need) (uuids []string, node string, reason string, ok bool) {
	sh := p.shape(n)
	if sh.err != nil {
		return nil, "", ReasonInvalidNeed, false
	}
	var picked []int
	switch sh.sharing {
	case Exclusive:
		picked = p.pickExclusive(sh)
	default:
		if k := p.pickOne(sh); k >= 0 {
			picked = []int{k}
		}
	}
	if picked == nil {
		if p.compatible(n, sh) {
			return nil, "", ReasonInsufficientGPUs, false
		}
		return nil, "", ReasonNoCompatibleNode, false
	}
	uuids = make([]string, len(picked))
	for i, k := range picked {
		p.take(k, sh, 1)
		uuids[i] = p.slots[k].UUID
	}
	p.refresh(p.slotNd[picked[0]])
	return uuids, p.slots[picked[0]].Node, "", true
}

// Unplace gives back what Place took for a replica with Need n on the GPUs
// uuids (the scheduler calls it when a tenant quota refuses the replica).
// Unknown UUIDs and invalid needs are ignored; nothing held goes below 0.
func (p *Placer) Unplace(uuids []string, n Need) {
	sh := p.shape(n)
	if sh.err != nil {
		return
	}
	for _, u := range uuids {
		if k, ok := p.byUUID[u]; ok {
			p.take(k, sh, -1)
			p.refresh(p.slotNd[k])
		}
	}
}

// take records (sign 1) or gives back (sign -1) one replica of shape sh on
// slot k; the caller refreshes the node.
func (p *Placer) take(k int, sh placeShape, sign int) {
	s := &p.slots[k]
	switch sh.sharing {
	case Exclusive:
		s.Exclusive = sign > 0
	case Shared:
		s.SharedMB = max(s.SharedMB+int64(sign)*sh.memoryMB, 0)
	case MIG:
		s.MIGCompute = max(s.MIGCompute+sign*sh.compute, 0)
		s.MIGMemoryMB = max(s.MIGMemoryMB+int64(sign)*sh.memoryMB, 0)
	}
}

// compatible reports whether some node could hold the replica with nothing
// else on it (cached per Need: capacity does not change).
func (p *Placer) compatible(n Need, sh placeShape) bool {
	if c, ok := p.compat[n]; ok {
		return c
	}
	c := false
	for ni := range p.nodes {
		nd := &p.nodes[ni]
		count := 0
		for k := nd.first; k < nd.end && !c; k++ {
			s := &p.slots[k]
			switch {
			case s.MemoryMB < sh.memoryMB:
			case sh.sharing == MIG:
				c = s.MIGMode
			case !s.MIGMode:
				count++
				c = count >= sh.gpus
			}
		}
		if c {
			break
		}
	}
	p.compat[n] = c
	return c
}

// placeKey orders candidates: the lexicographically smaller key wins. The
// last element is a slot index, which orders by node name, then UUID.
type placeKey [6]float64

func (a placeKey) less(b placeKey) bool {
	for i := range a {
		if a[i] != b[i] {
			return a[i] < b[i]
		}
	}
	return false
}

// bool01 is 1 for true, 0 for false.
func bool01(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// pickOne chooses the GPU for a shared or MIG replica, or returns -1.
//
//   - binpack: the fitting GPU that is already partly used, then the one with
//     the least room left after it (compute, then memory, for MIG), then the
//     fullest node;
//   - spread: the emptiest node (smallest held share), there the GPU with
//     the most room;
//   - least_loaded: the node with the lowest load, there the GPU with the
//     lowest load, then the most room.
func (p *Placer) pickOne(sh placeShape) int {
	best, bestKey := -1, placeKey{}
	for ni := range p.nodes {
		nd := &p.nodes[ni]
		if sh.sharing == Shared {
			if nd.maxSharedFree < sh.memoryMB {
				continue
			}
		} else if nd.maxMIGCompute < sh.compute || nd.maxMIGMemory < sh.memoryMB {
			continue
		}
		// Under spread and least_loaded the node decides first: skip the
		// GPUs of a node that cannot win.
		switch p.policy {
		case Spread:
			if best >= 0 && nd.held > bestKey[0] {
				continue
			}
		case LeastLoaded:
			if best >= 0 && nd.load > bestKey[0] {
				continue
			}
		}
		rooms := nd.sharedRoom
		if sh.sharing == MIG {
			rooms = nd.migRoom
		}
		for _, r := range rooms {
			if r.compute < sh.compute || r.memMB < sh.memoryMB {
				continue
			}
			// Room left after the replica: memory for shared, compute
			// slices then memory for MIG.
			room, roomMem := float64(r.memMB-sh.memoryMB), 0.0
			if sh.sharing == MIG {
				room, roomMem = float64(r.compute-sh.compute), float64(r.memMB-sh.memoryMB)
			}
			var key placeKey
			switch p.policy {
			case Spread:
				key = placeKey{nd.held, -room, -roomMem, 0, 0, float64(r.slot)}
			case LeastLoaded:
				key = placeKey{nd.load, p.slots[r.slot].load(), -room, -roomMem, 0, float64(r.slot)}
			default:
				key = placeKey{bool01(r.idle), room, roomMem, -nd.held, 0, float64(r.slot)}
			}
			if best < 0 || key.less(bestKey) {
				best, bestKey = r.slot, key
			}
			if p.policy == Binpack {
				break // the node's first fit is its best
			}
		}
	}
	return best
}

// pickExclusive chooses the GPUs for an exclusive replica, or returns nil.
//
// Nodes where one domain holds the replica come before nodes where it must
// span domains. Then:
//   - binpack: the node with the smallest GPUs that hold the replica (the
//     least memory left unused), then the one whose best-fitting domain has
//     the fewest free GPUs, then the fewest free GPUs and the fullest;
//   - spread: the emptiest node (smallest held share), then the most free
//     GPUs, then the smallest GPUs;
//   - least_loaded: the node with the lowest load, then the smallest GPUs.
func (p *Placer) pickExclusive(sh placeShape) []int {
	best, bestKey := -1, placeKey{}
	for ni := range p.nodes {
		nd := &p.nodes[ni]
		if nd.free < sh.gpus {
			continue
		}
		domFree, nodeFree, ok := p.exclusiveFit(nd, sh)
		if !ok {
			continue
		}
		tier := bool01(domFree == 0)
		gpuMB := float64(p.exclusiveMB(nd, sh))
		var key placeKey
		switch p.policy {
		case Spread:
			key = placeKey{tier, nd.held, -float64(nodeFree), gpuMB, 0, float64(nd.first)}
		case LeastLoaded:
			key = placeKey{tier, nd.load, gpuMB, 0, 0, float64(nd.first)}
		default:
			key = placeKey{tier, gpuMB, float64(domFree), float64(nodeFree), -nd.held, float64(nd.first)}
		}
		if best < 0 || key.less(bestKey) {
			best, bestKey = ni, key
		}
	}
	if best < 0 {
		return nil
	}
	return p.chooseExclusive(&p.nodes[best], sh)
}

// exclusiveFit says whether node nd can hold an exclusive replica of shape
// sh now: nodeFree is how many of its GPUs could take it, domFree how many
// in its best-fitting domain (the domain with the fewest such GPUs that
// still holds the replica; 0 when no single domain does).
func (p *Placer) exclusiveFit(nd *placeNode, sh placeShape) (domFree, nodeFree int, ok bool) {
	counts := p.domainCounts(nd, sh.memoryMB)
	for _, c := range counts {
		nodeFree += c
		if c >= sh.gpus && (domFree == 0 || c < domFree) {
			domFree = c
		}
	}
	return domFree, nodeFree, nodeFree >= sh.gpus
}

// exclusiveMB is the mean memory of the k smallest GPUs of node nd that
// could take an exclusive replica of shape sh (k = sh.gpus; the node holds
// the replica).
func (p *Placer) exclusiveMB(nd *placeNode, sh placeShape) int64 {
	if nd.minExclusiveMB == nd.maxExclusiveMB {
		return nd.minExclusiveMB
	}
	mems := p.scratchMB[:0]
	for k := nd.first; k < nd.end; k++ {
		if s := &p.slots[k]; s.takesExclusive(sh.memoryMB) {
			mems = append(mems, s.MemoryMB)
		}
	}
	slices.Sort(mems)
	var sum int64
	for _, m := range mems[:sh.gpus] {
		sum += m
	}
	p.scratchMB = mems
	return sum / int64(sh.gpus)
}

// domainCounts returns, per domain of nd, how many GPUs could take an
// exclusive replica needing memMB each. The slice is scratch space, valid
// until the next call.
func (p *Placer) domainCounts(nd *placeNode, memMB int64) []int {
	counts := p.scratch[:len(nd.domains)]
	if memMB > nd.maxExclusiveMB {
		clear(counts)
		return counts
	}
	if memMB <= nd.minExclusiveMB {
		for d := range nd.domains {
			counts[d] = nd.domains[d].free
		}
		return counts
	}
	clear(counts)
	for k := nd.first; k < nd.end; k++ {
		if p.slots[k].takesExclusive(memMB) {
			counts[p.slotDom[k]]++
		}
	}
	return counts
}

// chooseExclusive takes the GPUs on node nd: from its best-fitting domain
// when one holds the replica, else from its domains with the most free GPUs
// first. Within a domain least_loaded takes the least utilized GPUs first;
// then the GPUs with the least memory go first, then by UUID.
func (p *Placer) chooseExclusive(nd *placeNode, sh placeShape) []int {
	counts := p.domainCounts(nd, sh.memoryMB)
	order := make([]int, 0, len(counts))
	bestDom := -1
	for d, c := range counts {
		if c >= sh.gpus && (bestDom < 0 || c < counts[bestDom]) {
			bestDom = d
		}
		if c > 0 {
			order = append(order, d)
		}
	}
	if bestDom >= 0 {
		order = append(order[:0], bestDom)
	} else {
		slices.SortStableFunc(order, func(a, b int) int { return counts[b] - counts[a] })
	}
	picked := make([]int, 0, sh.gpus)
	for _, d := range order {
		gpus := nd.domains[d].gpus
		if p.policy == LeastLoaded || nd.minExclusiveMB != nd.maxExclusiveMB {
			gpus = slices.Clone(gpus)
			slices.SortStableFunc(gpus, func(a, b int) int {
				sa, sb := &p.slots[a], &p.slots[b]
				if p.policy == LeastLoaded && sa.Utilization != sb.Utilization {
					return sa.Utilization - sb.Utilization
				}
				return cmp.Compare(sa.MemoryMB, sb.MemoryMB)
			})
		}
		for _, k := range gpus {
			if len(picked) == sh.gpus {
				break
			}
			if p.slots[k].takesExclusive(sh.memoryMB) {
				picked = append(picked, k)
			}
		}
	}
	slices.SortFunc(picked, func(a, b int) int { return strings.Compare(p.slots[a].UUID, p.slots[b].UUID) })
	return picked
}

// PlaceAll places a batch and returns, per need (in the order given), the
// UUIDs of its GPUs or nil where it was not placed. It tries a few orders —
// largest first (exclusive before shared and MIG, more GPUs and more memory
// first), smallest first, and the order given — each with Place, keeps the
// one that places the most replicas (ties: the most GPU capacity placed,
// then the earlier order in that list) and leaves its placements recorded.
func (p *Placer) PlaceAll(needs []Need) [][]string {
	size := make([]float64, len(needs))
	var refMB int64 = 1
	for i := range p.slots {
		refMB = max(refMB, p.slots[i].MemoryMB)
	}
	for i, n := range needs {
		sh := p.shape(n)
		switch {
		case sh.err != nil:
			size[i] = -1
		case sh.sharing == Exclusive:
			size[i] = float64(sh.gpus)
		case sh.sharing == Shared:
			size[i] = float64(sh.memoryMB) / float64(refMB)
		default:
			size[i] = max(float64(sh.compute)/MIGComputeSlices, float64(sh.memoryMB)/float64(refMB))
		}
	}
	arrival := make([]int, len(needs))
	for i := range arrival {
		arrival[i] = i
	}
	largest := slices.Clone(arrival)
	slices.SortStableFunc(largest, func(a, b int) int {
		switch {
		case size[a] > size[b]:
			return -1
		case size[a] < size[b]:
			return 1
		}
		return 0
	})
	smallest := slices.Clone(largest)
	slices.Reverse(smallest)
	// Reversing puts equal sizes in reverse arrival order: restore it.
	slices.SortStableFunc(smallest, func(a, b int) int {
		switch {
		case size[a] < size[b]:
			return -1
		case size[a] > size[b]:
			return 1
		}
		return a - b
	})

	orders := [][]int{largest}
	for _, o := range [][]int{smallest, arrival} {
		dup := false
		for _, prev := range orders {
			dup = dup || slices.Equal(prev, o)
		}
		if !dup {
			orders = append(orders, o)
		}
	}

	// Each order starts from the state PlaceAll was called in; the best
	// order's state and answers are kept.
	initial := slices.Clone(p.slots)
	var bestSlots []Slot
	var best [][]string
	bestCount, bestSize := -1, -1.0
	for oi, order := range orders {
		if oi > 0 {
			p.restore(initial)
		}
		out := make([][]string, len(needs))
		count, placedSize := p.placeInOrder(needs, order, out)
		if count == len(needs) {
			return out // everything placed: keep it
		}
		if count > bestCount || (count == bestCount && placedSize > bestSize) {
			best, bestCount, bestSize = out, count, placedSize
			bestSlots = append(bestSlots[:0], p.slots...)
		}
	}
	p.restore(bestSlots)
	return best
}

// restore sets what is held on every GPU to a copy taken of p.slots.
func (p *Placer) restore(slots []Slot) {
	copy(p.slots, slots)
	for ni := range p.nodes {
		p.refresh(ni)
	}
}

// placeInOrder places needs in the given order into out (index = need) and
// returns how many were placed and their total size in GPUs (exclusive) or
// share of a GPU (shared, MIG).
func (p *Placer) placeInOrder(needs []Need, order []int, out [][]string) (count int, size float64) {
	for _, i := range order {
		u, _, _, ok := p.Place(needs[i])
		out[i] = u
		if ok {
			count++
			sh := p.shape(needs[i])
			s := &p.slots[p.byUUID[u[0]]]
			switch sh.sharing {
			case Exclusive:
				size += float64(sh.gpus)
			case Shared:
				size += float64(sh.memoryMB) / float64(max(s.MemoryMB, 1))
			default:
				size += max(float64(sh.compute)/MIGComputeSlices, float64(sh.memoryMB)/float64(max(s.MemoryMB, 1)))
			}
		}
	}
	return count, size
}

// Fragmentation is the share of all the placer's GPUs that are stranded: a
// GPU is stranded when it is partly used (something is held on it, it is
// not held exclusively, and it has room left: shared memory below MemoryMB,
// or for MIG compute slices below 7 and memory below MemoryMB) and none of
// the pending single-GPU needs would fit on it now. Multi-GPU exclusive needs
// never fit a partly used GPU and invalid needs are ignored. It returns 0
// when there are no GPUs or nothing is pending: with nothing waiting,
// nothing is stranded. 0 is best, 1 means every GPU is stranded.
func (p *Placer) Fragmentation(pending []Need) float64 {
	if len(p.slots) == 0 || len(pending) == 0 {
		return 0
	}
	shapes := make([]placeShape, 0, len(pending))
	for _, n := range pending {
		if sh := p.shape(n); sh.err == nil && sh.gpus == 1 && !slices.Contains(shapes, sh) {
			shapes = append(shapes, sh)
		}
	}
	stranded := 0
	for k := range p.slots {
		s := &p.slots[k]
		if s.idle() || s.full() {
			continue
		}
		fits := false
		for _, sh := range shapes {
			switch sh.sharing {
			case Shared:
				fits = s.sharedFree() >= sh.memoryMB
			case MIG:
				c, m := s.migFree()
				fits = c >= sh.compute && m >= sh.memoryMB
			}
			if fits {
				break
			}
		}
		if !fits {
			stranded++
		}
	}
	return float64(stranded) / float64(len(p.slots))
}

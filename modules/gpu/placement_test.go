package gpu

import (
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"testing"
)

const (
	placeA100MB = 40960 // an A100-40GB as NVML reports it
	placeGB     = 1024
)

// placeNodeSlots returns n idle A100-40GB GPUs "<node>-g0".. on one node,
// all in domain dom.
func placeNodeSlots(node, dom string, n int) []Slot {
	out := make([]Slot, n)
	for i := range out {
		out[i] = Slot{UUID: fmt.Sprintf("%s-g%d", node, i), Node: node, Domain: dom, MemoryMB: placeA100MB}
	}
	return out
}

// placeMust places n and fails the test when it does not fit.
func placeMust(t testing.TB, p *Placer, n Need) []string {
	t.Helper()
	u, _, reason, ok := p.Place(n)
	if !ok {
		t.Fatalf("Place(%+v) refused: %s", n, reason)
	}
	return u
}

// placeRefused asserts that n does not fit, for the given reason.
func placeRefused(t testing.TB, p *Placer, n Need, want string) {
	t.Helper()
	u, _, reason, ok := p.Place(n)
	if ok || reason != want {
		t.Fatalf("Place(%+v) = %v, %q, %v; want refused with %q", n, u, reason, ok, want)
	}
}

func placeSlot(t testing.TB, p *Placer, uuid string) Slot {
	t.Helper()
	for _, s := range p.Slots() {
		if s.UUID == uuid {
			return s
		}
	}
	t.Fatalf("no slot %s", uuid)
	return Slot{}
}

var (
	placeExcl1  = Need{GPUs: 1, Sharing: Exclusive}
	placeMIG1g  = Need{GPUs: 1, MemoryMB: 4 * placeGB, Sharing: MIG, MIGProfile: "1g.5gb"}
	placeShared = func(gb int64) Need { return Need{GPUs: 1, MemoryMB: gb * placeGB, Sharing: Shared} }
	placeExcl   = func(gpus int) Need { return Need{GPUs: gpus, Sharing: Exclusive} }
)

func TestParsePolicy(t *testing.T) {
	for _, s := range []string{"binpack", "spread", "least_loaded"} {
		if p, err := ParsePolicy(s); err != nil || string(p) != s {
			t.Errorf("ParsePolicy(%q) = %q, %v", s, p, err)
		}
	}
	for _, s := range []string{"", "Binpack", "least-loaded", "random"} {
		if _, err := ParsePolicy(s); err == nil {
			t.Errorf("ParsePolicy(%q) accepted", s)
		}
	}
}

func TestParseMIGProfile(t *testing.T) {
	for _, c := range []struct {
		in      string
		compute int
		mem     int64
	}{
		{"1g.5gb", 1, 5 * 1024},
		{"2g.10gb", 2, 10 * 1024},
		{"3g.20gb", 3, 20 * 1024},
		{"7g.80gb", 7, 80 * 1024},
	} {
		compute, mem, err := ParseMIGProfile(c.in)
		if err != nil || compute != c.compute || mem != c.mem {
			t.Errorf("ParseMIGProfile(%q) = %d, %d, %v; want %d, %d", c.in, compute, mem, err, c.compute, c.mem)
		}
	}
	for _, in := range []string{"", "1g", "1g.5", "8g.40gb", "0g.5gb", "1g.0gb", "g.5gb", "+1g.5gb", "1g.-5gb", "1G.5GB", "1g.5gb+me", " 1g.5gb"} {
		if c, m, err := ParseMIGProfile(in); err == nil {
			t.Errorf("ParseMIGProfile(%q) = %d, %d; want an error", in, c, m)
		}
	}
}

func TestNeedValidate(t *testing.T) {
	for _, c := range []struct {
		need  Need
		field string // "" = valid
	}{
		{Need{GPUs: 1, Sharing: Exclusive}, ""},
		{Need{GPUs: 8, MemoryMB: 30000, Sharing: Exclusive}, ""},
		{Need{GPUs: 1, MemoryMB: 1, Sharing: Shared}, ""},
		{Need{GPUs: 1, MemoryMB: 5120, Sharing: MIG, MIGProfile: "1g.5gb"}, ""},
		{Need{GPUs: 1, Sharing: ""}, "sharing"},
		{Need{GPUs: 1, Sharing: "mps"}, "sharing"},
		{Need{GPUs: 0, Sharing: Exclusive}, "gpus"},
		{Need{GPUs: -1, MemoryMB: 1, Sharing: Shared}, "gpus"},
		{Need{GPUs: 2, MemoryMB: 1, Sharing: Shared}, "gpus"},
		{Need{GPUs: 2, MemoryMB: 1, Sharing: MIG, MIGProfile: "1g.5gb"}, "gpus"},
		{Need{GPUs: 1, MemoryMB: -1, Sharing: Exclusive}, "memory_mb"},
		{Need{GPUs: 1, Sharing: Shared}, "memory_mb"},
		{Need{GPUs: 1, Sharing: MIG, MIGProfile: "1g.5gb"}, "memory_mb"},
		{Need{GPUs: 1, MemoryMB: 5121, Sharing: MIG, MIGProfile: "1g.5gb"}, "memory_mb"},
		{Need{GPUs: 1, MemoryMB: 1, Sharing: MIG}, "mig_profile"},
		{Need{GPUs: 1, MemoryMB: 1, Sharing: MIG, MIGProfile: "9g.5gb"}, "mig_profile"},
		{Need{GPUs: 1, MemoryMB: 1, Sharing: Shared, MIGProfile: "1g.5gb"}, "mig_profile"},
	} {
		err := c.need.Validate()
		var fe *NeedFieldError
		switch {
		case c.field == "" && err != nil:
			t.Errorf("%+v: %v", c.need, err)
		case c.field != "" && (!errors.As(err, &fe) || fe.Field != c.field):
			t.Errorf("%+v: error %v; want one naming %q", c.need, err, c.field)
		case c.field != "" && !strings.HasPrefix(err.Error(), c.field+": "):
			t.Errorf("%+v: error text %q does not start with the field", c.need, err)
		}
	}
}

func TestPlaceExclusiveDisjoint(t *testing.T) {
	slots := append(placeNodeSlots("a", "", 4), placeNodeSlots("b", "", 4)...)
	slots[1].SharedMB = 1 // a-g1 holds a shared replica
	slots[6].MIGMode = true
	for _, pol := range []Policy{Binpack, Spread, LeastLoaded} {
		t.Run(string(pol), func(t *testing.T) {
			p := NewPlacer(slots, pol)
			seen := map[string]bool{}
			// 6 GPUs can take exclusive replicas: a-g0, a-g2, a-g3, b-g0, b-g1, b-g3.
			for _, n := range []Need{placeExcl(3), placeExcl(2), placeExcl1} {
				u, node, _, ok := p.Place(n)
				if !ok || len(u) != n.GPUs {
					t.Fatalf("Place(%d GPUs) = %v, %v", n.GPUs, u, ok)
				}
				for _, id := range u {
					if seen[id] || id == "a-g1" || id == "b-g2" || !strings.HasPrefix(id, node+"-") {
						t.Fatalf("GPU %s given twice, or shared, in MIG mode or off node %s: %v", id, node, u)
					}
					seen[id] = true
					if !placeSlot(t, p, id).Exclusive {
						t.Fatalf("%s not recorded as exclusive", id)
					}
				}
			}
			placeRefused(t, p, placeExcl1, ReasonInsufficientGPUs)
			// Shared replicas still fit beside the shared one on a-g1, and
			// nowhere else.
			if u := placeMust(t, p, placeShared(39)); u[0] != "a-g1" {
				t.Fatalf("shared replica on %v; want a-g1", u)
			}
			placeRefused(t, p, placeShared(1), ReasonInsufficientGPUs)
		})
	}
}

func TestPlaceExclusiveMemory(t *testing.T) {
	slots := []Slot{
		{UUID: "small", Node: "a", MemoryMB: 16 * placeGB},
		{UUID: "big", Node: "a", MemoryMB: 80 * placeGB},
	}
	p := NewPlacer(slots, Binpack)
	if u := placeMust(t, p, Need{GPUs: 1, MemoryMB: 20 * placeGB, Sharing: Exclusive}); u[0] != "big" {
		t.Fatalf("20 GB exclusive on %v; want big", u)
	}
	placeRefused(t, p, Need{GPUs: 1, MemoryMB: 20 * placeGB, Sharing: Exclusive}, ReasonInsufficientGPUs)
	if u := placeMust(t, p, Need{GPUs: 1, Sharing: Exclusive}); u[0] != "small" {
		t.Fatalf("any-memory exclusive on %v; want small", u)
	}
}

func TestPlaceShared(t *testing.T) {
	slots := []Slot{
		{UUID: "mig", Node: "a", MemoryMB: placeA100MB, MIGMode: true},
		{UUID: "excl", Node: "a", MemoryMB: placeA100MB, Exclusive: true},
		{UUID: "g", Node: "a", MemoryMB: placeA100MB, SharedMB: 10 * placeGB},
	}
	p := NewPlacer(slots, Binpack)
	placeMust(t, p, placeShared(20))
	placeMust(t, p, placeShared(10))
	if s := placeSlot(t, p, "g"); s.SharedMB != placeA100MB {
		t.Fatalf("shared memory held on g = %d; want %d", s.SharedMB, placeA100MB)
	}
	// Memory left on the MIG and exclusive GPUs does not count.
	placeRefused(t, p, placeShared(1), ReasonInsufficientGPUs)
	placeRefused(t, p, placeShared(41), ReasonNoCompatibleNode)
	if s := placeSlot(t, p, "mig"); s.SharedMB != 0 {
		t.Fatalf("shared memory held on the MIG GPU: %+v", s)
	}
}

func TestPlaceMIGCapacity(t *testing.T) {
	slots := []Slot{
		{UUID: "mig", Node: "a", MemoryMB: placeA100MB, MIGMode: true},
		{UUID: "plain", Node: "a", MemoryMB: placeA100MB},
	}
	t.Run("compute", func(t *testing.T) {
		p := NewPlacer(slots, Binpack)
		for range 7 {
			if u := placeMust(t, p, placeMIG1g); u[0] != "mig" {
				t.Fatalf("MIG replica on %v", u)
			}
		}
		// 7 × 5 GB = 35 GB: memory is left, compute slices are not.
		placeRefused(t, p, placeMIG1g, ReasonInsufficientGPUs)
		if s := placeSlot(t, p, "mig"); s.MIGCompute != 7 || s.MIGMemoryMB != 35*placeGB {
			t.Fatalf("MIG held = %d slices, %d MB", s.MIGCompute, s.MIGMemoryMB)
		}
	})
	t.Run("memory", func(t *testing.T) {
		p := NewPlacer(slots, Binpack)
		big := Need{GPUs: 1, MemoryMB: 20 * placeGB, Sharing: MIG, MIGProfile: "3g.20gb"}
		placeMust(t, p, big)
		placeMust(t, p, big)
		// 6 of 7 slices held, but all 40 GB.
		placeRefused(t, p, placeMIG1g, ReasonInsufficientGPUs)
	})
	t.Run("exact", func(t *testing.T) {
		p := NewPlacer(slots, Binpack)
		placeMust(t, p, Need{GPUs: 1, MemoryMB: 1, Sharing: MIG, MIGProfile: "4g.20gb"})
		placeMust(t, p, Need{GPUs: 1, MemoryMB: 1, Sharing: MIG, MIGProfile: "3g.20gb"})
		placeRefused(t, p, placeMIG1g, ReasonInsufficientGPUs)
		p2 := NewPlacer(slots, Binpack)
		placeMust(t, p2, Need{GPUs: 1, MemoryMB: 1, Sharing: MIG, MIGProfile: "7g.40gb"})
	})
	t.Run("mode", func(t *testing.T) {
		p := NewPlacer(slots, Binpack)
		placeMust(t, p, placeMIG1g)
		// The MIG GPU takes neither exclusive nor shared replicas.
		if u := placeMust(t, p, placeExcl1); u[0] != "plain" {
			t.Fatalf("exclusive on %v", u)
		}
		placeRefused(t, p, placeExcl1, ReasonInsufficientGPUs)
		placeRefused(t, p, placeShared(1), ReasonInsufficientGPUs)
	})
}

func TestPlaceDomains(t *testing.T) {
	// Node a: domain x with 4 GPUs, domain y with 4.
	slots := append(placeNodeSlots("a", "x", 4), placeNodeSlots("a", "y", 4)...)
	for i := 4; i < 8; i++ {
		slots[i].UUID = fmt.Sprintf("a-g%d", i)
	}
	slots[0].Exclusive = true // a-g0 in x is taken
	domainOf := func(u []string) string {
		doms := map[string]bool{}
		for _, id := range u {
			i, _ := strconv.Atoi(strings.TrimPrefix(id, "a-g"))
			doms[slots[i].Domain] = true
		}
		keys := []string{}
		for d := range doms {
			keys = append(keys, d)
		}
		slices.Sort(keys)
		return strings.Join(keys, ",")
	}
	for _, pol := range []Policy{Binpack, Spread, LeastLoaded} {
		t.Run(string(pol), func(t *testing.T) {
			p := NewPlacer(slots, pol)
			// 4 GPUs fit only in y.
			if d := domainOf(placeMust(t, p, placeExcl(4))); d != "y" {
				t.Fatalf("4 GPUs in domains %s; want y", d)
			}
			// Give y back, take 2 GPUs: x has 3 free (best fit), y 4.
			p.Unplace([]string{"a-g4", "a-g5", "a-g6", "a-g7"}, placeExcl(4))
			if d := domainOf(placeMust(t, p, placeExcl(2))); d != "x" {
				t.Fatalf("2 GPUs in domains %s; want x (the best-fitting domain)", d)
			}
			// 1 free in x, 4 in y: 5 GPUs must span both.
			if d := domainOf(placeMust(t, p, placeExcl(5))); d != "x,y" {
				t.Fatalf("5 GPUs in domains %s; want x,y", d)
			}
		})
	}

	t.Run("one domain beats policy", func(t *testing.T) {
		// Node a: 2 + 2 free in two domains; node b: 4 free in one domain
		// but emptier. Binpack would take the fuller a, but only b keeps 4
		// GPUs in one domain.
		s := append(placeNodeSlots("a", "x", 3), placeNodeSlots("a", "y", 3)...)
		for i := 3; i < 6; i++ {
			s[i].UUID = fmt.Sprintf("a-g%d", i)
		}
		s[0].Exclusive, s[3].Exclusive = true, true
		s = append(s, placeNodeSlots("b", "z", 4)...)
		p := NewPlacer(s, Binpack)
		if u, node, _, _ := p.Place(placeExcl(4)); node != "b" {
			t.Fatalf("4 GPUs on node %s (%v); want b", node, u)
		}
		// Now only a is left: 4 across its two domains.
		if u, node, _, _ := p.Place(placeExcl(4)); node != "a" || len(u) != 4 {
			t.Fatalf("4 GPUs on node %s (%v); want a across domains", node, u)
		}
	})

	t.Run("no domain", func(t *testing.T) {
		// "" puts each GPU in its own domain: a 2-GPU replica spans two.
		p := NewPlacer(placeNodeSlots("a", "", 2), Binpack)
		if u := placeMust(t, p, placeExcl(2)); len(u) != 2 {
			t.Fatalf("got %v", u)
		}
	})
}

func TestPlaceAllOnOneNode(t *testing.T) {
	// 3 + 3 free GPUs on two nodes: 4 GPUs cannot be had on one node.
	slots := append(placeNodeSlots("a", "", 3), placeNodeSlots("b", "", 3)...)
	p := NewPlacer(slots, Spread)
	placeRefused(t, p, placeExcl(4), ReasonNoCompatibleNode)
	u, node, _, ok := p.Place(placeExcl(3))
	if !ok {
		t.Fatal("3 GPUs refused")
	}
	for _, id := range u {
		if !strings.HasPrefix(id, node+"-") {
			t.Fatalf("GPU %s is not on node %s", id, node)
		}
	}
}

func TestPlacePolicies(t *testing.T) {
	// Node a: half full (one exclusive GPU of two, 90% utilized). Node b:
	// idle but 80% utilized by something outside the scheduler. Node c:
	// a shared replica holds 30 of 40 GB on one GPU, 10% utilized.
	slots := []Slot{
		{UUID: "a0", Node: "a", MemoryMB: placeA100MB, Exclusive: true, Utilization: 90},
		{UUID: "a1", Node: "a", MemoryMB: placeA100MB, Utilization: 90},
		{UUID: "b0", Node: "b", MemoryMB: placeA100MB, Utilization: 80},
		{UUID: "b1", Node: "b", MemoryMB: placeA100MB, Utilization: 80},
		{UUID: "c0", Node: "c", MemoryMB: placeA100MB, SharedMB: 30 * placeGB, Utilization: 10},
		{UUID: "c1", Node: "c", MemoryMB: placeA100MB, Utilization: 10},
	}
	// held shares: a 0.5, b 0, c 0.375; loads: a (1+0.9)/2=0.95, b 0.8, c (0.75+0.1)/2=0.425
	for _, c := range []struct {
		policy Policy
		need   Need
		want   string
	}{
		{Binpack, placeExcl1, "a1"},     // the node with the fewest free GPUs
		{Binpack, placeShared(8), "c0"}, // the partly used GPU with least room after
		{Binpack, placeShared(12), "a1"},
		{Spread, placeExcl1, "b0"},
		{Spread, placeShared(8), "b0"},
		{Spread, placeExcl(2), "b0,b1"},
		{LeastLoaded, placeExcl1, "c1"},
		{LeastLoaded, placeShared(8), "c1"}, // c1's load 0.1 < c0's 0.75
		{LeastLoaded, placeExcl(2), "b0,b1"},
	} {
		p := NewPlacer(slots, c.policy)
		if u := strings.Join(placeMust(t, p, c.need), ","); u != c.want {
			t.Errorf("%s %+v: got %s; want %s", c.policy, c.need, u, c.want)
		}
	}

	t.Run("binpack keeps empty GPUs empty", func(t *testing.T) {
		p := NewPlacer(placeNodeSlots("a", "", 4), Binpack)
		for range 8 {
			placeMust(t, p, placeShared(10))
		}
		idle := 0
		for _, s := range p.Slots() {
			if s.SharedMB == 0 {
				idle++
			}
		}
		if idle != 2 {
			t.Fatalf("%d idle GPUs after 8 × 10 GB; want 2", idle)
		}
	})
	t.Run("spread spreads", func(t *testing.T) {
		p := NewPlacer(append(placeNodeSlots("a", "", 2), placeNodeSlots("b", "", 2)...), Spread)
		for range 4 {
			placeMust(t, p, placeShared(5))
		}
		for _, s := range p.Slots() {
			if s.SharedMB != 5*placeGB {
				t.Fatalf("4 shared replicas on 4 GPUs: %+v", p.Slots())
			}
		}
	})
	t.Run("least_loaded MIG", func(t *testing.T) {
		s := []Slot{
			{UUID: "m0", Node: "a", MemoryMB: placeA100MB, MIGMode: true, Utilization: 50},
			{UUID: "m1", Node: "a", MemoryMB: placeA100MB, MIGMode: true, Utilization: 20, MIGCompute: 1, MIGMemoryMB: 5 * placeGB},
		}
		p := NewPlacer(s, LeastLoaded)
		if u := placeMust(t, p, placeMIG1g); u[0] != "m1" {
			t.Fatalf("got %v; want m1 (load 0.2 < 0.5)", u)
		}
		b := NewPlacer(s, Binpack)
		if u := placeMust(t, b, placeMIG1g); u[0] != "m1" {
			t.Fatalf("binpack got %v; want the partly used m1", u)
		}
		sp := NewPlacer(s, Spread)
		if u := placeMust(t, sp, placeMIG1g); u[0] != "m0" {
			t.Fatalf("spread got %v; want the emptier m0", u)
		}
	})
}

func TestPlaceReasons(t *testing.T) {
	slots := append(placeNodeSlots("a", "", 2), placeNodeSlots("b", "", 2)...)
	slots[3].MIGMode = true
	p := NewPlacer(slots, Binpack)
	for _, c := range []struct {
		name string
		need Need
		want string
	}{
		{"more GPUs than any node", placeExcl(3), ReasonNoCompatibleNode},
		{"exclusive on MIG GPUs", placeExcl(2), ""}, // a has 2
		{"more memory than any GPU", placeShared(41), ReasonNoCompatibleNode},
		{"exclusive memory larger than any GPU", Need{GPUs: 1, MemoryMB: 41 * placeGB, Sharing: Exclusive}, ReasonNoCompatibleNode},
		{"MIG profile larger than the MIG GPU", Need{GPUs: 1, MemoryMB: 1, Sharing: MIG, MIGProfile: "7g.80gb"}, ReasonNoCompatibleNode},
		{"invalid", Need{GPUs: 0, Sharing: Exclusive}, ReasonInvalidNeed},
	} {
		u, _, reason, ok := p.Place(c.need)
		if c.want == "" {
			if !ok {
				t.Errorf("%s: refused (%s)", c.name, reason)
			}
			continue
		}
		if ok || reason != c.want {
			t.Errorf("%s: got %v, %q, %v; want %q", c.name, u, reason, ok, c.want)
		}
	}
	// Node a is taken now: 2 GPUs exist there, so it is a matter of time.
	placeRefused(t, p, placeExcl(2), ReasonInsufficientGPUs)
	placeMust(t, p, placeExcl1) // b-g0
	placeRefused(t, p, placeExcl1, ReasonInsufficientGPUs)

	noMIG := NewPlacer(placeNodeSlots("a", "", 2), Binpack)
	placeRefused(t, noMIG, placeMIG1g, ReasonNoCompatibleNode)
	empty := NewPlacer(nil, Spread)
	placeRefused(t, empty, placeShared(1), ReasonNoCompatibleNode)
	if f := empty.Fragmentation([]Need{placeExcl1}); f != 0 {
		t.Fatalf("Fragmentation of no GPUs = %v", f)
	}
}

func TestUnplace(t *testing.T) {
	slots := append(placeNodeSlots("a", "x", 4), Slot{UUID: "m", Node: "a", MemoryMB: placeA100MB, MIGMode: true})
	slots[1].SharedMB = 3 * placeGB // held before the placer was built
	for _, pol := range []Policy{Binpack, Spread, LeastLoaded} {
		p := NewPlacer(slots, pol)
		before := p.Slots()
		needs := []Need{placeExcl(2), placeShared(7), placeMIG1g, placeShared(30), {GPUs: 1, MemoryMB: 1, Sharing: MIG, MIGProfile: "3g.20gb"}}
		var got [][]string
		for _, n := range needs {
			got = append(got, placeMust(t, p, n))
		}
		placeRefused(t, p, placeExcl(2), ReasonInsufficientGPUs)
		for i := len(needs) - 1; i >= 0; i-- {
			p.Unplace(got[i], needs[i])
		}
		if after := p.Slots(); !slices.Equal(before, after) {
			t.Fatalf("%s: after Unplace\n%+v\nwant\n%+v", pol, after, before)
		}
		// What was given back can be placed again.
		placeMust(t, p, placeExcl(3))
		// Unknown GPUs and invalid needs are ignored; nothing goes below 0.
		p.Unplace([]string{"nope"}, placeExcl1)
		p.Unplace([]string{"a-g0"}, Need{})
		p.Unplace([]string{"m"}, placeMIG1g)
		if s := placeSlot(t, p, "m"); s.MIGCompute != 0 || s.MIGMemoryMB != 0 {
			t.Fatalf("%s: MIG held went below 0: %+v", pol, s)
		}
	}
}

func TestPlaceDeterministic(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 7))
	for range 50 {
		slots, needs := placeRandomInstance(r)
		for _, pol := range []Policy{Binpack, Spread, LeastLoaded} {
			first := NewPlacer(slots, pol).PlaceAll(needs)
			shuffled := slices.Clone(slots)
			r.Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
			second := NewPlacer(shuffled, pol).PlaceAll(needs)
			if fmt.Sprint(first) != fmt.Sprint(second) {
				t.Fatalf("%s: %v then %v", pol, first, second)
			}
		}
	}
}

func TestPlaceAllOrder(t *testing.T) {
	// Spread in arrival order puts the two shared replicas on both GPUs,
	// and the exclusive one finds no idle GPU; PlaceAll places it first.
	needs := []Need{placeShared(10), placeShared(10), placeExcl1}
	seq := NewPlacer(placeNodeSlots("a", "", 2), Spread)
	placed := 0
	for _, n := range needs {
		if _, _, _, ok := seq.Place(n); ok {
			placed++
		}
	}
	if placed != 2 {
		t.Fatalf("arrival order placed %d; the test expects 2", placed)
	}
	p := NewPlacer(placeNodeSlots("a", "", 2), Spread)
	got := p.PlaceAll(needs)
	for i, u := range got {
		if u == nil {
			t.Fatalf("PlaceAll left need %d out: %v", i, got)
		}
	}
	if got[2][0] == got[0][0] || got[2][0] == got[1][0] {
		t.Fatalf("exclusive GPU shared: %v", got)
	}
	placeCheckState(t, placeNodeSlots("a", "", 2), p, needs, got)

	// When not everything fits, the most replicas are placed: one 2-GPU
	// exclusive replica or the two 1-GPU ones, not the former.
	p = NewPlacer(placeNodeSlots("a", "", 2), Binpack)
	got = p.PlaceAll([]Need{placeExcl(2), placeExcl1, placeExcl1})
	if got[0] != nil || got[1] == nil || got[2] == nil {
		t.Fatalf("PlaceAll = %v; want the two 1-GPU replicas", got)
	}
}

func TestFragmentation(t *testing.T) {
	slots := []Slot{
		{UUID: "idle", Node: "a", MemoryMB: placeA100MB},
		{UUID: "excl", Node: "a", MemoryMB: placeA100MB, Exclusive: true},
		{UUID: "full", Node: "a", MemoryMB: placeA100MB, SharedMB: placeA100MB},
		{UUID: "room8", Node: "a", MemoryMB: placeA100MB, SharedMB: 32 * placeGB},
		{UUID: "room20", Node: "a", MemoryMB: placeA100MB, SharedMB: 20 * placeGB},
		{UUID: "mig1", Node: "b", MemoryMB: placeA100MB, MIGMode: true, MIGCompute: 6, MIGMemoryMB: 30 * placeGB},
		{UUID: "migfull", Node: "b", MemoryMB: placeA100MB, MIGMode: true, MIGCompute: 7, MIGMemoryMB: 35 * placeGB},
		{UUID: "migidle", Node: "b", MemoryMB: placeA100MB, MIGMode: true},
	}
	p := NewPlacer(slots, Binpack)
	for _, c := range []struct {
		pending []Need
		want    float64 // stranded GPUs of 8
	}{
		{nil, 0},
		{[]Need{placeExcl1}, 3.0 / 8},           // room8, room20, mig1
		{[]Need{placeShared(10)}, 2.0 / 8},      // room8, mig1
		{[]Need{placeShared(8), placeMIG1g}, 0}, // each partly used GPU takes one
		{[]Need{placeShared(25), placeExcl(2)}, 3.0 / 8},
		{[]Need{{GPUs: 1, MemoryMB: 1, Sharing: MIG, MIGProfile: "2g.10gb"}}, 3.0 / 8},
		{[]Need{{Sharing: "bogus"}}, 3.0 / 8},
	} {
		if got := p.Fragmentation(c.pending); got != c.want {
			t.Errorf("Fragmentation(%+v) = %v; want %v", c.pending, got, c.want)
		}
	}
}

// TestPlaceAllNearOptimal is the quality property behind
// BenchmarkPlacementQuality on a fixed seed: on small random instances
// PlaceAll with binpack places on average at least 98% of the most replicas
// that could be placed (found by exhaustive search), never more than that,
// and leaves a consistent state.
func TestPlaceAllNearOptimal(t *testing.T) {
	instances := placeQualityInstances(rand.New(rand.NewPCG(2026, 11)), 200)
	for _, pol := range []Policy{Binpack, Spread, LeastLoaded} {
		q := placeQuality(t, instances, pol)
		t.Logf("%s: PlaceAll/optimum %.4f, arrival order/optimum %.4f, fragmentation %.4f, %d of %d instances below optimum",
			pol, q.placeAll, q.sequential, q.fragmentation, q.belowOptimum, len(instances))
		if pol == Binpack && q.placeAll < 0.98 {
			t.Errorf("binpack: mean PlaceAll/optimum = %.4f; want >= 0.98", q.placeAll)
		}
	}
}

// TestPlaceOptimum checks the branch and bound behind the quality figures
// against a plain enumeration of every assignment of every need (memoized
// on the exact state, no bounds, no symmetry), on instances cut to 6 needs.
func TestPlaceOptimum(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 5))
	for i := range 40 {
		slots, needs := placeRandomInstance(r)
		needs = needs[:6]
		if got, want := placeOptimum(slots, needs), placeEnumerate(slices.Clone(slots), needs); got != want {
			t.Fatalf("instance %d: search %d, enumeration %d\nslots %+v\nneeds %+v", i, got, want, slots, needs)
		}
	}
}

// placeEnumerate is the most of needs[i:] that fit on st, trying every
// GPU (set) for every need.
func placeEnumerate(st []Slot, needs []Need) int {
	memo := map[string]int{}
	var best func(i int) int
	best = func(i int) int {
		if i == len(needs) {
			return 0
		}
		key := fmt.Sprint(i, st)
		if v, ok := memo[key]; ok {
			return v
		}
		v := best(i + 1)
		n := needs[i]
		c, m, _ := ParseMIGProfile(n.MIGProfile)
		switch n.Sharing {
		case Exclusive:
			byNode := map[string][]int{}
			for g := range st {
				if st[g].takesExclusive(n.MemoryMB) {
					byNode[st[g].Node] = append(byNode[st[g].Node], g)
				}
			}
			for _, free := range byNode {
				placeCombinations(free, n.GPUs, func(a, b int) bool { return false }, func(pick []int) {
					for _, g := range pick {
						st[g].Exclusive = true
					}
					v = max(v, 1+best(i+1))
					for _, g := range pick {
						st[g].Exclusive = false
					}
				})
			}
		case Shared:
			for g := range st {
				if st[g].sharedFree() >= n.MemoryMB {
					st[g].SharedMB += n.MemoryMB
					v = max(v, 1+best(i+1))
					st[g].SharedMB -= n.MemoryMB
				}
			}
		case MIG:
			for g := range st {
				if fc, fm := st[g].migFree(); fc >= c && fm >= m {
					st[g].MIGCompute, st[g].MIGMemoryMB = st[g].MIGCompute+c, st[g].MIGMemoryMB+m
					v = max(v, 1+best(i+1))
					st[g].MIGCompute, st[g].MIGMemoryMB = st[g].MIGCompute-c, st[g].MIGMemoryMB-m
				}
			}
		}
		memo[key] = v
		return v
	}
	return best(0)
}

// placeInstance is a random cluster, a batch, and the most of the batch
// that can be placed on it at once.
type placeInstance struct {
	slots   []Slot
	needs   []Need
	optimum int
}

// placeQualityInstances draws n instances and solves each exactly.
func placeQualityInstances(r *rand.Rand, n int) []placeInstance {
	out := make([]placeInstance, n)
	for i := range out {
		slots, needs := placeRandomInstance(r)
		out[i] = placeInstance{slots: slots, needs: needs, optimum: placeOptimum(slots, needs)}
	}
	return out
}

// placeQualityResult is the mean over instances of placed/optimum for
// PlaceAll and for Place in arrival order, and of Fragmentation after
// PlaceAll with the needs it left out pending.
type placeQualityResult struct {
	placeAll, sequential, fragmentation float64
	belowOptimum                        int
}

// placeQuality runs PlaceAll and Place in arrival order on every instance
// with policy pol, checking PlaceAll's state on each.
func placeQuality(tb testing.TB, instances []placeInstance, pol Policy) placeQualityResult {
	tb.Helper()
	var q placeQualityResult
	for _, in := range instances {
		p := NewPlacer(in.slots, pol)
		got := p.PlaceAll(in.needs)
		placeCheckState(tb, in.slots, p, in.needs, got)
		var pending []Need
		for i, u := range got {
			if u == nil {
				pending = append(pending, in.needs[i])
			}
		}
		placed := len(in.needs) - len(pending)
		seq := NewPlacer(in.slots, pol)
		seqPlaced := 0
		for _, n := range in.needs {
			if _, _, _, ok := seq.Place(n); ok {
				seqPlaced++
			}
		}
		if placed > in.optimum || seqPlaced > in.optimum {
			tb.Fatalf("placed %d (arrival order %d) of an optimum of %d: the search or the placer is wrong\nslots %+v\nneeds %+v",
				placed, seqPlaced, in.optimum, in.slots, in.needs)
		}
		ratio, seqRatio := 1.0, 1.0
		if in.optimum > 0 {
			ratio, seqRatio = float64(placed)/float64(in.optimum), float64(seqPlaced)/float64(in.optimum)
		}
		if placed < in.optimum {
			q.belowOptimum++
		}
		q.placeAll += ratio
		q.sequential += seqRatio
		q.fragmentation += p.Fragmentation(pending)
	}
	n := float64(max(len(instances), 1))
	q.placeAll /= n
	q.sequential /= n
	q.fragmentation /= n
	return q
}

// placeCheckState recomputes what is held from the initial slots and the
// placements, checks it against the placer's state, and checks the
// invariants: capacities kept, exclusive GPUs held by one replica only, not
// in MIG mode and nothing else on them, each replica on one node with the
// GPUs it asked for.
func placeCheckState(tb testing.TB, initial []Slot, p *Placer, needs []Need, got [][]string) {
	tb.Helper()
	want := map[string]Slot{}
	for _, s := range initial {
		want[s.UUID] = s
	}
	exclusiveOwner := map[string]int{}
	for i, u := range got {
		if u == nil {
			continue
		}
		n := needs[i]
		if len(u) != n.GPUs {
			tb.Fatalf("need %d (%+v) got %d GPUs: %v", i, n, len(u), u)
		}
		for _, id := range u {
			s, ok := want[id]
			if !ok || s.Node != want[u[0]].Node {
				tb.Fatalf("need %d: unknown GPU or GPUs on two nodes: %v", i, u)
			}
			switch n.Sharing {
			case Exclusive:
				if s.Exclusive || s.MIGMode || s.SharedMB != 0 || s.MIGCompute != 0 || s.MIGMemoryMB != 0 || s.MemoryMB < n.MemoryMB {
					tb.Fatalf("need %d: exclusive on a GPU that is not free: %+v", i, s)
				}
				if j, ok := exclusiveOwner[id]; ok {
					tb.Fatalf("needs %d and %d both hold %s", j, i, id)
				}
				exclusiveOwner[id] = i
				s.Exclusive = true
			case Shared:
				if s.MIGMode || s.Exclusive {
					tb.Fatalf("need %d: shared on %+v", i, s)
				}
				s.SharedMB += n.MemoryMB
			case MIG:
				c, m, _ := ParseMIGProfile(n.MIGProfile)
				if !s.MIGMode {
					tb.Fatalf("need %d: MIG on %+v", i, s)
				}
				s.MIGCompute += c
				s.MIGMemoryMB += m
			}
			want[id] = s
		}
	}
	for _, s := range p.Slots() {
		if w := want[s.UUID]; w != s {
			tb.Fatalf("placer holds %+v; placements say %+v", s, w)
		}
		if s.SharedMB > s.MemoryMB || s.MIGMemoryMB > s.MemoryMB || s.MIGCompute > MIGComputeSlices {
			tb.Fatalf("capacity exceeded: %+v", s)
		}
	}
}

// placeMIGProfiles are the A100-40GB MIG profiles.
var placeMIGProfiles = []string{"1g.5gb", "1g.5gb", "2g.10gb", "3g.20gb", "4g.20gb", "7g.40gb"}

// placeRandomInstance is a small random cluster and batch: 2–3 nodes of
// 2–4 GPUs (40, 24 or 80 GB per node, a quarter in MIG mode, some with
// replicas already on them, NVLink domains of various shapes) and 6–9
// mixed replicas.
func placeRandomInstance(r *rand.Rand) ([]Slot, []Need) {
	var slots []Slot
	for ni := range 2 + r.IntN(2) {
		node := fmt.Sprintf("n%d", ni)
		mem := []int64{placeA100MB, 24 * placeGB, 80 * placeGB}[r.IntN(3)]
		gpus := 2 + r.IntN(3)
		shape := r.IntN(3) // 0: no domains, 1: one domain, 2: two halves
		for g := range gpus {
			s := Slot{UUID: fmt.Sprintf("%s-%d", node, g), Node: node, MemoryMB: mem, Utilization: r.IntN(101)}
			switch shape {
			case 1:
				s.Domain = "nv"
			case 2:
				s.Domain = fmt.Sprintf("nv%d", 2*g/gpus)
			}
			s.MIGMode = r.IntN(4) == 0
			if r.IntN(6) == 0 {
				if s.MIGMode {
					s.MIGCompute, s.MIGMemoryMB = 1, 5*placeGB
				} else {
					s.SharedMB = int64(4+r.IntN(13)) * placeGB
				}
			}
			slots = append(slots, s)
		}
	}
	needs := make([]Need, 6+r.IntN(4))
	for i := range needs {
		switch k := r.IntN(20); {
		case k < 7:
			n := Need{GPUs: []int{1, 1, 1, 2, 2, 3}[r.IntN(6)], Sharing: Exclusive}
			if r.IntN(3) == 0 {
				n.MemoryMB = 30 * placeGB
			}
			needs[i] = n
		case k < 15:
			needs[i] = Need{GPUs: 1, MemoryMB: int64(4+r.IntN(17)) * placeGB, Sharing: Shared}
		default:
			prof := placeMIGProfiles[r.IntN(len(placeMIGProfiles))]
			_, mem, _ := ParseMIGProfile(prof)
			needs[i] = Need{GPUs: 1, MemoryMB: mem - placeGB, Sharing: MIG, MIGProfile: prof}
		}
	}
	return slots, needs
}

// placeOptimum is the most of needs that can be placed on slots at once,
// by exhaustive search (placeSearch; TestPlaceOptimum checks it against a
// plain enumeration of every assignment). Domains are a preference, not a
// constraint, so they play no part.
func placeOptimum(slots []Slot, needs []Need) int {
	// MIG replicas go only to GPUs in MIG mode and the others only to GPUs
	// not in MIG mode: the two halves are independent problems.
	var migSlots, plainSlots []Slot
	for _, s := range slots {
		if s.MIGMode {
			migSlots = append(migSlots, s)
		} else {
			plainSlots = append(plainSlots, s)
		}
	}
	var migNeeds, plainNeeds []Need
	for _, n := range needs {
		if n.Sharing == MIG {
			migNeeds = append(migNeeds, n)
		} else {
			plainNeeds = append(plainNeeds, n)
		}
	}
	return placeSearch(migSlots, migNeeds) + placeSearch(plainSlots, plainNeeds)
}

// placeSearch is placeOptimum for one of its halves: a depth-first branch
// and bound over the needs in order (each placed somewhere or left out),
// cut where even placeBound cannot beat the best found, or where the same
// state was reached before with as many placed.
func placeSearch(slots []Slot, needs []Need) int {
	var nodes [][]Slot
	byNode := map[string]int{}
	for _, s := range slots {
		i, ok := byNode[s.Node]
		if !ok {
			i = len(nodes)
			byNode[s.Node] = i
			nodes = append(nodes, nil)
		}
		nodes[i] = append(nodes[i], s)
	}
	best := 0
	seen := map[string]int{}
	var dfs func(i, placed int)
	dfs = func(i, placed int) {
		best = max(best, placed)
		if i == len(needs) || placed+placeBound(needs[i:], nodes) <= best {
			return
		}
		key := placeStateKey(i, nodes)
		if p, ok := seen[key]; ok && p >= placed {
			return
		}
		seen[key] = placed
		n := needs[i]
		for _, gpus := range nodes {
			switch n.Sharing {
			case Exclusive:
				var free []int
				for g := range gpus {
					if gpus[g].takesExclusive(n.MemoryMB) {
						free = append(free, g)
					}
				}
				// Idle GPUs differ only by memory: one subset per multiset
				// of memory sizes is enough.
				slices.SortStableFunc(free, func(a, b int) int { return cmp.Compare(gpus[a].MemoryMB, gpus[b].MemoryMB) })
				same := func(a, b int) bool { return gpus[a].MemoryMB == gpus[b].MemoryMB }
				placeCombinations(free, n.GPUs, same, func(pick []int) {
					for _, g := range pick {
						gpus[g].Exclusive = true
					}
					dfs(i+1, placed+1)
					for _, g := range pick {
						gpus[g].Exclusive = false
					}
				})
			case Shared:
				for g := range gpus {
					if gpus[g].sharedFree() >= n.MemoryMB && !placeSameEarlier(gpus, g) {
						gpus[g].SharedMB += n.MemoryMB
						dfs(i+1, placed+1)
						gpus[g].SharedMB -= n.MemoryMB
					}
				}
			case MIG:
				c, m, _ := ParseMIGProfile(n.MIGProfile)
				for g := range gpus {
					if fc, fm := gpus[g].migFree(); fc >= c && fm >= m && !placeSameEarlier(gpus, g) {
						gpus[g].MIGCompute += c
						gpus[g].MIGMemoryMB += m
						dfs(i+1, placed+1)
						gpus[g].MIGCompute -= c
						gpus[g].MIGMemoryMB -= m
					}
				}
			}
		}
		dfs(i+1, placed) // leave need i out
	}
	dfs(0, 0)
	return best
}

// placeBound is an upper bound on how many of rest can still be placed on
// the nodes: only needs that fit alone now count, and as if all free
// capacity were one pool (GPU memory for exclusive and shared needs, an
// exclusive one taking whole GPUs of at least its memory; compute slices
// and memory for MIG needs), as many of the smallest as the pool holds.
func placeBound(rest []Need, nodes [][]Slot) int {
	var poolMB, poolMIGMB int64
	poolSlices := 0
	minIdle := func(memMB int64) int64 { // smallest idle GPU taking memMB
		best := int64(-1)
		for _, gpus := range nodes {
			for g := range gpus {
				if s := &gpus[g]; s.takesExclusive(memMB) && (best < 0 || s.MemoryMB < best) {
					best = s.MemoryMB
				}
			}
		}
		return best
	}
	for _, gpus := range nodes {
		for g := range gpus {
			s := &gpus[g]
			if c, m := s.migFree(); c > 0 {
				poolSlices += c
				poolMIGMB += m
			} else if f := s.sharedFree(); f > 0 {
				poolMB += f
			}
		}
	}
	var mem, migMem, migSlices []int64
	for _, n := range rest {
		if !placeFitsNow(n, nodes) {
			continue
		}
		switch n.Sharing {
		case Exclusive:
			mem = append(mem, int64(n.GPUs)*minIdle(n.MemoryMB))
		case Shared:
			mem = append(mem, n.MemoryMB)
		case MIG:
			c, m, _ := ParseMIGProfile(n.MIGProfile)
			migSlices = append(migSlices, int64(c))
			migMem = append(migMem, m)
		}
	}
	fill := func(sizes []int64, pool int64) int {
		slices.Sort(sizes)
		for i, v := range sizes {
			if pool -= v; pool < 0 {
				return i
			}
		}
		return len(sizes)
	}
	return fill(mem, poolMB) + min(fill(migSlices, int64(poolSlices)), fill(migMem, poolMIGMB))
}

// placeFitsNow reports whether need n alone fits on the nodes as they are.
func placeFitsNow(n Need, nodes [][]Slot) bool {
	c, m, _ := ParseMIGProfile(n.MIGProfile)
	for _, gpus := range nodes {
		free := 0
		for g := range gpus {
			s := &gpus[g]
			switch n.Sharing {
			case Exclusive:
				if s.takesExclusive(n.MemoryMB) {
					free++
				}
			case Shared:
				if s.sharedFree() >= n.MemoryMB {
					return true
				}
			case MIG:
				if fc, fm := s.migFree(); fc >= c && fm >= m {
					return true
				}
			}
		}
		if n.Sharing == Exclusive && free >= n.GPUs {
			return true
		}
	}
	return false
}

// placeStateKey encodes need index i and the state of the nodes, the same
// for any order of nodes and of GPUs within a node.
func placeStateKey(i int, nodes [][]Slot) string {
	type gpuKey [2]uint64
	cmpGPU := func(a, b gpuKey) int {
		if c := cmp.Compare(a[0], b[0]); c != 0 {
			return c
		}
		return cmp.Compare(a[1], b[1])
	}
	ns := make([][]gpuKey, len(nodes))
	for k, gpus := range nodes {
		gs := make([]gpuKey, len(gpus))
		for g, s := range gpus {
			gs[g] = gpuKey{
				uint64(s.MemoryMB)<<32 | uint64(s.SharedMB),
				uint64(s.MIGMemoryMB)<<8 | uint64(s.MIGCompute)<<2 | uint64(bool01(s.MIGMode))<<1 | uint64(bool01(s.Exclusive)),
			}
		}
		slices.SortFunc(gs, cmpGPU)
		ns[k] = gs
	}
	slices.SortFunc(ns, func(a, b []gpuKey) int { return slices.CompareFunc(a, b, cmpGPU) })
	buf := make([]byte, 0, 64)
	buf = binary.AppendUvarint(buf, uint64(i))
	for _, gs := range ns {
		buf = binary.AppendUvarint(buf, uint64(len(gs)))
		for _, g := range gs {
			buf = binary.AppendUvarint(buf, g[0])
			buf = binary.AppendUvarint(buf, g[1])
		}
	}
	return string(buf)
}

// placeSameEarlier reports whether a GPU before g on the node is in the
// same state (placing on either leads to the same state, up to renaming).
func placeSameEarlier(gpus []Slot, g int) bool {
	for e := range g {
		a, b := gpus[e], gpus[g]
		if a.MemoryMB == b.MemoryMB && a.MIGMode == b.MIGMode && a.Exclusive == b.Exclusive &&
			a.SharedMB == b.SharedMB && a.MIGCompute == b.MIGCompute && a.MIGMemoryMB == b.MIGMemoryMB {
			return true
		}
	}
	return false
}

// placeCombinations calls f with every k-element subset of items, once per
// subset of equal items (same reports equal neighbours; items are sorted
// so that equal ones are adjacent).
func placeCombinations(items []int, k int, same func(a, b int) bool, f func([]int)) {
	pick := make([]int, 0, k)
	var rec func(start int)
	rec = func(start int) {
		if len(pick) == k {
			f(pick)
			return
		}
		for j := start; j <= len(items)-(k-len(pick)); j++ {
			if j > start && same(items[j], items[j-1]) {
				continue
			}
			pick = append(pick, items[j])
			rec(j + 1)
			pick = pick[:len(pick)-1]
		}
	}
	rec(0)
}

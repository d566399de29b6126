package channel

import (
	"slices"
	"sync"
	"time"
)

// window is a ring of the most recent attempts: whether each was a success
// for the breaker, and the latency of those the bank answered.
type window struct {
	mu      sync.Mutex
	samples []sample
	next    int
	full    bool
	scratch []time.Duration
}

type sample struct {
	ok       bool
	answered bool
	latency  time.Duration
}

func newWindow(n int) *window {
	return &window{samples: make([]sample, n), scratch: make([]time.Duration, 0, n)}
}

// add records one attempt and returns how many samples are held.
func (w *window) add(s sample) {
	w.mu.Lock()
	w.samples[w.next] = s
	w.next++
	if w.next == len(w.samples) {
		w.next, w.full = 0, true
	}
	w.mu.Unlock()
}

// summary is what the window says now.
type summary struct {
	attempts    int
	successRate float64
	answered    int
	p50, p99    time.Duration
}

func (w *window) summary() summary {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := w.next
	if w.full {
		n = len(w.samples)
	}
	var s summary
	s.attempts = n
	ok := 0
	lat := w.scratch[:0]
	for _, x := range w.samples[:n] {
		if x.ok {
			ok++
		}
		if x.answered {
			lat = append(lat, x.latency)
		}
	}
	if n > 0 {
		s.successRate = float64(ok) / float64(n)
	}
	s.answered = len(lat)
	if len(lat) > 0 {
		slices.Sort(lat)
		s.p50 = lat[quantileIndex(len(lat), 0.50)]
		s.p99 = lat[quantileIndex(len(lat), 0.99)]
	}
	return s
}

// quantileIndex is the nearest-rank index of quantile q among n sorted values.
func quantileIndex(n int, q float64) int {
	i := int(q*float64(n)+0.999999) - 1
	return max(0, min(i, n-1))
}

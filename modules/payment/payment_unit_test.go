package payment

import (
	"testing"
	"time"
)

var testTime = time.Date(2026, 11, 22, 14, 30, 55, 0, time.UTC)

func TestWithRetryAfter(t *testing.T) {
	if got := withRetryAfter(nil)["retry_after_seconds"]; got != 1 {
		t.Errorf("default: %v", got)
	}
	if got := withRetryAfter(map[string]any{"retry_after_seconds": 7})["retry_after_seconds"]; got != 7 {
		t.Errorf("kept: %v", got)
	}
}

func TestOrderNoAndLuhn(t *testing.T) {
	seen := map[string]bool{}
	for range 1000 {
		n := newOrderNo(testTime)
		if len(n) != 22 || n[:14] != "261122-143055-" || seen[n] {
			t.Fatalf("order number %q", n)
		}
		seen[n] = true
	}
	for num, want := range map[string]bool{"4242424242424242": true, "4242424242424241": false, "4000000000000002": true} {
		if luhn(num) != want {
			t.Errorf("luhn(%s) = %v", num[:6], !want)
		}
	}
	if got := maskPAN("4242424242424242"); got != "424242******4242" {
		t.Errorf("mask: %s", got)
	}
}

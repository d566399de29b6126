package main

import (
	"fmt"
	"os"
	"testing"

	"github.com/atriumhq/atrium/platform/testenv"
)

// cardNumbers are every card number the root tests pay with. No log line
// of any instance (the crash test's server process included) may carry
// one, nor any API answer (call checks those): after the whole run, the
// logs are checked.
var cardNumbers = []string{testCard, "4000000000000002", "4242424242424241"}

func TestMain(m *testing.M) {
	// Run as the atrium binary: tests give replicas commands such as
	// "<this binary> fake-model --port {port}" with AS_ATRIUM=1 in their
	// environment (the supervisor passes no ATRIUM_ variable on).
	if os.Getenv("AS_ATRIUM") == "1" {
		main()
	}
	testenv.ForbidInLogs(cardNumbers...)
	code := m.Run()
	if leaks := testenv.LogLeaks(); len(leaks) > 0 {
		fmt.Fprintf(os.Stderr, "FAIL: card numbers were written to logs: %v\n", leaks)
		code = 1
	}
	os.Exit(code)
}

package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"
)

func TestCLI(t *testing.T) {
	// Base64 of 32 bytes that contain "hunter2", so the check below that no
	// output contains "hunter2" also catches a printed master key.
	const masterKey = "hunter2hunter2hunter2hunter2hunter2hunter2A="
	for _, tc := range []struct {
		name     string
		args     []string
		env      map[string]string
		code     int
		out, err string // substrings expected on stdout / stderr
	}{
		{name: "no command", args: nil, code: 2, err: "Commands:"},
		{name: "unknown command", args: []string{"frobnicate"}, code: 2, err: `unknown command "frobnicate"`},
		{name: "help", args: []string{"--help"}, code: 0, out: "serve"},
		{name: "version", args: []string{"version"}, code: 0, out: "atrium dev"},
		{name: "serve help", args: []string{"serve", "--help"}, code: 0, err: "Usage: atrium serve"},
		{name: "migrate help", args: []string{"migrate", "--help"}, code: 0, err: "down --to N"},
		{name: "config help", args: []string{"config", "--help"}, code: 0, err: "secrets redacted"},
		{name: "healthcheck help", args: []string{"healthcheck", "--help"}, code: 0, err: "/readyz"},
		{name: "version help", args: []string{"version", "--help"}, code: 0, err: "Usage: atrium version"},
		{name: "bad flag", args: []string{"serve", "--nope"}, code: 2, err: "flag provided but not defined"},
		{name: "migrate without subcommand", args: []string{"migrate"}, code: 2, err: "needs a subcommand"},
		{name: "migrate down without --to", args: []string{"migrate", "down"}, code: 2, err: "--to N"},
		{name: "migrate unknown", args: []string{"migrate", "sideways"}, code: 2, err: `unknown migrate subcommand "sideways"`},
		{name: "config missing database", args: []string{"config"}, env: map[string]string{"ATRIUM_DATABASE_URL": ""},
			code: 2, err: "ATRIUM_DATABASE_URL: is required"},
		{name: "serve with bad env", args: []string{"serve"}, env: map[string]string{"ATRIUM_ENV": "staging"},
			code: 2, err: "ATRIUM_ENV: must be development or production"},
		{name: "serve with bad duration", args: []string{"serve"}, env: map[string]string{"ATRIUM_HTTP_SHUTDOWN_GRACE": "soon"},
			code: 2, err: "ATRIUM_HTTP_SHUTDOWN_GRACE"},
		{name: "config redacts", args: []string{"config"}, env: map[string]string{"ATRIUM_DATABASE_URL": "postgres://app:hunter2@db:5432/atrium"},
			code: 0, out: "postgres://app:xxx@db:5432/atrium"},
		{name: "config hides the master key", args: []string{"config"}, env: map[string]string{"ATRIUM_MASTER_KEY": "k2:" + masterKey + ",k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="},
			code: 0, out: "ATRIUM_MASTER_KEY"},
		{name: "config missing master key", args: []string{"config"}, env: map[string]string{"ATRIUM_MASTER_KEY": ""},
			code: 2, err: "ATRIUM_MASTER_KEY: is required"},
		{name: "serve with a short master key", args: []string{"serve"}, env: map[string]string{"ATRIUM_MASTER_KEY": "hunter2hunter2hunter2A=="},
			code: 2, err: "ATRIUM_MASTER_KEY: key \"k1\": 16 bytes, want 32"},
		{name: "simbank help", args: []string{"simbank", "--help"}, code: 0, err: "Usage: atrium simbank"},
		{name: "simbank bad flag", args: []string{"simbank", "--nope"}, code: 2, err: "flag provided but not defined"},
		{name: "simbank bad duration", args: []string{"simbank", "--p50", "soon"}, code: 2, err: "invalid value \"soon\" for flag -p50"},
		{name: "simbank p99 below p50", args: []string{"simbank", "--p50", "50ms", "--p99", "10ms"}, code: 2, err: "p99 (10ms) must not be below p50"},
		{name: "simbank error rate", args: []string{"simbank", "--error-rate", "1.5"}, code: 2, err: "error rate must be between 0 and 1"},
		{name: "simbank timeout rate", args: []string{"simbank", "--timeout-rate", "-1"}, code: 2, err: "timeout rate must be between 0 and 1"},
		{name: "simbank bad outage", args: []string{"simbank", "--outage", "10s"}, code: 2, err: "START+DURATION"},
		{name: "simbank argument", args: []string{"simbank", "extra"}, code: 2, err: "takes no arguments"},
		{name: "healthcheck nothing listening", args: []string{"healthcheck", "--url", "http://127.0.0.1:1/readyz"}, code: 1, err: "not ready"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("ATRIUM_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/atrium")
			t.Setenv("ATRIUM_REDIS_URL", "redis://127.0.0.1:6379/0")
			t.Setenv("ATRIUM_MASTER_KEY", masterKey)
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			var stdout, stderr bytes.Buffer
			code := exitCode(run(context.Background(), tc.args, nil, &stdout, &stderr), &stderr)
			if code != tc.code {
				t.Errorf("exit code %d, want %d\nstdout: %s\nstderr: %s", code, tc.code, stdout.String(), stderr.String())
			}
			if !strings.Contains(stdout.String(), tc.out) {
				t.Errorf("stdout %q lacks %q", stdout.String(), tc.out)
			}
			if !strings.Contains(stderr.String(), tc.err) {
				t.Errorf("stderr %q lacks %q", stderr.String(), tc.err)
			}
			if strings.Contains(stdout.String()+stderr.String(), "hunter2") {
				t.Error("a secret was printed")
			}
		})
	}
}

func TestHealthcheckAgainstARunningInstance(t *testing.T) {
	in := startCluster(t, 1)[0]
	var stdout, stderr bytes.Buffer
	err := run(context.Background(), []string{"healthcheck", "--url", in.URL + "/readyz"}, nil, &stdout, &stderr)
	if err != nil || !strings.Contains(stdout.String(), "ready") {
		t.Fatalf("healthcheck: %v %s", err, stderr.String())
	}
	in.app.draining.Store(true)
	defer in.app.draining.Store(false)
	if err := run(context.Background(), []string{"healthcheck", "--url", in.URL + "/readyz"}, nil, &stdout, &stderr); err == nil {
		t.Fatal("healthcheck passed while the instance drains")
	}
}

func TestSimbankServesUntilCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	var stdout, stderr bytes.Buffer
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"simbank", "--addr", "127.0.0.1:0", "--p50", "0s", "--p99", "0s", "--seed", "1"}, nil, &stdout, &stderr)
	}()
	time.Sleep(100 * time.Millisecond)
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("simbank: %v\n%s", err, stderr.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("simbank did not stop when its context ended")
	}
	if !strings.Contains(stdout.String(), "simbank listening on http://127.0.0.1:") || !strings.Contains(stdout.String(), "simbank stopped") {
		t.Fatalf("stdout %q", stdout.String())
	}
}

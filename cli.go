package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"runtime"
	"strings"
	"time"

	"github.com/atriumhq/atrium/platform/config"
	"github.com/atriumhq/atrium/platform/logging"
	"github.com/atriumhq/atrium/platform/postgres"
	atriumsql "github.com/atriumhq/atrium/sql"
)

// usageError is a mistake in how atrium was called: exit status 2.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

// exitCode prints err (if any) and returns the process exit status: 0 for
// success, 2 for bad usage or configuration, 1 for anything else.
func exitCode(err error, stderr io.Writer) int {
	if err == nil || errors.Is(err, flag.ErrHelp) {
		return 0
	}
	var cerr *config.Error
	var uerr usageError
	switch {
	case errors.As(err, &cerr):
		fmt.Fprintf(stderr, "atrium: configuration error: %s\n", cerr)
		fmt.Fprintln(stderr, "See docs/operations.md for every ATRIUM_ variable, or run `atrium config --help`.")
		return 2
	case errors.As(err, &uerr):
		fmt.Fprintf(stderr, "atrium: %s\n", uerr.msg)
		return 2
	}
	fmt.Fprintf(stderr, "atrium: %v\n", err)
	return 1
}

const rootUsage = `Atrium: POS payments, auth, tenants, quotas and a GPU scheduler in one binary.

Usage:
  atrium <command> [flags]

Commands:
  serve        run the HTTP server and this instance's background workers
  migrate      apply or inspect database migrations (up, status, down)
  config       print the effective configuration, secrets redacted
  healthcheck  exit 0 when the local instance is ready (for Docker HEALTHCHECK)
  version      print the version
  admin        administrative tasks: create-user (the first platform administrator)
  simbank      serve the simulated bank (a test and load-test double for bank channels)
  fake-model   serve a fake OpenAI-compatible model (a replica command that needs no GPU)
  ledger       check the payment ledger: verify
  payments     payment maintenance: rekey (re-seal card numbers under the current card key)

Configuration comes from ATRIUM_* environment variables (docs/operations.md).
Run 'atrium <command> --help' for a command's flags.
`

// run is the whole program, testable: it parses args and runs a command.
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, rootUsage)
		return usageError{"no command given"}
	}
	cmd, rest := args[0], args[1:]
	switch cmd {
	case "serve":
		return cmdServe(ctx, rest, stdout, stderr)
	case "migrate":
		return cmdMigrate(ctx, rest, stdout, stderr)
	case "config":
		return cmdConfig(rest, stdout, stderr)
	case "healthcheck":
		return cmdHealthcheck(ctx, rest, stdout, stderr)
	case "version":
		return cmdVersion(rest, stdout, stderr)
	case "admin":
		return cmdAdmin(ctx, rest, stdin, stdout, stderr)
	case "simbank":
		return cmdSimbank(ctx, rest, stdout, stderr)
	case "fake-model":
		return cmdFakeModel(ctx, rest, stdout, stderr)
	case "ledger":
		return cmdLedger(ctx, rest, stdout, stderr)
	case "payments":
		return cmdPayments(ctx, rest, stdout, stderr)
	case "-h", "--help", "help":
		fmt.Fprint(stdout, rootUsage)
		return nil
	default:
		fmt.Fprint(stderr, rootUsage)
		return usageError{fmt.Sprintf("unknown command %q", cmd)}
	}
}

// newFlags returns a flag set whose --help prints usage and a description.
func newFlags(name, usage, desc string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: atrium %s\n\n%s\n", usage, desc)
		var hasFlags bool
		fs.VisitAll(func(*flag.Flag) { hasFlags = true })
		if hasFlags {
			fmt.Fprintln(stderr, "\nFlags:")
			fs.PrintDefaults()
		}
	}
	return fs
}

// parse parses flags; a bad flag is a usage error, --help is not an error.
func parse(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return usageError{err.Error()}
	}
	return nil
}

func cmdVersion(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("version", "version", "Prints the version, commit and Go version of this binary.", stderr)
	if err := parse(fs, args); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "atrium %s (commit %s, %s)\n", version, commit, runtime.Version())
	return nil
}

func cmdConfig(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("config", "config", "Prints the effective configuration (environment plus defaults) with secrets redacted,\nafter validating it: an invalid setting exits with status 2 and names the variable.", stderr)
	if err := parse(fs, args); err != nil {
		return err
	}
	cfg, err := config.Load()
	if err != nil {
		return err
	}
	return config.Dump(cfg, stdout)
}

func cmdHealthcheck(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("healthcheck", "healthcheck [--url URL]", "Exits 0 when the local instance answers /readyz with 200, 1 otherwise.\nIt reads only ATRIUM_HTTP_ADDR, so it works in an image without curl.", stderr)
	addr := os.Getenv("ATRIUM_HTTP_ADDR")
	if addr == "" {
		addr = ":8080"
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return &config.Error{Var: "ATRIUM_HTTP_ADDR", Problem: "must be host:port or :port"}
	}
	if host == "" || host == "0.0.0.0" || host == "::" {
		host = "127.0.0.1"
	}
	url := fs.String("url", "http://"+net.JoinHostPort(host, port)+"/readyz", "readiness URL to probe")
	timeout := fs.Duration("timeout", 3*time.Second, "how long to wait for an answer")
	if err := parse(fs, args); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, *url, nil)
	if err != nil {
		return usageError{err.Error()}
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("not ready: %w", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("not ready: %s %s", resp.Status, strings.TrimSpace(string(body)))
	}
	fmt.Fprintln(stdout, "ready")
	return nil
}

func cmdMigrate(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	const desc = `Subcommands:
  up           apply every pending migration (safe to run from several instances at once)
  status       list migrations and whether each is applied
  down --to N  roll back every migration above version N (N=0 empties the schema)`
	fs := newFlags("migrate", "migrate <up|status|down --to N>", desc, stderr)
	if err := parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() == 0 {
		fs.Usage()
		return usageError{"migrate needs a subcommand: up, status or down"}
	}
	sub, subArgs := fs.Arg(0), fs.Args()[1:]
	to := int64(-1)
	if sub == "down" {
		dfs := newFlags("migrate down", "migrate down --to N", "Rolls back every migration above version N.", stderr)
		dfs.Int64Var(&to, "to", -1, "target version (required)")
		if err := parse(dfs, subArgs); err != nil {
			return err
		}
		if to < 0 {
			return usageError{"migrate down needs --to N (the version to go down to)"}
		}
	} else if sub != "up" && sub != "status" {
		return usageError{fmt.Sprintf("unknown migrate subcommand %q (want up, status or down)", sub)}
	}

	cfg, err := config.Load()
	if err != nil {
		return err
	}
	log := logging.New(stderr, cfg.Log.Level, cfg.Log.Format, cfg.Development())
	pool, err := postgres.Open(ctx, postgres.Options{URL: cfg.Database.URL, MaxConns: 2, RetryFor: cfg.Database.ConnectTimeout, Log: log})
	if err != nil {
		return err
	}
	defer pool.Close()
	m, err := postgres.NewMigrator(pool, atriumsql.Migrations())
	if err != nil {
		return err
	}
	defer m.Close()
	switch sub {
	case "up":
		applied, err := m.Up(ctx)
		if err != nil {
			return err
		}
		cur, _, err := m.Versions(ctx)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "applied %d migration(s); schema at version %d\n", len(applied), cur)
	case "down":
		undone, err := m.DownTo(ctx, to)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "rolled back %d migration(s); schema at version %d\n", len(undone), to)
	case "status":
		st, err := m.Status(ctx)
		if err != nil {
			return err
		}
		for _, s := range st {
			state := "pending"
			if s.Applied {
				state = "applied"
			}
			fmt.Fprintf(stdout, "%05d  %-8s  %s\n", s.Version, state, s.Name)
		}
	}
	return nil
}

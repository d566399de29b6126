package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"

	"github.com/atriumhq/atrium/modules/payment"
	"github.com/atriumhq/atrium/platform/config"
	"github.com/atriumhq/atrium/platform/logging"
	"github.com/atriumhq/atrium/platform/postgres"
)

// cmdLedger checks the payment ledger, reading the database as the schema
// owner (every tenant's rows).
func cmdLedger(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	const desc = `Subcommands:
  verify  check every ledger invariant: each entry balances per currency, postings match their
          accounts, balances equal the sum of postings, refund totals match the refunds, and each
          payment and refund state change has exactly its entries. Prints each violation (naming
          the row) and exits 1 when there is any; safe to run while payments flow.`
	fs := newFlags("ledger", "ledger <verify>", desc, stderr)
	if err := parse(fs, args); err != nil {
		return err
	}
	if err := oneSubcommand(fs, "ledger", "verify"); err != nil {
		return err
	}
	vf := newFlags("ledger verify", "ledger verify", "Checks the ledger's invariants; exits 1 and lists the violations when any fails.", stderr)
	if err := parse(vf, fs.Args()[1:]); err != nil {
		return err
	}
	if vf.NArg() > 0 {
		return usageError{"ledger verify takes no arguments"}
	}
	cfg, err := config.Load()
	if err != nil {
		return err
	}
	log := logging.New(stderr, "warn", cfg.Log.Format, cfg.Development())
	pool, err := postgres.Open(ctx, postgres.Options{URL: cfg.Database.URL, MaxConns: 2, RetryFor: cfg.Database.ConnectTimeout, Log: log})
	if err != nil {
		return err
	}
	defer pool.Close()
	rep, err := payment.VerifyLedgerReport(ctx, pool)
	if err != nil {
		return err
	}
	if len(rep.Violations) == 0 {
		fmt.Fprintf(stdout, "ledger verified: %d entries, %d postings, %d accounts: ok\n", rep.Entries, rep.Postings, rep.Accounts)
		return nil
	}
	for _, v := range rep.Violations {
		fmt.Fprintln(stdout, v)
	}
	return fmt.Errorf("ledger verify: %d violation(s) in %d entries, %d postings, %d accounts",
		len(rep.Violations), rep.Entries, rep.Postings, rep.Accounts)
}

// cmdPayments runs the payment module's maintenance tasks.
func cmdPayments(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	const desc = `Subcommands:
  rekey [--batch N]  re-seal every stored card number under the current card key (the first
                     entry of ATRIUM_PAYMENTS_CARD_KEYS, or ATRIUM_MASTER_KEY); run it after
                     every instance lists the new key first, and before the old key is removed.
                     Safe to run while payments flow, and to run again.`
	fs := newFlags("payments", "payments <rekey>", desc, stderr)
	if err := parse(fs, args); err != nil {
		return err
	}
	if err := oneSubcommand(fs, "payments", "rekey"); err != nil {
		return err
	}
	rf := newFlags("payments rekey", "payments rekey [--batch N]",
		"Re-seals every stored card number not sealed under the current card key, in short batches,\nand prints how many it re-sealed.", stderr)
	batch := rf.Int("batch", 500, "payments per transaction (1 to 10000)")
	if err := parse(rf, fs.Args()[1:]); err != nil {
		return err
	}
	if rf.NArg() > 0 {
		return usageError{"payments rekey takes no arguments"}
	}
	if *batch < 1 || *batch > 10000 {
		return usageError{"--batch must be 1 to 10000"}
	}
	cfg, err := config.Load()
	if err != nil {
		return err
	}
	cards, err := cfg.CardKeyring()
	if err != nil {
		return &config.Error{Var: "ATRIUM_PAYMENTS_CARD_KEYS", Problem: err.Error()}
	}
	log := logging.New(stderr, "warn", cfg.Log.Format, cfg.Development())
	// The application's role: row-level security applies, and Rekey takes
	// the cross-tenant path on purpose, counted and audited.
	pool, err := postgres.Open(ctx, postgres.Options{URL: cfg.Database.URL, MaxConns: 2, RetryFor: cfg.Database.ConnectTimeout,
		Log: log, Role: postgres.AppRole})
	if err != nil {
		return err
	}
	defer pool.Close()
	svc, err := payment.New(payment.Config{}, payment.Deps{Tx: postgres.NewTx(pool, log), Cards: cards,
		Terminals: noTerminals{}, Log: logging.Module(log, "payment")})
	if err != nil {
		return err
	}
	n, err := svc.Rekey(ctx, *batch)
	fmt.Fprintf(stdout, "re-sealed %d card number(s) under key %s\n", n, cards.Current())
	return err
}

// noTerminals serves the payment module in commands that take no payments.
type noTerminals struct{}

func (noTerminals) TerminalProfile(context.Context, string) (payment.Terminal, error) {
	return payment.Terminal{}, errors.New("this command takes no payments")
}

// oneSubcommand checks that fs's first argument is want, the only
// subcommand of cmd, printing the usage when it is not.
func oneSubcommand(fs *flag.FlagSet, cmd, want string) error {
	if fs.NArg() > 0 && fs.Arg(0) == want {
		return nil
	}
	fs.Usage()
	if fs.NArg() == 0 {
		return usageError{fmt.Sprintf("%s needs a subcommand: %s", cmd, want)}
	}
	return usageError{fmt.Sprintf("unknown %s subcommand %q (want %s)", cmd, fs.Arg(0), want)}
}

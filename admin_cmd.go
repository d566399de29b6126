package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"io"
	"strings"

	"github.com/atriumhq/atrium/modules/auth"
	"github.com/atriumhq/atrium/platform/config"
	"github.com/atriumhq/atrium/platform/errs"
	"github.com/atriumhq/atrium/platform/logging"
)

// cmdAdmin runs administrative tasks against the database directly, for the
// operator on the host: today, creating the first platform administrator.
func cmdAdmin(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	const desc = `Subcommands:
  create-user --email E --role R [--tenant T] [--name N] (--password-stdin | --generate-password) [--if-not-exists]
      create a user; the first platform administrator is made with --role platform_admin`
	fs := newFlags("admin", "admin <subcommand>", desc, stderr)
	if err := parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() == 0 || fs.Arg(0) != "create-user" {
		fs.Usage()
		return usageError{"admin needs a subcommand: create-user"}
	}
	cf := newFlags("admin create-user", "admin create-user --email E --role R (--password-stdin | --generate-password)",
		"Creates a user. With --generate-password a random password is printed once on stdout.", stderr)
	email := cf.String("email", "", "email address (required)")
	role := cf.String("role", "", "role name, e.g. platform_admin (required; comma-separated for several)")
	tenant := cf.String("tenant", "", "tenant id (empty for platform administrators)")
	name := cf.String("name", "", "display name")
	fromStdin := cf.Bool("password-stdin", false, "read the password from the first line of standard input")
	generate := cf.Bool("generate-password", false, "generate a random password and print it once")
	ifNotExists := cf.Bool("if-not-exists", false, "succeed without change when the email is already registered")
	if err := parse(cf, fs.Args()[1:]); err != nil {
		return err
	}
	if *email == "" || *role == "" {
		return usageError{"create-user needs --email and --role"}
	}
	if *fromStdin == *generate {
		return usageError{"give exactly one of --password-stdin and --generate-password"}
	}
	password := ""
	if *fromStdin {
		line, err := bufio.NewReader(stdin).ReadString('\n')
		if err != nil && line == "" {
			return usageError{"no password on standard input"}
		}
		password = strings.TrimRight(line, "\r\n")
	} else {
		b := make([]byte, 18)
		_, _ = rand.Read(b)
		password = base64.RawURLEncoding.EncodeToString(b)
	}

	cfg, err := config.Load()
	if err != nil {
		return err
	}
	log := logging.New(stderr, "warn", cfg.Log.Format, cfg.Development())
	cfg.InstanceID = "admin-cli"
	a, err := openApp(ctx, cfg, log)
	if err != nil {
		return err
	}
	defer a.close()
	u, err := a.auth.CreateFirstAdmin(ctx, auth.NewUser{Email: *email, DisplayName: *name, Password: password,
		TenantID: *tenant, Roles: strings.Split(*role, ",")})
	if err != nil {
		e := errs.As(err)
		if *ifNotExists && e.Code == errs.Conflict {
			fmt.Fprintf(stdout, "user %s already exists; nothing changed\n", *email)
			return nil
		}
		if e.Code == errs.Invalid || e.Code == errs.Conflict {
			return usageError{e.Message}
		}
		return err
	}
	fmt.Fprintf(stdout, "created user %s (%s) with role %s\n", u.Email, u.ID, *role)
	if *generate {
		fmt.Fprintf(stdout, "password: %s\n(shown once: sign in and change it)\n", password)
	}
	return nil
}

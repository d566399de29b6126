package auth

import (
	"context"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/atriumhq/atrium/platform/auditlog"
	"github.com/atriumhq/atrium/platform/errs"
	"github.com/atriumhq/atrium/platform/postgres"
	"github.com/atriumhq/atrium/platform/principal"
)

// Terminal is a POS terminal: a machine client of a tenant's merchant.
// Its secret is 256 random bits, shown once at creation and stored as a
// SHA-256 hash: with that much entropy a slow password hash adds nothing
// but latency to every token request.
type Terminal struct {
	ID          string `json:"id"`
	TenantID    string `json:"tenant_id"`
	MerchantRef string `json:"merchant_ref"`
	Name        string `json:"name"`
	Status      string `json:"status"`
	// TestMode terminals run payments end to end against the simulated
	// bank, marked livemode=false and kept out of live reports.
	TestMode   bool       `json:"test_mode"`
	LastSeenAt *time.Time `json:"last_seen_at"`
	CreatedAt  time.Time  `json:"created_at"`
	// Secret is set only in the answer to CreateTerminal.
	Secret string `json:"client_secret,omitempty"`
}

// NewTerminal is a request to register a terminal.
type NewTerminal struct {
	MerchantRef string `json:"merchant_ref" required:"true"`
	Name        string `json:"name"`
	TenantID    string `json:"tenant_id"`
	TestMode    bool   `json:"test_mode"`
}

// CreateTerminal registers a terminal and returns it with its client
// secret, which is never shown again. Errors: invalid, forbidden.
func (s *Service) CreateTerminal(ctx context.Context, in NewTerminal) (*Terminal, error) {
	tenant, err := tenantObject(ctx, "terminals:manage", in.TenantID)
	if err != nil {
		return nil, err
	}
	in.TenantID = tenant
	in.MerchantRef = strings.TrimSpace(in.MerchantRef)
	if in.MerchantRef == "" || len(in.MerchantRef) > 64 {
		return nil, errs.Field("merchant_ref", "must be 1 to 64 characters")
	}
	secret, hash := newOpaque()
	now := s.now()
	t := &Terminal{ID: uuid.Must(uuid.NewV7()).String(), TenantID: in.TenantID, MerchantRef: in.MerchantRef,
		Name: strings.TrimSpace(in.Name), Status: "active", TestMode: in.TestMode, CreatedAt: now, Secret: secret}
	err = s.tx.Do(ctx, "auth.create_terminal", func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `INSERT INTO terminals (id, tenant_id, merchant_ref, name, secret_hash, test_mode, created_at)
			VALUES ($1, $2, $3, $4, $5, $6, $7)`, t.ID, t.TenantID, t.MerchantRef, t.Name, hash, t.TestMode, now); postgres.IsForeignKey(err) {
			return errs.Field("tenant_id", "no such tenant")
		} else if err != nil {
			return err
		}
		if err := s.useQuota(ctx, tx, t.TenantID, "max_terminals", 1); err != nil {
			return err
		}
		return auditlog.Record(ctx, tx, now, t.TenantID, auditlog.Actor(ctx), "terminal.create", "terminal:"+t.ID, map[string]any{"merchant_ref": t.MerchantRef, "test_mode": t.TestMode})
	})
	if err != nil {
		return nil, err
	}
	return t, nil
}

// ListTerminals lists the terminals in the caller's scope.
func (s *Service) ListTerminals(ctx context.Context) ([]Terminal, error) {
	if err := principal.Check(ctx, "terminals:read"); err != nil {
		return nil, err
	}
	return postgres.Collect(ctx, s.tx, "auth.list_terminals", scanTerminal, `SELECT id, tenant_id, merchant_ref, name, status, test_mode, last_seen_at, created_at
		FROM terminals WHERE ($1 = '' OR tenant_id::text = $1) ORDER BY created_at DESC`, scopeArg(ctx))
}

func scanTerminal(r pgx.CollectableRow) (Terminal, error) {
	var t Terminal
	err := r.Scan(&t.ID, &t.TenantID, &t.MerchantRef, &t.Name, &t.Status, &t.TestMode, &t.LastSeenAt, &t.CreatedAt)
	return t, err
}

// SetTerminalStatus disables or re-enables a terminal; disabling revokes
// its tokens on every instance within a second. Errors: not_found.
func (s *Service) SetTerminalStatus(ctx context.Context, id, status string) (*Terminal, error) {
	if err := principal.Check(ctx, "terminals:manage"); err != nil {
		return nil, err
	}
	if status != "active" && status != "disabled" {
		return nil, errs.Field("status", "must be active or disabled")
	}
	if _, err := uuid.Parse(id); err != nil {
		return nil, errs.E(errs.NotFound, "no such terminal")
	}
	var t Terminal
	var gen int64
	err := s.tx.Do(ctx, "auth.terminal_status", func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `UPDATE terminals SET status = $2 WHERE id = $1 AND ($3 = '' OR tenant_id::text = $3)
			RETURNING id, tenant_id, merchant_ref, name, status, test_mode, last_seen_at, created_at`, id, status, scopeArg(ctx))
		if err != nil {
			return err
		}
		if t, err = pgx.CollectExactlyOneRow(rows, scanTerminal); err != nil {
			if postgres.IsNoRows(err) {
				return errs.E(errs.NotFound, "no such terminal")
			}
			return err
		}
		if status == "disabled" {
			if gen, err = bumpGen(ctx, tx, "terminals", id, "", s.now()); err != nil {
				return err
			}
		}
		action := "terminal.enable"
		if status == "disabled" {
			action = "terminal.disable"
		}
		return auditlog.Record(ctx, tx, s.now(), t.TenantID, auditlog.Actor(ctx), action, "terminal:"+id, nil)
	})
	if err != nil {
		return nil, err
	}
	if gen > 0 {
		s.publish(ctx, event{Kind: "gen", ID: "terminal:" + id, Gen: gen})
	}
	return &t, nil
}

// TerminalProfile returns what the payment module needs of a terminal in
// ctx's scope: its merchant and whether it is in test mode. Both are fixed
// at creation, so each instance remembers them after the first read.
func (s *Service) TerminalProfile(ctx context.Context, id string) (merchantRef string, testMode bool, err error) {
	type profile struct {
		ref  string
		test bool
	}
	if v, ok := s.profiles.Load(id); ok {
		p := v.(profile)
		return p.ref, p.test, nil
	}
	var p profile
	err = s.tx.QueryRow(ctx, "auth.terminal_profile", `SELECT merchant_ref, test_mode FROM terminals WHERE id = $1`,
		[]any{id}, &p.ref, &p.test)
	if postgres.IsNoRows(err) {
		return "", false, errs.E(errs.NotFound, "no such terminal")
	}
	if err != nil {
		return "", false, err
	}
	s.profiles.Store(id, p)
	return p.ref, p.test, nil
}

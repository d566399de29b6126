package payment

import (
	"context"
	"encoding/json"
	"regexp"
	"strings"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/atriumhq/atrium/platform/auditlog"
	"github.com/atriumhq/atrium/platform/errs"
	"github.com/atriumhq/atrium/platform/postgres"
	"github.com/atriumhq/atrium/platform/principal"
)

// Promotion is a spend-X-save-Y rule: a payment of at least Spend may
// redeem it for Save off (minor units of the payment's currency).
type Promotion struct {
	ID    string `json:"id"`
	Spend int64  `json:"spend"`
	Save  int64  `json:"save"`
}

// Merchant is a business that takes payments through a tenant's terminals;
// a terminal's merchant_ref names its merchant's Ref.
type Merchant struct {
	ID                string      `json:"id"`
	TenantID          string      `json:"tenant_id"`
	Ref               string      `json:"ref"`
	Name              string      `json:"name"`
	MCC               string      `json:"mcc"`
	SettlementAccount string      `json:"settlement_account"`
	FeeBPS            int         `json:"fee_bps"`
	FeeFixed          int64       `json:"fee_fixed"`
	Channels          []string    `json:"channels"`
	Promotions        []Promotion `json:"promotions"`
	PointValue        int64       `json:"point_value"`
	Status            string      `json:"status"`
	CreatedAt         string      `json:"created_at"`
	UpdatedAt         string      `json:"updated_at"`
}

// MerchantInput creates a merchant (every member but TenantID, Channels,
// Promotions and PointValue required) or, with pointers left nil, updates one.
type MerchantInput struct {
	TenantID          string       `json:"tenant_id,omitempty"` // platform administrators only
	Ref               *string      `json:"ref"`
	Name              *string      `json:"name"`
	MCC               *string      `json:"mcc"`
	SettlementAccount *string      `json:"settlement_account"`
	FeeBPS            *int         `json:"fee_bps"`
	FeeFixed          *int64       `json:"fee_fixed"`
	Channels          *[]string    `json:"channels"`
	Promotions        *[]Promotion `json:"promotions"`
	PointValue        *int64       `json:"point_value"`
	Status            *string      `json:"status"`
}

var (
	refPattern  = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)
	mccPattern  = regexp.MustCompile(`^[0-9]{4}$`)
	promoIDPatt = regexp.MustCompile(`^[A-Za-z0-9._-]{1,64}$`)
)

// apply validates in onto m.
func (s *Service) apply(m *Merchant, in MerchantInput, creating bool) error {
	need := func(field string, present bool) error {
		if creating && !present {
			return errs.Field(field, "is required")
		}
		return nil
	}
	for _, c := range []struct {
		f  string
		ok bool
	}{{"ref", in.Ref != nil}, {"name", in.Name != nil}, {"mcc", in.MCC != nil}, {"settlement_account", in.SettlementAccount != nil}} {
		if err := need(c.f, c.ok); err != nil {
			return err
		}
	}
	if in.Ref != nil {
		if !creating && *in.Ref != m.Ref {
			return errs.Field("ref", "cannot change: terminals name their merchant by it")
		}
		if !refPattern.MatchString(*in.Ref) {
			return errs.Field("ref", "must be 1 to 64 letters, digits, dots, dashes or underscores")
		}
		m.Ref = *in.Ref
	}
	if in.Name != nil {
		n := strings.TrimSpace(*in.Name)
		if n == "" || len(n) > 200 || !cleanText(n) {
			return errs.Field("name", "must be 1 to 200 characters, without control characters")
		}
		m.Name = n
	}
	if in.MCC != nil {
		if !mccPattern.MatchString(*in.MCC) {
			return errs.Field("mcc", "must be a four-digit merchant category code (ISO 18245)")
		}
		m.MCC = *in.MCC
	}
	if in.SettlementAccount != nil {
		a := strings.TrimSpace(*in.SettlementAccount)
		if a == "" || len(a) > 64 || !cleanText(a) {
			return errs.Field("settlement_account", "must be 1 to 64 characters, without control characters")
		}
		m.SettlementAccount = a
	}
	if in.FeeBPS != nil {
		if *in.FeeBPS < 0 || *in.FeeBPS > 10000 {
			return errs.Field("fee_bps", "must be 0 to 10000 basis points")
		}
		m.FeeBPS = *in.FeeBPS
	}
	if in.FeeFixed != nil {
		if *in.FeeFixed < 0 || *in.FeeFixed > 1e9 {
			return errs.Field("fee_fixed", "must be 0 to 1000000000 minor units")
		}
		m.FeeFixed = *in.FeeFixed
	}
	if in.Channels != nil {
		seen := map[string]bool{}
		for _, c := range *in.Channels {
			if nc, ok := s.channels.get(c); !ok || nc.test {
				return errs.Field("channels", "no bank channel %q (configured: %s)", c, strings.Join(s.channels.Names(), ", "))
			}
			if seen[c] {
				return errs.Field("channels", "%q is listed twice", c)
			}
			seen[c] = true
		}
		m.Channels = append([]string{}, *in.Channels...)
	}
	if in.Promotions != nil {
		seen := map[string]bool{}
		for i, p := range *in.Promotions {
			switch {
			case !promoIDPatt.MatchString(p.ID):
				return errs.Field("promotions", "promotion %d: id must be 1 to 64 letters, digits, dots, dashes or underscores", i+1)
			case seen[p.ID]:
				return errs.Field("promotions", "promotion %q is listed twice", p.ID)
			case p.Save <= 0 || p.Spend <= p.Save:
				return errs.Field("promotions", "promotion %q: save must be positive and below spend", p.ID)
			}
			seen[p.ID] = true
		}
		if len(*in.Promotions) > 50 {
			return errs.Field("promotions", "at most 50 promotions")
		}
		m.Promotions = append([]Promotion{}, *in.Promotions...)
	}
	if in.PointValue != nil {
		if *in.PointValue < 0 || *in.PointValue > 1e6 {
			return errs.Field("point_value", "must be 0 to 1000000 minor units per point")
		}
		m.PointValue = *in.PointValue
	}
	if in.Status != nil {
		if *in.Status != "active" && *in.Status != "disabled" {
			return errs.Field("status", "must be active or disabled")
		}
		m.Status = *in.Status
	}
	return nil
}

const merchantCols = `id, tenant_id, ref, name, mcc, settlement_account, fee_bps, fee_fixed, channels, promotions,
	point_value, status, to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
	to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')`

func scanMerchant(r pgx.CollectableRow) (Merchant, error) {
	var m Merchant
	var promos []byte
	err := r.Scan(&m.ID, &m.TenantID, &m.Ref, &m.Name, &m.MCC, &m.SettlementAccount, &m.FeeBPS, &m.FeeFixed,
		&m.Channels, &promos, &m.PointValue, &m.Status, &m.CreatedAt, &m.UpdatedAt)
	if err == nil {
		err = json.Unmarshal(promos, &m.Promotions)
	}
	return m, err
}

// merchantByRef returns the active merchant ref names, in tx's scope.
func merchantByRef(ctx context.Context, tx pgx.Tx, ref string) (*Merchant, error) {
	rows, _ := tx.Query(ctx, `SELECT `+merchantCols+` FROM merchants WHERE ref = $1`, ref)
	m, err := pgx.CollectExactlyOneRow(rows, scanMerchant)
	if postgres.IsNoRows(err) {
		return nil, errs.E(errs.Conflict, "this terminal's merchant %q does not exist; an administrator must create it", ref)
	}
	if err != nil {
		return nil, err
	}
	if m.Status != "active" {
		return nil, errs.E(errs.Forbidden, "merchant %q is disabled", ref)
	}
	return &m, nil
}

// CreateMerchant creates a merchant in the caller's tenant (a platform
// administrator names the tenant).
func (s *Service) CreateMerchant(ctx context.Context, in MerchantInput) (*Merchant, error) {
	if err := principal.Check(ctx, "payments:manage"); err != nil {
		return nil, err
	}
	tenant, err := principal.OwningTenant(ctx, in.TenantID)
	if err != nil {
		return nil, err
	}
	m := &Merchant{ID: uuid.Must(uuid.NewV7()).String(), TenantID: tenant, Status: "active", Channels: []string{}, Promotions: []Promotion{}}
	if err := s.apply(m, in, true); err != nil {
		return nil, err
	}
	promos, _ := json.Marshal(m.Promotions)
	var out Merchant
	err = s.tx.Do(ctx, "payment.create_merchant", func(tx pgx.Tx) error {
		rows, _ := tx.Query(ctx, `INSERT INTO merchants (id, tenant_id, ref, name, mcc, settlement_account, fee_bps, fee_fixed,
			channels, promotions, point_value, status) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) RETURNING `+merchantCols,
			m.ID, m.TenantID, m.Ref, m.Name, m.MCC, m.SettlementAccount, m.FeeBPS, m.FeeFixed, m.Channels, promos, m.PointValue, m.Status)
		var err error
		if out, err = pgx.CollectExactlyOneRow(rows, scanMerchant); err != nil {
			return err
		}
		return auditlog.Record(ctx, tx, s.now(), m.TenantID, auditlog.Actor(ctx), "merchant.create", "merchant:"+m.ID, map[string]any{"ref": m.Ref})
	})
	switch {
	case postgres.IsUnique(err, "merchants_tenant_id_ref_key"):
		return nil, errs.Field("ref", "a merchant with ref %q already exists", m.Ref)
	case postgres.IsForeignKey(err):
		return nil, errs.Field("tenant_id", "no such tenant")
	case err != nil:
		return nil, err
	}
	return &out, nil
}

// UpdateMerchant changes a merchant.
func (s *Service) UpdateMerchant(ctx context.Context, id string, in MerchantInput) (*Merchant, error) {
	if err := principal.Check(ctx, "payments:manage"); err != nil {
		return nil, err
	}
	if in.TenantID != "" {
		return nil, errs.Field("tenant_id", "cannot change")
	}
	var out Merchant
	err := s.tx.Do(ctx, "payment.update_merchant", func(tx pgx.Tx) error {
		m, err := getMerchant(ctx, tx, id, true)
		if err != nil {
			return err
		}
		if err := s.apply(m, in, false); err != nil {
			return err
		}
		promos, _ := json.Marshal(m.Promotions)
		rows, _ := tx.Query(ctx, `UPDATE merchants SET name = $2, mcc = $3, settlement_account = $4, fee_bps = $5, fee_fixed = $6,
			channels = $7, promotions = $8, point_value = $9, status = $10, updated_at = now() WHERE id = $1 RETURNING `+merchantCols,
			m.ID, m.Name, m.MCC, m.SettlementAccount, m.FeeBPS, m.FeeFixed, m.Channels, promos, m.PointValue, m.Status)
		if out, err = pgx.CollectExactlyOneRow(rows, scanMerchant); err != nil {
			return err
		}
		return auditlog.Record(ctx, tx, s.now(), m.TenantID, auditlog.Actor(ctx), "merchant.update", "merchant:"+m.ID, nil)
	})
	if err != nil {
		return nil, err
	}
	return &out, nil
}

func getMerchant(ctx context.Context, tx pgx.Tx, id string, lock bool) (*Merchant, error) {
	if _, err := uuid.Parse(id); err != nil {
		return nil, errs.E(errs.NotFound, "no such merchant")
	}
	q := `SELECT ` + merchantCols + ` FROM merchants WHERE id = $1`
	if lock {
		// Not FOR UPDATE: that would block every payment insert's foreign
		// key check on the merchant while the merchant is edited.
		q += ` FOR NO KEY UPDATE`
	}
	rows, _ := tx.Query(ctx, q, id)
	m, err := pgx.CollectExactlyOneRow(rows, scanMerchant)
	if postgres.IsNoRows(err) {
		return nil, errs.E(errs.NotFound, "no such merchant")
	}
	return &m, err
}

// refuseTerminals refuses POS terminals, which take payments but have no
// business reading merchants' settlement accounts, fees or balances.
func refuseTerminals(ctx context.Context) error {
	if p := principal.From(ctx); p != nil && p.Kind == principal.Terminal {
		return errs.E(errs.Forbidden, "terminals cannot read merchants")
	}
	return nil
}

// GetMerchant returns a merchant in the caller's scope.
func (s *Service) GetMerchant(ctx context.Context, id string) (*Merchant, error) {
	if err := refuseTerminals(ctx); err != nil {
		return nil, err
	}
	var m *Merchant
	err := s.tx.Do(ctx, "payment.get_merchant", func(tx pgx.Tx) error {
		var err error
		m, err = getMerchant(ctx, tx, id, false)
		return err
	})
	return m, err
}

// ListMerchants lists the merchants in the caller's scope.
func (s *Service) ListMerchants(ctx context.Context) ([]Merchant, error) {
	if err := refuseTerminals(ctx); err != nil {
		return nil, err
	}
	return postgres.Collect(ctx, s.tx, "payment.list_merchants", scanMerchant,
		`SELECT `+merchantCols+` FROM merchants ORDER BY tenant_id, name, id`)
}

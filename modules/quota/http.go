package quota

import (
	"net/http"

	"github.com/go-chi/chi/v5"

	"github.com/atriumhq/atrium/platform/errs"
	"github.com/atriumhq/atrium/platform/httpx"
	"github.com/atriumhq/atrium/platform/principal"
)

// Register adds the quota API to r (the /api/v1 router).
func (s *Service) Register(r chi.Router) {
	h := httpx.Adapter{Log: s.log}
	need := func(perms ...string) func(http.Handler) http.Handler { return principal.Require(h.Error, perms...) }
	r.With(need()).Get("/plans", h.H(s.handlePlans))
	r.With(need()).Get("/quotas", h.H(s.handleOwnQuotas))
	r.With(need()).Get("/tenants/{id}/quotas", h.H(s.handleQuotas))
	r.With(need("quotas:manage")).Put("/tenants/{id}/quotas/{quota}", h.H(s.handleSetOverride))
	r.With(need("quotas:manage")).Delete("/tenants/{id}/quotas/{quota}", h.H(s.handleDeleteOverride))
}

func (s *Service) handlePlans(w http.ResponseWriter, r *http.Request) error {
	ps, err := s.Plans(r.Context())
	if err != nil {
		return err
	}
	httpx.JSON(w, http.StatusOK, map[string]any{"plans": ps})
	return nil
}

func (s *Service) handleOwnQuotas(w http.ResponseWriter, r *http.Request) error {
	p := principal.From(r.Context())
	if p.TenantID == "" {
		return errs.E(errs.NotFound, "platform administrators belong to no tenant; use /api/v1/tenants/{id}/quotas")
	}
	return s.writeReport(w, r, p.TenantID)
}

func (s *Service) handleQuotas(w http.ResponseWriter, r *http.Request) error {
	return s.writeReport(w, r, chi.URLParam(r, "id"))
}

func (s *Service) writeReport(w http.ResponseWriter, r *http.Request, tenant string) error {
	qs, err := s.Report(r.Context(), tenant)
	if err != nil {
		return err
	}
	httpx.JSON(w, http.StatusOK, map[string]any{"tenant_id": tenant, "quotas": qs})
	return nil
}

func (s *Service) handleSetOverride(w http.ResponseWriter, r *http.Request) error {
	var in struct {
		Value *int64 `json:"value" required:"true"`
	}
	if err := httpx.Decode(r, &in); err != nil {
		return err
	}
	if in.Value == nil {
		return errs.Field("value", "is required")
	}
	return s.override(w, r, in.Value)
}

func (s *Service) handleDeleteOverride(w http.ResponseWriter, r *http.Request) error {
	return s.override(w, r, nil)
}

func (s *Service) override(w http.ResponseWriter, r *http.Request, v *int64) error {
	tenant := chi.URLParam(r, "id")
	if err := s.SetOverride(r.Context(), tenant, chi.URLParam(r, "quota"), v); err != nil {
		return err
	}
	return s.writeReport(w, r, tenant)
}

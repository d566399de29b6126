package quota

import (
	"net/http"

	"github.com/go-chi/chi/v5"

	"github.com/atriumhq/atrium/platform/httpx"
	"github.com/atriumhq/atrium/platform/principal"
)

// Register adds the rate-limit admin API to r (the /api/v1 router). Every
// route needs quotas:manage; the service also requires a platform caller.
func (s *RateLimits) Register(r chi.Router) {
	h := httpx.Adapter{Log: s.log}
	r = r.With(principal.Require(h.Error, "quotas:manage"))
	r.Get("/rate-limits", h.H(s.handleList))
	r.Post("/rate-limits", h.H(s.handleCreate))
	r.Get("/rate-limits/{id}", h.H(s.handleGet))
	r.Patch("/rate-limits/{id}", h.H(s.handleUpdate))
	r.Delete("/rate-limits/{id}", h.H(s.handleDelete))
}

func (s *RateLimits) handleList(w http.ResponseWriter, r *http.Request) error {
	rs, err := s.List(r.Context())
	if err != nil {
		return err
	}
	httpx.JSON(w, http.StatusOK, map[string]any{"rules": rs})
	return nil
}

func (s *RateLimits) handleGet(w http.ResponseWriter, r *http.Request) error {
	rs, err := s.Get(r.Context(), chi.URLParam(r, "id"))
	if err != nil {
		return err
	}
	httpx.JSON(w, http.StatusOK, rs)
	return nil
}

func (s *RateLimits) handleCreate(w http.ResponseWriter, r *http.Request) error {
	var in NewRule
	if err := httpx.Decode(r, &in); err != nil {
		return err
	}
	d, err := s.Create(r.Context(), in)
	if err != nil {
		return err
	}
	httpx.JSON(w, http.StatusCreated, d)
	return nil
}

func (s *RateLimits) handleUpdate(w http.ResponseWriter, r *http.Request) error {
	var in RuleChange
	if err := httpx.Decode(r, &in); err != nil {
		return err
	}
	d, err := s.Update(r.Context(), chi.URLParam(r, "id"), in)
	if err != nil {
		return err
	}
	httpx.JSON(w, http.StatusOK, d)
	return nil
}

func (s *RateLimits) handleDelete(w http.ResponseWriter, r *http.Request) error {
	if err := s.Delete(r.Context(), chi.URLParam(r, "id")); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

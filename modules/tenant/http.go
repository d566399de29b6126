package tenant

import (
	"bufio"
	"io"
	"net/http"

	"github.com/go-chi/chi/v5"

	"github.com/atriumhq/atrium/platform/httpx"
	"github.com/atriumhq/atrium/platform/principal"
)

// Register adds the tenant API to r (the /api/v1 router).
func (s *Service) Register(r chi.Router) {
	h := httpx.Adapter{Log: s.log}
	need := func(perms ...string) func(http.Handler) http.Handler { return principal.Require(h.Error, perms...) }
	r.With(need("tenants:manage")).Get("/tenants", h.H(s.handleList))
	r.With(need("tenants:manage")).Post("/tenants", h.H(s.handleCreate))
	r.With(need()).Get("/tenants/{id}", h.H(s.handleGet))
	r.With(need("tenants:manage")).Patch("/tenants/{id}", h.H(s.handleUpdate))
	r.With(need("tenants:manage")).Post("/tenants/{id}/suspend", h.H(s.handleSuspend))
	r.With(need("tenants:manage")).Post("/tenants/{id}/reactivate", h.H(s.handleReactivate))
}

func (s *Service) handleList(w http.ResponseWriter, r *http.Request) error {
	ts, err := s.List(r.Context())
	if err != nil {
		return err
	}
	httpx.JSON(w, http.StatusOK, map[string]any{"tenants": ts})
	return nil
}

func (s *Service) handleCreate(w http.ResponseWriter, r *http.Request) error {
	var in NewTenant
	if err := httpx.Decode(r, &in); err != nil {
		return err
	}
	t, err := s.Create(r.Context(), in)
	if err != nil {
		return err
	}
	w.Header().Set("Location", "/api/v1/tenants/"+t.ID)
	httpx.JSON(w, http.StatusCreated, t)
	return nil
}

func (s *Service) handleGet(w http.ResponseWriter, r *http.Request) error {
	t, err := s.Get(r.Context(), chi.URLParam(r, "id"))
	if err != nil {
		return err
	}
	httpx.JSON(w, http.StatusOK, t)
	return nil
}

func (s *Service) handleUpdate(w http.ResponseWriter, r *http.Request) error {
	var in Update
	if err := httpx.Decode(r, &in); err != nil {
		return err
	}
	t, err := s.Update(r.Context(), chi.URLParam(r, "id"), in)
	if err != nil {
		return err
	}
	httpx.JSON(w, http.StatusOK, t)
	return nil
}

func (s *Service) handleSuspend(w http.ResponseWriter, r *http.Request) error {
	var in struct {
		Reason string `json:"reason"`
	}
	// The body is optional, whether or not the client sent a length.
	body := bufio.NewReader(r.Body)
	if _, err := body.Peek(1); err == nil {
		r.Body = io.NopCloser(body)
		if err := httpx.Decode(r, &in); err != nil {
			return err
		}
	}
	t, err := s.Suspend(r.Context(), chi.URLParam(r, "id"), in.Reason)
	if err != nil {
		return err
	}
	httpx.JSON(w, http.StatusOK, t)
	return nil
}

func (s *Service) handleReactivate(w http.ResponseWriter, r *http.Request) error {
	t, err := s.Reactivate(r.Context(), chi.URLParam(r, "id"))
	if err != nil {
		return err
	}
	httpx.JSON(w, http.StatusOK, t)
	return nil
}

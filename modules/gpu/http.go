package gpu

import (
	"context"
	"net/http"
	"strconv"

	"github.com/go-chi/chi/v5"

	"github.com/atriumhq/atrium/platform/errs"
	"github.com/atriumhq/atrium/platform/httpx"
	"github.com/atriumhq/atrium/platform/principal"
)

// Register adds the GPU API to r (the /api/v1 router).
func (s *Service) Register(r chi.Router) {
	h := httpx.Adapter{Log: s.log}
	need := func(perms ...string) func(http.Handler) http.Handler { return principal.Require(h.Error, perms...) }
	r.With(need("cluster:read")).Get("/gpu/nodes", h.H(func(w http.ResponseWriter, r *http.Request) error {
		nodes, err := s.Cluster(r.Context())
		return reply(w, http.StatusOK, map[string]any{"nodes": nodes}, err)
	}))
	r.With(need("cluster:read")).Get("/gpu/health-events", h.H(func(w http.ResponseWriter, r *http.Request) error {
		limit := 100
		if v := r.URL.Query().Get("limit"); v != "" {
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 || n > 500 {
				return errs.Field("limit", "must be 1 to 500")
			}
			limit = n
		}
		evs, err := s.HealthEvents(r.Context(), r.URL.Query().Get("uuid"), limit)
		return reply(w, http.StatusOK, map[string]any{"events": evs}, err)
	}))
	r.With(need("cluster:manage")).Post("/gpu/devices/{uuid}/reprobe", h.H(func(w http.ResponseWriter, r *http.Request) error {
		err := s.Reprobe(r.Context(), chi.URLParam(r, "uuid"))
		return reply(w, http.StatusAccepted, map[string]any{"status": "requested"}, err)
	}))

	r.With(need("gpu:read")).Get("/models", h.H(func(w http.ResponseWriter, r *http.Request) error {
		ms, err := s.ListModels(r.Context())
		return reply(w, http.StatusOK, map[string]any{"models": ms}, err)
	}))
	r.With(need("gpu:deploy")).Post("/models", h.H(func(w http.ResponseWriter, r *http.Request) error {
		var in NewModel
		if err := httpx.Decode(r, &in); err != nil {
			return err
		}
		m, err := s.CreateModel(r.Context(), in)
		return reply(w, http.StatusCreated, m, err)
	}))
	r.With(need("gpu:read")).Get("/models/{id}", h.H(func(w http.ResponseWriter, r *http.Request) error {
		m, err := s.GetModel(r.Context(), chi.URLParam(r, "id"))
		return reply(w, http.StatusOK, m, err)
	}))
	r.With(need("gpu:deploy")).Delete("/models/{id}", h.H(func(w http.ResponseWriter, r *http.Request) error {
		err := s.DeleteModel(r.Context(), chi.URLParam(r, "id"))
		if err == nil {
			w.WriteHeader(http.StatusNoContent)
		}
		return err
	}))
	r.With(need("gpu:deploy")).Post("/models/{id}/versions", h.H(func(w http.ResponseWriter, r *http.Request) error {
		var in NewVersion
		if err := httpx.Decode(r, &in); err != nil {
			return err
		}
		v, err := s.AddVersion(r.Context(), chi.URLParam(r, "id"), in)
		return reply(w, http.StatusCreated, v, err)
	}))

	r.With(need("gpu:read")).Get("/deployments", h.H(func(w http.ResponseWriter, r *http.Request) error {
		ds, err := s.ListDeployments(r.Context())
		return reply(w, http.StatusOK, map[string]any{"deployments": ds}, err)
	}))
	r.With(need("gpu:deploy")).Post("/deployments", h.H(func(w http.ResponseWriter, r *http.Request) error {
		var in NewDeployment
		if err := httpx.Decode(r, &in); err != nil {
			return err
		}
		d, err := s.CreateDeployment(r.Context(), in)
		return reply(w, http.StatusCreated, d, err)
	}))
	r.With(need("gpu:read")).Get("/deployments/{id}", h.H(func(w http.ResponseWriter, r *http.Request) error {
		d, err := s.GetDeployment(r.Context(), chi.URLParam(r, "id"))
		return reply(w, http.StatusOK, d, err)
	}))
	r.With(need("gpu:deploy")).Patch("/deployments/{id}", h.H(func(w http.ResponseWriter, r *http.Request) error {
		var in DeploymentUpdate
		if err := httpx.Decode(r, &in); err != nil {
			return err
		}
		d, err := s.UpdateDeployment(r.Context(), chi.URLParam(r, "id"), in)
		return reply(w, http.StatusOK, d, err)
	}))
	r.With(need("gpu:deploy")).Delete("/deployments/{id}", h.H(func(w http.ResponseWriter, r *http.Request) error {
		err := s.DeleteDeployment(r.Context(), chi.URLParam(r, "id"))
		return reply(w, http.StatusAccepted, map[string]any{"status": "deleting"}, err)
	}))
	r.With(need("gpu:read")).Get("/deployments/{id}/replicas/{replica}/logs", h.H(func(w http.ResponseWriter, r *http.Request) error {
		lines, err := s.ReplicaLogs(r.Context(), chi.URLParam(r, "id"), chi.URLParam(r, "replica"))
		return reply(w, http.StatusOK, map[string]any{"lines": lines}, err)
	}))
	actions := map[string]func(context.Context, string) (*Deployment, error){
		"promote": s.Promote, "rollback": s.Rollback, "pause": s.Pause, "resume": s.Resume}
	for action, do := range actions {
		r.With(need("gpu:deploy")).Post("/deployments/{id}/"+action, h.H(func(w http.ResponseWriter, r *http.Request) error {
			d, err := do(r.Context(), chi.URLParam(r, "id"))
			return reply(w, http.StatusOK, d, err)
		}))
	}
}

// reply writes v with status, or returns err.
func reply(w http.ResponseWriter, status int, v any, err error) error {
	if err != nil {
		return err
	}
	httpx.JSON(w, status, v)
	return nil
}

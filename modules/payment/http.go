package payment

import (
	"net/http"

	"github.com/go-chi/chi/v5"

	"github.com/atriumhq/atrium/platform/httpx"
	"github.com/atriumhq/atrium/platform/principal"
)

// Register adds the payment API to r (the /api/v1 router).
func (s *Service) Register(r chi.Router) {
	h := httpx.Adapter{Log: s.log}
	need := func(perms ...string) func(http.Handler) http.Handler { return principal.Require(h.Error, perms...) }
	r.With(need("payments:read")).Get("/merchants", h.H(s.handleListMerchants))
	r.With(need("payments:manage")).Post("/merchants", h.H(s.handleCreateMerchant))
	r.With(need("payments:read")).Get("/merchants/{id}", h.H(s.handleGetMerchant))
	r.With(need("payments:manage")).Patch("/merchants/{id}", h.H(s.handleUpdateMerchant))
	r.With(need("payments:read")).Get("/merchants/{id}/balances", h.H(s.handleMerchantBalances))
	r.With(need("payments:create")).Post("/payments", h.H(s.handleCreate))
	r.With(need("payments:read")).Get("/payments", h.H(s.handleList))
	r.With(need("payments:read")).Get("/payments/{id}", h.H(s.handleGet))
	r.With(need("payments:read")).Get("/payments/{id}/ledger", h.H(s.handleEntries))
	r.With(need("payments:refund")).Post("/payments/{id}/refunds", h.H(s.handleRefund("refund")))
	r.With(need("payments:refund")).Post("/payments/{id}/void", h.H(s.handleRefund("void")))
	r.With(need("payments:read")).Get("/events", h.H(s.handleEvents))
	s.channels.Register(r)
}

// writeResponse writes a payment or refund response (stored or new).
func writeResponse(w http.ResponseWriter, resp *Response, location string) {
	w.Header().Set("Content-Type", "application/json")
	if resp.Replayed {
		w.Header().Set("Idempotent-Replayed", "true")
	}
	if location != "" {
		w.Header().Set("Location", location)
	}
	w.WriteHeader(resp.Status)
	_, _ = w.Write(resp.Body)
}

func (s *Service) handleCreate(w http.ResponseWriter, r *http.Request) error {
	key := r.Header.Get("Idempotency-Key")
	if err := checkKey(key); err != nil {
		return err
	}
	var in NewPayment
	if err := httpx.Decode(r, &in); err != nil {
		return err
	}
	resp, err := s.Create(r.Context(), key, in)
	if err != nil {
		return err
	}
	writeResponse(w, resp, "")
	return nil
}

func (s *Service) handleRefund(kind string) httpx.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		key := r.Header.Get("Idempotency-Key")
		if err := checkKey(key); err != nil {
			return err
		}
		var in NewRefund
		if r.ContentLength != 0 {
			if err := httpx.Decode(r, &in); err != nil {
				return err
			}
		}
		resp, err := s.CreateRefund(r.Context(), key, chi.URLParam(r, "id"), kind, in)
		if err != nil {
			return err
		}
		writeResponse(w, resp, "")
		return nil
	}
}

func (s *Service) handleGet(w http.ResponseWriter, r *http.Request) error {
	p, err := s.Get(r.Context(), chi.URLParam(r, "id"))
	if err != nil {
		return err
	}
	httpx.JSON(w, http.StatusOK, p)
	return nil
}

func (s *Service) handleEntries(w http.ResponseWriter, r *http.Request) error {
	p, err := s.Get(r.Context(), chi.URLParam(r, "id"))
	if err != nil {
		return err
	}
	es, err := s.Entries(r.Context(), p.ID)
	if err != nil {
		return err
	}
	if es == nil {
		es = []Entry{}
	}
	httpx.JSON(w, http.StatusOK, map[string]any{"entries": es})
	return nil
}

func (s *Service) handleList(w http.ResponseWriter, r *http.Request) error {
	f, err := ParseFilter(r.URL.Query().Get)
	if err != nil {
		return err
	}
	page, err := s.List(r.Context(), f)
	if err != nil {
		return err
	}
	if page.Payments == nil {
		page.Payments = []Payment{}
	}
	httpx.JSON(w, http.StatusOK, page)
	return nil
}

func (s *Service) handleListMerchants(w http.ResponseWriter, r *http.Request) error {
	ms, err := s.ListMerchants(r.Context())
	if err != nil {
		return err
	}
	if ms == nil {
		ms = []Merchant{}
	}
	httpx.JSON(w, http.StatusOK, map[string]any{"merchants": ms})
	return nil
}

func (s *Service) handleCreateMerchant(w http.ResponseWriter, r *http.Request) error {
	var in MerchantInput
	if err := httpx.Decode(r, &in); err != nil {
		return err
	}
	m, err := s.CreateMerchant(r.Context(), in)
	if err != nil {
		return err
	}
	w.Header().Set("Location", "/api/v1/merchants/"+m.ID)
	httpx.JSON(w, http.StatusCreated, m)
	return nil
}

func (s *Service) handleGetMerchant(w http.ResponseWriter, r *http.Request) error {
	m, err := s.GetMerchant(r.Context(), chi.URLParam(r, "id"))
	if err != nil {
		return err
	}
	httpx.JSON(w, http.StatusOK, m)
	return nil
}

func (s *Service) handleUpdateMerchant(w http.ResponseWriter, r *http.Request) error {
	var in MerchantInput
	if err := httpx.Decode(r, &in); err != nil {
		return err
	}
	m, err := s.UpdateMerchant(r.Context(), chi.URLParam(r, "id"), in)
	if err != nil {
		return err
	}
	httpx.JSON(w, http.StatusOK, m)
	return nil
}

func (s *Service) handleMerchantBalances(w http.ResponseWriter, r *http.Request) error {
	m, err := s.GetMerchant(r.Context(), chi.URLParam(r, "id"))
	if err != nil {
		return err
	}
	bs, err := s.Balances(r.Context(), m.ID, r.URL.Query().Get("mode") == "test")
	if err != nil {
		return err
	}
	if bs == nil {
		bs = []Balance{}
	}
	httpx.JSON(w, http.StatusOK, map[string]any{"balances": bs})
	return nil
}

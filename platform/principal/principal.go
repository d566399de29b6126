// Package principal carries the authenticated caller of a request through
// the context, and declares what each route needs. The auth module
// authenticates and fills it in; every module reads it from here, so no
// module depends on another to know who is calling.
package principal

import (
	"context"
	"net/http"
	"slices"

	"github.com/google/uuid"

	"github.com/atriumhq/atrium/platform/errs"
)

// Kind says what sort of caller a principal is.
type Kind string

// The kinds of caller.
const (
	User     Kind = "user"
	Terminal Kind = "terminal"
)

// Principal is an authenticated caller.
type Principal struct {
	Kind Kind
	// ID is the user's or terminal's id.
	ID string
	// TenantID is empty for platform administrators, who belong to no tenant.
	TenantID string
	// SessionID is the login session (users) the token was issued in.
	SessionID string
	// TokenID is the access token's jti.
	TokenID     string
	Roles       []string
	Permissions []string
}

// Has reports whether the principal holds permission perm.
func (p *Principal) Has(perm string) bool {
	return p != nil && slices.Contains(p.Permissions, perm)
}

// Subject is "user:<id>" or "terminal:<id>", for audit records.
func (p *Principal) Subject() string {
	if p == nil {
		return "anonymous"
	}
	return string(p.Kind) + ":" + p.ID
}

type ctxKey struct{}

// With returns ctx carrying p.
func With(ctx context.Context, p *Principal) context.Context {
	return context.WithValue(ctx, ctxKey{}, p)
}

// From returns the request's principal, or nil for an anonymous request.
func From(ctx context.Context) *Principal {
	p, _ := ctx.Value(ctxKey{}).(*Principal)
	return p
}

// Check returns nil when ctx's principal holds every permission in perms,
// an unauthenticated error when there is no principal, and a forbidden
// error naming the first missing permission otherwise. Services call it on
// the objects they touch, beyond what the route declared.
func Check(ctx context.Context, perms ...string) error {
	p := From(ctx)
	if p == nil {
		return errs.E(errs.Unauthenticated, "authentication required")
	}
	for _, perm := range perms {
		if !p.Has(perm) {
			return errs.E(errs.Forbidden, "missing permission %s", perm)
		}
	}
	return nil
}

// Require is route middleware: the request must be authenticated and hold
// every permission in perms (none: any authenticated caller). onErr writes
// the refusal (httpx's problem writer in practice).
func Require(onErr func(http.ResponseWriter, *http.Request, error), perms ...string) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if err := Check(r.Context(), perms...); err != nil {
				onErr(w, r, err)
				return
			}
			next.ServeHTTP(w, r)
		})
	}
}

// OwningTenant is the tenant a new object of the caller's belongs to: the
// caller's own tenant (named, from the request, may repeat it or be left
// out), or, for a platform administrator, who belongs to no tenant, the one
// named. Errors name the field tenant_id.
func OwningTenant(ctx context.Context, named string) (string, error) {
	p := From(ctx)
	switch {
	case p == nil:
		return "", errs.E(errs.Unauthenticated, "authentication required")
	case p.TenantID == "":
		if _, err := uuid.Parse(named); err != nil {
			return "", errs.Field("tenant_id", "is required for a platform administrator: the tenant it belongs to")
		}
		return named, nil
	case named != "" && named != p.TenantID:
		return "", errs.Field("tenant_id", "must be your own tenant or left out")
	}
	return p.TenantID, nil
}

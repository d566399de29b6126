package web

import (
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/atriumhq/atrium/modules/auth"
	"github.com/atriumhq/atrium/platform/errs"
	"github.com/atriumhq/atrium/platform/principal"
)

type settingsData struct {
	page
	Keys []auth.KeyInfo
	Now  time.Time
}

// settings shows the signing keys, with "Rotate now".
func (u *UI) settings(w http.ResponseWriter, r *http.Request) {
	keys, err := u.d.Auth.Keys(r.Context())
	if err != nil {
		u.fail(w, r, err)
		return
	}
	order := map[string]int{"current": 0, "next": 1, "previous": 2}
	keys = slices.Clone(keys)
	slices.SortStableFunc(keys, func(a, b auth.KeyInfo) int { return order[a.State] - order[b.State] })
	d := settingsData{Keys: keys, Now: u.d.Now().UTC()}
	d.page = u.page(w, r, "Settings", "Settings")
	u.render(w, r, http.StatusOK, "settings", "layout", d)
}

func (u *UI) rotateKeys(w http.ResponseWriter, r *http.Request) {
	if err := u.d.Auth.RotateKeys(r.Context()); err != nil {
		u.formFailed(w, r, "/ui/settings", err)
		return
	}
	u.done(w, r, "/ui/settings", "Signing keys rotated. Tokens signed with the previous key stay valid until the next rotation.")
}

// auditPageSize is how many audit records one page shows.
const auditPageSize = 50

type auditRow struct {
	auth.AuditEntry
	ActorName, ObjectName string
	Details               []detail
}

// detail is one member of an audit record's detail object, as text.
type detail struct{ Key, Value string }

// details lists the members of an audit record's detail object, sorted by
// key, lists joined with commas.
func details(raw json.RawMessage) []detail {
	var m map[string]any
	if json.Unmarshal(raw, &m) != nil {
		if s := string(raw); s != "" && s != "null" {
			return []detail{{Key: "detail", Value: s}}
		}
		return nil
	}
	out := make([]detail, 0, len(m))
	for k, v := range m {
		var val string
		switch v := v.(type) {
		case string:
			val = v
		case []any:
			parts := make([]string, len(v))
			for i, x := range v {
				parts[i] = fmt.Sprint(x)
			}
			val = strings.Join(parts, ", ")
		default:
			b, _ := json.Marshal(v)
			val = string(b)
		}
		out = append(out, detail{Key: strings.ReplaceAll(k, "_", " "), Value: val})
	}
	slices.SortFunc(out, func(a, b detail) int { return strings.Compare(a.Key, b.Key) })
	return out
}

type auditData struct {
	page
	Entries []auditRow
	// Older is where the next (older) page starts; Paged says this is not
	// the newest page.
	Older string
	Paged bool
}

// audit shows the audit log, newest first, a page at a time.
func (u *UI) audit(w http.ResponseWriter, r *http.Request) {
	var before time.Time
	if v := r.URL.Query().Get("before"); v != "" {
		t, err := time.Parse(time.RFC3339Nano, v)
		if err != nil {
			u.fail(w, r, errs.E(errs.Invalid, "the page address is not valid"))
			return
		}
		before = t
	}
	entries, err := u.d.Auth.Audit(r.Context(), before, auditPageSize)
	if err != nil {
		u.fail(w, r, err)
		return
	}
	names := u.userNames(r)
	d := auditData{Paged: !before.IsZero()}
	for _, e := range entries {
		d.Entries = append(d.Entries, auditRow{AuditEntry: e, ActorName: names.of(e.Actor), ObjectName: names.of(e.Object),
			Details: details(e.Detail)})
	}
	if len(entries) == auditPageSize {
		d.Older = entries[len(entries)-1].At.UTC().Format(time.RFC3339Nano)
	}
	d.page = u.page(w, r, "Audit log", "Audit log")
	u.render(w, r, http.StatusOK, "audit", "layout", d)
}

// userNames maps "user:<id>" to the user's email, for the users the caller
// may see; others stay as they are.
type userNames map[string]string

func (u *UI) userNames(r *http.Request) userNames {
	names := userNames{}
	if !principal.From(r.Context()).Has("users:read") {
		return names
	}
	users, err := u.d.Auth.ListUsers(r.Context())
	if err != nil {
		u.d.Log.Warn().Ctx(r.Context()).Err(err).Msg("audit page: user names unavailable")
		return names
	}
	for _, usr := range users {
		names["user:"+usr.ID] = usr.Email
	}
	return names
}

func (n userNames) of(subject string) string {
	if name, ok := n[subject]; ok {
		return name
	}
	kind, id, ok := strings.Cut(subject, ":")
	switch {
	case ok && kind == "email":
		return id
	case ok && len(id) == 36:
		return kind + " " + shortID(id)
	}
	return subject
}

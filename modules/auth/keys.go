package auth

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/atriumhq/atrium/platform/auditlog"
	"github.com/atriumhq/atrium/platform/postgres"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/lestrrat-go/jwx/v3/jwa"
	"github.com/lestrrat-go/jwx/v3/jwk"

	"github.com/atriumhq/atrium/platform/keyring"
)

// Signing keys are Ed25519 (JWS alg EdDSA): small keys and signatures,
// deterministic signing (no per-signature nonce to get wrong, unlike
// ECDSA), and no malleable (r, s) encodings to reject. Verification costs
// about as much as ES256.
const keyAlg = "EdDSA"

// Key states: a key is published as "next" one rotation before it signs,
// so every verifier (our instances and outside ones reading the JWKS) knows
// it before the first token it signs; "previous" stays published one
// rotation after, so tokens it signed stay valid until they expire.
const (
	stateNext     = "next"
	stateCurrent  = "current"
	statePrevious = "previous"
	stateRetired  = "retired"
)

// KeyInfo describes a signing key (never its private half).
type KeyInfo struct {
	KID         string     `json:"kid"`
	Alg         string     `json:"alg"`
	State       string     `json:"state"`
	CreatedAt   time.Time  `json:"created_at"`
	ActivatedAt *time.Time `json:"activated_at,omitempty"`
}

// keySet is one immutable snapshot of the published keys.
type keySet struct {
	signKID string
	sign    ed25519.PrivateKey
	verify  map[string]ed25519.PublicKey // kid -> key, for next, current and previous
	jwks    []byte                       // the JWKS document
	infos   []KeyInfo
}

// keys keeps the signing keys: PostgreSQL holds them (private halves sealed
// under the master key), every instance holds the published ones in memory.
type keys struct {
	s        *Service
	ring     *keyring.Keyring
	set      atomic.Pointer[keySet]
	reloadMu sync.Mutex
	lastLoad time.Time
}

// keysLockID serialises key creation and rotation across instances.
const keysLockID = 0x6b657973 // "keys"

// minReloadInterval bounds reloads triggered by an unknown kid, so forged
// kids cannot turn into a reload storm against PostgreSQL.
const minReloadInterval = 5 * time.Second

// load reads the published keys from PostgreSQL into memory.
func (k *keys) load(ctx context.Context) error {
	tx, err := k.s.tx.Pool().Begin(ctx) // signing_keys belongs to no tenant
	if err != nil {
		return fmt.Errorf("load signing keys: %w", err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	rows, err := tx.Query(ctx, `SELECT kid, alg, state, private_key, public_key, created_at, activated_at
		FROM signing_keys WHERE state IN ('next', 'current', 'previous') ORDER BY created_at DESC`)
	if err != nil {
		return fmt.Errorf("load signing keys: %w", err)
	}
	defer rows.Close()
	ks := &keySet{verify: map[string]ed25519.PublicKey{}}
	pubs := jwk.NewSet()
	for rows.Next() {
		var info KeyInfo
		var sealed string
		var pub []byte
		if err := rows.Scan(&info.KID, &info.Alg, &info.State, &sealed, &pub, &info.CreatedAt, &info.ActivatedAt); err != nil {
			return err
		}
		ks.infos = append(ks.infos, info)
		ks.verify[info.KID] = ed25519.PublicKey(pub)
		jk, err := jwk.Import(ed25519.PublicKey(pub))
		if err != nil {
			return err
		}
		_ = jk.Set(jwk.KeyIDKey, info.KID)
		_ = jk.Set(jwk.AlgorithmKey, jwa.EdDSA())
		_ = jk.Set(jwk.KeyUsageKey, "sig")
		_ = pubs.AddKey(jk)
		if info.State == stateCurrent {
			seed, err := k.ring.Open(sealed, []byte(info.KID))
			if err != nil {
				return fmt.Errorf("open signing key %s (is ATRIUM_MASTER_KEY the one it was sealed under?): %w", info.KID, err)
			}
			ks.signKID, ks.sign = info.KID, ed25519.NewKeyFromSeed(seed)
		}
	}
	if err := rows.Err(); err != nil {
		return err
	}
	if ks.sign == nil {
		return errors.New("no current signing key")
	}
	if ks.jwks, err = json.Marshal(pubs); err != nil {
		return err
	}
	k.set.Store(ks)
	k.reloadMu.Lock()
	k.lastLoad = time.Now()
	k.reloadMu.Unlock()
	return nil
}

// reloadForUnknownKID reloads the keys if the last load is older than
// minReloadInterval, and reports whether it did.
func (k *keys) reloadForUnknownKID(ctx context.Context) bool {
	k.reloadMu.Lock()
	if time.Since(k.lastLoad) < minReloadInterval {
		k.reloadMu.Unlock()
		return false
	}
	k.lastLoad = time.Now()
	k.reloadMu.Unlock()
	if err := k.load(ctx); err != nil {
		k.s.log.Warn().Err(err).Msg("reload of signing keys failed")
		return false
	}
	return true
}

// ensure makes sure a current and a next key exist and rotates when the
// current one is older than the rotation period, or at once when force is
// set. It reports whether anything changed. Instances serialise it with an
// advisory lock, so concurrent callers never create two current keys.
func (k *keys) ensure(ctx context.Context, force bool) (changed bool, err error) {
	now := k.s.now()
	rotated := false
	// Keys are the platform's, and the rotation is audited as a platform
	// event (no tenant): the cross-tenant path, whoever triggered it (the
	// schedule has no principal at all).
	ctx = postgres.AllTenants(ctx, "signing keys")
	err = k.s.tx.Do(ctx, "auth.keys.ensure", func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", keysLockID); err != nil {
			return err
		}
		var current, next string
		var activated *time.Time
		rows, err := tx.Query(ctx, `SELECT kid, state, activated_at FROM signing_keys WHERE state IN ('current', 'next')`)
		if err != nil {
			return err
		}
		for rows.Next() {
			var kid, state string
			var at *time.Time
			if err := rows.Scan(&kid, &state, &at); err != nil {
				rows.Close()
				return err
			}
			if state == stateCurrent {
				current, activated = kid, at
			} else {
				next = kid
			}
		}
		rows.Close()
		if current == "" {
			if _, err := k.insert(ctx, tx, stateCurrent, now); err != nil {
				return err
			}
			changed = true
		} else if force || (activated != nil && now.Sub(*activated) >= k.s.cfg.KeyRotation) {
			if next == "" {
				if next, err = k.insert(ctx, tx, stateNext, now); err != nil {
					return err
				}
			}
			for _, u := range []struct {
				q    string
				args []any
			}{
				{`UPDATE signing_keys SET state = 'retired', retired_at = $1 WHERE state = 'previous'`, []any{now}},
				{`UPDATE signing_keys SET state = 'previous' WHERE state = 'current'`, nil},
				{`UPDATE signing_keys SET state = 'current', activated_at = $1 WHERE state = 'next'`, []any{now}},
			} {
				if _, err := tx.Exec(ctx, u.q, u.args...); err != nil {
					return err
				}
			}
			changed, rotated, next = true, true, ""
		}
		if next == "" {
			if _, err := k.insert(ctx, tx, stateNext, now); err != nil {
				return err
			}
			changed = true
		}
		if rotated {
			reason := "schedule"
			if force {
				reason = "manual"
			}
			return auditlog.Record(ctx, tx, now, "", auditlog.Actor(ctx), "auth.keys.rotate", "", map[string]any{"reason": reason})
		}
		return nil
	})
	return changed, err
}

// insert creates a key in state and returns its kid.
func (k *keys) insert(ctx context.Context, tx pgx.Tx, state string, now time.Time) (string, error) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return "", err
	}
	kid := uuid.Must(uuid.NewV7()).String()
	var activated *time.Time
	if state == stateCurrent {
		activated = &now
	}
	_, err = tx.Exec(ctx, `INSERT INTO signing_keys (kid, alg, state, private_key, public_key, created_at, activated_at)
		VALUES ($1, $2, $3, $4, $5, $6, $7)`, kid, keyAlg, state, k.ring.Seal(priv.Seed(), []byte(kid)), []byte(pub), now, activated)
	return kid, err
}

// lookup returns the published public key kid, reloading the keys (at
// most once per minReloadInterval) when kid is unknown, so an instance
// that missed a rotation broadcast still catches up.
func (k *keys) lookup(ctx context.Context, kid string) (ed25519.PublicKey, bool) {
	if key, ok := k.set.Load().verify[kid]; ok {
		return key, true
	}
	if !k.reloadForUnknownKID(ctx) {
		return nil, false
	}
	key, ok := k.set.Load().verify[kid]
	return key, ok
}

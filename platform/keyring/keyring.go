// Package keyring encrypts small secrets at rest (signing keys, card
// numbers) with AES-256-GCM under keys given in the environment, never in
// code. Each sealed value records the id of the key that sealed it, so keys
// can be rotated: new values are sealed under the first (current) key and
// values sealed under any listed key still open.
package keyring

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
)

// Keyring holds the keys, the first being current.
type Keyring struct {
	current string
	aeads   map[string]cipher.AEAD
}

// Parse reads a keyring from its environment form: comma-separated
// "id:base64key" entries, current first, each key 32 random bytes
// (`head -c 32 /dev/urandom | base64`). A single bare base64 key gets the id
// "k1".
func Parse(s string) (*Keyring, error) {
	k := &Keyring{aeads: map[string]cipher.AEAD{}}
	for i, entry := range strings.Split(strings.TrimSpace(s), ",") {
		entry = strings.TrimSpace(entry)
		id, b64, found := strings.Cut(entry, ":")
		if !found {
			id, b64 = "k1", entry
		}
		if id == "" || strings.ContainsAny(id, "$ ") {
			return nil, fmt.Errorf("key %d: id %q must be a word", i+1, id)
		}
		raw, err := base64.StdEncoding.DecodeString(b64)
		if err != nil {
			return nil, fmt.Errorf("key %q: not base64", id)
		}
		if len(raw) != 32 {
			return nil, fmt.Errorf("key %q: %d bytes, want 32 (head -c 32 /dev/urandom | base64)", id, len(raw))
		}
		if _, dup := k.aeads[id]; dup {
			return nil, fmt.Errorf("key %q listed twice", id)
		}
		block, err := aes.NewCipher(raw)
		if err != nil {
			return nil, err
		}
		aead, err := cipher.NewGCM(block)
		if err != nil {
			return nil, err
		}
		k.aeads[id] = aead
		if i == 0 {
			k.current = id
		}
	}
	return k, nil
}

// Current returns the id of the key new values are sealed under.
func (k *Keyring) Current() string { return k.current }

// Seal encrypts plaintext under the current key. aad binds the value to its
// context (for example a row id) so a sealed value cannot be moved to
// another row. The result is "<key id>$<base64(nonce|ciphertext)>".
func (k *Keyring) Seal(plaintext, aad []byte) string {
	aead := k.aeads[k.current]
	nonce := make([]byte, aead.NonceSize(), aead.NonceSize()+len(plaintext)+aead.Overhead())
	if _, err := rand.Read(nonce); err != nil {
		panic(err) // crypto/rand never fails on supported platforms
	}
	return k.current + "$" + base64.RawStdEncoding.EncodeToString(aead.Seal(nonce, nonce, plaintext, aad))
}

// ErrUnknownKey means a value was sealed under a key the keyring lacks.
var ErrUnknownKey = errors.New("keyring: sealed under an unknown key")

// Open decrypts a value made by Seal with the same aad.
func (k *Keyring) Open(sealed string, aad []byte) ([]byte, error) {
	id, b64, ok := strings.Cut(sealed, "$")
	if !ok {
		return nil, errors.New("keyring: malformed sealed value")
	}
	aead, ok := k.aeads[id]
	if !ok {
		return nil, fmt.Errorf("%w %q", ErrUnknownKey, id)
	}
	raw, err := base64.RawStdEncoding.DecodeString(b64)
	if err != nil || len(raw) < aead.NonceSize() {
		return nil, errors.New("keyring: malformed sealed value")
	}
	pt, err := aead.Open(nil, raw[:aead.NonceSize()], raw[aead.NonceSize():], aad)
	if err != nil {
		return nil, errors.New("keyring: value does not authenticate (wrong key, aad or tampered)")
	}
	return pt, nil
}

// KeyID returns the id of the key a sealed value was sealed under.
func KeyID(sealed string) string {
	id, _, _ := strings.Cut(sealed, "$")
	return id
}

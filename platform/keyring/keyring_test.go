package keyring

import (
	"encoding/base64"
	"strings"
	"testing"
)

func key(b byte) string {
	return base64.StdEncoding.EncodeToString([]byte(strings.Repeat(string(b), 32)))
}

func TestSealOpenAndRotate(t *testing.T) {
	old, err := Parse(key('a'))
	if err != nil {
		t.Fatal(err)
	}
	sealed := old.Seal([]byte("private key"), []byte("kid-1"))
	if KeyID(sealed) != "k1" || strings.Contains(sealed, "private") {
		t.Fatalf("sealed = %q", sealed)
	}
	rotated, err := Parse("k2:" + key('b') + ",k1:" + key('a'))
	if err != nil {
		t.Fatal(err)
	}
	pt, err := rotated.Open(sealed, []byte("kid-1"))
	if err != nil || string(pt) != "private key" {
		t.Fatalf("open after rotation: %q %v", pt, err)
	}
	if KeyID(rotated.Seal([]byte("x"), nil)) != "k2" {
		t.Fatal("new values must be sealed under the first key")
	}
	if _, err := rotated.Open(sealed, []byte("kid-2")); err == nil {
		t.Fatal("opened with the wrong aad")
	}
	tampered := sealed[:len(sealed)-2] + "AA"
	if _, err := rotated.Open(tampered, []byte("kid-1")); err == nil {
		t.Fatal("opened a tampered value")
	}
	only2, _ := Parse("k2:" + key('b'))
	if _, err := only2.Open(sealed, []byte("kid-1")); err == nil {
		t.Fatal("opened without the key")
	}
}

func TestParseRejects(t *testing.T) {
	for _, s := range []string{"", "not-base64!", base64.StdEncoding.EncodeToString([]byte("short")), "k1:" + key('a') + ",k1:" + key('b'), ":" + key('a')} {
		if _, err := Parse(s); err == nil {
			t.Errorf("Parse(%q) accepted", s)
		}
	}
}

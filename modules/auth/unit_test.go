package auth

import (
	"strings"
	"testing"
	"time"
)

func TestPasswordHashing(t *testing.T) {
	fast := argonParams{Memory: 1024, Time: 1, Threads: 1}
	h := hashPassword("correct horse battery", fast)
	if !strings.HasPrefix(h, "$argon2id$v=19$m=1024,t=1,p=1$") {
		t.Fatalf("PHC string %q", h)
	}
	if h2 := hashPassword("correct horse battery", fast); h2 == h {
		t.Fatal("two hashes of one password are equal: the salt is not random")
	}
	for _, tc := range []struct {
		name, pw     string
		want         argonParams
		ok, rehash   bool
		wantErrMatch string
	}{
		{"right password, same parameters", "correct horse battery", fast, true, false, ""},
		{"right password, new parameters", "correct horse battery", defaultArgon, true, true, ""},
		{"wrong password", "correct horse batterY", fast, false, false, ""},
		{"wrong password never asks for a rehash", "nope", defaultArgon, false, false, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ok, rehash, err := checkPassword(tc.pw, h, tc.want)
			if err != nil || ok != tc.ok || rehash != tc.rehash {
				t.Fatalf("ok=%v rehash=%v err=%v", ok, rehash, err)
			}
		})
	}
	for _, bad := range []string{"", "plain", "$argon2i$v=19$m=1,t=1,p=1$AA$AA", "$argon2id$v=18$m=1,t=1,p=1$AA$AA", "$argon2id$v=19$m=x$AA$AA"} {
		if _, _, err := checkPassword("x", bad, fast); err == nil {
			t.Errorf("checkPassword accepted malformed hash %q", bad)
		}
	}
}

func TestPasswordPolicy(t *testing.T) {
	if validatePassword("short pass") == nil {
		t.Error("accepted 10 characters")
	}
	if validatePassword(strings.Repeat("é", 12)) != nil {
		t.Error("counted bytes, not characters")
	}
	if validatePassword(strings.Repeat("a", 129)) == nil {
		t.Error("accepted 129 characters")
	}
}

func TestRevocations(t *testing.T) {
	r := newRevocations()
	now := time.Now()
	if r.revoked("j1", "s1", "user:u1", 0) {
		t.Fatal("nothing revoked yet")
	}
	r.revokeJTI("j1", now.Add(time.Minute))
	r.revokeSession("s2", now.Add(time.Minute))
	r.setGen("user:u1", 2)
	r.setGen("user:u1", 1) // a stale broadcast never lowers the generation
	for _, tc := range []struct {
		jti, sid, sub string
		gen           int64
		want          bool
	}{
		{"j1", "", "user:u9", 5, true},
		{"j2", "s2", "user:u9", 5, true},
		{"j2", "s3", "user:u1", 1, true},
		{"j2", "s3", "user:u1", 2, false},
		{"j2", "s3", "terminal:u1", 0, false},
	} {
		if got := r.revoked(tc.jti, tc.sid, tc.sub, tc.gen); got != tc.want {
			t.Errorf("revoked(%s, %s, %s, %d) = %v", tc.jti, tc.sid, tc.sub, tc.gen, got)
		}
	}
	r.prune(now.Add(2 * time.Minute))
	if r.revoked("j1", "s2", "user:u9", 0) {
		t.Error("prune kept expired revocations")
	}
	if !r.revoked("x", "", "user:u1", 1) {
		t.Error("prune dropped a generation")
	}
}

func TestPermCache(t *testing.T) {
	c := newPermCache()
	now := time.Now()
	c.put("u1", permEntry{perms: []string{"a"}, loaded: now})
	c.put("u2", permEntry{perms: []string{"b"}, loaded: now})
	if _, ok := c.get("u1", now.Add(permTTL+time.Second)); ok {
		t.Error("entry outlived its TTL")
	}
	c.invalidate("u1")
	if _, ok := c.get("u1", now); ok {
		t.Error("invalidate(u1) kept u1")
	}
	if _, ok := c.get("u2", now); !ok {
		t.Error("invalidate(u1) dropped u2")
	}
	c.invalidate("*")
	if _, ok := c.get("u2", now); ok {
		t.Error("invalidate(*) kept u2")
	}
}

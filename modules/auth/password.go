package auth

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"

	"golang.org/x/crypto/argon2"
)

// argonParams are argon2id's cost parameters. The defaults are OWASP's
// first recommendation for argon2id: 19 MiB of memory, 2 iterations, 1
// degree of parallelism.
type argonParams struct {
	Memory  uint32 // KiB
	Time    uint32
	Threads uint8
}

var defaultArgon = argonParams{Memory: 19 * 1024, Time: 2, Threads: 1}

// hashPassword returns the PHC string of password under p:
// $argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>.
func hashPassword(password string, p argonParams) string {
	salt := make([]byte, 16)
	_, _ = rand.Read(salt)
	sum := argon2.IDKey([]byte(password), salt, p.Time, p.Memory, p.Threads, 32)
	return fmt.Sprintf("$argon2id$v=%d$m=%d,t=%d,p=%d$%s$%s", argon2.Version, p.Memory, p.Time, p.Threads,
		base64.RawStdEncoding.EncodeToString(salt), base64.RawStdEncoding.EncodeToString(sum))
}

// checkPassword reports whether password matches the PHC string, and
// whether the hash should be recomputed because its parameters differ from
// want (rehash on login when the parameters change).
func checkPassword(password, phc string, want argonParams) (ok, rehash bool, err error) {
	parts := strings.Split(phc, "$")
	if len(parts) != 6 || parts[1] != "argon2id" {
		return false, false, errors.New("password hash: not an argon2id PHC string")
	}
	var version int
	if _, err := fmt.Sscanf(parts[2], "v=%d", &version); err != nil || version != argon2.Version {
		return false, false, errors.New("password hash: unsupported version")
	}
	var p argonParams
	if _, err := fmt.Sscanf(parts[3], "m=%d,t=%d,p=%d", &p.Memory, &p.Time, &p.Threads); err != nil {
		return false, false, errors.New("password hash: bad parameters")
	}
	salt, err1 := base64.RawStdEncoding.DecodeString(parts[4])
	sum, err2 := base64.RawStdEncoding.DecodeString(parts[5])
	if err1 != nil || err2 != nil {
		return false, false, errors.New("password hash: bad encoding")
	}
	got := argon2.IDKey([]byte(password), salt, p.Time, p.Memory, p.Threads, uint32(len(sum)))
	ok = subtle.ConstantTimeCompare(got, sum) == 1
	return ok, ok && p != want, nil
}

// dummyHash is checked against when the user does not exist, so that an
// unknown email costs the same time as a wrong password.
var dummyHash = hashPassword("atrium-timing-equaliser", defaultArgon)

// validatePassword enforces the password policy: at least 12 characters
// (NIST SP 800-63B allows 8; we ask more of administrators), at most 128.
func validatePassword(pw string) error {
	n := len([]rune(pw))
	switch {
	case n < 12:
		return errors.New("must be at least 12 characters")
	case n > 128:
		return errors.New("must be at most 128 characters")
	}
	return nil
}

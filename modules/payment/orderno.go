package payment

import (
	"crypto/rand"
	"time"
)

// crockford is Crockford's base 32: no I, L, O or U, so an order number
// read aloud or typed from a receipt is not misread.
const crockford = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"

// newOrderNo returns a human-readable order number, YYMMDD-HHMMSS-XXXXXXXX
// (UTC time, then 40 random bits), made without any network round trip or
// central counter. Two payments of one tenant in the same second collide
// with probability 2^-40; the database's unique constraint catches that and
// the payment is inserted again under a new number.
func newOrderNo(t time.Time) string {
	var b [5]byte
	_, _ = rand.Read(b[:])
	v := uint64(b[0])<<32 | uint64(b[1])<<24 | uint64(b[2])<<16 | uint64(b[3])<<8 | uint64(b[4])
	out := t.UTC().AppendFormat(make([]byte, 0, 22), "060102-150405-")
	for i := 7; i >= 0; i-- {
		out = append(out, crockford[(v>>(5*uint(i)))&31])
	}
	return string(out)
}

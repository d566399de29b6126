package payment

import (
	"fmt"
	"strings"
	"time"

	"github.com/atriumhq/atrium/platform/errs"
)

// Card is a card as a terminal sends it. Its number never leaves this
// module in clear except to the bank channel: it is sealed at rest (only
// the BIN and last four are kept in clear) and never formatted into a log
// line, a response or an error.
type Card struct {
	Number   string `json:"number"`
	ExpMonth int    `json:"exp_month"`
	ExpYear  int    `json:"exp_year"`
}

// String keeps the number out of any accidental formatting (%v, %+v, logs).
func (c Card) String() string { return "card " + maskPAN(c.Number) }

// GoString keeps the number out of %#v.
func (c Card) GoString() string { return c.String() }

// maskPAN is the BIN and last four with the middle hidden.
func maskPAN(pan string) string {
	if len(pan) < 12 {
		return "****"
	}
	return pan[:6] + strings.Repeat("*", len(pan)-10) + pan[len(pan)-4:]
}

// validate normalises and checks the card; errors name the field but never
// echo the number.
func (c *Card) validate(now time.Time) error {
	c.Number = strings.Map(func(r rune) rune {
		if r == ' ' || r == '-' {
			return -1
		}
		return r
	}, c.Number)
	if len(c.Number) < 12 || len(c.Number) > 19 || strings.Trim(c.Number, "0123456789") != "" {
		return errs.Field("method.number", "must be 12 to 19 digits")
	}
	if !luhn(c.Number) {
		return errs.Field("method.number", "fails the Luhn check")
	}
	if c.ExpMonth < 1 || c.ExpMonth > 12 {
		return errs.Field("method.exp_month", "must be 1 to 12")
	}
	if c.ExpYear < 2000 || c.ExpYear > 2100 {
		return errs.Field("method.exp_year", "must be a four-digit year")
	}
	// A card is valid through the last day of its expiry month.
	if end := time.Date(c.ExpYear, time.Month(c.ExpMonth)+1, 1, 0, 0, 0, 0, time.UTC); !now.Before(end) {
		return errs.Field("method.exp_year", "the card has expired")
	}
	return nil
}

func luhn(num string) bool {
	sum, double := 0, false
	for i := len(num) - 1; i >= 0; i-- {
		d := int(num[i] - '0')
		if double {
			if d *= 2; d > 9 {
				d -= 9
			}
		}
		sum += d
		double = !double
	}
	return sum%10 == 0
}

// sealCard seals the card's number and expiry under the current card key,
// bound to the payment id (a sealed value moved to another row does not open).
func (s *Service) sealCard(paymentID string, c Card) string {
	return s.cards.Seal(fmt.Appendf(nil, "%s|%02d/%04d", c.Number, c.ExpMonth, c.ExpYear), []byte(paymentID))
}

// source is what the bank is sent as the payment's source.
func (m Method) source() string {
	if m.Type == "card" {
		return fmt.Sprintf("card:%s:%02d%02d", m.Number, m.ExpMonth, m.ExpYear%100)
	}
	return "wallet:" + m.Code
}

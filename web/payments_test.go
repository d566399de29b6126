package web

import (
	"net/url"
	"reflect"
	"testing"
	"time"

	"github.com/atriumhq/atrium/modules/payment"
	"github.com/atriumhq/atrium/platform/errs"
)

func TestMoneyAndDecimal(t *testing.T) {
	for _, c := range []struct {
		minor        int64
		currency     string
		money, plain string
	}{
		{1250, "EUR", "12.50 EUR", "12.50"},
		{5, "EUR", "0.05 EUR", "0.05"},
		{-50, "EUR", "-0.50 EUR", "-0.50"},
		{-123456, "USD", "-1,234.56 USD", "-1234.56"},
		{1000, "JPY", "1,000 JPY", "1000"},
		{-7, "KRW", "-7 KRW", "-7"},
		{1, "KWD", "0.001 KWD", "0.001"},
		{0, "XYZ", "0.00 XYZ", "0.00"},
	} {
		if got := money(c.minor, c.currency); got != c.money {
			t.Errorf("money(%d, %s) = %q, want %q", c.minor, c.currency, got, c.money)
		}
		if got := decimal(c.minor, c.currency); got != c.plain {
			t.Errorf("decimal(%d, %s) = %q, want %q", c.minor, c.currency, got, c.plain)
		}
	}
}

func TestParseMajor(t *testing.T) {
	for _, c := range []struct {
		in, currency string
		want         int64 // -1: invalid
	}{
		{"12.50", "EUR", 1250}, {"12.5", "EUR", 1250}, {"12", "EUR", 1200}, {".5", "EUR", 50}, {"1,000.00", "EUR", 100000},
		{" 3 ", "EUR", 300}, {"0", "EUR", 0}, {"1000", "JPY", 1000}, {"0.001", "KWD", 1},
		{"12.345", "EUR", -1}, {"1.5", "JPY", -1}, {"-1", "EUR", -1}, {"abc", "EUR", -1}, {"", "EUR", -1}, {".", "EUR", -1},
		{"1e3", "EUR", -1}, {"99999999999999", "EUR", -1},
	} {
		got, err := parseMajor("amount", c.in, c.currency)
		switch {
		case c.want < 0 && (err == nil || errs.As(err).Fields[0].Field != "amount"):
			t.Errorf("parseMajor(%q, %s) = %d, %v; want an error naming amount", c.in, c.currency, got, err)
		case c.want >= 0 && (err != nil || got != c.want):
			t.Errorf("parseMajor(%q, %s) = %d, %v; want %d", c.in, c.currency, got, err, c.want)
		}
	}
}

func TestMerchantFormInput(t *testing.T) {
	f := merchantForm{TenantID: "t", Ref: "r-1", Name: "N", MCC: "5814", SettlementAccount: "A", FeeBPS: "150", FeeFixed: "",
		Channels: " simbank , ,b ", Promotions: "a 1000 100\r\n\n  b   50 5  \n", PointValue: "2"}
	in, err := f.input(true)
	if err != nil {
		t.Fatal(err)
	}
	if in.TenantID != "t" || *in.Ref != "r-1" || *in.FeeBPS != 150 || *in.FeeFixed != 0 || *in.PointValue != 2 ||
		!reflect.DeepEqual(*in.Channels, []string{"simbank", "b"}) ||
		!reflect.DeepEqual(*in.Promotions, []payment.Promotion{{ID: "a", Spend: 1000, Save: 100}, {ID: "b", Spend: 50, Save: 5}}) {
		t.Errorf("input %+v", in)
	}
	if in, _ := f.input(false); in.Ref != nil || in.TenantID != "" {
		t.Error("an update sends the ref or tenant")
	}
	for field, bad := range map[string]merchantForm{
		"fee_bps": {FeeBPS: "1.5"}, "fee_fixed": {FeeFixed: "x"}, "point_value": {PointValue: "-"},
		"promotions": {Promotions: "a 1000"},
	} {
		if _, err := bad.input(true); err == nil || errs.As(err).Fields[0].Field != field {
			t.Errorf("%+v: %v, want an error naming %s", bad, err, field)
		}
	}
	if _, err := (merchantForm{Promotions: "a 10 x"}).input(true); err == nil {
		t.Error("a promotion with a bad number passed")
	}
}

func TestUIFilterToIncludesTheDay(t *testing.T) {
	f, err := uiFilter(url.Values{"to": {"2026-11-22"}, "from": {"2026-11-01"}, "order_no": {" 261122-X "}})
	if err != nil {
		t.Fatal(err)
	}
	if !f.To.Equal(time.Date(2026, 11, 23, 0, 0, 0, 0, time.UTC)) || !f.From.Equal(time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)) || f.OrderNo != "261122-X" {
		t.Errorf("filter %+v", f)
	}
	if _, err := uiFilter(url.Values{"to": {"tomorrow"}}); err == nil || errs.As(err).Fields[0].Field != "to" {
		t.Errorf("a bad to: %v", err)
	}
	if q := cleanQuery(url.Values{"a": {""}, "b": {"1"}, "cursor": {"x"}}, "cursor"); q.Encode() != "b=1" {
		t.Errorf("cleanQuery: %s", q.Encode())
	}
}

func TestCSVText(t *testing.T) {
	for in, want := range map[string]string{"": "", "card_declined": "card_declined", "=HYPERLINK(1)": "'=HYPERLINK(1)", "-1": "'-1", "@x": "'@x"} {
		if got := csvText(in); got != want {
			t.Errorf("csvText(%q) = %q, want %q", in, got, want)
		}
	}
}

package payment

import (
	"fmt"
	"net/url"
	"regexp"
	"slices"
	"strings"

	"github.com/atriumhq/atrium/modules/payment/channel"
	"github.com/atriumhq/atrium/platform/errs"
)

// Channels is the set of bank channels in priority order.
type Channels struct {
	list   []*namedChannel
	byName map[string]*namedChannel
}

type namedChannel struct {
	name string
	ch   *channel.HTTP
}

var channelName = regexp.MustCompile(`^[a-z][a-z0-9_-]{0,31}$`)

// ChannelsError is a bad channel list (ATRIUM_PAYMENTS_CHANNELS).
type ChannelsError struct{ msg string }

func (e ChannelsError) Error() string { return e.msg }

// ParseChannelSpecs parses "name=base-url" entries.
func ParseChannelSpecs(specs []string) ([][2]string, error) {
	var out [][2]string
	seen := map[string]bool{}
	for _, s := range specs {
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		name, raw, ok := strings.Cut(s, "=")
		if !ok || !channelName.MatchString(name) {
			return nil, ChannelsError{fmt.Sprintf("channel %q: want name=http://host:port with a lower-case name", s)}
		}
		u, err := url.Parse(raw)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, ChannelsError{fmt.Sprintf("channel %q: %q is not an http(s) URL", name, raw)}
		}
		if seen[name] {
			return nil, ChannelsError{fmt.Sprintf("channel %q listed twice", name)}
		}
		seen[name] = true
		out = append(out, [2]string{name, raw})
	}
	return out, nil
}

// NewChannels builds the channels from "name=base-url" specs, in priority
// order; tmpl is the configuration each gets (Name and BaseURL are set).
func NewChannels(specs []string, tmpl channel.Config) (*Channels, error) {
	parsed, err := ParseChannelSpecs(specs)
	if err != nil {
		return nil, err
	}
	c := &Channels{byName: map[string]*namedChannel{}}
	for _, p := range parsed {
		cfg := tmpl
		cfg.Name, cfg.BaseURL = p[0], p[1]
		ch, err := channel.NewHTTP(cfg)
		if err != nil {
			return nil, err
		}
		nc := &namedChannel{name: p[0], ch: ch}
		c.list = append(c.list, nc)
		c.byName[p[0]] = nc
	}
	return c, nil
}

// Names lists the channels in priority order.
func (c *Channels) Names() []string {
	out := make([]string, len(c.list))
	for i, nc := range c.list {
		out[i] = nc.name
	}
	return out
}

// get returns the named channel.
func (c *Channels) get(name string) (*namedChannel, bool) {
	nc, ok := c.byName[name]
	return nc, ok
}

// route returns the channels a merchant's payment may use, best first:
// the merchant's preferred channels in its order (all channels by priority
// when it names none), those whose breaker is open left out. It fails with
// Unavailable when none is left.
func (c *Channels) route(prefs []string) ([]*namedChannel, error) {
	var out []*namedChannel
	add := func(nc *namedChannel) {
		if !nc.ch.Refusing() && !slices.Contains(out, nc) {
			out = append(out, nc)
		}
	}
	if len(prefs) == 0 {
		for _, nc := range c.list {
			add(nc)
		}
	} else {
		for _, p := range prefs {
			if nc, ok := c.byName[p]; ok {
				add(nc)
			}
		}
	}
	if len(out) == 0 {
		if len(c.list) == 0 {
			return nil, &errs.Error{Code: errs.Unavailable, Message: "no bank channel is configured",
				Extra: map[string]any{"retry_after_seconds": 30}}
		}
		return nil, &errs.Error{Code: errs.Unavailable, Extra: map[string]any{"retry_after_seconds": 5},
			Message: "every bank channel this merchant may use is refusing calls (circuit breaker open); nothing was charged"}
	}
	return out, nil
}

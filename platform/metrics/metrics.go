// Package metrics holds the Prometheus registry of one instance, the
// per-route HTTP metrics, and the /metrics handler.
package metrics

import (
	"net/http"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/atriumhq/atrium/platform/httpx"
)

// Registry is one instance's metrics. Each instance has its own (no global
// registry), so tests can run several instances in one process.
type Registry struct {
	reg *prometheus.Registry

	requests *prometheus.CounterVec
	errors   *prometheus.CounterVec
	latency  *prometheus.HistogramVec
}

// New returns a registry with Go runtime and process metrics and the HTTP
// request metrics registered.
func New() *Registry {
	r := &Registry{reg: prometheus.NewRegistry()}
	r.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	r.requests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "atrium_http_requests_total", Help: "HTTP requests by method, chi route pattern and status code.",
	}, []string{"method", "route", "code"})
	r.errors = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "atrium_http_errors_total", Help: "HTTP requests answered with a 5xx status, by method and route.",
	}, []string{"method", "route"})
	r.latency = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "atrium_http_request_duration_seconds", Help: "HTTP request latency by method and chi route pattern.",
		Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
	}, []string{"method", "route"})
	r.reg.MustRegister(r.requests, r.errors, r.latency)
	return r
}

// MustRegister registers module collectors.
func (r *Registry) MustRegister(cs ...prometheus.Collector) { r.reg.MustRegister(cs...) }

// Handler serves the metrics in the Prometheus text format.
func (r *Registry) Handler() http.Handler {
	return promhttp.HandlerFor(r.reg, promhttp.HandlerOpts{Registry: r.reg})
}

// Observe is an httpx observer recording request metrics by route pattern
// (never the raw path, which would explode the label set).
func (r *Registry) Observe(_ *http.Request, o httpx.Observation) {
	r.requests.WithLabelValues(o.Method, o.Route, codeLabel(o.Status)).Inc()
	r.latency.WithLabelValues(o.Method, o.Route).Observe(o.Duration.Seconds())
	if o.Status >= 500 {
		r.errors.WithLabelValues(o.Method, o.Route).Inc()
	}
}

// codeLabels holds the status code labels, so that recording a request does
// not allocate one.
var codeLabels = func() (l [600]string) {
	for i := 100; i < len(l); i++ {
		l[i] = strconv.Itoa(i)
	}
	return l
}()

func codeLabel(status int) string {
	if status >= 100 && status < len(codeLabels) {
		return codeLabels[status]
	}
	return strconv.Itoa(status)
}

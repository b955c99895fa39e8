package dns

import (
	"errors"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics of the DNS proxy. A nil *Metrics counts nothing. The Records
// feed the Cilium-compatible L7 series (cilium_policy_l7_total with
// proxy_type fqdn, cilium_proxy_upstream_reply_seconds) in
// internal/metrics; these add what only the proxy knows.
type Metrics struct {
	requests *prometheus.CounterVec   // bulwark_dns_proxy_requests_total{verdict}
	latency  *prometheus.HistogramVec // bulwark_dns_proxy_latency_seconds{stage}
}

// latencyBuckets cover 50 µs .. 5 s.
var latencyBuckets = []float64{.00005, .0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5}

// NewMetrics registers the proxy's series with reg. A series another part
// of the agent already registered with the same labels is shared.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bulwark_dns_proxy_requests_total",
			Help: "DNS queries the proxy handled, by verdict (forwarded, denied, error).",
		}, []string{"verdict"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "bulwark_dns_proxy_latency_seconds",
			Help:    "DNS proxy time by stage: total (query in to answer out), upstream (the server's reply) and datapath (allowing the answer's addresses before release).",
			Buckets: latencyBuckets,
		}, []string{"stage"}),
	}
	var err error
	if m.requests, err = register(reg, m.requests); err != nil {
		return nil, err
	}
	if m.latency, err = register(reg, m.latency); err != nil {
		return nil, err
	}
	return m, nil
}

// register registers c, or returns the collector already registered under
// its name when that one has the same type.
func register[T prometheus.Collector](reg prometheus.Registerer, c T) (T, error) {
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if ex, ok := are.ExistingCollector.(T); ok {
				return ex, nil
			}
		}
		return c, fmt.Errorf("register DNS proxy metrics: %w", err)
	}
	return c, nil
}

func (m *Metrics) request(verdict string, total, learn time.Duration) {
	if m == nil {
		return
	}
	m.requests.WithLabelValues(verdict).Inc()
	if total > 0 {
		m.latency.WithLabelValues("total").Observe(total.Seconds())
	}
	if learn > 0 {
		m.latency.WithLabelValues("datapath").Observe(learn.Seconds())
	}
}

func (m *Metrics) upstream(d time.Duration) {
	if m == nil {
		return
	}
	m.latency.WithLabelValues("upstream").Observe(d.Seconds())
}

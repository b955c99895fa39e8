package httpproxy

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// proxyMetrics are the proxy's own series; per-request counts and
// latencies come from Records (internal/metrics).
type proxyMetrics struct {
	rateLimited prometheus.Counter
	conns       prometheus.Gauge
}

func newProxyMetrics(reg prometheus.Registerer) (proxyMetrics, error) {
	m := proxyMetrics{
		rateLimited: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "bulwark_proxy_http_rate_limited_total", Help: "HTTP requests answered 429 by a CiliumEnvoyConfig local rate limit",
		}),
		conns: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "bulwark_proxy_http_connections", Help: "Client connections the HTTP proxy serves",
		}),
	}
	if reg == nil {
		return m, nil
	}
	var err error
	if m.rateLimited, err = register(reg, m.rateLimited); err != nil {
		return m, err
	}
	if m.conns, err = register(reg, m.conns); err != nil {
		return m, err
	}
	return m, nil
}

// register registers c, or returns the collector already registered under
// its name (a second Proxy on one registry shares the series).
func register[C prometheus.Collector](reg prometheus.Registerer, c C) (C, error) {
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(C); ok {
				return existing, nil
			}
		}
		return c, err
	}
	return c, nil
}

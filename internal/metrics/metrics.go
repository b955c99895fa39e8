// Package metrics exports Bulwark's Prometheus metrics from its own registry:
// drop and forward counters (pulled from the datapath, or counted from
// flows), drops by policy and by namespace (from flows), policy import,
// change and implementation delay, endpoint enforcement, identities, BPF map
// pressure, lost events and L7 proxy latency.
//
// With CiliumCompat every series is also exported under Cilium's name and
// label values (cilium_drop_count_total{reason="Policy denied"}), so
// dashboards written for Cilium work unchanged. docs/metrics.md lists them.
package metrics

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/bulwark-net/bulwark/internal/datapath/event"
	"github.com/bulwark-net/bulwark/internal/observer"
	"github.com/bulwark-net/bulwark/internal/policy/resolved"
	"github.com/bulwark-net/bulwark/internal/proxy"
)

// DefaultAddress is where metrics are served by default, as Cilium's agent.
const DefaultAddress = "127.0.0.1:9962"

// Metric name prefixes.
const (
	bulwarkNS = "bulwark"
	ciliumNS  = "cilium"
)

// TrafficSample is one cumulative datapath counter.
type TrafficSample struct {
	Direction resolved.Direction
	// Verdict is event.Forwarded or event.Dropped.
	Verdict event.Verdict
	// Reason is set for drops.
	Reason event.DropReason
	// Path, when set, names a shortcut some of the forwarded packets took
	// ("fast": the established fast path; "local_delivery": handed to a
	// pod on the node by the source's hook). Such a sample counts packets
	// already in the Path-less totals.
	Path           string
	Packets, Bytes uint64
}

// Datapath is what metrics pull from the datapath at scrape time. Methods
// must be safe for concurrent use.
type Datapath interface {
	// Traffic returns cumulative packet and byte counters per direction,
	// verdict and drop reason (all packets, not only those with events).
	Traffic() ([]TrafficSample, error)
	// MapPressure returns each BPF map's fill ratio (0..1) by map name.
	MapPressure() map[string]float64
	// EventsLost is how many events the datapath could not deliver.
	EventsLost() uint64
}

// EnforcementCounts counts local endpoints by the directions they enforce
// (default deny) in.
type EnforcementCounts struct{ None, Ingress, Egress, Both int }

// State is what metrics pull from the agent at scrape time.
type State interface {
	Enforcement() EnforcementCounts
	// Identities counts identities by type ("reserved", "cluster", "local").
	Identities() map[string]int
}

// Options configure Metrics.
type Options struct {
	// CiliumCompat also exports every series under its Cilium name.
	CiliumCompat bool
	// Datapath, when set, is the source of drop and forward counters and
	// map pressure; when nil drops and forwards are counted from flows.
	Datapath Datapath
	// State, when set, gives endpoint enforcement and identity counts.
	State State
}

// Metrics owns a registry and the series Bulwark exports.
type Metrics struct {
	opts     Options
	registry *prometheus.Registry

	// Each series exists once per exported prefix (bulwark, then cilium).
	dropCount, dropBytes       []*prometheus.CounterVec
	forwardCount, forwardBytes []*prometheus.CounterVec
	importErrors               []prometheus.Counter
	policyChange               []*prometheus.CounterVec
	implDelay                  []prometheus.Histogram
	proxyReply                 []*prometheus.HistogramVec
	policyL7                   []*prometheus.CounterVec
	hubbleHTTPRequests         *prometheus.CounterVec
	hubbleHTTPResponses        *prometheus.CounterVec
	hubbleHTTPDuration         *prometheus.HistogramVec
	dropsByPolicy              *prometheus.CounterVec
	auditsByPolicy             *prometheus.CounterVec // AUDIT flows: what audit-mode policies would have dropped
	dropsByNamespace           *prometheus.CounterVec
}

// New builds the registry.
func New(opts Options) (*Metrics, error) {
	m := &Metrics{opts: opts, registry: prometheus.NewRegistry()}
	prefixes := []string{bulwarkNS}
	if opts.CiliumCompat {
		prefixes = append(prefixes, ciliumNS)
	}
	var cs []prometheus.Collector
	for _, p := range prefixes {
		if opts.Datapath == nil {
			m.dropCount = append(m.dropCount, prometheus.NewCounterVec(prometheus.CounterOpts{
				Name: p + "_drop_count_total", Help: "Dropped packets by reason and direction",
			}, []string{"reason", "direction"}))
			m.dropBytes = append(m.dropBytes, prometheus.NewCounterVec(prometheus.CounterOpts{
				Name: p + "_drop_bytes_total", Help: "Dropped bytes by reason and direction",
			}, []string{"reason", "direction"}))
			m.forwardCount = append(m.forwardCount, prometheus.NewCounterVec(prometheus.CounterOpts{
				Name: p + "_forward_count_total", Help: "Forwarded packets by direction",
			}, []string{"direction"}))
			m.forwardBytes = append(m.forwardBytes, prometheus.NewCounterVec(prometheus.CounterOpts{
				Name: p + "_forward_bytes_total", Help: "Forwarded bytes by direction",
			}, []string{"direction"}))
		}
		m.importErrors = append(m.importErrors, prometheus.NewCounter(prometheus.CounterOpts{
			Name: p + "_policy_import_errors_total", Help: "Policy documents that failed to import",
		}))
		m.policyChange = append(m.policyChange, prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: p + "_policy_change_total", Help: "Policy changes by outcome (success, failure)",
		}, []string{"outcome"}))
		delayName := p + "_policy_implementation_delay_seconds"
		if p == ciliumNS {
			delayName = p + "_policy_implementation_delay" // Cilium's name, in seconds
		}
		m.implDelay = append(m.implDelay, prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: delayName, Help: "Time from a policy change to its enforcement in the datapath, seconds",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}))
		m.proxyReply = append(m.proxyReply, prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: p + "_proxy_upstream_reply_seconds", Help: "L7 proxy: time from request to upstream reply, seconds",
			Buckets: prometheus.DefBuckets,
		}, []string{"protocol_l7"}))
		m.policyL7 = append(m.policyL7, prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: p + "_policy_l7_total", Help: "L7 proxy requests by outcome (rule: received, forwarded, denied, parse_errors; Bulwark's name also rate_limited)",
		}, []string{"rule", "proxy_type"}))
	}
	// Hubble's HTTP metrics (hubble_http_*), from the same L7 flows.
	m.hubbleHTTPRequests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "hubble_http_requests_total", Help: "HTTP requests seen by the L7 proxy",
	}, []string{"method", "protocol", "reporter"})
	m.hubbleHTTPResponses = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "hubble_http_responses_total", Help: "HTTP responses seen by the L7 proxy",
	}, []string{"method", "status", "reporter"})
	m.hubbleHTTPDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "hubble_http_request_duration_seconds", Help: "HTTP request to response time through the L7 proxy, seconds",
		Buckets: prometheus.DefBuckets,
	}, []string{"method", "reporter"})
	m.dropsByPolicy = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: bulwarkNS + "_drops_by_policy_total",
		Help: "Drop events attributed to a policy (explicit deny or the default deny it imposes)",
	}, []string{"namespace", "policy", "direction"})
	m.auditsByPolicy = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: bulwarkNS + "_audits_by_policy_total",
		Help: "New connections an audit-mode policy (policy.bulwark.io/audit) would have dropped and that passed",
	}, []string{"namespace", "policy", "direction"})
	m.dropsByNamespace = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: bulwarkNS + "_drops_by_namespace_total",
		Help: "Drop events by the namespace of the local endpoint",
	}, []string{"namespace", "direction"})

	for _, v := range m.dropCount {
		cs = append(cs, v)
	}
	for _, v := range m.dropBytes {
		cs = append(cs, v)
	}
	for _, v := range m.forwardCount {
		cs = append(cs, v)
	}
	for _, v := range m.forwardBytes {
		cs = append(cs, v)
	}
	for _, v := range m.importErrors {
		cs = append(cs, v)
	}
	for _, v := range m.policyChange {
		cs = append(cs, v)
	}
	for _, v := range m.implDelay {
		cs = append(cs, v)
	}
	for _, v := range m.proxyReply {
		cs = append(cs, v)
	}
	for _, v := range m.policyL7 {
		cs = append(cs, v)
	}
	cs = append(cs, m.hubbleHTTPRequests, m.hubbleHTTPResponses, m.hubbleHTTPDuration)
	cs = append(cs, m.dropsByPolicy, m.auditsByPolicy, m.dropsByNamespace, &pullCollector{m: m, prefixes: prefixes})
	for _, c := range cs {
		if err := m.registry.Register(c); err != nil {
			return nil, fmt.Errorf("register metrics: %w", err)
		}
	}
	return m, nil
}

// Registry is the registry every series lives in.
func (m *Metrics) Registry() *prometheus.Registry { return m.registry }

// Handler serves the registry in the Prometheus exposition format. A source
// that fails (the datapath counters unreadable) loses its own series, not
// the whole scrape.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.registry, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError})
}

// Serve serves /metrics on addr until ctx ends. The listener is bound
// before Serve returns an error or starts serving, so a bad address fails
// fast.
func (m *Metrics) Serve(ctx context.Context, addr string) error {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("metrics: listen on %s: %w", addr, err)
	}
	return m.ServeListener(ctx, l)
}

// ServeListener serves /metrics on l until ctx ends.
func (m *Metrics) ServeListener(ctx context.Context, l net.Listener) error {
	mux := http.NewServeMux()
	mux.Handle("/metrics", m.Handler())
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(shutdown)
	}()
	if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("metrics: serve: %w", err)
	}
	return nil
}

// directionLabel is the direction label value: lower case for Bulwark's
// names, upper case for Cilium's (as Cilium exports it).
func directionLabel(prefixIndex int, d resolved.Direction) string {
	if prefixIndex == 0 {
		return d.String()
	}
	return strings.ToUpper(d.String())
}

// reasonLabel is the drop reason label value: Bulwark's reason name for
// Bulwark's names, Cilium's wording for Cilium's.
func reasonLabel(prefixIndex int, r event.DropReason) string {
	if prefixIndex == 0 {
		return r.Description()
	}
	return observer.CiliumDropReasonText(observer.DropReasonCode(r))
}

// ObserveFlow implements observer.FlowSink.
func (m *Metrics) ObserveFlow(ev *event.Event, f *flowpb.Flow) {
	if m.opts.Datapath == nil {
		switch ev.Verdict {
		case event.Dropped:
			for i := range m.dropCount {
				r, d := reasonLabel(i, ev.Reason), directionLabel(i, ev.Direction)
				m.dropCount[i].WithLabelValues(r, d).Inc()
				m.dropBytes[i].WithLabelValues(r, d).Add(float64(ev.Bytes))
			}
		case event.Forwarded, event.Redirected, event.Audit:
			for i := range m.forwardCount {
				d := directionLabel(i, ev.Direction)
				m.forwardCount[i].WithLabelValues(d).Inc()
				m.forwardBytes[i].WithLabelValues(d).Add(float64(ev.Bytes))
			}
		}
	}
	if ev.Verdict == event.Audit {
		denied := f.GetIngressDeniedBy()
		if ev.Direction == resolved.Egress {
			denied = f.GetEgressDeniedBy()
		}
		for _, p := range denied {
			m.auditsByPolicy.WithLabelValues(p.GetNamespace(), p.GetName(), ev.Direction.String()).Inc()
		}
		return
	}
	if ev.Verdict != event.Dropped {
		return
	}
	dir := ev.Direction.String()
	local := f.GetDestination()
	denied := f.GetIngressDeniedBy()
	if ev.Direction == resolved.Egress {
		local = f.GetSource()
		denied = f.GetEgressDeniedBy()
	}
	m.dropsByNamespace.WithLabelValues(local.GetNamespace(), dir).Inc()
	for _, p := range denied {
		m.dropsByPolicy.WithLabelValues(p.GetNamespace(), p.GetName(), dir).Inc()
	}
}

// PolicyImportError counts a policy document that failed to import.
func (m *Metrics) PolicyImportError() {
	for _, c := range m.importErrors {
		c.Inc()
	}
}

// Outcomes of a policy change.
const (
	OutcomeSuccess = "success"
	OutcomeFailure = "failure"
)

// PolicyChange counts a policy change (add, update or delete) by outcome.
func (m *Metrics) PolicyChange(outcome string) {
	for _, c := range m.policyChange {
		c.WithLabelValues(outcome).Inc()
	}
}

// PolicyImplementationDelay records the time from a policy change to its
// enforcement in the datapath.
func (m *Metrics) PolicyImplementationDelay(d time.Duration) {
	for _, h := range m.implDelay {
		h.Observe(d.Seconds())
	}
}

// ProxyUpstreamReply records an L7 proxy's upstream reply time ("http",
// "dns").
func (m *Metrics) ProxyUpstreamReply(protocol string, d time.Duration) {
	for _, h := range m.proxyReply {
		h.WithLabelValues(protocol).Observe(d.Seconds())
	}
}

// ObserveL7 implements observer.L7Sink: it counts proxy requests by
// outcome (received, then forwarded, denied, rate_limited or parse_errors)
// and records the upstream reply time of forwarded requests.
func (m *Metrics) ObserveL7(rec *proxy.Record, _ *flowpb.Flow) {
	protocol, ciliumType := "http", "envoy"
	if rec.DNS != nil {
		protocol, ciliumType = "dns", "fqdn"
	}
	reporter := "server"
	if rec.Direction == resolved.Egress {
		reporter = "client"
	}
	if rec.Type == proxy.Response {
		if rec.Verdict == proxy.Forwarded {
			m.ProxyUpstreamReply(protocol, rec.Latency)
		}
		if rec.HTTP != nil && rec.HTTP.Code != 0 {
			m.hubbleHTTPResponses.WithLabelValues(rec.HTTP.Method, strconv.Itoa(rec.HTTP.Code), reporter).Inc()
			m.hubbleHTTPDuration.WithLabelValues(rec.HTTP.Method, reporter).Observe(rec.Latency.Seconds())
		}
		return
	}
	if rec.HTTP != nil {
		m.hubbleHTTPRequests.WithLabelValues(rec.HTTP.Method, rec.HTTP.Protocol, reporter).Inc()
	}
	rule := ""
	switch rec.Verdict {
	case proxy.Forwarded:
		rule = "forwarded"
	case proxy.Dropped:
		rule = "denied"
	case proxy.RateLimited:
		rule = "rate_limited"
	case proxy.Error:
		rule = "parse_errors"
	}
	for i, c := range m.policyL7 {
		typ, r := protocol, rule
		if i > 0 { // Cilium's label values
			typ = ciliumType
			if r == "rate_limited" {
				r = "denied"
			}
		}
		c.WithLabelValues("received", typ).Inc()
		if r != "" {
			c.WithLabelValues(r, typ).Inc()
		}
	}
}

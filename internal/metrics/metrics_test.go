package metrics

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/bulwark-net/bulwark/internal/datapath/event"
	"github.com/bulwark-net/bulwark/internal/identity"
	"github.com/bulwark-net/bulwark/internal/observer"
	"github.com/bulwark-net/bulwark/internal/policy/resolved"
)

// value returns the value of the series name{labels}, and whether it exists.
func value(t *testing.T, m *Metrics, name string, labels map[string]string) (float64, bool) {
	t.Helper()
	families, err := m.Registry().Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	for _, fam := range families {
		if fam.GetName() != name {
			continue
		}
	metrics:
		for _, mt := range fam.GetMetric() {
			have := map[string]string{}
			for _, lp := range mt.GetLabel() {
				have[lp.GetName()] = lp.GetValue()
			}
			if len(have) != len(labels) {
				continue
			}
			for k, v := range labels {
				if have[k] != v {
					continue metrics
				}
			}
			return sampleValue(fam.GetType(), mt), true
		}
	}
	return 0, false
}

func sampleValue(typ dto.MetricType, mt *dto.Metric) float64 {
	switch typ {
	case dto.MetricType_COUNTER:
		return mt.GetCounter().GetValue()
	case dto.MetricType_GAUGE:
		return mt.GetGauge().GetValue()
	case dto.MetricType_HISTOGRAM:
		return float64(mt.GetHistogram().GetSampleCount())
	}
	return mt.GetUntyped().GetValue()
}

func expect(t *testing.T, m *Metrics, name string, labels map[string]string, want float64) {
	t.Helper()
	got, ok := value(t, m, name, labels)
	if !ok {
		t.Errorf("%s%v: missing", name, labels)
		return
	}
	if got != want {
		t.Errorf("%s%v = %v, want %v", name, labels, got, want)
	}
}

// policyResolver names the policies of the test's drops.
type policyResolver struct{}

func (policyResolver) EndpointByID(id uint32) (observer.EndpointInfo, bool) {
	if id == 5 {
		return observer.EndpointInfo{ID: 5, Identity: 300, Namespace: "demo", PodName: "db-0"}, true
	}
	return observer.EndpointInfo{}, false
}
func (policyResolver) EndpointByIP(netip.Addr) (observer.EndpointInfo, bool) {
	return observer.EndpointInfo{}, false
}
func (policyResolver) IdentityLabels(identity.NumericIdentity) []string { return nil }
func (policyResolver) RulePolicies(id uint32) []resolved.PolicyRef {
	if id == 9 {
		return []resolved.PolicyRef{{Kind: "CiliumClusterwideNetworkPolicy", Name: "deny-world"}}
	}
	return nil
}
func (policyResolver) SelectingPolicies(uint32, resolved.Direction) []resolved.PolicyRef {
	return []resolved.PolicyRef{{Kind: "NetworkPolicy", Namespace: "demo", Name: "default-deny"}}
}

func drop(reason event.DropReason, dir resolved.Direction, rule uint32) *event.Event {
	return &event.Event{
		Type: event.TypeDrop, EndpointID: 5, Direction: dir, Verdict: event.Dropped, Reason: reason,
		Src: netip.MustParseAddr("10.0.0.1"), Dst: netip.MustParseAddr("10.0.0.2"),
		Proto: resolved.ProtoTCP, SrcPort: 1234, DstPort: 5432, TCPFlags: 0x02, Bytes: 60, RuleID: rule,
	}
}

func TestDropMetricsMoveWithDropEvents(t *testing.T) {
	m, err := New(Options{CiliumCompat: true})
	if err != nil {
		t.Fatal(err)
	}
	o, err := observer.New(observer.Options{NodeName: "n", Resolver: policyResolver{}, Sinks: []observer.FlowSink{m}})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := value(t, m, "cilium_drop_count_total", map[string]string{"reason": "Policy denied", "direction": "INGRESS"}); ok {
		t.Fatal("drop counter exists before any drop")
	}
	o.Handle(drop(event.ReasonPolicyDenied, resolved.Ingress, 0))
	o.Handle(drop(event.ReasonPolicyDenied, resolved.Ingress, 0))
	o.Handle(drop(event.ReasonRevoked, resolved.Ingress, 0))
	o.Handle(drop(event.ReasonPolicyDenyRule, resolved.Egress, 9))
	fwd := drop(event.ReasonNone, resolved.Egress, 0)
	fwd.Verdict, fwd.Type, fwd.Bytes = event.Forwarded, event.TypePolicyVerdict, 100
	o.Handle(fwd)
	// An audit-mode default deny: forwarded, and counted against the policy
	// as an audit, not a drop.
	audit := drop(event.ReasonPolicyDenied, resolved.Ingress, 0)
	audit.Verdict, audit.Type = event.Audit, event.TypePolicyVerdict
	o.Handle(audit)
	expect(t, m, "bulwark_audits_by_policy_total", map[string]string{"namespace": "demo", "policy": "default-deny", "direction": "ingress"}, 1)
	expect(t, m, "bulwark_forward_count_total", map[string]string{"direction": "ingress"}, 1)

	expect(t, m, "bulwark_drop_count_total", map[string]string{"reason": "POLICY_DENIED", "direction": "ingress"}, 2)
	expect(t, m, "bulwark_drop_count_total", map[string]string{"reason": "POLICY_REVOKED", "direction": "ingress"}, 1)
	expect(t, m, "bulwark_drop_bytes_total", map[string]string{"reason": "POLICY_DENIED", "direction": "ingress"}, 120)
	expect(t, m, "bulwark_drop_count_total", map[string]string{"reason": "POLICY_DENY", "direction": "egress"}, 1)
	// Cilium's wording: a revoked connection is a policy denial.
	expect(t, m, "cilium_drop_count_total", map[string]string{"reason": "Policy denied", "direction": "INGRESS"}, 3)
	expect(t, m, "cilium_drop_count_total", map[string]string{"reason": "Policy denied by denylist", "direction": "EGRESS"}, 1)
	expect(t, m, "bulwark_forward_count_total", map[string]string{"direction": "egress"}, 1)
	expect(t, m, "cilium_forward_bytes_total", map[string]string{"direction": "EGRESS"}, 100)
	expect(t, m, "bulwark_drops_by_policy_total", map[string]string{"namespace": "demo", "policy": "default-deny", "direction": "ingress"}, 3) // two denials and a revocation
	expect(t, m, "bulwark_drops_by_policy_total", map[string]string{"namespace": "", "policy": "deny-world", "direction": "egress"}, 1)
	expect(t, m, "bulwark_drops_by_namespace_total", map[string]string{"namespace": "demo", "direction": "ingress"}, 3)
	expect(t, m, "bulwark_drops_by_namespace_total", map[string]string{"namespace": "demo", "direction": "egress"}, 1)
}

func TestWithoutCompatOnlyBulwarkNames(t *testing.T) {
	m, err := New(Options{})
	if err != nil {
		t.Fatal(err)
	}
	m.ObserveFlow(drop(event.ReasonPolicyDenied, resolved.Ingress, 0), nil)
	m.PolicyImportError()
	families, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if !strings.HasPrefix(f.GetName(), "bulwark_") {
			t.Errorf("series %s exported without Cilium compatibility", f.GetName())
		}
	}
	expect(t, m, "bulwark_drop_count_total", map[string]string{"reason": "POLICY_DENIED", "direction": "ingress"}, 1)
}

// fixedDatapath is a datapath whose counters the test sets.
type fixedDatapath struct {
	traffic  []TrafficSample
	pressure map[string]float64
	lost     uint64
}

func (d *fixedDatapath) Traffic() ([]TrafficSample, error) { return d.traffic, nil }
func (d *fixedDatapath) MapPressure() map[string]float64   { return d.pressure }
func (d *fixedDatapath) EventsLost() uint64                { return d.lost }

type fixedState struct {
	enf EnforcementCounts
	ids map[string]int
}

func (s *fixedState) Enforcement() EnforcementCounts { return s.enf }
func (s *fixedState) Identities() map[string]int     { return s.ids }

func TestPulledDatapathAndStateSeries(t *testing.T) {
	dp := &fixedDatapath{
		traffic: []TrafficSample{
			{Direction: resolved.Ingress, Verdict: event.Dropped, Reason: event.ReasonPolicyDenied, Packets: 10, Bytes: 600},
			{Direction: resolved.Ingress, Verdict: event.Dropped, Reason: event.ReasonRevoked, Packets: 2, Bytes: 100},
			{Direction: resolved.Egress, Verdict: event.Forwarded, Packets: 1000, Bytes: 64000},
			{Direction: resolved.Egress, Verdict: event.Forwarded, Path: "local_delivery", Packets: 400, Bytes: 25600},
		},
		pressure: map[string]float64{"bulwark_policy": 0.25},
		lost:     7,
	}
	st := &fixedState{enf: EnforcementCounts{None: 1, Ingress: 2, Both: 3}, ids: map[string]int{"cluster": 4, "reserved": 11}}
	m, err := New(Options{CiliumCompat: true, Datapath: dp, State: st})
	if err != nil {
		t.Fatal(err)
	}
	// Drop events do not count twice when the datapath has counters.
	m.ObserveFlow(drop(event.ReasonPolicyDenied, resolved.Ingress, 0), nil)

	expect(t, m, "bulwark_drop_count_total", map[string]string{"reason": "POLICY_DENIED", "direction": "ingress"}, 10)
	expect(t, m, "cilium_drop_count_total", map[string]string{"reason": "Policy denied", "direction": "INGRESS"}, 12)
	expect(t, m, "cilium_drop_bytes_total", map[string]string{"reason": "Policy denied", "direction": "INGRESS"}, 700)
	expect(t, m, "bulwark_forward_bytes_total", map[string]string{"direction": "egress"}, 64000) // a path sample is a part, not more
	expect(t, m, "bulwark_datapath_path_packets_total", map[string]string{"path": "local_delivery", "direction": "egress"}, 400)
	expect(t, m, "bulwark_bpf_map_pressure", map[string]string{"map_name": "bulwark_policy"}, 0.25)
	expect(t, m, "cilium_bpf_map_pressure", map[string]string{"map_name": "bulwark_policy"}, 0.25)
	expect(t, m, "bulwark_event_lost_total", nil, 7)
	expect(t, m, "bulwark_policy_endpoint_enforcement_status", map[string]string{"enforcement": "both"}, 3)
	expect(t, m, "bulwark_policy_endpoint_enforcement_status", map[string]string{"enforcement": "none"}, 1)
	expect(t, m, "cilium_policy_endpoint_enforcement_status", map[string]string{"enforcement": "true"}, 5)
	expect(t, m, "cilium_policy_endpoint_enforcement_status", map[string]string{"enforcement": "false"}, 1)
	expect(t, m, "bulwark_identity", map[string]string{"type": "reserved"}, 11)
	expect(t, m, "cilium_identity", map[string]string{"type": "cluster"}, 4)

	dp.traffic[0].Packets = 15
	expect(t, m, "bulwark_drop_count_total", map[string]string{"reason": "POLICY_DENIED", "direction": "ingress"}, 15)
}

func TestPushedPolicyAndProxySeries(t *testing.T) {
	m, err := New(Options{CiliumCompat: true})
	if err != nil {
		t.Fatal(err)
	}
	m.PolicyImportError()
	m.PolicyChange(OutcomeSuccess)
	m.PolicyChange(OutcomeSuccess)
	m.PolicyChange(OutcomeFailure)
	m.PolicyImplementationDelay(3 * time.Millisecond)
	m.ProxyUpstreamReply("http", 20*time.Millisecond)
	expect(t, m, "bulwark_policy_import_errors_total", nil, 1)
	expect(t, m, "cilium_policy_import_errors_total", nil, 1)
	expect(t, m, "bulwark_policy_change_total", map[string]string{"outcome": "success"}, 2)
	expect(t, m, "cilium_policy_change_total", map[string]string{"outcome": "failure"}, 1)
	expect(t, m, "bulwark_policy_implementation_delay_seconds", nil, 1)
	expect(t, m, "cilium_policy_implementation_delay", nil, 1)
	expect(t, m, "cilium_proxy_upstream_reply_seconds", map[string]string{"protocol_l7": "http"}, 1)
}

func TestServeExposition(t *testing.T) {
	m, err := New(Options{CiliumCompat: true})
	if err != nil {
		t.Fatal(err)
	}
	m.ObserveFlow(drop(event.ReasonPolicyDenied, resolved.Ingress, 0), nil)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.ServeListener(ctx, l) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	resp, err := http.Get("http://" + l.Addr().String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, want := range []string{
		`cilium_drop_count_total{direction="INGRESS",reason="Policy denied"} 1`,
		`bulwark_drop_count_total{direction="ingress",reason="POLICY_DENIED"} 1`,
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %s:\n%s", want, body)
		}
	}
	if err := m.Serve(context.Background(), "256.0.0.1:1"); err == nil {
		t.Error("serving on a bad address must fail")
	}
}

// failingDatapath cannot read its counters.
type failingDatapath struct{ fixedDatapath }

func (failingDatapath) Traffic() ([]TrafficSample, error) {
	return nil, errors.New("map lookup: EPERM")
}

func TestFailingSourceKeepsTheRestOfTheScrape(t *testing.T) {
	m, err := New(Options{CiliumCompat: true, Datapath: &failingDatapath{fixedDatapath{lost: 3}}})
	if err != nil {
		t.Fatal(err)
	}
	m.PolicyImportError()
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body := rec.Body.String()
	if rec.Code != http.StatusOK || !strings.Contains(body, "bulwark_policy_import_errors_total 1") || !strings.Contains(body, "bulwark_event_lost_total 3") {
		t.Errorf("scrape with a failing source: %d\n%s", rec.Code, body)
	}
}

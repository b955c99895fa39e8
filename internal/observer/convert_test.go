package observer

import (
	"regexp"
	"slices"
	"testing"
	"time"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/bulwark-net/bulwark/internal/datapath/event"
	"github.com/bulwark-net/bulwark/internal/identity"
	"github.com/bulwark-net/bulwark/internal/policy/resolved"
)

func newTestObserver(t testing.TB, capacity int, sinks ...FlowSink) *Observer {
	t.Helper()
	o, err := New(Options{NodeName: "node-1", Resolver: demoResolver(), Capacity: capacity, Sinks: sinks})
	if err != nil {
		t.Fatal(err)
	}
	return o
}

func TestFlowOfAllowedConnection(t *testing.T) {
	o := newTestObserver(t, 0)
	ev := allowedSYN(0)
	got := o.Handle(&ev)

	feLabels := []string{"k8s:app=frontend", "k8s:io.kubernetes.pod.namespace=demo", "k8s:tier=web"}
	beLabels := []string{"k8s:app=backend", "k8s:io.kubernetes.pod.namespace=demo", "k8s:tier=web"}
	want := &flowpb.Flow{
		Time:             timestamppb.New(baseTime),
		Verdict:          flowpb.Verdict_FORWARDED,
		IP:               &flowpb.IP{Source: "10.200.0.10", Destination: "10.200.0.20", IpVersion: flowpb.IPVersion_IPv4},
		L4:               &flowpb.Layer4{Protocol: &flowpb.Layer4_TCP{TCP: &flowpb.TCP{SourcePort: 43210, DestinationPort: 8080, Flags: &flowpb.TCPFlags{SYN: true}}}},
		Source:           &flowpb.Endpoint{ID: frontendEP, Identity: 1001, Namespace: "demo", PodName: "frontend-7d4b9c", Labels: feLabels},
		Destination:      &flowpb.Endpoint{ID: backendEP, Identity: 1002, Namespace: "demo", PodName: "backend-5f6a8b", Labels: beLabels},
		Type:             flowpb.FlowType_L3_L4,
		NodeName:         "node-1",
		EventType:        &flowpb.CiliumEventType{Type: MonitorTypePolicyVerdict},
		TrafficDirection: flowpb.TrafficDirection_INGRESS,
		IsReply:          wrapperspb.Bool(false),
		Summary:          "TCP Flags: SYN",
		PolicyMatchType:  uint32(event.MatchL3L4),
		IngressAllowedBy: []*flowpb.Policy{{
			Name: "frontend-to-backend", Namespace: "demo", Kind: "CiliumNetworkPolicy",
			Labels: []string{
				"k8s:io.cilium.k8s.policy.derived-from=CiliumNetworkPolicy",
				"k8s:io.cilium.k8s.policy.name=frontend-to-backend",
				"k8s:io.cilium.k8s.policy.namespace=demo",
			},
		}},
	}
	if !uuidFormat.MatchString(got.GetUuid()) {
		t.Errorf("uuid %q is not an RFC 9562 version 8 UUID", got.GetUuid())
	}
	got = proto.Clone(got).(*flowpb.Flow)
	got.Uuid = ""
	if !proto.Equal(got, want) {
		t.Errorf("flow:\n got %v\nwant %v", got, want)
	}
	if again := o.Handle(&ev); again.GetUuid() == "" || again.GetUuid() == o.Ring().Snapshot()[0].GetUuid() {
		t.Errorf("flows share uuid %q", again.GetUuid())
	}
}

var uuidFormat = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-8[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)

func TestFlowOfDefaultDenyNamesSelectingPolicies(t *testing.T) {
	o := newTestObserver(t, 0)
	ev := deniedSYN(0)
	f := o.Handle(&ev)
	if f.GetVerdict() != flowpb.Verdict_DROPPED || f.GetDropReasonDesc() != flowpb.DropReason_POLICY_DENIED || f.GetDropReason() != 133 {
		t.Errorf("verdict %v reason %v (%d), want DROPPED POLICY_DENIED (133)", f.GetVerdict(), f.GetDropReasonDesc(), f.GetDropReason())
	}
	if et := f.GetEventType(); et.GetType() != MonitorTypeDrop || et.GetSubType() != 133 {
		t.Errorf("event type %v, want drop (1) with sub-type 133", et)
	}
	if names := policyNames(f.GetIngressDeniedBy()); !slices.Equal(names, []string{"demo/default-deny"}) {
		t.Errorf("ingress_denied_by %v, want [demo/default-deny]", names)
	}
	if len(f.GetIngressAllowedBy())+len(f.GetEgressDeniedBy())+len(f.GetEgressAllowedBy()) != 0 {
		t.Errorf("unexpected policies on %v", f)
	}
	if f.GetDestination().GetID() != databaseEP || f.GetSource().GetID() != frontendEP {
		t.Errorf("endpoints %d → %d, want %d → %d", f.GetSource().GetID(), f.GetDestination().GetID(), frontendEP, databaseEP)
	}
}

func TestFlowOfExplicitDenyToWorld(t *testing.T) {
	o := newTestObserver(t, 0)
	ev := deniedWorld(0)
	f := o.Handle(&ev)
	if f.GetDropReasonDesc() != flowpb.DropReason_POLICY_DENY {
		t.Errorf("drop reason %v, want POLICY_DENY", f.GetDropReasonDesc())
	}
	if f.GetTrafficDirection() != flowpb.TrafficDirection_EGRESS {
		t.Errorf("direction %v, want EGRESS", f.GetTrafficDirection())
	}
	p := f.GetEgressDeniedBy()
	if len(p) != 1 || p[0].GetName() != "deny-world" || p[0].GetNamespace() != "" || p[0].GetKind() != "CiliumClusterwideNetworkPolicy" {
		t.Errorf("egress_denied_by %v, want the cluster-wide deny-world", p)
	}
	dst := f.GetDestination()
	if dst.GetIdentity() != uint32(identity.World) || !slices.Equal(dst.GetLabels(), []string{"reserved:world"}) || dst.GetPodName() != "" {
		t.Errorf("destination %v, want identity 2 labelled reserved:world", dst)
	}
	if f.GetSource().GetID() != backendEP {
		t.Errorf("source endpoint %d, want %d", f.GetSource().GetID(), backendEP)
	}
}

func TestFlowL4(t *testing.T) {
	o := newTestObserver(t, 0)
	tests := []struct {
		name    string
		mutate  func(*event.Event)
		check   func(*flowpb.Flow) bool
		summary string
	}{
		{"udp", func(e *event.Event) { e.Proto, e.TCPFlags = resolved.ProtoUDP, 0 },
			func(f *flowpb.Flow) bool {
				return f.GetL4().GetUDP().GetDestinationPort() == 8080 && f.GetL4().GetUDP().GetSourcePort() == 43210
			}, "UDP"},
		{"sctp", func(e *event.Event) { e.Proto, e.TCPFlags = resolved.ProtoSCTP, 0 },
			func(f *flowpb.Flow) bool { return f.GetL4().GetSCTP().GetDestinationPort() == 8080 }, "SCTP"},
		{"icmpv4 echo", func(e *event.Event) { e.Proto, e.DstPort, e.SrcPort = resolved.ProtoICMP, 8<<8, 77 },
			func(f *flowpb.Flow) bool {
				return f.GetL4().GetICMPv4().GetType() == 8 && f.GetL4().GetICMPv4().GetCode() == 0
			}, "ICMPv4 EchoRequest"},
		{"icmpv4 unreachable code", func(e *event.Event) { e.Proto, e.DstPort = resolved.ProtoICMP, 3<<8|3 },
			func(f *flowpb.Flow) bool {
				return f.GetL4().GetICMPv4().GetType() == 3 && f.GetL4().GetICMPv4().GetCode() == 3
			}, "ICMPv4 DestinationUnreachable"},
		{"icmpv6 echo over v6", func(e *event.Event) {
			e.Proto, e.DstPort, e.Src, e.Dst = resolved.ProtoICMPv6, 128<<8, frontendV6, backendV6
		}, func(f *flowpb.Flow) bool {
			return f.GetL4().GetICMPv6().GetType() == 128 && f.GetIP().GetIpVersion() == flowpb.IPVersion_IPv6 &&
				f.GetIP().GetSource() == "fd00:200::10" && f.GetSource().GetPodName() == "frontend-7d4b9c"
		}, "ICMPv6 EchoRequest"},
		{"tcp syn-ack reply", func(e *event.Event) { e.TCPFlags, e.IsReply = 0x12, true },
			func(f *flowpb.Flow) bool {
				fl := f.GetL4().GetTCP().GetFlags()
				return fl.GetSYN() && fl.GetACK() && !fl.GetFIN() && f.GetIsReply().GetValue() && f.GetReply()
			}, "TCP Flags: SYN, ACK"},
		{"tcp fin rst psh urg", func(e *event.Event) { e.TCPFlags = 0x01 | 0x04 | 0x08 | 0x20 },
			func(f *flowpb.Flow) bool {
				fl := f.GetL4().GetTCP().GetFlags()
				return fl.GetFIN() && fl.GetRST() && fl.GetPSH() && fl.GetURG() && !fl.GetSYN()
			}, "TCP Flags: PSH, FIN, RST, URG"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ev := allowedSYN(0)
			tt.mutate(&ev)
			f := o.Handle(&ev)
			if !tt.check(f) {
				t.Errorf("unexpected L4/IP: %v", f)
			}
			if f.GetSummary() != tt.summary {
				t.Errorf("summary %q, want %q", f.GetSummary(), tt.summary)
			}
		})
	}
}

func TestFlowVerdictsAndTypes(t *testing.T) {
	o := newTestObserver(t, 0)
	tests := []struct {
		name      string
		mutate    func(*event.Event)
		verdict   flowpb.Verdict
		eventType int32
		subType   int32
	}{
		{"audit", func(e *event.Event) { e.Verdict = event.Audit }, flowpb.Verdict_AUDIT, MonitorTypePolicyVerdict, 0},
		{"redirected", func(e *event.Event) { e.Verdict, e.ProxyPort = event.Redirected, 15001 }, flowpb.Verdict_REDIRECTED, MonitorTypePolicyVerdict, 0},
		{"trace to endpoint", func(e *event.Event) { e.Type = event.TypeTrace }, flowpb.Verdict_FORWARDED, MonitorTypeTrace, 0},
		{"trace from endpoint", func(e *event.Event) {
			e.Type, e.Direction, e.TracePoint = event.TypeTrace, resolved.Egress, event.FromEndpoint
		}, flowpb.Verdict_FORWARDED, MonitorTypeTrace, 5},
		{"trace to stack", func(e *event.Event) {
			e.Type, e.Direction, e.TracePoint = event.TypeTrace, resolved.Egress, event.ToStack
		}, flowpb.Verdict_FORWARDED, MonitorTypeTrace, 3},
		{"trace to proxy", func(e *event.Event) { e.Type, e.TracePoint = event.TypeTrace, event.ToProxy }, flowpb.Verdict_FORWARDED, MonitorTypeTrace, 1},
		{"overflow fails closed", func(e *event.Event) {
			e.Type, e.Verdict, e.Reason, e.RuleID = event.TypeOverflow, event.Dropped, event.ReasonTableOverflow, 0
		}, flowpb.Verdict_DROPPED, MonitorTypeDrop, int32(flowpb.DropReason_NO_CONFIGURATION_AVAILABLE_TO_PERFORM_POLICY_DECISION)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ev := allowedSYN(0)
			tt.mutate(&ev)
			f := o.Handle(&ev)
			if f.GetVerdict() != tt.verdict || f.GetEventType().GetType() != tt.eventType || f.GetEventType().GetSubType() != tt.subType {
				t.Errorf("verdict %v type %v, want %v %d/%d", f.GetVerdict(), f.GetEventType(), tt.verdict, tt.eventType, tt.subType)
			}
			// Hubble's observation point agrees with Cilium's sub-type.
			if ev.Type == event.TypeTrace && f.GetTraceObservationPoint() != tracePoints[ev.TracePoint] {
				t.Errorf("observation point %v for %v", f.GetTraceObservationPoint(), ev.TracePoint)
			}
		})
	}
	ev := allowedSYN(0)
	ev.Verdict, ev.ProxyPort = event.Redirected, 15001
	if f := o.Handle(&ev); f.GetProxyPort() != 15001 || len(f.GetIngressAllowedBy()) != 1 {
		t.Errorf("redirect: proxy port %d allowed_by %v", f.GetProxyPort(), f.GetIngressAllowedBy())
	}
	// A non-policy drop names no policy even with a rule id.
	ev = allowedSYN(0)
	ev.Verdict, ev.Reason = event.Dropped, event.ReasonCTInvalid
	if f := o.Handle(&ev); len(f.GetIngressDeniedBy())+len(f.GetIngressAllowedBy()) != 0 || f.GetDropReasonDesc() != flowpb.DropReason_UNKNOWN_CONNECTION_TRACKING_STATE {
		t.Errorf("ct-invalid drop: %v", f)
	}
}

func TestFlowWithoutResolverKeepsEventData(t *testing.T) {
	o, err := New(Options{NodeName: "n"})
	if err != nil {
		t.Fatal(err)
	}
	ev := deniedWorld(0)
	ev.Time = time.Time{}
	f := o.Handle(&ev)
	if f.GetSource().GetID() != backendEP || f.GetSource().GetIdentity() != uint32(backendID) || f.GetDestination().GetIdentity() != 2 {
		t.Errorf("endpoints %v → %v", f.GetSource(), f.GetDestination())
	}
	if f.GetTime().AsTime().IsZero() {
		t.Error("zero event time should be stamped with now")
	}
	if len(f.GetEgressDeniedBy()) != 0 {
		t.Errorf("no resolver, yet policies %v", f.GetEgressDeniedBy())
	}
}

func TestDropReasonMapping(t *testing.T) {
	for r := event.DropReason(0); r < 10; r++ {
		code := DropReasonCode(r)
		if r != event.ReasonNone && r <= event.ReasonRevoked && code == flowpb.DropReason_DROP_REASON_UNKNOWN {
			t.Errorf("reason %v has no Hubble code", r)
		}
		if CiliumDropReasonText(code) == "" {
			t.Errorf("code %v has no text", code)
		}
	}
	if DropReasonCode(event.ReasonPolicyDenied) != 133 || DropReasonCode(event.ReasonPolicyDenyRule) != 181 {
		t.Error("policy reasons must map to 133 and 181")
	}
	if CiliumDropReasonText(133) != "Policy denied" || CiliumDropReasonText(181) != "Policy denied by denylist" {
		t.Error("Cilium wording of policy drops changed")
	}
}

func policyNames(ps []*flowpb.Policy) []string {
	var out []string
	for _, p := range ps {
		if p.GetNamespace() != "" {
			out = append(out, p.GetNamespace()+"/"+p.GetName())
		} else {
			out = append(out, p.GetName())
		}
	}
	return out
}

func TestPolicyAttributionOfAuditAndRevocation(t *testing.T) {
	o := newTestObserver(t, 0)
	// Audit of a default deny: the selecting policies would have denied.
	ev := deniedSYN(0)
	ev.Verdict, ev.Reason, ev.Type = event.Audit, event.ReasonNone, event.TypePolicyVerdict
	f := o.Handle(&ev)
	if names := policyNames(f.GetIngressDeniedBy()); !slices.Equal(names, []string{"demo/default-deny"}) || len(f.GetIngressAllowedBy()) != 0 {
		t.Errorf("audit: denied_by %v allowed_by %v, want denied by demo/default-deny", names, f.GetIngressAllowedBy())
	}
	// A revoked connection of the backend: egress default deny.
	ev = allowedSYN(0)
	ev.Direction, ev.Verdict, ev.Reason, ev.RuleID = resolved.Egress, event.Dropped, event.ReasonRevoked, 0
	f = o.Handle(&ev)
	if names := policyNames(f.GetEgressDeniedBy()); !slices.Equal(names, []string{"demo/default-deny"}) || f.GetDropReasonDesc() != flowpb.DropReason_POLICY_DENIED {
		t.Errorf("revoked: denied_by %v reason %v", names, f.GetDropReasonDesc())
	}
	// A forward without a rule (no policy selects the endpoint) names none.
	ev = dnsQuery(0)
	if f = o.Handle(&ev); len(f.GetEgressAllowedBy())+len(f.GetEgressDeniedBy()) != 0 {
		t.Errorf("default allow names policies: %v", f)
	}
}

// withoutMatchTypes hides the MatchTyper of a resolver: the observer must
// work with resolvers that only implement Resolver.
type withoutMatchTypes struct{ Resolver }

func TestPolicyMatchType(t *testing.T) {
	o := newTestObserver(t, 0)
	cases := []struct {
		name string
		ev   event.Event
		want event.MatchType
	}{
		{"allow rule, peer and port", allowedSYN(0), event.MatchL3L4},
		{"default allow (no rule)", dnsQuery(0), event.MatchNone},
		{"default deny", deniedSYN(0), event.MatchNone},
		// Only policy verdicts carry a match type (as in Cilium).
		{"drop by a deny rule", deniedWorld(0), event.MatchNone},
	}
	for _, c := range cases {
		if got := o.Handle(&c.ev).GetPolicyMatchType(); got != uint32(c.want) {
			t.Errorf("%s: policy_match_type %d, want %d (%s)", c.name, got, c.want, c.want)
		}
	}
	verdict := allowedSYN(0)
	verdict.Verdict, verdict.Reason, verdict.RuleID = event.Dropped, event.ReasonPolicyDenyRule, ruleDenyWorld
	if got := o.Handle(&verdict).GetPolicyMatchType(); got != uint32(event.MatchL3Only) {
		t.Errorf("policy verdict of a deny rule: policy_match_type %d, want L3-Only (1)", got)
	}

	plain, err := New(Options{NodeName: "node-1", Resolver: withoutMatchTypes{demoResolver()}})
	if err != nil {
		t.Fatal(err)
	}
	ev := allowedSYN(0)
	f := plain.Handle(&ev)
	if f.GetPolicyMatchType() != 0 || len(f.GetIngressAllowedBy()) != 1 {
		t.Errorf("resolver without MatchTyper: match type %d, allowed by %v; want 0 and the rule's policy", f.GetPolicyMatchType(), f.GetIngressAllowedBy())
	}
}

package observer

import (
	"net/netip"
	"strings"
	"sync"
	"time"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/bulwark-net/bulwark/internal/datapath/event"
	"github.com/bulwark-net/bulwark/internal/identity"
	"github.com/bulwark-net/bulwark/internal/policy/resolved"
)

// Cilium monitor message types (pkg/monitor/api), which Hubble shows as
// flow.event_type.type and filters on.
const (
	MonitorTypeDrop          = 1
	MonitorTypeTrace         = 4
	MonitorTypePolicyVerdict = 5
)

// tracePoints maps the datapath's trace points (whose numbers are Cilium's
// trace sub-types) to Hubble's observation points.
var tracePoints = map[event.TracePoint]flowpb.TraceObservationPoint{
	event.ToEndpoint:   flowpb.TraceObservationPoint_TO_ENDPOINT,
	event.ToProxy:      flowpb.TraceObservationPoint_TO_PROXY,
	event.ToStack:      flowpb.TraceObservationPoint_TO_STACK,
	event.FromEndpoint: flowpb.TraceObservationPoint_FROM_ENDPOINT,
}

// DropReasonCode maps Bulwark's drop reason to the Hubble enum. Reasons
// without an exact Cilium twin take the closest Cilium code; the metrics keep
// Bulwark's own name.
func DropReasonCode(r event.DropReason) flowpb.DropReason {
	switch r {
	case event.ReasonNone:
		return flowpb.DropReason_DROP_REASON_UNKNOWN
	case event.ReasonPolicyDenied, event.ReasonRevoked:
		return flowpb.DropReason_POLICY_DENIED
	case event.ReasonPolicyDenyRule:
		return flowpb.DropReason_POLICY_DENY
	case event.ReasonEndpointNotReady, event.ReasonTableOverflow:
		return flowpb.DropReason_NO_CONFIGURATION_AVAILABLE_TO_PERFORM_POLICY_DECISION
	case event.ReasonInvalidPacket:
		return flowpb.DropReason_INVALID_PACKET_DROPPED
	case event.ReasonCTInvalid:
		return flowpb.DropReason_UNKNOWN_CONNECTION_TRACKING_STATE
	case event.ReasonUnknownEndpoint:
		return flowpb.DropReason_NO_MATCHING_LOCAL_CONTAINER_FOUND
	case event.ReasonProxyUnavailable:
		// Cilium's drop when its BPF TPROXY finds no proxy socket.
		return flowpb.DropReason_SOCKET_LOOKUP_FAILED
	}
	return flowpb.DropReason_DROP_REASON_UNKNOWN
}

// CiliumDropReasonText is the wording Cilium's monitor and metrics use for a
// Hubble drop reason ("Policy denied", ...).
func CiliumDropReasonText(code flowpb.DropReason) string {
	switch code {
	case flowpb.DropReason_POLICY_DENIED:
		return "Policy denied"
	case flowpb.DropReason_POLICY_DENY:
		return "Policy denied by denylist"
	case flowpb.DropReason_NO_CONFIGURATION_AVAILABLE_TO_PERFORM_POLICY_DECISION:
		return "No configuration available to perform policy decision"
	case flowpb.DropReason_INVALID_PACKET_DROPPED:
		return "Invalid packet"
	case flowpb.DropReason_SOCKET_LOOKUP_FAILED:
		return "Proxy socket lookup failed"
	case flowpb.DropReason_UNKNOWN_CONNECTION_TRACKING_STATE:
		return "Unknown connection tracking state"
	case flowpb.DropReason_NO_MATCHING_LOCAL_CONTAINER_FOUND:
		return "No matching local container found"
	case flowpb.DropReason_DROP_REASON_UNKNOWN:
		return "Unknown"
	}
	// Title-case the enum name for codes Bulwark never emits.
	s := strings.ReplaceAll(strings.ToLower(code.String()), "_", " ")
	if s == "" {
		return s
	}
	return strings.ToUpper(s[:1]) + s[1:]
}

func verdictOf(v event.Verdict) flowpb.Verdict {
	switch v {
	case event.Forwarded:
		return flowpb.Verdict_FORWARDED
	case event.Dropped:
		return flowpb.Verdict_DROPPED
	case event.Redirected:
		return flowpb.Verdict_REDIRECTED
	case event.Audit:
		return flowpb.Verdict_AUDIT
	}
	return flowpb.Verdict_VERDICT_UNKNOWN
}

// converter turns events into flows. It is safe for concurrent use.
type converter struct {
	resolver Resolver
	// matchTyper is resolver when it implements MatchTyper, else nil.
	matchTyper MatchTyper
	nodeName   string
	ids        *flowIDs
	// policies caches the immutable flow.Policy of each PolicyRef, so the
	// event path does not rebuild labels for every flow.
	policies sync.Map // resolved.PolicyRef → *flowpb.Policy
	// dropTypes shares the event type of each drop reason.
	dropTypes sync.Map // flowpb.DropReason → *flowpb.CiliumEventType
}

// toFlow builds the flow of one event. The returned flow is never mutated
// afterwards: rings and subscribers share it.
func (c *converter) toFlow(ev *event.Event) *flowpb.Flow {
	t := ev.Time
	if t.IsZero() {
		t = time.Now()
	}
	f := &flowpb.Flow{
		Time:     timestamppb.New(t),
		Uuid:     c.ids.next(),
		Verdict:  verdictOf(ev.Verdict),
		Type:     flowpb.FlowType_L3_L4,
		NodeName: c.nodeName,
		IsReply:  isReplyValue[boolIndex(ev.IsReply)],
		Reply:    ev.IsReply,
	}
	if ev.Direction == resolved.Egress {
		f.TrafficDirection = flowpb.TrafficDirection_EGRESS
	} else {
		f.TrafficDirection = flowpb.TrafficDirection_INGRESS
	}
	if ev.Verdict == event.Dropped {
		code := DropReasonCode(ev.Reason)
		f.DropReasonDesc = code
		f.DropReason = uint32(code)
	}
	if ev.Verdict == event.Redirected || ev.Verdict == event.Audit {
		f.ProxyPort = uint32(ev.ProxyPort) // an audited flow may go to the proxy too
	}
	f.EventType = c.eventType(ev, f.DropReasonDesc)
	// As in Cilium, only policy verdicts carry a match type, and a default
	// verdict (rule id 0) matched nothing: none.
	if ev.Type == event.TypePolicyVerdict && ev.RuleID != 0 && c.matchTyper != nil {
		f.PolicyMatchType = uint32(c.matchTyper.RuleMatchType(ev.RuleID))
	}
	if ev.Type == event.TypeTrace {
		f.TraceObservationPoint = tracePoints[ev.TracePoint]
	}

	if ev.Src.IsValid() || ev.Dst.IsValid() {
		ipVersion := flowpb.IPVersion_IPv4
		if ev.Src.Is6() && !ev.Src.Is4In6() {
			ipVersion = flowpb.IPVersion_IPv6
		}
		f.IP = &flowpb.IP{Source: addrString(ev.Src), Destination: addrString(ev.Dst), IpVersion: ipVersion}
	}
	f.L4, f.Summary = layer4(ev)

	// The local endpoint is the destination of ingress traffic and the
	// source of egress traffic.
	localIsSrc := ev.Direction == resolved.Egress
	f.Source = c.endpoint(ev, ev.Src, ev.SrcIdentity, localIsSrc)
	f.Destination = c.endpoint(ev, ev.Dst, ev.DstIdentity, !localIsSrc)

	c.attachPolicies(ev, f)
	return f
}

// Flows are immutable once built, so values every flow would allocate the
// same way are shared between flows.
var (
	isReplyValue      = [2]*wrapperspb.BoolValue{wrapperspb.Bool(false), wrapperspb.Bool(true)}
	policyVerdictType = &flowpb.CiliumEventType{Type: MonitorTypePolicyVerdict}
	traceTypes        = func() map[event.TracePoint]*flowpb.CiliumEventType {
		m := map[event.TracePoint]*flowpb.CiliumEventType{}
		for p := range tracePoints {
			m[p] = &flowpb.CiliumEventType{Type: MonitorTypeTrace, SubType: int32(p)}
		}
		return m
	}()
)

func boolIndex(b bool) int {
	if b {
		return 1
	}
	return 0
}

func (c *converter) eventType(ev *event.Event, code flowpb.DropReason) *flowpb.CiliumEventType {
	switch ev.Type {
	case event.TypePolicyVerdict:
		return policyVerdictType
	case event.TypeTrace:
		if t, ok := traceTypes[ev.TracePoint]; ok {
			return t
		}
		return &flowpb.CiliumEventType{Type: MonitorTypeTrace, SubType: int32(ev.TracePoint)}
	}
	// Drops and overflows (an endpoint failing closed) are drop events; as
	// in Cilium the sub-type is the drop reason code.
	if t, ok := c.dropTypes.Load(code); ok {
		return t.(*flowpb.CiliumEventType)
	}
	t, _ := c.dropTypes.LoadOrStore(code, &flowpb.CiliumEventType{Type: MonitorTypeDrop, SubType: int32(code)})
	return t.(*flowpb.CiliumEventType)
}

func (c *converter) endpoint(ev *event.Event, addr netip.Addr, id identity.NumericIdentity, local bool) *flowpb.Endpoint {
	var info EndpointInfo
	found := false
	if c.resolver != nil {
		if local && ev.EndpointID != 0 {
			info, found = c.resolver.EndpointByID(ev.EndpointID)
		}
		if !found && addr.IsValid() {
			info, found = c.resolver.EndpointByIP(addr)
		}
	}
	ep := &flowpb.Endpoint{Identity: uint32(id)}
	if found {
		ep.ID = info.ID
		ep.Namespace = info.Namespace
		ep.PodName = info.PodName
		ep.Labels = info.Labels
		if id == identity.Unknown {
			ep.Identity = uint32(info.Identity)
		}
	}
	if local && ep.ID == 0 {
		ep.ID = ev.EndpointID
	}
	if ep.Labels == nil {
		if c.resolver != nil {
			ep.Labels = c.resolver.IdentityLabels(id)
		}
		if ep.Labels == nil {
			ep.Labels = reservedLabels(id)
		}
	}
	return ep
}

// attachPolicies names the policies behind a verdict. Drops and audits
// (which would have been drops) are denials: the deny rule's policies, or
// for a default deny the policies selecting the endpoint in that direction.
// Forwards and redirects name the policies of the allow rule that matched.
func (c *converter) attachPolicies(ev *event.Event, f *flowpb.Flow) {
	if c.resolver == nil {
		return
	}
	denied := ev.Verdict == event.Dropped || ev.Verdict == event.Audit
	if ev.Verdict == event.Dropped {
		switch ev.Reason {
		case event.ReasonPolicyDenied, event.ReasonPolicyDenyRule, event.ReasonRevoked,
			event.ReasonProxyUnavailable: // the L7 rule no proxy enforces
		default:
			return // not a policy decision
		}
	}
	var refs []resolved.PolicyRef
	switch {
	case ev.RuleID != 0:
		refs = c.resolver.RulePolicies(ev.RuleID)
	case denied:
		refs = c.resolver.SelectingPolicies(ev.EndpointID, ev.Direction)
	}
	if len(refs) == 0 {
		return
	}
	pols := make([]*flowpb.Policy, len(refs))
	for i, r := range refs {
		pols[i] = c.policy(r)
	}
	switch {
	case denied && ev.Direction == resolved.Egress:
		f.EgressDeniedBy = pols
	case denied:
		f.IngressDeniedBy = pols
	case ev.Direction == resolved.Egress:
		f.EgressAllowedBy = pols
	default:
		f.IngressAllowedBy = pols
	}
}

// Labels Cilium attaches to policy-derived rules.
const (
	policyDerivedFromLabel = "io.cilium.k8s.policy.derived-from"
	policyNameLabel        = "io.cilium.k8s.policy.name"
	policyNamespaceLabel   = "io.cilium.k8s.policy.namespace"
)

func (c *converter) policy(r resolved.PolicyRef) *flowpb.Policy {
	if p, ok := c.policies.Load(r); ok {
		return p.(*flowpb.Policy)
	}
	labels := []string{
		"k8s:" + policyDerivedFromLabel + "=" + r.Kind,
		"k8s:" + policyNameLabel + "=" + r.Name,
	}
	if r.Namespace != "" {
		labels = append(labels, "k8s:"+policyNamespaceLabel+"="+r.Namespace)
	}
	p := &flowpb.Policy{Name: r.Name, Namespace: r.Namespace, Kind: r.Kind, Labels: labels}
	actual, _ := c.policies.LoadOrStore(r, p)
	return actual.(*flowpb.Policy)
}

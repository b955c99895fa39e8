// Package event defines the datapath's events as Go values: what the eBPF
// programs report through their ring buffer, decoded. It is a leaf package so
// that consumers (observer, monitor, metrics) need not load BPF.
package event

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/bulwark-net/bulwark/internal/identity"
	"github.com/bulwark-net/bulwark/internal/policy/resolved"
)

// Type of an event.
type Type uint8

const (
	TypePolicyVerdict Type = 1 // verdict on a new connection
	TypeDrop          Type = 2 // a dropped packet
	TypeTrace         Type = 3 // a traced (forwarded) packet, when tracing is on
	TypeOverflow      Type = 4 // a table would overflow: endpoint failed closed
)

func (t Type) String() string {
	switch t {
	case TypePolicyVerdict:
		return "policy-verdict"
	case TypeDrop:
		return "drop"
	case TypeTrace:
		return "trace"
	case TypeOverflow:
		return "overflow"
	}
	return fmt.Sprintf("type-%d", uint8(t))
}

// Verdict of a packet.
type Verdict uint8

const (
	Forwarded  Verdict = 1
	Dropped    Verdict = 2
	Redirected Verdict = 3 // to the L7 proxy
	Audit      Verdict = 4 // would have been dropped; audit mode let it pass
)

func (v Verdict) String() string {
	switch v {
	case Forwarded:
		return "FORWARDED"
	case Dropped:
		return "DROPPED"
	case Redirected:
		return "REDIRECTED"
	case Audit:
		return "AUDIT"
	}
	return "VERDICT_UNKNOWN"
}

// DropReason explains a drop. Values are Bulwark's own; Description gives
// the Hubble/Cilium wording and HubbleCode the flow.DropReason number.
type DropReason uint8

const (
	ReasonNone             DropReason = 0
	ReasonPolicyDenied     DropReason = 1 // no allow entry matched under default deny
	ReasonPolicyDenyRule   DropReason = 2 // an explicit deny entry matched
	ReasonEndpointNotReady DropReason = 3 // endpoint has no policy in place yet: fail closed
	ReasonTableOverflow    DropReason = 4 // the endpoint's table could not be loaded: fail closed
	ReasonInvalidPacket    DropReason = 5 // malformed headers
	ReasonCTInvalid        DropReason = 6 // conntrack state invalid
	ReasonUnknownEndpoint  DropReason = 7 // packet on an interface with no endpoint record
	ReasonRevoked          DropReason = 8 // an established connection lost its allow
	// ReasonProxyUnavailable: the policy sends the flow to an L7 proxy and
	// none is listening (no proxy port, or no socket found for it). Rule
	// zero: an L7 rule that no proxy enforces drops its traffic.
	ReasonProxyUnavailable DropReason = 9
)

var reasonDesc = map[DropReason]string{
	ReasonPolicyDenied:     "POLICY_DENIED",
	ReasonPolicyDenyRule:   "POLICY_DENY",
	ReasonEndpointNotReady: "ENDPOINT_NOT_READY",
	ReasonTableOverflow:    "POLICY_TABLE_OVERFLOW",
	ReasonInvalidPacket:    "INVALID_PACKET_DROPPED",
	ReasonCTInvalid:        "CT_INVALID",
	ReasonUnknownEndpoint:  "UNKNOWN_ENDPOINT",
	ReasonRevoked:          "POLICY_REVOKED",
	ReasonProxyUnavailable: "PROXY_UNAVAILABLE",
}

// Description is the upper-case name used in flows and metrics labels.
func (r DropReason) Description() string {
	if d, ok := reasonDesc[r]; ok {
		return d
	}
	if r == ReasonNone {
		return ""
	}
	return fmt.Sprintf("REASON_%d", uint8(r))
}

func (r DropReason) String() string { return r.Description() }

// TracePoint is where a traced packet went (Cilium's trace observation
// points; the values are Cilium's trace sub-types).
type TracePoint uint8

const (
	ToEndpoint   TracePoint = 0 // into the local pod (its ingress hook, or local delivery)
	ToProxy      TracePoint = 1 // to the node's L7 proxy
	ToStack      TracePoint = 3 // out of the pod to the node's stack (another node, the host, the world)
	FromEndpoint TracePoint = 5 // out of the pod, delivered straight to a local pod
)

func (p TracePoint) String() string {
	switch p {
	case ToEndpoint:
		return "to-endpoint"
	case ToProxy:
		return "to-proxy"
	case ToStack:
		return "to-stack"
	case FromEndpoint:
		return "from-endpoint"
	}
	return fmt.Sprintf("trace-point-%d", uint8(p))
}

// Event is one decoded datapath event.
type Event struct {
	Time       time.Time
	Type       Type
	EndpointID uint32 // the local endpoint whose program decided
	Direction  resolved.Direction
	Verdict    Verdict
	Reason     DropReason

	SrcIdentity, DstIdentity identity.NumericIdentity
	Src, Dst                 netip.Addr
	SrcPort, DstPort         uint16 // ICMP: DstPort carries type<<8|code, SrcPort the echo id
	Proto                    resolved.Protocol
	TCPFlags                 uint8 // FIN=0x01 SYN=0x02 RST=0x04 PSH=0x08 ACK=0x10 URG=0x20
	IsReply                  bool
	Bytes                    uint32

	// RuleID names the rule set that decided (0 = none, a default verdict);
	// the datapath's syncer maps it back to policies.
	RuleID uint32
	// ProxyPort is set on Redirected.
	ProxyPort uint16
	// TracePoint is set on a TypeTrace event.
	TracePoint TracePoint
}

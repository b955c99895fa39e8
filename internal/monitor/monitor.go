// Package monitor renders datapath events, as carried by Hubble flows, in
// the style of `cilium monitor`: one line per event naming the endpoint that
// decided, the identities and the packet, or one JSON object per event.
package monitor

import (
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	flowpb "github.com/cilium/cilium/api/v1/flow"

	"github.com/bulwark-net/bulwark/internal/observer"
)

// EventType is an event class `bulwark monitor --type` selects.
type EventType string

const (
	TypeDrop          EventType = "drop"
	TypePolicyVerdict EventType = "policy-verdict"
	TypeTrace         EventType = "trace"
)

// Types lists the event classes.
var Types = []EventType{TypeDrop, TypePolicyVerdict, TypeTrace}

// ParseType validates an event class name.
func ParseType(s string) (EventType, error) {
	if slices.Contains(Types, EventType(s)) {
		return EventType(s), nil
	}
	return "", fmt.Errorf("invalid event type %q: want one of drop, policy-verdict, trace", s)
}

// MonitorType is the Cilium monitor message type of an event class.
func (t EventType) MonitorType() int32 {
	switch t {
	case TypeDrop:
		return observer.MonitorTypeDrop
	case TypePolicyVerdict:
		return observer.MonitorTypePolicyVerdict
	}
	return observer.MonitorTypeTrace
}

// LocalEndpoint is the endpoint whose program reported the event: the
// destination of ingress traffic, the source of egress traffic.
func LocalEndpoint(f *flowpb.Flow) uint32 {
	if f.GetTrafficDirection() == flowpb.TrafficDirection_EGRESS {
		return f.GetSource().GetID()
	}
	return f.GetDestination().GetID()
}

// EndpointFilter keeps events by endpoint ID. A flow passes when no ID is
// set, or its source is one of From, or its destination one of To, or either
// side one of Related (so `--from X --to X` shows X's traffic both ways).
type EndpointFilter struct {
	From, To, Related []uint32
}

// Match reports whether the flow passes.
func (ef EndpointFilter) Match(f *flowpb.Flow) bool {
	if len(ef.From)+len(ef.To)+len(ef.Related) == 0 {
		return true
	}
	src, dst := f.GetSource().GetID(), f.GetDestination().GetID()
	return slices.Contains(ef.From, src) || slices.Contains(ef.To, dst) ||
		slices.Contains(ef.Related, src) || slices.Contains(ef.Related, dst)
}

// packet renders "10.0.0.1:1234 -> 10.0.0.2:80 tcp SYN".
func packet(f *flowpb.Flow) string {
	src, dst := f.GetIP().GetSource(), f.GetIP().GetDestination()
	l4 := f.GetL4()
	hostPort := func(ip string, port uint32) string {
		if strings.Contains(ip, ":") {
			return "[" + ip + "]:" + strconv.FormatUint(uint64(port), 10)
		}
		return ip + ":" + strconv.FormatUint(uint64(port), 10)
	}
	switch {
	case l4.GetTCP() != nil:
		t := l4.GetTCP()
		s := hostPort(src, t.GetSourcePort()) + " -> " + hostPort(dst, t.GetDestinationPort()) + " tcp"
		if fl := observer.TCPFlagsString(t.GetFlags(), ", "); fl != "" {
			s += " " + fl
		}
		return s
	case l4.GetUDP() != nil:
		u := l4.GetUDP()
		return hostPort(src, u.GetSourcePort()) + " -> " + hostPort(dst, u.GetDestinationPort()) + " udp"
	case l4.GetSCTP() != nil:
		u := l4.GetSCTP()
		return hostPort(src, u.GetSourcePort()) + " -> " + hostPort(dst, u.GetDestinationPort()) + " sctp"
	case l4.GetICMPv4() != nil:
		return src + " -> " + dst + " " + observer.ICMPTypeName(false, l4.GetICMPv4().GetType())
	case l4.GetICMPv6() != nil:
		return src + " -> " + dst + " " + observer.ICMPTypeName(true, l4.GetICMPv6().GetType())
	}
	return src + " -> " + dst
}

func protoNumber(f *flowpb.Flow) int {
	l4 := f.GetL4()
	switch {
	case l4.GetTCP() != nil:
		return 6
	case l4.GetUDP() != nil:
		return 17
	case l4.GetSCTP() != nil:
		return 132
	case l4.GetICMPv4() != nil:
		return 1
	case l4.GetICMPv6() != nil:
		return 58
	}
	return 0
}

func action(v flowpb.Verdict) string {
	switch v {
	case flowpb.Verdict_DROPPED:
		return "deny"
	case flowpb.Verdict_REDIRECTED:
		return "redirect"
	case flowpb.Verdict_AUDIT:
		return "audit"
	}
	return "allow"
}

// Line renders one event as `cilium monitor` does.
func Line(f *flowpb.Flow) string {
	ids := strconv.FormatUint(uint64(f.GetSource().GetIdentity()), 10) + "->" +
		strconv.FormatUint(uint64(f.GetDestination().GetIdentity()), 10)
	local := strconv.FormatUint(uint64(LocalEndpoint(f)), 10)
	egress := f.GetTrafficDirection() == flowpb.TrafficDirection_EGRESS
	switch f.GetEventType().GetType() {
	case observer.MonitorTypeDrop:
		where := "to endpoint " + local
		if egress {
			where = "from endpoint " + local
		}
		return "xx drop (" + observer.CiliumDropReasonText(f.GetDropReasonDesc()) + ") " + where +
			", identity " + ids + ": " + packet(f)
	case observer.MonitorTypePolicyVerdict:
		remote := f.GetSource().GetIdentity()
		if egress {
			remote = f.GetDestination().GetIdentity()
		}
		return fmt.Sprintf("Policy verdict log: local EP ID %s, remote ID %d, proto %d, %s, action %s, %s",
			local, remote, protoNumber(f), strings.ToLower(f.GetTrafficDirection().String()), action(f.GetVerdict()), packet(f))
	case observer.MonitorTypeTrace:
		// Cilium's observation point wording; the state says which way
		// of the connection the packet went.
		var where string
		switch f.GetTraceObservationPoint() {
		case flowpb.TraceObservationPoint_FROM_ENDPOINT:
			where = "<- endpoint " + local
		case flowpb.TraceObservationPoint_TO_STACK:
			where = "-> stack"
		case flowpb.TraceObservationPoint_TO_PROXY:
			where = "-> proxy"
		default:
			where = "-> endpoint " + local
		}
		state := "new"
		if f.GetIsReply().GetValue() {
			state = "reply"
		} else if f.GetL4().GetTCP() != nil && !f.GetL4().GetTCP().GetFlags().GetSYN() {
			state = "established"
		}
		return where + ", identity " + ids + " state " + state + ": " + packet(f)
	}
	return "?? event " + strconv.Itoa(int(f.GetEventType().GetType())) + ": " + packet(f)
}

// Record is the JSON form of one event (`bulwark monitor -j`).
type Record struct {
	Time        time.Time `json:"time"`
	Type        string    `json:"type"`
	Endpoint    uint32    `json:"endpoint"`
	Direction   string    `json:"direction"`
	Verdict     string    `json:"verdict"`
	Reason      string    `json:"reason,omitempty"`
	ReasonCode  int32     `json:"reasonCode,omitempty"`
	SrcIdentity uint32    `json:"srcIdentity"`
	DstIdentity uint32    `json:"dstIdentity"`
	Source      string    `json:"source"`
	Destination string    `json:"destination"`
	SrcPort     uint32    `json:"srcPort,omitempty"`
	DstPort     uint32    `json:"dstPort,omitempty"`
	Protocol    int       `json:"protocol"`
	TCPFlags    string    `json:"tcpFlags,omitempty"`
	Summary     string    `json:"summary"`
}

// JSON renders one event as a JSON object.
func JSON(f *flowpb.Flow) ([]byte, error) {
	r := Record{
		Time:        f.GetTime().AsTime(),
		Endpoint:    LocalEndpoint(f),
		Direction:   strings.ToLower(f.GetTrafficDirection().String()),
		Verdict:     f.GetVerdict().String(),
		SrcIdentity: f.GetSource().GetIdentity(),
		DstIdentity: f.GetDestination().GetIdentity(),
		Source:      f.GetIP().GetSource(),
		Destination: f.GetIP().GetDestination(),
		Protocol:    protoNumber(f),
		TCPFlags:    observer.TCPFlagsString(f.GetL4().GetTCP().GetFlags(), ","),
		Summary:     Line(f),
	}
	switch f.GetEventType().GetType() {
	case observer.MonitorTypeDrop:
		r.Type = string(TypeDrop)
		r.Reason = observer.CiliumDropReasonText(f.GetDropReasonDesc())
		r.ReasonCode = int32(f.GetDropReasonDesc())
	case observer.MonitorTypePolicyVerdict:
		r.Type = string(TypePolicyVerdict)
	case observer.MonitorTypeTrace:
		r.Type = string(TypeTrace)
	default:
		r.Type = "unknown"
	}
	l4 := f.GetL4()
	switch {
	case l4.GetTCP() != nil:
		r.SrcPort, r.DstPort = l4.GetTCP().GetSourcePort(), l4.GetTCP().GetDestinationPort()
	case l4.GetUDP() != nil:
		r.SrcPort, r.DstPort = l4.GetUDP().GetSourcePort(), l4.GetUDP().GetDestinationPort()
	case l4.GetSCTP() != nil:
		r.SrcPort, r.DstPort = l4.GetSCTP().GetSourcePort(), l4.GetSCTP().GetDestinationPort()
	}
	return json.Marshal(r)
}
